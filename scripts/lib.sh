# Helpers shared by scripts/test.sh and scripts/bench.sh (sourced, not run).
# The caller sets `me` to its own name for messages.

if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
apt_updated=""
# Installs Debian packages, updating the package lists once per run.
apt_install() {
  echo "$me: installing $*" >&2
  if [ -z "$apt_updated" ]; then $sudo apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# A TCP port free on 127.0.0.1 right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for something to listen on 127.0.0.1:PORT; NAME says what.
wait_port() {
  for _ in $(seq 200); do
    if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$me: $2 did not start on port $1" >&2
  return 1
}

# A port free on 127.0.0.1 whose Redis Cluster bus port (port + 10000) is free too.
free_cluster_port() {
  python3 - <<'PY'
import random, socket
while True:
    port = random.randint(20000, 55000)
    try:
        for p in (port, port + 10000):
            s = socket.socket()
            s.bind(("127.0.0.1", p))
            s.close()
    except OSError:
        continue
    print(port)
    break
PY
}

# Starts a Redis Cluster in DIR: MASTERS masters with REPLICAS replicas each
# (one redis-server per node, no persistence unless REDIS_CLUSTER_ARGS says
# so), and waits until every node reports the cluster ok. Sets
# redis_cluster_pids (array), redis_cluster_ports (array) and
# redis_cluster_seeds ("redis://127.0.0.1:P1,redis://127.0.0.1:P2,...").
start_redis_cluster() {
  local dir=$1 masters=$2 replicas=$3 port i
  redis_cluster_pids=()
  redis_cluster_ports=()
  for i in $(seq $((masters * (1 + replicas)))); do
    port=$(free_cluster_port)
    mkdir -p "$dir/$port"
    # shellcheck disable=SC2086
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$dir/$port/nodes.conf" --cluster-node-timeout "${REDIS_CLUSTER_NODE_TIMEOUT:-2000}" \
      --repl-diskless-sync-delay 0 \
      --save "" --appendonly no --dir "$dir/$port" --logfile "$dir/$port/redis.log" ${REDIS_CLUSTER_ARGS:-} &
    redis_cluster_pids+=($!)
    redis_cluster_ports+=("$port")
  done
  for port in "${redis_cluster_ports[@]}"; do wait_port "$port" "redis-server (cluster node)"; done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${redis_cluster_ports[@]}") \
    --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1 || {
    echo "$me: redis-cli --cluster create failed:" >&2; cat "$dir/create.log" >&2; return 1; }
  for port in "${redis_cluster_ports[@]}"; do
    for i in $(seq 200); do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
      [ "$i" = 200 ] && { echo "$me: the Redis Cluster did not come up (node $port)" >&2; return 1; }
      sleep 0.05
    done
  done
  # Replicas join after the slots are covered: wait until each knows its
  # master and has synced with it (one that has not cannot take over).
  for i in $(seq 400); do
    if [ "$(redis-cli -p "${redis_cluster_ports[0]}" cluster nodes | grep -c ' slave ')" -ge $((masters * replicas)) ] &&
      [ "$(for p in "${redis_cluster_ports[@]}"; do redis-cli -p "$p" info replication; done |
        grep -c 'master_link_status:up')" -ge $((masters * replicas)) ]; then
      break
    fi
    [ "$i" = 400 ] && { echo "$me: the Redis Cluster's replicas did not join and sync" >&2; return 1; }
    sleep 0.05
  done
  redis_cluster_seeds=$(printf 'redis://127.0.0.1:%s,' "${redis_cluster_ports[@]}")
  redis_cluster_seeds=${redis_cluster_seeds%,}
}
