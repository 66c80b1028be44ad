#!/usr/bin/env bash
# Soak test of the embedded backend (a benchmark, not part of CI): one
# server, open-loop load from the pairs bot for SOAK_MINUTES, measured in
# chunks of SOAK_CHUNK seconds. After each chunk it prints one row: the
# chunk's delivered msg/s and p50/p99, whether its correctness report was
# clean, and the server's RSS and disk use (redb file and write-ahead log)
# at that moment. Flat RSS, bounded disk and a stable p99 are what to see.
#
#   scripts/soak-load.sh [OUTPUT.md]
#
# Environment: SOAK_MINUTES (default 10), SOAK_CHUNK (seconds, default 30),
# SOAK_PAIRS (default 100), SOAK_RATE (msg/s per sender, default 225: with
# 100 pairs about 80% of the pairs throughput in BENCHMARKS.md), SOAK_SERVER
# (another `dongdong` binary to run as the server; the bot is this tree's).
# The bot and the server share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-/dev/stdout}
minutes=${SOAK_MINUTES:-10}
chunk=${SOAK_CHUNK:-30}
pairs=${SOAK_PAIRS:-100}
rate=${SOAK_RATE:-225}

me=soak-load.sh
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

echo "soak-load.sh: building (release)" >&2
cargo build --release -q -p dongdong
dd="$root/target/release/dongdong"
server_bin=${SOAK_SERVER:-$dd}
work=$(mktemp -d /tmp/dongdong-soak.XXXXXX)
server_pid=""
trap '[ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"' EXIT

secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
ws_port=$(free_port)
http_port=$(free_port)
DONGDONG_AUTH__SECRET=$secret DONGDONG_LIMITS__RATE_PER_SEC=1000000 DONGDONG_LIMITS__RATE_BURST=1000000 DONGDONG_LIMITS__USER_FRAMES_PER_SEC=0 DONGDONG_LIMITS__USER_SENDS_PER_SEC=0 \
  DONGDONG_LOG__FILTER=warn \
  "$server_bin" serve --data "$work/data" --listen "127.0.0.1:$ws_port" --http "127.0.0.1:$http_port" \
  >"$work/server.log" 2>&1 &
server_pid=$!
wait_port "$ws_port" dongdong

{
  echo "Soak: $pairs pairs × $rate msg/s each (open loop, $((pairs * rate)) msg/s offered), ${minutes} min in ${chunk} s chunks; $(nproc) cores shared by server and bot; $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "| minute | delivered msg/s | p50 ms | p99 ms | clean | server RSS MiB | redb MiB | log MiB |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$out"
begin=$SECONDS
end=$((begin + minutes * 60))
while [ "$SECONDS" -lt "$end" ]; do
  "$dd" bot pairs --pairs "$pairs" --rate "$rate" --duration "${chunk}s" --warmup 1s --drain 10s \
    --url "ws://127.0.0.1:$ws_port/ws" --secret "$secret" --json >"$work/chunk.json" 2>/dev/null || true
  rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
  redb=$(du -sk "$work/data/dongdong.redb" | cut -f1)
  log=$(du -sk "$work/data/wal" 2>/dev/null | cut -f1 || echo 0)
  log=${log:-0}
  python3 - "$work/chunk.json" "$((SECONDS - begin))" "$rss_kb" "$redb" "$log" >>"$out" <<'PY'
import json, sys
path, seconds, rss_kb, redb_kb, log_kb = sys.argv[1:6]
try:
    d = json.loads(open(path).read().strip().splitlines()[-1])
    row = [f"{d['delivered_per_sec']:,.0f}", f"{d['latency_ms']['p50']:.2f}", f"{d['latency_ms']['p99']:.2f}",
           "yes" if d["clean"] else "**no**"]
except Exception:
    row = ["—", "—", "—", "no result"]
print(f"| {int(seconds) / 60:.1f} | " + " | ".join(row) +
      f" | {int(rss_kb) / 1024:.0f} | {int(redb_kb) / 1024:.0f} | {int(log_kb) / 1024:.1f} |")
PY
  [ "$out" = /dev/stdout ] || tail -1 "$out" >&2
done
