#!/usr/bin/env bash
# What a service's per-request span costs: the product service answering `GET
# /products?limit=1` (the observe middleware, the handler, one SQLite read) under wrk, as
# binaries built before and after a change, and the after binary exporting its spans over
# OTLP/HTTP to a sink that answers 200. Release builds; rounds alternate between the
# variants so the shared machine's drift falls on all of them; medians reported, with CPU
# per request (the service process's user+system time over the requests it answered) as
# the figure that noise moves least.
#
#   bash benches/service_spans.sh [-r ROUNDS] [-d SECONDS] [-c CONNECTIONS] [-x] BEFORE AFTER
#
# BEFORE and AFTER are product-service binaries. -x: AFTER was built with `--features otlp`,
# so also measure it exporting (the `export` variant).
set -euo pipefail

rounds=3 seconds=5 conns=8 export=
while getopts "r:d:c:x" o; do
  case $o in
    x) export=1 ;;
    r) rounds=$OPTARG ;;
    d) seconds=$OPTARG ;;
    c) conns=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || { echo "usage: $0 [-r N] [-d S] [-c C] [-x] BEFORE AFTER" >&2; exit 2; }
before=$1 after=$2
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The OTLP sink: reads each request's body and answers 200, nothing else.
sink_port=$(free_port)
python3 - "$sink_port" <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
pids+=($!)

# start NAME BINARY [ENV...]: serves on a free port; prints "pid port".
start() {
  local name=$1 bin=$2; shift 2
  local port; port=$(free_port)
  mkdir -p "$work/$name"
  env RUST_LOG=warn BIND=127.0.0.1:$port DATA_DIR="$work/$name" "$@" "$bin" \
    >"$work/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && { echo "$pid $port"; return; }
    sleep 0.1
  done
  echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A rps cpu
variants=(before after)
read -r pb portb < <(start before "$before")
read -r pa porta < <(start after "$after")
pids+=("$pb" "$pa")
declare -A pid=([before]=$pb [after]=$pa) port=([before]=$portb [after]=$porta)
if [ -n "$export" ]; then
  read -r pe porte < <(start export "$after" OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port")
  pids+=("$pe")
  pid[export]=$pe port[export]=$porte
  variants+=(export)
fi
hz=$(getconf CLK_TCK)
for r in $(seq "$rounds"); do
  for v in "${variants[@]}"; do
    url="http://127.0.0.1:${port[$v]}/products?limit=1"
    t0=$(cpu_ticks "${pid[$v]}")
    out=$(wrk -t1 -c"$conns" -d"${seconds}s" "$url")
    t1=$(cpu_ticks "${pid[$v]}")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    rps[$v]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
    cpu[$v]+="$(python3 -c "print(round(($t1 - $t0) / $hz / $n * 1e6, 1))") "
    echo "round $r $v: $(awk '/Requests\/sec/ {print $2}' <<<"$out") req/s"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
printf '%-8s %12s %14s %8s\n' variant "req/s" "CPU µs/req" ratio
base=$(median <<<"${cpu[before]}")
for v in "${variants[@]}"; do
  c=$(median <<<"${cpu[$v]}")
  printf '%-8s %12s %14s %8s\n' "$v" "$(median <<<"${rps[$v]}")" "$c" \
    "$(python3 -c "print(f'{$c / $base:.3f}x')")"
done
