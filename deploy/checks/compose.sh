#!/usr/bin/env bash
# Checks the Compose stack without a Docker engine (none runs on CI machines):
#
# 1. deploy/compose/compose.yaml against the Compose specification's JSON schema, vendored as
#    deploy/compose/compose-spec.json (from github.com/compose-spec/compose-spec,
#    schema/compose-spec.json as of commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6; the file
#    last changed in a08f8d51631b7127ddac3d2c65537db429d0f1d0);
# 2. what the schema cannot see: every depends_on, secret, volume and mounted file exists;
#    ./secrets.sh writes exactly the secret files the stack reads; each Gatehouse service's
#    health check probes its own port; Prometheus scrapes every Gatehouse service at its
#    port; the gateway's upstreams name real services and ports;
# 3. prometheus.yml with promtool (with the rules of deploy/prometheus/rules when present),
#    when promtool is installed (Debian's `prometheus` package);
# 4. deploy/compose/gateway.toml with `gateway check`, when a gateway binary is at hand
#    (GATEWAY_BIN, else target/debug/gateway).
#
# Exits non-zero on any failure.
set -eu
cd "$(dirname "$0")/../.."

CHECK_JSONSCHEMA_VERSION=0.39.0

if ! check-jsonschema --version 2>/dev/null | grep -q " $CHECK_JSONSCHEMA_VERSION\$"; then
  echo "compose: installing check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi

# The reference check below parses YAML with ruamel.yaml, which check-jsonschema brings
# along, unless check-jsonschema came from an isolated install (pipx).
python3 -c 'import ruamel.yaml' 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "ruamel.yaml==0.19.1"

echo "compose: schema"
check-jsonschema --schemafile deploy/compose/compose-spec.json deploy/compose/compose.yaml

echo "compose: references"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# What secrets.sh writes, written into a scratch copy so the real secrets are never touched.
mkdir -p "$scratch/secrets-run"
cp deploy/compose/secrets.sh "$scratch/secrets-run/"
bash "$scratch/secrets-run/secrets.sh" >/dev/null
# ruamel.yaml resolves the file's anchors and merge keys as Compose does.
SECRETS_WRITTEN="$scratch/secrets-run/secrets" python3 - <<'EOF'
import os, re, sys, tomllib
from pathlib import Path
from ruamel.yaml import YAML

base = Path("deploy/compose")
compose = YAML(typ="safe").load((base / "compose.yaml").read_text())
services = compose["services"]
problems = []
warnings = []

# Gatehouse containers: the ones running our image's binaries.
ours = {n: s for n, s in services.items() if s.get("image", "").startswith("${GATEHOUSE_IMAGE")}
# Images with no tool to run a health check with.
no_healthcheck = {"otel-collector"}

for name, svc in services.items():
    if "healthcheck" not in svc and name not in no_healthcheck:
        problems.append(f"{name}: no healthcheck")
    deps = svc.get("depends_on", {})
    for dep, how in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
        if dep not in services:
            problems.append(f"{name}: depends_on unknown service {dep}")
        elif how.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
            problems.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
    for secret in svc.get("secrets", []):
        secret = secret if isinstance(secret, str) else secret["source"]
        if secret not in compose.get("secrets", {}):
            problems.append(f"{name}: secret {secret} is not declared")
    for volume in svc.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":")[0]
        else:
            source = volume.get("source", "")
        if source.startswith((".", "/")):
            if not (base / source).exists():
                # deploy/prometheus and deploy/grafana are written apart from this folder.
                where = warnings if source.startswith(("../prometheus", "../grafana")) else problems
                where.append(f"{name}: mounts {source}, which does not exist")
        elif source and source not in compose.get("volumes", {}):
            problems.append(f"{name}: volume {source} is not declared")

# The secret files: exactly those secrets.sh writes.
written = {p.name for p in Path(os.environ["SECRETS_WRITTEN"]).iterdir() if p.name != "secrets.sh"}
declared = set()
for secret, spec in compose.get("secrets", {}).items():
    path = Path(spec.get("file", ""))
    if path.parent != Path("secrets"):
        problems.append(f"secret {secret}: {path} is not under ./secrets/ (where secrets.sh writes)")
    declared.add(path.name)
