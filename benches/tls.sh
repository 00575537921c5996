#!/usr/bin/env bash
# CPU per request of TLS-terminating proxies, in the layout of benches/ab.sh: the upstream
# (nginx answering 200 over plain HTTP) and the clients share CPU0, the proxy under test runs
# alone on CPU1, with the example certificate of config/examples/certs (P-256). Three loads:
#
#   keepalive  wrk, C connections kept alive: the cost of a request over an open TLS session
#   full       wrk with "Connection: close": a full handshake (TLS 1.3, ECDHE + ECDSA) per request
#   resumed    examples/tls_load: a new connection per request, resuming the last session (a
#              TLS 1.3 PSK with ECDHE); it prints how many handshakes resumed, which must be
#              nearly all of them (wrk never resumes, and `openssl s_time -reuse` closes
#              without close_notify and then gets no resumption from rustls). Use few
#              connections (-c 4: 99.9 % resumed): at -c 32 only about half resume against
#              either rustls proxy, whose sessions live in rustls's 256-entry stateful cache
#              (Pingora's TlsSettings sets no ticketer) and are used up faster than clients
#              return; nginx's stateless tickets resume 99 %.
#
# Each load runs for every proxy in alternating order (ABBA…) for ROUNDS rounds; the medians of
# CPU µs per request (or per connection) and of each round's ratio to the first proxy come last.
#
#   cargo build --release -p gateway-bin --bin gateway -p gatehouse --example bare_pingora --example tls_load
#   RUST_LOG=warn bash benches/tls.sh [-d SECONDS] [-r ROUNDS] -- \
#     'env BARE_CERT=config/examples/certs/shop.pem BARE_KEY=config/examples/certs/shop.key target/release/examples/bare_pingora tls timeouts' \
#     'target/release/gateway run --config benches/peers-tls.toml' \
#     nginx
#
# The word `nginx` stands for nginx 1 worker terminating TLS with the same certificate and
# proxying to the upstream over kept-alive connections.
set -u
cd "$(dirname "$0")/.."
D=6; C=32; R=3
while getopts "d:c:r:" o; do case $o in d) D=$OPTARG;; c) C=$OPTARG;; r) R=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1)); [ "${1:-}" = "--" ] && shift
[ $# -ge 2 ] || { echo "usage: $0 [-d S] [-c C] [-r R] -- 'PROXY A' 'PROXY B' [...]"; exit 2; }
[ -x target/release/examples/tls_load ] || { echo "build target/release/examples/tls_load first"; exit 1; }
for t in nginx wrk curl ss taskset; do command -v $t >/dev/null || { echo "needs $t"; exit 1; }; done
W=$(mktemp -d); UP=18081; GW=18085; HZ=$(getconf CLK_TCK); P_UP=""
CERT=$PWD/config/examples/certs/shop.pem; KEY=$PWD/config/examples/certs/shop.key
trap 'kill $P_UP 2>/dev/null; rm -rf $W' EXIT
listening() { ss -Hltn "sport = :$1" | grep -q .; }
cat > $W/up.conf <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
CONF
cat > $W/nginx-tls.conf <<CONF
worker_processes 1; daemon off; pid $W/tls.pid; error_log $W/tls.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$GW ssl http2; ssl_certificate $CERT; ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
if listening $UP; then echo "(using the upstream already listening on $UP)"; else
  taskset -c 0 nginx -c $W/up.conf & P_UP=$!; fi
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:$UP/ 2>/dev/null && break; sleep 0.1; done

stat_of() { # CPU ticks of a process and its children (nginx's worker)
  local t=0 p; for p in $1 $(pgrep -P $1); do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
command_of() { if [ "$1" = nginx ]; then echo "nginx -c $W/nginx-tls.conf"; else echo "$1"; fi; }
measure() { # MODE: runs the load, prints "ops"
  case $1 in
    keepalive) taskset -c 0 wrk -t1 -c$C -d${D}s https://127.0.0.1:$GW/ 2>&1 | awk '/requests in/{print $1}' ;;
    full) taskset -c 0 wrk -t1 -c$C -d${D}s -H 'Connection: close' https://127.0.0.1:$GW/ 2>&1 | awk '/requests in/{print $1}' ;;
    resumed) taskset -c 0 target/release/examples/tls_load 127.0.0.1:$GW $D $C resumed \
      config/examples/certs/example-ca.pem shop.example | tee -a $W/resumptions | sed 's/requests=\([0-9]*\).*/\1/' ;;
  esac
}
run() { # MODE INDEX COMMAND
  local pid c0 c1 ops cmd
  cmd=$(command_of "$3")
  for _ in $(seq 600); do listening $GW || break; sleep 0.1; done
  listening $GW && { echo "port $GW stays taken: stop what listens there"; exit 1; }
  # shellcheck disable=SC2086 # a command line, split on purpose
  taskset -c 1 $cmd >$W/proxy.log 2>&1 & pid=$!
  for _ in $(seq 100); do curl -fsSk -o /dev/null https://127.0.0.1:$GW/ 2>/dev/null && break; sleep 0.1; done
  kill -0 $pid 2>/dev/null || { echo "proxy $2 did not start: $cmd"; cat $W/proxy.log; exit 1; }
  measure "$1" >/dev/null
  c0=$(stat_of $pid); ops=$(measure "$1"); c1=$(stat_of $pid)
  kill -INT $pid 2>/dev/null; sleep 1; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  [ "${ops:-0}" -gt 0 ] || { echo "proxy $2 served nothing in $1"; cat $W/proxy.log; exit 1; }
  awk -v m=$1 -v i=$2 -v ops=$ops -v c=$((c1 - c0)) -v hz=$HZ -v d=$D 'BEGIN{
    printf "%s %d %.0f %.2f\n", m, i, ops / d, c * 1e6 / hz / ops }' \
    | tee -a $W/results | awk -v c="$3" '{printf "  %-9s %-70s ops/s=%-8s cpu_us=%s\n", $1, substr(c, 1, 70), $3, $4}'
}
N=$#
for mode in keepalive full resumed; do
  for round in $(seq "$R"); do
    if [ $((round % 2)) = 1 ]; then order=$(seq 1 $N); else order=$(seq $N -1 1); fi
    for i in $order; do run $mode $i "${!i}"; done
  done
done
median() { sort -g | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
col() { awk -v m=$1 -v i=$2 -v f=$3 '$1==m && $2==i{print $f}' $W/results; }
echo "medians over $R rounds (ratio: the median of each round's ratio to the first proxy):"
for mode in keepalive full resumed; do
  for i in $(seq 1 $N); do
    ratio=$(paste <(col $mode 1 4) <(col $mode $i 4) | awk '{printf "%.3f\n", $2 / $1}' | median)
    printf "  %-9s %-70s ops/s=%-8s cpu_us=%-7s ratio=%s\n" $mode "$(echo "${!i}" | cut -c1-70)" \
      "$(col $mode $i 3 | median)" "$(col $mode $i 4 | median)" "$ratio"
  done
done
echo "resumed loads (requests, resumed handshakes, failures): $(tr '\n' ' ' < $W/resumptions)"
