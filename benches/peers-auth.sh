#!/usr/bin/env bash
# What the auth chain costs through the real binary: the gateway in pass-through
# (benches/peers.toml) against jwt + rate_limit on its route (benches/peers-jwt-{hs256,eddsa}.toml),
# with wrk sending `Authorization: Bearer <token>` on every request to all of them.
#
#   cargo build --release -p gateway-bin
#   RUST_LOG=warn bash benches/peers-auth.sh [-d SECONDS] [-c CONNECTIONS] [-r ROUNDS] [-b BINARY]
#
# The layout and the figures are those of ../shared/bench/peers.sh, which cannot send a header:
# the upstream (nginx answering 200) and wrk share CPU0, the gateway runs alone on CPU1 with one
# thread; per run it prints requests/s and the gateway's CPU time per request (µs, utime+stime
# of the process from /proc over the measured run). The configs run in turn, ROUNDS times, and
# the medians come last. Tokens are minted here with openssl (HS256 with the config's secret,
# EdDSA with the test fixture key), valid for a day; any non-2xx answer is printed.
set -u
cd "$(dirname "$0")/.."
D=8; C=32; R=3; BIN=${CARGO_TARGET_DIR:-target}/release/gateway
while getopts "d:c:r:b:" o; do case $o in d) D=$OPTARG;; c) C=$OPTARG;; r) R=$OPTARG;; b) BIN=$OPTARG;; *) exit 2;; esac; done
for t in nginx wrk openssl curl ss; do command -v $t >/dev/null || { echo "needs $t"; exit 1; }; done
[ -x "$BIN" ] || { echo "no gateway binary at $BIN (cargo build --release -p gateway-bin)"; exit 1; }
W=$(mktemp -d); UP=18081; GW=18085; ADMIN=18086; HZ=$(getconf CLK_TCK); P_UP=""
trap 'kill $P_UP 2>/dev/null; rm -rf $W' EXIT

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
mint() { # ALG: a token for the benches' issuer and audience, subject bench-user
  local now h p
  now=$(date +%s)
  h=$(printf '{"alg":"%s","typ":"JWT"}' "$1" | b64url)
  p=$(printf '{"sub":"bench-user","iss":"gatehouse","aud":"gatehouse-api","iat":%d,"exp":%d}' \
    "$now" $((now + 86400)) | b64url)
  printf '%s.%s' "$h" "$p" > $W/signing-input
  case $1 in
    HS256) secret=$(sed -n 's/^secret = "\(.*\)"$/\1/p' benches/peers-jwt-hs256.toml)
           s=$(openssl dgst -sha256 -hmac "$secret" -binary < $W/signing-input | b64url) ;;
    EdDSA) s=$(openssl pkeyutl -sign -rawin -inkey tests/fixtures/jwt/ed25519.key.pem \
             -in $W/signing-input | b64url) ;;
  esac
  echo "$h.$p.$s"
}
HS=$(mint HS256); ED=$(mint EdDSA)

cat > $W/up.conf <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
CONF
listening() { ss -Hltn "sport = :$1" | grep -q .; }
# Another bench on this machine may hold the upstream's port with the same nginx: use it then.
if listening $UP; then echo "(using the upstream already listening on $UP)"; else
  taskset -c 0 nginx -c $W/up.conf & P_UP=$!; fi
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:$UP/ 2>/dev/null && break; sleep 0.1; done

ticks() { awk '{print $14+$15}' /proc/$1/stat 2>/dev/null || echo 0; }
run() { # label config token
  local auth="Authorization: Bearer $3" gw c0 c1 out reqs rps cpu bad wp foreign=0
  # Never measure another bench's proxy: wait for the port, then make sure ours holds it.
  for _ in $(seq 600); do listening $GW || break; sleep 0.1; done
  taskset -c 1 "$BIN" run --config "$2" >$W/gw.log 2>&1 & gw=$!
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" http://127.0.0.1:$GW/)" = 200 ] && break
    sleep 0.1
  done
  if ! kill -0 $gw 2>/dev/null; then echo "$1: the gateway did not start:"; cat $W/gw.log; exit 1; fi
  taskset -c 0 wrk -t1 -c$C -d2s -H "$auth" http://127.0.0.1:$GW/ >/dev/null 2>&1
  c0=$(ticks $gw)
  taskset -c 0 wrk -t1 -c$C -d${D}s --latency -H "$auth" http://127.0.0.1:$GW/ >$W/wrk.out 2>&1 & wp=$!
  # A client other than our wrk on the gateway's port (another bench on a shared machine)
  # spoils the run: its requests cost CPU that ours are charged with.
  while kill -0 $wp 2>/dev/null; do
    taskset -c 0 ss -Htnp state established "dport = :$GW" | grep 'pid=' | grep -qv "pid=$wp," && foreign=1
    sleep 1
  done
  wait $wp; c1=$(ticks $gw); out=$(cat $W/wrk.out)
  # Refusals the gateway counted (none expected from our wrk: the limit is far above its rate).
  bad=$(curl -s http://127.0.0.1:$ADMIN/metrics 2>/dev/null | awk '/decision="respond"/{s+=$NF} END{print s+0}')
  kill -INT $gw 2>/dev/null; sleep 1; kill -9 $gw 2>/dev/null; wait $gw 2>/dev/null
  reqs=$(echo "$out" | awk '/requests in/{print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  cpu=$(awk -v d=$((c1 - c0)) -v hz=$HZ -v r=${reqs:-0} 'BEGIN{if (r > 0) printf "%.1f", d*1e6/hz/r; else print "-"}')
  local spoiled=""
  if [ "$foreign" = 1 ] || [ "$bad" != 0 ]; then spoiled="SPOILED(other client; left out of the medians)"
  elif echo "$out" | grep -q Non-2xx; then spoiled="SPOILED(errors; left out of the medians)"; fi
  printf "%-14s rps=%-10s cpu_us_per_req=%-6s p99=%-8s refused=%s %s%s\n" "$1" "${rps:-0}" "$cpu" \
    "$(echo "$out" | awk '$1=="99%"{print $2}')" "$bad" \
    "$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr '\n' ' ')" "$spoiled" | tee -a $W/results
}
for i in $(seq "$R"); do
  echo "round $i/$R"
  run pass-through benches/peers.toml "$HS"
  run jwt-hs256+rl benches/peers-jwt-hs256.toml "$HS"
  run jwt-eddsa+rl benches/peers-jwt-eddsa.toml "$ED"
done
median() { sort -g | awk '{v[NR]=$1} END{if (!NR) print "-"; else print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
echo "medians over the clean runs of $R rounds:"
for label in pass-through jwt-hs256+rl jwt-eddsa+rl; do
  clean() { awk -v l=$label -v f=$1 '$1==l && !/SPOILED/{split($f, kv, "="); print kv[2]}' $W/results; }
  printf "%-14s runs=%s rps=%-10s cpu_us_per_req=%s\n" $label "$(clean 2 | wc -l)" \
    "$(clean 2 | median)" "$(clean 3 | median)"
done
