#!/usr/bin/env bash
# The customer-service scenario on a cluster of three nodes: `dongdong bot cs`
# with customers and agents spread over the nodes, against the Redis and
# MongoDB given in REDIS_URL and MONGO_URL. Prints one line per run: sessions
# served per second and the assignment wait (p50, p99). The nodes, the bot
# and the databases share this machine's cores.
#
#   REDIS_URL=redis://127.0.0.1:6379 MONGO_URL=mongodb://127.0.0.1:27017 \
#     RUNS=3 SECS=20 scripts/cs-cluster.sh
#
# BIN picks the dongdong binary (default: target/release/dongdong, built
# first); ARRIVALS, AGENTS, CAPACITY set the load.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REDIS_URL:?set REDIS_URL}" "${MONGO_URL:?set MONGO_URL}"
RUNS=${RUNS:-1} SECS=${SECS:-20} ARRIVALS=${ARRIVALS:-50} AGENTS=${AGENTS:-50} CAPACITY=${CAPACITY:-5}
if [ -z "${BIN:-}" ]; then
  cargo build -q --release -p dongdong
  BIN=target/release/dongdong
fi
secret=cs-cluster-secret-0123456789abcdef
export DONGDONG_AUTH__SECRET=$secret DONGDONG_LIMITS__RATE_PER_SEC=100000 DONGDONG_LIMITS__RATE_BURST=100000 DONGDONG_LIMITS__USER_FRAMES_PER_SEC=0 DONGDONG_LIMITS__USER_SENDS_PER_SEC=0 \
  DONGDONG_STORAGE__BACKEND=cluster DONGDONG_STORAGE__REDIS_URL=$REDIS_URL DONGDONG_STORAGE__MONGO_URL=$MONGO_URL \
  DONGDONG_STORAGE__MONGO_DATABASE=cscluster_$(date +%s) DONGDONG_LOG__FILTER=warn
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
urls=""
for i in 1 2 3; do
  ws=$((7830 + 2 * i)) http=$((7831 + 2 * i))
  DONGDONG_STORAGE__NODE_ID=cs-$i "$BIN" serve --data "$work/$i" --listen 127.0.0.1:$ws --http 127.0.0.1:$http \
    >/dev/null 2>"$work/$i.log" &
  urls="$urls${urls:+,}ws://127.0.0.1:$ws/ws"
done
for i in 1 2 3; do
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$((7830 + 2 * i))") 2>/dev/null && break; sleep 0.05; done
done
for run in $(seq "$RUNS"); do
  "$BIN" bot cs --api http://127.0.0.1:7833 --url "$urls" --secret "$secret" --arrivals "$ARRIVALS" \
    --agents "$AGENTS" --capacity "$CAPACITY" --messages 3 --think 200ms --duration "${SECS}s" --json |
    RUN=$run python3 -c '
import json, os, sys
r = json.load(sys.stdin)
f = r["figures"]
w = f.get("assign_wait_ms") or {}
print("run %s: %s sessions/s, assignment wait p50 %s ms p99 %s ms, %s customers, %s served and rated, clean %s" % (
    os.environ["RUN"], f.get("sessions_per_s"), w.get("p50"), w.get("p99"), f.get("customers"),
    f.get("served_and_rated", 0), r["clean"]))'
done
# What one cs command costs in Redis (the Lua script, as node 1 saw it).
curl -s http://127.0.0.1:7833/metrics | python3 -c '
import re, sys
b = {}
for line in sys.stdin:
    m = re.match(r"dongdong_storage_call_seconds_(bucket|sum|count)\{(.*)\} (\S+)", line)
    if not m or "op=\"cs\"" not in m.group(2) or "system=\"redis\"" not in m.group(2):
        continue
    kind, labels, v = m.groups()
    if kind == "bucket":
        b[float(re.search(r"le=\"([^\"]+)\"", labels).group(1).replace("+Inf", "inf"))] = float(v)
    else:
        b[kind] = float(v)
n = b.get("count", 0)
if n:
    def q(p):
        return next(le for le, c in sorted((k, v) for k, v in b.items() if isinstance(k, float)) if c >= p * n)
    print("node 1: %d cs scripts, mean %.2f ms, p50 <= %g ms, p99 <= %g ms" % (n, b["sum"] / n * 1000, q(0.5) * 1000, q(0.99) * 1000))'
