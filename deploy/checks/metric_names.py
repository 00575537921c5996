#!/usr/bin/env python3
"""Every metric name the alerting rules and the Grafana dashboards read, one per line.

Usage (from any directory; paths are found from this file's place in the repo):

    python3 deploy/checks/metric_names.py                 # rules and dashboards
    python3 deploy/checks/metric_names.py --rules         # deploy/prometheus/rules/*.yaml only
    python3 deploy/checks/metric_names.py --dashboards    # deploy/grafana/dashboards/*.json only
    python3 deploy/checks/metric_names.py --where         # name, a tab, the files that read it
    python3 deploy/checks/metric_names.py --when          # name, a tab, when it is on /metrics
    python3 deploy/checks/metric_names.py --dashboard-rules   # see below

The output is meant for a test that scrapes a live platform and checks each name is exported,
so it is exact: sorted, unique, spelled as the series appear on a /metrics page. A histogram
is listed as the series actually read (`..._bucket`, `..._sum`, `..._count`), never by its
base name. Recording rules defined in deploy/prometheus/rules (names with a colon) are left
out: Prometheus computes them, nothing exports them. `up` and other series Prometheus makes
itself would be listed too; none is used today.

Where the names live: `gatehouse_*` on the gateway's admin listener (`[admin] listen`,
`/metrics`); `http_request*` on every service's own `/metrics` (with a `service` label);
`notification_*` on the notification service's; `analytics_*` on the analytics service's.

A scrape test must know one thing: the Prometheus client leaves a labelled family out of
`/metrics` entirely (no HELP, no TYPE) until one of its series has been touched. `--when`
says, for each name, what has to happen first (a request, an ejection, a send attempt...).

Exit status: 0 on success; 2 when an expression names metrics in a way that cannot be listed
(a regex on `__name__`) or reads a recording rule nobody defines, so a test built on this
output never silently checks less than the rules and dashboards use.

`--dashboard-rules` prints a Prometheus rule file with one recording rule per dashboard
query (Grafana variables replaced: `$__rate_interval` and the other `$__` ones by `5m`,
template variables like `$route` by `.*`), for `promtool check rules` to parse every query;
deploy/checks/monitoring.sh runs it.
"""

import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RULES = os.path.join(ROOT, "deploy", "prometheus", "rules")
DASHBOARDS = os.path.join(ROOT, "deploy", "grafana", "dashboards")

# When each name first appears on /metrics. Plain (unlabelled) metrics are always there;
# a labelled family appears with its first series. Kept beside the code that registers them:
# gateway-core/src/observe/metrics.rs, backends/kit/src/telemetry.rs,
# backends/notification/src/metrics.rs, backends/analytics/src/metrics.rs.
WHEN = {
    "gatehouse_requests_total": "after the gateway's first request",
    "gatehouse_request_duration_seconds_bucket": "after the gateway's first request",
    "gatehouse_request_duration_seconds_sum": "after the gateway's first request",
    "gatehouse_request_duration_seconds_count": "after the gateway's first request",
    "gatehouse_requests_in_flight": "always",
    "gatehouse_upstream_backend_healthy": "once a pool's health is recorded (at load, then each check)",
    "gatehouse_config_generation": "always",
    "gatehouse_config_reloads_total": "always (applied, unchanged, failed are created at start)",
    "gatehouse_filter_decisions_total": "after a route with a filter serves a request",
    "gatehouse_upstream_duration_seconds_bucket": "after the first upstream response",
    "gatehouse_upstream_duration_seconds_sum": "after the first upstream response",
    "gatehouse_upstream_duration_seconds_count": "after the first upstream response",
    "gatehouse_access_log_dropped_total": "always",
    "gatehouse_upstream_ejections_total": "after the first outlier ejection",
    "gatehouse_upstream_ejection_returns_total": "after the first ejected backend returns",
    "gatehouse_dns_lookups_total": "after the first background lookup of a backend given by name",
    "gatehouse_retries_over_budget_total": "after the first retry refused by the retry budget",
    "gatehouse_connections_open": "always",
    "gatehouse_connections_refused_total": "always",
    "gatehouse_rate_limit_keys": "while the configuration has a local rate_limit filter",
    "http_requests_total": "after the service's first request (not /health, /ready, /metrics)",
    "http_request_duration_seconds_bucket": "after the service's first request",
    "http_request_duration_seconds_sum": "after the service's first request",
    "http_request_duration_seconds_count": "after the service's first request",
    "notification_deliveries": "once the delivery table has rows (per state present)",
    "notification_send_attempts_total": "after the first send attempt",
    "notification_websocket_clients": "always",
    "analytics_events_total": "always (every outcome is created at start)",
    "analytics_rollup_lag_milliseconds": "always",
    "gatehouse_jwks_refreshes_total": "after a jwt filter's first JWKS fetch",
    "gatehouse_rate_limit_store_errors_total": "after Redis fails a rate limit",
    "notification_oldest_due_age_seconds": "always (measured at each scrape)",
    "order_saga_compensations_total": "always (both kinds are created at start)",
    "order_saga_oldest_unfinished_age_seconds": "always (measured at each scrape)",
    "outbox_oldest_pending_age_seconds": "always (measured at each scrape)",
    "service_dependency_up": "after the first /ready or scrape",
    "payment_authorizations_total": "always (every result is created at start)",
    "payment_declines_total": "after the first declined card",
    "payment_captured_minor_units_total": "after the first capture",
    "payment_refunded_minor_units_total": "after the first refund",
}

