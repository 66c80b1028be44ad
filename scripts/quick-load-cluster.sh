#!/usr/bin/env bash
# Quick load check of the cluster backend: 1 node, then 2 nodes, in one run,
# against the Redis and MongoDB given in REDIS_URL and MONGO_URL. With two
# nodes every pair's sender and receiver are on different nodes. The server
# processes, the load generator and the databases share this machine's cores.
#
#   REDIS_URL=redis://127.0.0.1:6379 MONGO_URL=mongodb://127.0.0.1:27017 \
#     PAIRS=50 WINDOW=4 SECS=10 scripts/quick-load-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REDIS_URL:?set REDIS_URL}" "${MONGO_URL:?set MONGO_URL}"
PAIRS=${PAIRS:-50} WINDOW=${WINDOW:-4} SECS=${SECS:-10}
cargo build -q --release -p dongdong
bin=target/release
secret=quick-load-secret-0123456789
export DONGDONG_AUTH__SECRET=$secret DONGDONG_LIMITS__RATE_PER_SEC=100000 DONGDONG_LIMITS__RATE_BURST=100000 DONGDONG_LIMITS__USER_FRAMES_PER_SEC=0 DONGDONG_LIMITS__USER_SENDS_PER_SEC=0 \
  DONGDONG_STORAGE__BACKEND=cluster DONGDONG_STORAGE__REDIS_URL=$REDIS_URL DONGDONG_STORAGE__MONGO_URL=$MONGO_URL \
  DONGDONG_STORAGE__MONGO_DATABASE=quickload_$(date +%s) RUST_LOG=warn
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
DONGDONG_STORAGE__NODE_ID=ql-a $bin/dongdong serve --data "$work/a" --listen 127.0.0.1:7810 --http 127.0.0.1:7811 >/dev/null 2>"$work/a.log" &
DONGDONG_STORAGE__NODE_ID=ql-b $bin/dongdong serve --data "$work/b" --listen 127.0.0.1:7820 --http 127.0.0.1:7821 >/dev/null 2>"$work/b.log" &
for port in 7810 7820; do
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
bot() { $bin/dongdong bot pairs --secret "$secret" --pairs "$PAIRS" --window "$WINDOW" --duration "${SECS}s" "$@"; }
bot --url ws://127.0.0.1:7810/ws
bot --url ws://127.0.0.1:7810/ws,ws://127.0.0.1:7820/ws
