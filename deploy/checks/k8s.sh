#!/usr/bin/env bash
# Renders each Kubernetes overlay (deploy/k8s/overlays/*) with `kubectl kustomize` and
# validates the result offline, with kubernetes-validate --strict, against the API schemas
# of two Kubernetes versions: 1.30, the oldest the manifests support (the services'
# preStop `sleep` action), and the newest the pinned validator bundles. Then it checks
# what the schemas cannot: the gateway's config ConfigMap keeps one fixed name and is
# mounted as a directory (or hot reload never happens), it holds no credentials, and the
# single overlay stays one pod. Exits non-zero on the first failure.
#
#   bash deploy/checks/k8s.sh
#
# With GATEWAY=path/to/gateway (a built binary) each overlay's gateway.toml also goes
# through `gateway check`.
set -eu
cd "$(dirname "$0")/../.."

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSIONS="1.30.0 1.37.0"

command -v kubectl >/dev/null || { echo "k8s.sh: kubectl is needed (for kubectl kustomize)" >&2; exit 1; }
if [ "$(kubernetes-validate --version 2>/dev/null || true)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    python3 -m pip install --quiet --root-user-action=ignore \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for overlay in single distributed; do
    dir=deploy/k8s/overlays/$overlay
    kubectl kustomize "$dir" >"$out/$overlay.yaml"
    for version in $KUBERNETES_VERSIONS; do
        kubernetes-validate --strict --quiet -k "$version" "$out/$overlay.yaml"
    done
    python3 - "$overlay" "$out/$overlay.yaml" "$dir/gateway.toml" <<'PY'
import re
import sys
import tomllib

import yaml

overlay, rendered, toml_path = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
problems = []

with open(toml_path, "rb") as f:
    tomllib.load(f)

config = by_kind.get("ConfigMap", {}).get("gateway-config")
if config is None:
    problems.append("no ConfigMap named exactly gateway-config (a hash suffix stops hot reload)")
else:
    text = config["data"]["gateway.toml"]
    if re.search(r"://[^/\s\"']*:[^/\s\"']*@", text):
        problems.append("gateway-config holds a URL with a password: use { from_env = ... }")

gateway = by_kind["Deployment"]["gateway"]["spec"]
pod = gateway["template"]["spec"]
volume = next((v["name"] for v in pod["volumes"]
               if v.get("configMap", {}).get("name") == "gateway-config"), None)
if volume is None:
    problems.append("the gateway does not mount gateway-config")
for m in pod["containers"][0]["volumeMounts"]:
    if m["name"] == volume and "subPath" in m:
        problems.append("gateway-config is mounted with subPath, which never updates")

if overlay == "single":
    if gateway.get("replicas") != 1 or gateway["strategy"]["type"] != "Recreate":
        problems.append("the gateway must be 1 replica with strategy Recreate (SQLite)")
    if "HorizontalPodAutoscaler" in by_kind:
        problems.append("an autoscaler would start a second pod on the same SQLite files")

for p in problems:
    print(f"k8s.sh: {overlay}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
    if [ -n "${GATEWAY:-}" ]; then
        GATEWAY_REDIS_URL=redis://127.0.0.1:6379 "$GATEWAY" check --config "$dir/gateway.toml"
    fi
    echo "k8s.sh: $overlay: renders, validates against Kubernetes $KUBERNETES_VERSIONS (strict)"
done
