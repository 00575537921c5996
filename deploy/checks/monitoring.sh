#!/usr/bin/env bash
# Checks the monitoring configuration under deploy/: exits non-zero on the first failure.
#
#   bash deploy/checks/monitoring.sh
#
# 1. promtool check rules: the rule files parse and their templates are valid.
# 2. Every alert carries what the on-call needs (severity page or ticket, summary,
#    description, a runbook_url whose anchor is a heading of deploy/RUNBOOK.md), and has a
#    unit test where it fires and one where it stays quiet.
# 3. promtool test rules: those unit tests (about 20 s; the 3-day windows dominate).
# 4. Every dashboard query parses: each becomes a recording rule in a temporary rule file
#    (Grafana variables filled in by metric_names.py --dashboard-rules) for promtool.
# 5. metric_names.py can list every metric the rules and dashboards read.
#
# Needs promtool (Debian: apt-get install -y prometheus) and python3 with PyYAML
# (Debian: python3-yaml).
set -eu
cd "$(dirname "$0")/../.."

if ! command -v promtool >/dev/null; then
    echo "monitoring.sh: promtool not found; on Debian: apt-get install -y prometheus" >&2
    exit 1
fi
promtool --version 2>&1 | head -1

echo "== promtool check rules"
promtool check rules deploy/prometheus/rules/*.yaml

echo "== alert labels, annotations, runbook anchors and test coverage"
python3 - <<'EOF'
import glob, re, sys
import yaml

def slug(heading):
    # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")

anchors = {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$",
                                                 open("deploy/RUNBOOK.md", encoding="utf-8").read(), re.M)}
base = "https://github.com/gatehouse/gatehouse/blob/main/deploy/RUNBOOK.md#"

fires, quiet = {}, {}
for path in glob.glob("deploy/prometheus/tests/*.yaml"):
    for test in yaml.safe_load(open(path)).get("tests") or []:
        for case in test.get("alert_rule_test") or []:
            book = fires if case.get("exp_alerts") else quiet
            book[case["alertname"]] = book.get(case["alertname"], 0) + 1

problems = []
names = []
for path in sorted(glob.glob("deploy/prometheus/rules/*.yaml")):
    for group in yaml.safe_load(open(path))["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if not name:
                continue
            names.append(name)
            where = f"{path}: {name}"
            labels = rule.get("labels") or {}
            notes = rule.get("annotations") or {}
            if labels.get("severity") not in ("page", "ticket"):
                problems.append(f"{where}: severity must be page or ticket")
            for key in ("summary", "description", "runbook_url"):
                if not notes.get(key):
                    problems.append(f"{where}: no {key} annotation")
            url = notes.get("runbook_url", "")
            if not url.startswith(base) or url[len(base):] not in anchors:
                problems.append(f"{where}: runbook_url {url!r} is not a heading of deploy/RUNBOOK.md")
            if not fires.get(name):
                problems.append(f"{where}: no unit test where it fires")
            if not quiet.get(name):
                problems.append(f"{where}: no unit test where it stays quiet (exp_alerts: [])")
dupes = {n for n in names if names.count(n) > 1}
if dupes:
    problems.append("alert names used twice: " + ", ".join(sorted(dupes)))
for p in problems:
    print(p, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"  SUCCESS: {len(names)} alerts, each with a runbook section, a firing and a quiet test")
EOF

echo "== promtool test rules"
promtool test rules deploy/prometheus/tests/*.yaml

echo "== dashboard queries parse"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in deploy/grafana/dashboards/*.json; do
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$f" \
        || { echo "monitoring.sh: $f is not valid JSON" >&2; exit 1; }
done
python3 deploy/checks/metric_names.py --dashboard-rules >"$tmp/dashboards.yaml"
promtool check rules "$tmp/dashboards.yaml"

echo "== metric names"
python3 deploy/checks/metric_names.py >"$tmp/names"
echo "  $(wc -l <"$tmp/names") metric names read by the rules and dashboards (deploy/checks/metric_names.py)"
echo "monitoring checks passed"
