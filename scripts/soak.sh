#!/usr/bin/env bash
# Soak with faults: mixed load from `dongdong bot` for SOAK_MINUTES while
# faults are injected on a schedule; passes only if every bot's correctness
# report is clean, no server log has a panic, and each server's RSS is flat
# after warm-up. Two profiles:
#
#   scripts/soak.sh cluster       [OUT.md]   3 nodes on a private Redis and secantusdb
#   scripts/soak.sh redis-cluster [OUT.md]   3 nodes on a private Redis Cluster (3
#                                            masters, a replica each) and secantusdb
#   scripts/soak.sh embedded      [OUT.md]   1 node on the embedded backend
#
# Load (both): `bot soak` pairs (one device per receiver) and `bot soak`
# multi-device (3 devices per receiver); every bot reconnects when its
# connection ends, senders resend what was not acknowledged, receivers'
# devices go offline in waves (a share every 30 s, for 5 s) and come back.
# Customer service runs as `bot cs` chunks of SOAK_CS_CHUNK seconds: that
# bot does not reconnect, so a chunk during which a fault hit is reported
# but only the chunks no fault touched must be clean.
#
# Faults, one every SOAK_FAULT_EVERY seconds (default 300; 60 for embedded),
# in turn (cluster): kill -9 of a random node and its restart; Redis killed
# with kill -9 and restarted (from its append-only file, fsync always, as
# docs/storage.md requires); MongoDB stopped (SIGSTOP) for 10 s and resumed; node
# 3's traffic to Redis delayed 200 ms for 20 s (it reaches Redis through
# scripts/redis-delay-proxy.py: no root needed). Embedded: kill -9 of the
# node and its restart. After each fault (for a pause or a delay, after its
# end): the seconds until every node's /healthz answered 200 again; the
# bots' reports give the longest reconnect. Redis Cluster (every Redis with an
# append-only file, fsync always): faults 0 (kill a node) and 4, kill -9 of a
# random master, whose replica is promoted (cluster-node-timeout 2 s); the
# killed process restarts from its files and rejoins as a replica.
#
# Environment: SOAK_FAULTS (the cluster faults in turn, by number: 0 kill
# a node, 1 Redis, 2 MongoDB, 3 delay, 4 a Redis Cluster master; default
# "0 1 2 3", for redis-cluster "4 0"), SOAK_MINUTES (default 60; 5 for a quick run), SOAK_PAIRS
# (default 40), SOAK_RATE (msg/s per sender, default 2), SOAK_MD_PAIRS
# (default 20), SOAK_FAULT_EVERY, SOAK_CS_CHUNK (default 60), SOAK_KEEP=1
# keeps the work directory. The bots and the servers share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
profile=${1:-}
out=${2:-/dev/stdout}
case "$profile" in
  cluster | redis-cluster | embedded) ;;
  *)
    echo "usage: scripts/soak.sh cluster|redis-cluster|embedded [OUT.md]" >&2
    exit 2
    ;;
esac
minutes=${SOAK_MINUTES:-60}
pairs=${SOAK_PAIRS:-40}
rate=${SOAK_RATE:-2}
md_pairs=${SOAK_MD_PAIRS:-20}
cs_chunk=${SOAK_CS_CHUNK:-60}
if [ "$profile" = embedded ]; then fault_every=${SOAK_FAULT_EVERY:-60}; else fault_every=${SOAK_FAULT_EVERY:-300}; fi

me=soak.sh
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

echo "soak.sh: building (release)" >&2
cargo build --release -q -p dongdong
dd="$root/target/release/dongdong"
work=$(mktemp -d /tmp/dongdong-soak.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -f "$work/nodes" ] && while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$work/nodes"
  if [ -n "${SOAK_KEEP:-}" ]; then echo "soak.sh: work directory kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
operator=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
log() { echo "soak.sh: $(date -u +%H:%M:%S) $*" >&2; echo "$(date -u +%s) $*" >>"$work/events"; }

# --- backing services (cluster) ----------------------------------------------
redis_port=""
mongo_port=""
if [ "$profile" != embedded ]; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  venv="$root/.test-services/venv"
  if ! "$venv/bin/python" -c "import secantus" >/dev/null 2>&1; then
    echo "soak.sh: installing secantusdb into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check secantusdb
  fi
fi
if [ "$profile" = redis-cluster ]; then
  REDIS_CLUSTER_ARGS="--appendonly yes --appendfsync always" start_redis_cluster "$work/redis-cluster" 3 1
  pids+=("${redis_cluster_pids[@]}")
  # Restarts the cluster node on PORT from its files (it rejoins as a replica).
  restart_cluster_node() {
    local port=$1
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$work/redis-cluster/$port/nodes.conf" --cluster-node-timeout 2000 \
      --save "" --appendonly yes --appendfsync always --dir "$work/redis-cluster/$port" \
      --logfile "$work/redis-cluster/$port/redis.log" &
    pids+=("$!")
    wait_port "$port" "redis-server (cluster node)"
  }
