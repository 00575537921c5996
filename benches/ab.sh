#!/usr/bin/env bash
# CPU per request of two or more proxies, compared in turn, in the layout of
# ../shared/bench/peers.sh: the upstream (nginx answering 200) and wrk share CPU0, the proxy under
# test runs alone on CPU1. On a shared machine one run of each says little (other tenants move
# the figures by ±15 %), so the proxies run in alternating order (ABBA…) for ROUNDS rounds and
# each round's ratio to the first proxy is taken from runs minutes apart at most; the medians
# of those ratios come last.
#
#   cargo build --release --example serve --example bare_pingora
#   RUST_LOG=warn bash benches/ab.sh [-d SECONDS] [-c CONNECTIONS] [-r ROUNDS] -- \
#     'target/release/examples/bare_pingora h2c timeouts' \
#     'target/release/examples/serve benches/peers.toml'
#
# Each quoted argument is one proxy's command line; it must listen on 127.0.0.1:18085 and forward
# to 127.0.0.1:18081 with one worker thread. Per run it prints requests/s and the proxy's CPU
# time per request in µs, in all and split into user and kernel time (from /proc: utime, stime),
# so a difference can be told apart as the proxy's own work or the system calls both make.
set -u
cd "$(dirname "$0")/.."
D=8; C=32; R=6
while getopts "d:c:r:" o; do case $o in d) D=$OPTARG;; c) C=$OPTARG;; r) R=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1)); [ "${1:-}" = "--" ] && shift
[ $# -ge 2 ] || { echo "usage: $0 [-d S] [-c C] [-r R] -- 'PROXY A' 'PROXY B' [...]"; exit 2; }
for t in nginx wrk curl ss taskset; do command -v $t >/dev/null || { echo "needs $t"; exit 1; }; done
W=$(mktemp -d); UP=18081; GW=18085; HZ=$(getconf CLK_TCK); P_UP=""
trap 'kill $P_UP 2>/dev/null; rm -rf $W' EXIT
listening() { ss -Hltn "sport = :$1" | grep -q .; }
cat > $W/up.conf <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
CONF
if listening $UP; then echo "(using the upstream already listening on $UP)"; else
  taskset -c 0 nginx -c $W/up.conf & P_UP=$!; fi
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:$UP/ 2>/dev/null && break; sleep 0.1; done

stat_of() { awk '{print $14, $15}' /proc/$1/stat 2>/dev/null || echo "0 0"; }
run() { # INDEX COMMAND: one measured run; appends "index rps total user sys" to $W/results
  local pid u0 s0 u1 s1 out reqs rps
  for _ in $(seq 600); do listening $GW || break; sleep 0.1; done
  listening $GW && { echo "port $GW stays taken: stop what listens there"; exit 1; }
  # shellcheck disable=SC2086 # a command line, split on purpose
  taskset -c 1 $2 >$W/proxy.log 2>&1 & pid=$!
  for _ in $(seq 100); do curl -fsS -o /dev/null http://127.0.0.1:$GW/ 2>/dev/null && break; sleep 0.1; done
  kill -0 $pid 2>/dev/null || { echo "proxy $1 did not start: $2"; cat $W/proxy.log; exit 1; }
  taskset -c 0 wrk -t1 -c$C -d2s http://127.0.0.1:$GW/ >/dev/null 2>&1
  read -r u0 s0 < <(stat_of $pid)
  out=$(taskset -c 0 wrk -t1 -c$C -d${D}s http://127.0.0.1:$GW/ 2>&1)
  read -r u1 s1 < <(stat_of $pid)
  kill -INT $pid 2>/dev/null; sleep 1; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  reqs=$(echo "$out" | awk '/requests in/{print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  if [ "${reqs:-0}" -eq 0 ] || echo "$out" | grep -qE 'Non-2xx|Socket errors'; then
    echo "proxy $1 failed requests:"; echo "$out"; exit 1
  fi
  awk -v i=$1 -v rps=$rps -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz=$HZ -v r=$reqs 'BEGIN{
    k = 1e6 / hz / r; printf "%d %s %.2f %.2f %.2f\n", i, rps, (u + s) * k, u * k, s * k }' \
    | tee -a $W/results | awk -v c="$2" '{printf "  %-58s rps=%-9s cpu_us=%-6s user=%-6s sys=%s\n", c, $2, $3, $4, $5}'
}
N=$#
for round in $(seq "$R"); do
  echo "round $round/$R"
  if [ $((round % 2)) = 1 ]; then order=$(seq 1 $N); else order=$(seq $N -1 1); fi
  for i in $order; do run $i "${!i}"; done
done
median() { sort -g | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
col() { awk -v i=$1 -v f=$2 '$1==i{print $f}' $W/results; }
echo "medians over $R rounds (ratio: the median of each round's ratio to the first proxy):"
for i in $(seq 1 $N); do
  ratio=$(paste <(col 1 3) <(col $i 3) | awk '{printf "%.3f\n", $2 / $1}' | median)
  uratio=$(paste <(col 1 4) <(col $i 4) | awk '{printf "%.3f\n", $2 / $1}' | median)
  printf "  %-58s rps=%-9s cpu_us=%-6s user=%-6s sys=%-6s ratio=%s (user %s)\n" "${!i}" \
    "$(col $i 2 | median)" "$(col $i 3 | median)" "$(col $i 4 | median)" "$(col $i 5 | median)" \
    "$ratio" "$uratio"
done
