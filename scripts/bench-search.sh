#!/usr/bin/env bash
# Message search on the embedded backend, measured (docs/performance.md,
# "Search"): the send path with search on and off (the same build,
# `search.enabled`), at a fixed 5,000 msg/s and at full load, with mixed
# Chinese/English texts (`--text mixed`); the index lag of every message
# (from the server's dongdong_search_index_lag_seconds); then queries over
# a corpus of BENCH_SEARCH_MESSAGES (default 1,000,000) messages: first
# page round trips for one user's conversations and tenant-wide, recall
# against a scan, the index's size per message and the server's memory.
#
#   scripts/bench-search.sh            # prints a summary; JSON reports in $WORK
#
# The bots and the server share this machine's cores; say so with every
# figure. Each run gets a freshly started server with an empty data directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${BENCH_SECONDS:-20}
messages=${BENCH_SEARCH_MESSAGES:-1000000}
me=bench-search.sh
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

echo "$me: building (release)" >&2
cargo build --release -q -p dongdong
dd="$root/target/release/dongdong"
work=${WORK:-$(mktemp -d /tmp/dongdong-bench-search.XXXXXX)}
mkdir -p "$work"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=""
}
trap stop_server EXIT
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

start_server() { # search.enabled
  stop_server
  rm -rf "$work/data"
  sync
  ws_port=$(free_port)
  http_port=$(free_port)
  DONGDONG_AUTH__SECRET=$secret DONGDONG_SEARCH__ENABLED=$1 \
    DONGDONG_LIMITS__RATE_PER_SEC=1000000 DONGDONG_LIMITS__RATE_BURST=1000000 DONGDONG_LIMITS__USER_FRAMES_PER_SEC=0 DONGDONG_LIMITS__USER_SENDS_PER_SEC=0 \
    DONGDONG_LOG__FILTER=warn \
    "$dd" serve --data "$work/data" --listen "127.0.0.1:$ws_port" --http "127.0.0.1:$http_port" >"$work/dongdong.log" 2>&1 &
  server_pid=$!
  wait_port "$ws_port" dongdong
}

bot() { # name, scenario and its options
  local name=$1
  shift
  echo "$me: $name" >&2
  "$dd" bot "$@" --url "ws://127.0.0.1:$ws_port/ws" --secret "$secret" --server-pid "$server_pid" --json >"$work/$name.json" \
    || { echo "$me: $name failed (see $work/$name.json)" >&2; }
}

# The share of messages searchable within each bucket, and the p99 bound.
lag() {
  curl -s "http://127.0.0.1:$http_port/metrics" >"$work/metrics.txt"
  python3 - "$work/metrics.txt" <<'EOF'
import sys
b = {}
for line in open(sys.argv[1]):
    if line.startswith("dongdong_search_index_lag_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        b[le] = float(line.rsplit(" ", 1)[1])
total = b.get("+Inf", 0)
if not total:
    print("no index lag recorded")
    sys.exit()
bounds = sorted((float(k), v) for k, v in b.items() if k != "+Inf")
p50 = next((le for le, n in bounds if n >= 0.5 * total), "+Inf")
p99 = next((le for le, n in bounds if n >= 0.99 * total), "+Inf")
share = lambda k: b.get(k, b.get(k + '.0', 0)) / total
print(f"{int(total)} messages; searchable within 0.1 s {share('0.1'):.1%}, 0.25 s {share('0.25'):.1%}, "
      f"0.5 s {share('0.5'):.1%}, 1 s {share('1'):.1%}; p50 <= {p50} s, p99 <= {p99} s")
EOF
}

# Heap and other anonymous memory apart from mapped files (the index's
# segments are memory-mapped: page cache the kernel may drop, counted in RSS).
mem() { awk '/^(RssAnon|RssFile)/ {printf "%s %s %s  ", $1, $2, $3}' "/proc/$server_pid/status"; }

summary() { # name
  python3 - "$work/$1.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("latency_ms") or {}
srv = r.get("server") or {}
print(f"  {r['scenario']}: {r['delivered_per_sec']:.0f}/s, p50 {lat.get('p50')} p99 {lat.get('p99')} ms, "
      f"server CPU {srv.get('cpu_percent_avg', 0):.0f}% of one core, RSS {srv.get('rss_end_kib')} KiB, clean {r['clean']}")
for k, v in (r.get("figures") or {}).items():
    print(f"    {k}: {v}")
EOF
}

for enabled in true false; do
  start_server "$enabled"
  bot "rate-$enabled" pairs --pairs 100 --rate 50 --text mixed --duration "${seconds}s" --warmup 2s
  echo "search.enabled=$enabled, 100 senders x 50 msg/s, mixed text:"
  summary "rate-$enabled"
  [ "$enabled" = true ] && echo "  index lag: $(lag)"
  echo "  server memory: $(mem)"
  start_server "$enabled"
  bot "pairs-$enabled" pairs --pairs 100 --window 10 --text mixed --duration "${seconds}s" --warmup 2s
  echo "search.enabled=$enabled, 100 pairs, window 10, mixed text:"
  summary "pairs-$enabled"
  [ "$enabled" = true ] && echo "  index lag: $(lag)"
  echo "  server memory: $(mem)"
done

start_server true
bot corpus search --users 1000 --messages "$messages" --queries 500 --window 20
echo "search over $messages messages (1,000 users, their conversations; tenant-wide by an admin):"
summary corpus
echo "  index lag: $(lag)"
echo "  index on disk: $(du -sb "$work/data/search" | cut -f1) bytes = $(( $(du -sb "$work/data/search" | cut -f1) / messages )) bytes/message"
echo "  server memory: $(mem)"