fi
if [ "$profile" != embedded ]; then
  mongo_port=$(free_port)
  "$venv/bin/python" -m secantus --port "$mongo_port" --storage-path "$work/mongo" >"$work/secantus.log" 2>&1 &
  mongo_pid=$!
  pids+=("$mongo_pid")
  wait_port "$mongo_port" secantusdb
fi
if [ "$profile" = cluster ]; then
  redis_port=$(free_port)
  start_redis() {
    # Persistent as docs/storage.md requires: pending ids are the delivery
    # guarantee. A restart reloads the append-only file.
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always --dir "$work" \
      --logfile "$work/redis.log" &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_port "$redis_port" redis-server
  }
  start_redis
  proxy_port=$(free_port)
  python3 "$root/scripts/redis-delay-proxy.py" "$proxy_port" "$redis_port" "$work/delay" &
  pids+=("$!")
  wait_port "$proxy_port" redis-delay-proxy
fi

# --- nodes -------------------------------------------------------------------
if [ "$profile" = embedded ]; then n=1; else n=3; fi
ws_ports=()
http_ports=()
for i in $(seq 1 "$n"); do
  ws_ports+=("$(free_port)")
  http_ports+=("$(free_port)")
done
node_pid=()
start_node() { # index (0-based)
  local i=$1 env=()
  if [ "$profile" = cluster ]; then
    local redis=$redis_port
    [ "$i" = 2 ] && redis=$proxy_port
    env=(DONGDONG_STORAGE__BACKEND=cluster "DONGDONG_STORAGE__REDIS_URL=redis://127.0.0.1:$redis"
      "DONGDONG_STORAGE__MONGO_URL=mongodb://127.0.0.1:$mongo_port" DONGDONG_STORAGE__MONGO_DATABASE=soak)
  elif [ "$profile" = redis-cluster ]; then
    env=(DONGDONG_STORAGE__BACKEND=cluster "DONGDONG_STORAGE__REDIS_CLUSTER=$redis_cluster_seeds"
      "DONGDONG_STORAGE__MONGO_URL=mongodb://127.0.0.1:$mongo_port" DONGDONG_STORAGE__MONGO_DATABASE=soak)
  fi
  env "${env[@]}" DONGDONG_AUTH__SECRET="$secret" DONGDONG_AUTH__OPERATOR_KEY="$operator" \
    DONGDONG_STORAGE__NODE_ID="soak-node$i" DONGDONG_LOG__FILTER=warn \
    DONGDONG_LIMITS__RATE_PER_SEC=100000 DONGDONG_LIMITS__RATE_BURST=100000 \
    "$dd" serve --data "$work/data$i" --listen "127.0.0.1:${ws_ports[$i]}" --http "127.0.0.1:${http_ports[$i]}" \
    >>"$work/node$i.log" 2>&1 &
  node_pid[i]=$!
  echo "${node_pid[$i]}" >>"$work/nodes"
  echo "${node_pid[$i]}" >"$work/node$i.pid"
  wait_port "${ws_ports[$i]}" "node $i"
}
for i in $(seq 0 $((n - 1))); do start_node "$i"; done
urls=$(for i in $(seq 0 $((n - 1))); do printf 'ws://127.0.0.1:%s/ws,' "${ws_ports[$i]}"; done)
urls=${urls%,}

healthy() { # every node's /healthz answers 200
  for i in $(seq 0 $((n - 1))); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:${http_ports[$i]}/healthz" || true)
    [ "$code" = 200 ] || return 1
  done
}
recovered() { # fault name, start time (s with decimals)
  local t0=$1 what=$2
  while ! healthy; do sleep 0.1; done
  log "recovered from '$what' in $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s"
}

# --- load --------------------------------------------------------------------
log "profile $profile, $n node(s), $minutes min; faults every $fault_every s"
common=(--url "$urls" --secret "$secret" --json --duration "${minutes}m" --drain 90s)
"$dd" bot soak "${common[@]}" --tenant soak-pairs --pairs "$pairs" --devices 1 --rate "$rate" \
  >"$work/pairs.json" 2>"$work/pairs.err" &
bot_pairs=$!
"$dd" bot soak "${common[@]}" --tenant soak-md --pairs "$md_pairs" --devices 3 --rate "$rate" \
  >"$work/md.json" 2>"$work/md.err" &
bot_md=$!
pids+=("$bot_pairs" "$bot_md")