# PromQL words that look like metric names but are not.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "start", "end",
    # aggregation operators, in case one is written with its grouping before the parenthesis
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
NAME_MATCHER = re.compile(r'__name__\s*(=~|!=|!~|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')')
GRAFANA_BUILTIN = re.compile(r"\$\{__\w+(?::[^}]*)?\}|\$__\w+")
GRAFANA_VAR = re.compile(r"\$\{\w+(?::[^}]*)?\}|\$\w+|\[\[\w+(?::[^\]]*)?\]\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


class Unlistable(Exception):
    """An expression names series in a way this script cannot enumerate."""


def grafana_to_promql(expr):
    """The query as Prometheus would get it, with every Grafana variable filled in."""
    expr = GRAFANA_BUILTIN.sub("5m", expr)
    return GRAFANA_VAR.sub(".*", expr)


def names_in(expr):
    """Metric names an expression selects (recording-rule names included)."""
    found = set()
    for op, value in NAME_MATCHER.findall(expr):
        if op != "=":
            raise Unlistable(f"__name__{op} cannot be listed: {expr!r}")
        found.add(value[1:-1])
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)        # label matchers: label names, values
    text = re.sub(r"\[[^\[\]]*\]", " ", text)      # ranges and subqueries
    text = GROUPING.sub(" ", text)                  # label lists of by/on/group_left...
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    text = re.sub(r"@\s*(?:start\(\)|end\(\)|[\d.]+)", " ", text)
    text = NUMBER.sub(" ", text)
    for m in IDENT.finditer(text):
        word = m.group(0)
        rest = text[m.end():].lstrip()
        if rest.startswith("("):                    # a function or an aggregation
            continue
        if word.lower() in KEYWORDS:
            continue
        found.add(word)
    return found


def load_yaml(path):
    try:
        import yaml  # PyYAML: Debian's python3-yaml
    except ImportError:
        return None
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def rule_exprs_fallback(path):
    """`record`/`alert` names and `expr` texts without PyYAML: enough for our rule files
    (block scalars with `|` or `>`, or one-line expressions)."""
    records, exprs = set(), []
    lines = open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-?\s*record:\s*(\S+)", line)
        if m:
            records.add(m.group(1).strip("'\""))
        m = re.match(r"(\s*)-?\s*expr:\s*(.*)$", line)
        if m:
            value = m.group(2).strip()
            if value[:1] in ("|", ">"):
                indent = None
                body = []
                i += 1
                while i < len(lines):
                    nxt = lines[i]
                    if nxt.strip() == "":
                        body.append("")
                        i += 1
                        continue
                    lead = len(nxt) - len(nxt.lstrip())
                    if indent is None:
                        indent = lead
                    if lead < indent:
                        break
                    body.append(nxt[indent:])
                    i += 1
                exprs.append("\n".join(body))
                continue
            exprs.append(value.strip("'\"") if value[:1] in "'\"" else value)
        i += 1
    return records, exprs


