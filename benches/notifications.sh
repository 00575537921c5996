#!/usr/bin/env bash
# The notification service's three measurements (issue: notification service), on release
# builds, each next to a baseline taken in the same run:
#
#   - event committed → WebSocket frame, p50/p99, with 1 000 connected clients through the
#     gateway (the real `gateway` binary on config/platform.toml, ports moved), against the
#     same clients connected to the service directly;
#   - memory per idle WebSocket with 5 000 of them (RSS delta / connections), gateway and
#     service together, split into the two shares, next to a bare Pingora proxy;
#   - email queue throughput (SQLite) to a local SMTP sink (aiosmtpd), against lettre
#     sending the same messages to the same sink.
#
#   bash benches/notifications.sh [-- notify_bench arguments, e.g. --run latency --rate 50]
#
# Needs python3 with aiosmtpd (pip install aiosmtpd==1.4.6) for the email part, and an open
# file limit above 2 × 5 000 (ulimit -n). The machine is shared: run it a few times and take
# medians; the ratios move less than the absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--" ] && shift
need=12000
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $need ]; then
  ulimit -n $need 2>/dev/null || { echo "open files: ulimit -n is $(ulimit -n), needs $need"; exit 1; }
fi
cargo build --release -q -p gateway-bin --bin gateway
cargo build --release -q --example bare_pingora
cargo build --release -q -p notification-service --example notify_bench
exec target/release/examples/notify_bench "$@"
