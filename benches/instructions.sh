#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind (callgrind): a figure that does not move
# with the machine's load, unlike the CPU time of ../shared/bench/peers.sh.
#
#   cargo build --release -p gateway-bin --example bare_pingora
#   bash benches/instructions.sh [-n REQUESTS] [-H 'Name: value']... -- COMMAND [ARGS...]
#
# COMMAND is a proxy listening on 127.0.0.1:18085 in front of the upstream at 127.0.0.1:18081
# (the peers.sh layout; nginx answering 200). It runs under callgrind twice: once serving N
# keep-alive requests from one curl, once serving 2N. The difference of the two totals over N
# is the cost of one request with start-up, warm-up and shutdown cancelled out; the script
# prints it in instructions per request. Examples:
#
#   bash benches/instructions.sh -- target/release/examples/bare_pingora
#   bash benches/instructions.sh -- target/release/gateway run --config benches/peers.toml
set -u
cd "$(dirname "$0")/.."
N=2000; HEADERS=()
while getopts "n:H:" o; do case $o in n) N=$OPTARG;; H) HEADERS+=(-H "$OPTARG");; *) exit 2;; esac; done
shift $((OPTIND - 1)); [ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 [-n N] [-H 'k: v']... -- COMMAND [ARGS...]"; exit 2; }
for t in valgrind nginx curl ss; do command -v $t >/dev/null || { echo "needs $t"; exit 1; }; done
W=$(mktemp -d); UP=18081; GW=18085; P_UP=""
trap 'kill $P_UP 2>/dev/null; rm -rf $W' EXIT
listening() { ss -Hltn "sport = :$1" | grep -q .; }
if ! listening $UP; then
  cat > $W/up.conf <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
CONF
  nginx -c $W/up.conf & P_UP=$!
  for _ in $(seq 50); do listening $UP && break; sleep 0.1; done
fi
listening $GW && { echo "port $GW is taken: stop what listens there first"; exit 1; }

total_of() { # REQUESTS COMMAND...: instructions of the whole proxy process serving them
  local n=$1; shift
  local out=$W/cg pid
  valgrind --tool=callgrind --callgrind-out-file=$out.%p "$@" >/dev/null 2>$W/vg.log &
  pid=$!
  for _ in $(seq 300); do listening $GW && break; sleep 0.1; done
  listening $GW || { echo "the proxy did not listen on $GW:" >&2; cat $W/vg.log >&2; exit 1; }
  for _ in $(seq "$n"); do printf 'url = "http://127.0.0.1:%s/"\noutput = /dev/null\n' $GW; done > $W/urls
  curl -sS --fail -K $W/urls "${HEADERS[@]}" || { echo "a request failed" >&2; exit 1; }
  kill -INT $pid
  for _ in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  for _ in $(seq 50); do listening $GW || break; sleep 0.1; done
  awk '/^summary:/{s+=$2} END{print s}' $out.*
  rm -f $out.*
}
a=$(total_of "$N" "$@") || exit 1
b=$(total_of $((2 * N)) "$@") || exit 1
echo "instructions/request: $(( (b - a) / N ))  (N=$N: $a, 2N: $b)"