for missing in sorted(declared - written):
    problems.append(f"secret file secrets/{missing} is never written by secrets.sh")
for unused in sorted(written - declared):
    problems.append(f"secrets.sh writes secrets/{unused}, which no secret uses")

# Each Gatehouse service: its port from BIND, its health check on that port.
ports = {}
for name, svc in ours.items():
    command = svc.get("command", [])
    env = svc.get("environment", {})
    if name == "gateway":
        ports[name] = 9090  # admin listener, from gateway.toml
    elif "BIND" in env:
        ports[name] = int(env["BIND"].rsplit(":", 1)[1])
    else:
        problems.append(f"{name}: no BIND")
        continue
    test = " ".join(svc.get("healthcheck", {}).get("test", []))
    if f"127.0.0.1:{ports[name]}/" not in test:
        problems.append(f"{name}: the healthcheck does not probe its port {ports[name]}: {test}")
    if command and command[0] != "gateway" and not command[0].endswith("-service"):
        problems.append(f"{name}: command {command[0]} is not one of the image's binaries")

# Prometheus scrapes every Gatehouse container at its port.
prom = YAML(typ="safe").load((base / "prometheus.yml").read_text())
targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
for name, port in ports.items():
    if f"{name}:{port}" not in targets:
        problems.append(f"prometheus.yml: {name}:{port} is not scraped")
for t in sorted(targets):
    host = t.split(":")[0]
    if host not in services:
        problems.append(f"prometheus.yml: target {t} is no service")

# The gateway's upstreams: Compose services at their ports; the JWKS at the user service.
gw = tomllib.loads((base / "gateway.toml").read_text())
for up in gw.get("upstreams", []):
    for backend in up["backends"]:
        addr = backend if isinstance(backend, str) else backend["addr"]
        host, port = addr.rsplit(":", 1)
        if ports.get(host) != int(port):
            problems.append(f"gateway.toml: upstream {up['name']} backend {addr} is no service port")
for fname, f in gw.get("filters", {}).items():
    url = f.get("jwks_url")
    if isinstance(url, str) and not url.startswith(f"http://user:{ports.get('user')}/"):
        problems.append(f"gateway.toml: filter {fname} jwks_url {url} is not the user service")

for w in warnings:
    print(f"  warning: {w}")
for p in problems:
    print(f"FAIL: {p}")
if problems:
    sys.exit(1)
print(f"  {len(services)} services, {len(compose.get('secrets', {}))} secrets, {len(targets)} scrape targets: ok")
EOF

if command -v promtool >/dev/null; then
  echo "compose: promtool check config"
  config=deploy/compose/prometheus.yml
  if [ -d deploy/prometheus/rules ]; then
    # The rules where the container finds them (/etc/prometheus/rules) are here in the repo.
    sed "s#/etc/prometheus/rules/#$PWD/deploy/prometheus/rules/#" "$config" >"$scratch/prometheus.yml"
    config=$scratch/prometheus.yml
  fi
  promtool check config "$config"
else
  echo "compose: promtool not installed (apt-get install prometheus): prometheus.yml not checked"
fi

gateway_bin=${GATEWAY_BIN:-target/debug/gateway}
if [ -x "$gateway_bin" ]; then
  echo "compose: $gateway_bin check --config deploy/compose/gateway.toml"
  export GATEWAY_REDIS_URL=redis://redis:6379
  if ! out=$("$gateway_bin" check --config deploy/compose/gateway.toml 2>&1); then
    case "$out" in
      *"built without OTLP export"*)
        # The image is built with --features otlp, the test build usually not: check the rest.
        echo "  (this binary has no otlp feature: checking the file without otlp_endpoint)"
        sed 's/^otlp_endpoint = .*/otlp_endpoint = ""/' deploy/compose/gateway.toml >"$scratch/gateway.toml"
        "$gateway_bin" check --config "$scratch/gateway.toml"
        ;;
      *) echo "$out"; exit 1 ;;
    esac
  else
    echo "$out"
  fi
else
  echo "compose: no gateway binary at $gateway_bin (set GATEWAY_BIN): gateway.toml not checked"
fi

echo "compose: ok"