def rule_files():
    return sorted(glob.glob(os.path.join(RULES, "*.yaml")) + glob.glob(os.path.join(RULES, "*.yml")))


def read_rules():
    """(recording-rule names, [(file, expr)])."""
    records, exprs = set(), []
    for path in rule_files():
        doc = load_yaml(path)
        if doc is None:
            recs, texts = rule_exprs_fallback(path)
            records |= recs
            exprs += [(path, t) for t in texts]
            continue
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                if "record" in rule:
                    records.add(rule["record"])
                exprs.append((path, str(rule["expr"])))
    return records, exprs


def panels(items):
    for p in items or []:
        yield p
        yield from panels(p.get("panels"))


def dashboard_queries():
    """[(file, dashboard uid, panel id, refId, expr)] for every panel target, plus the
    metric selector of every `label_values(...)`/`query_result(...)` template variable."""
    out = []
    for path in sorted(glob.glob(os.path.join(DASHBOARDS, "*.json"))):
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
        uid = dash.get("uid") or os.path.splitext(os.path.basename(path))[0]
        for p in panels(dash.get("panels")):
            for t in p.get("targets") or []:
                if t.get("expr"):
                    out.append((path, uid, p.get("id"), t.get("refId", "A"), t["expr"]))
        for v in (dash.get("templating") or {}).get("list") or []:
            if v.get("type") != "query":
                continue
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            m = re.match(r"\s*label_values\((.*),\s*\w+\s*\)\s*$", q, re.S)
            if m:
                out.append((path, uid, "var-" + v.get("name", ""), "A", m.group(1)))
                continue
            m = re.match(r"\s*query_result\((.*)\)\s*$", q, re.S)
            if m:
                out.append((path, uid, "var-" + v.get("name", ""), "A", m.group(1)))
    return out


def dashboard_rules():
    """A rule file that records every dashboard query, for promtool to parse."""
    lines = ["# Generated by deploy/checks/metric_names.py --dashboard-rules: one recording rule per",
             "# dashboard query, only for `promtool check rules` to parse them.",
             "groups:", "  - name: dashboard-queries", "    rules:"]
    for path, uid, panel, ref, expr in dashboard_queries():
        name = "dashboard:%s:panel_%s_%s" % (re.sub(r"\W", "_", uid), re.sub(r"\W", "_", str(panel)), ref)
        lines.append(f"      - record: {name}")
        lines.append(f"        # {os.path.relpath(path, ROOT)}")
        lines.append("        expr: " + json.dumps(grafana_to_promql(expr)))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--rules", action="store_true", help="rule files only")
    which.add_argument("--dashboards", action="store_true", help="dashboards only")
    show = ap.add_mutually_exclusive_group()
    show.add_argument("--where", action="store_true", help="also print the files reading each name")
    show.add_argument("--when", action="store_true", help="also print when each name is on /metrics")
    show.add_argument("--dashboard-rules", action="store_true",
                      help="print a rule file recording every dashboard query, for promtool")
    args = ap.parse_args()

    if args.dashboard_rules:
        sys.stdout.write(dashboard_rules())
        return 0

    records, rule_exprs = read_rules()
    sources = []
    if not args.dashboards:
        sources += rule_exprs
    if not args.rules:
        sources += [(path, grafana_to_promql(expr)) for path, _, _, _, expr in dashboard_queries()]

    used = {}
    try:
        for path, expr in sources:
            for name in names_in(expr):
                used.setdefault(name, set()).add(os.path.relpath(path, ROOT))
    except Unlistable as e:
        print(f"metric_names.py: {e}", file=sys.stderr)
        return 2

    undefined = sorted(n for n in used if ":" in n and n not in records)
    if undefined:
        print("metric_names.py: recording rules read but not defined: " + ", ".join(undefined),
              file=sys.stderr)
        return 2
    for name in sorted(n for n in used if n not in records):
        if args.where:
            print(f"{name}\t{','.join(sorted(used[name]))}")
        elif args.when:
            print(f"{name}\t{WHEN.get(name, 'unknown: not in the WHEN table of this script')}")
        else:
            print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
