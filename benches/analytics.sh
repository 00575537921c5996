#!/usr/bin/env bash
# The analytics service's measurements (issue: analytics service), on release builds:
#
#   - sustained ingest over HTTP, batches of 100, rollups kept current, on SQLite and (with
#     TEST_DATABASE_URL) PostgreSQL, next to a plain write of the same batches to the same
#     database (parse + insert raw rows only) measured in the same run;
#   - report latency (p50/p95 over HTTP) for a day of minute buckets and for 90 days of day
#     buckets over 1 000 000 raw events.
#
#   bash benches/analytics.sh [-- analytics_bench arguments, e.g. --run ingest --seconds 20]
#
# The machine is shared: run it a few times and take medians.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--" ] && shift
cargo build --release -q -p analytics-service --example analytics_bench
exec target/release/examples/analytics_bench "$@"