end=$((SECONDS + minutes * 60))
(
  # Customer service in chunks, against node 0's API (the group) and all nodes.
  c=0
  while [ $((SECONDS + cs_chunk)) -le "$end" ]; do
    c=$((c + 1))
    t0=$(date -u +%s)
    "$dd" bot cs --url "$urls" --secret "$secret" --json --api "http://127.0.0.1:${http_ports[0]}" \
      --tenant soak-cs --group "g$c" --arrivals 2 --agents 6 --capacity 3 --think 100ms \
      --duration "${cs_chunk}s" --warmup 0s --drain 20s >"$work/cs$c.json" 2>"$work/cs$c.err" || true
    echo "$t0 $(date -u +%s) $c" >>"$work/cs-chunks"
  done
) &
cs_loop=$!
pids+=("$cs_loop")

# RSS of every node every 20 s (with the pid: a restarted node is a new process).
(
  while true; do
    sleep 20
    for i in $(seq 0 $((n - 1))); do
      p=$(cat "$work/node$i.pid")
      rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      echo "$(date -u +%s) $i $p ${rss:-0}" >>"$work/rss"
    done
  done
) &
rss_loop=$!
pids+=("$rss_loop")

# --- faults ------------------------------------------------------------------
k=0
if [ "$profile" = redis-cluster ]; then default_faults="4 0"; else default_faults="0 1 2 3"; fi
read -r -a kinds <<<"${SOAK_FAULTS:-$default_faults}"
next=$((SECONDS + fault_every))
while [ $((next + 30)) -le "$end" ]; do
  while [ "$SECONDS" -lt "$next" ]; do sleep 1; done
  next=$((next + fault_every))
  t0=$(python3 -c 'import time; print(time.time())')
  if [ "$profile" = embedded ]; then kind=0; else kind=${kinds[$((k % ${#kinds[@]}))]}; fi
  k=$((k + 1))
  case "$kind" in
    0)
      i=$((RANDOM % n))
      log "fault $k: kill -9 node $i (pid ${node_pid[$i]})"
      kill -9 "${node_pid[$i]}"
      wait "${node_pid[$i]}" 2>/dev/null || true
      start_node "$i"
      recovered "$t0" "kill -9 node $i"
      ;;
    1)
      log "fault $k: Redis killed (kill -9) and restarted"
      kill -9 "$redis_pid"
      wait "$redis_pid" 2>/dev/null || true
      sleep 1
      start_redis
      recovered "$t0" "Redis restart"
      ;;
    2)
      log "fault $k: MongoDB paused (SIGSTOP) for 10 s"
      kill -STOP "$mongo_pid"
      sleep 10
      kill -CONT "$mongo_pid"
      t0=$(python3 -c 'import time; print(time.time())')
      recovered "$t0" "MongoDB pause (from its end)"
      ;;
    3)
      log "fault $k: node 2's traffic to Redis delayed 200 ms for 20 s"
      echo 200 >"$work/delay"
      sleep 20
      rm -f "$work/delay"
      t0=$(python3 -c 'import time; print(time.time())')
      recovered "$t0" "Redis delay on node 2 (from its end)"
      ;;
    4)
      # A random master of the Redis Cluster, killed; its replica takes over.
      ports=()
      for p in "${redis_cluster_ports[@]}"; do
        redis-cli -p "$p" role 2>/dev/null | head -1 | grep -q master && ports+=("$p")
      done
      port=${ports[$((RANDOM % ${#ports[@]}))]}
      pid=$(redis-cli -p "$port" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
      log "fault $k: Redis Cluster master on port $port killed (kill -9 $pid)"
      kill -9 "$pid"
      # Promoted when every slot is served again.
      other=$(printf '%s\n' "${redis_cluster_ports[@]}" | grep -v "^$port$" | head -1)
      until redis-cli -p "$other" cluster nodes 2>/dev/null | grep "127.0.0.1:$port@" | grep -q 'master,fail \|,fail '; do
        sleep 0.1
      done
      until redis-cli -p "$other" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do sleep 0.1; done
      log "fault $k: a replica took over after $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s"
      recovered "$t0" "Redis Cluster master killed"
      restart_cluster_node "$port"
      ;;
  esac
done

# --- the end -----------------------------------------------------------------
log "load ends; waiting for the bots' drain"
wait "$bot_pairs" || true
wait "$bot_md" || true
wait "$cs_loop" || true
kill "$rss_loop" 2>/dev/null || true
for i in $(seq 0 $((n - 1))); do cp "$work/node$i.log" "$work/node$i.final.log"; done

status=0
python3 "$root/scripts/soak-report.py" "$work" "$profile" "$minutes" "$n" >"$out" || status=$?
[ "$out" = /dev/stdout ] || cat "$out" >&2
exit $status
