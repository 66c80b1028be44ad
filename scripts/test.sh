#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the storage conformance suite
# (embedded, and Redis + MongoDB), and the integration scenarios (real
# servers, real WebSocket clients, real child processes killed with SIGKILL).
#
# It installs what the tests need when missing (redis-server from Debian's
# packages; secantusdb, a MongoDB-wire-compatible server, from PyPI into a
# venv under .test-services/), starts a private Redis and a private secantusdb
# on free ports, points the tests at them, and stops them afterwards.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi

services="$root/.test-services"
mkdir -p "$services"

# --- what the tests need -----------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: installing redis-server" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq redis-server >/dev/null
fi
venv="$services/venv"
if ! "$venv/bin/python" -c "import secantus" >/dev/null 2>&1; then
  echo "test.sh: installing secantusdb into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check secantusdb
fi

# --- private servers ------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 200); do
    if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "test.sh: $2 did not start on port $1" >&2
  return 1
}
run_dir=$(mktemp -d "$services/run.XXXXXX")
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$run_dir" \
  --logfile "$run_dir/redis.log" &
redis_pid=$!
mongo_port=$(free_port)
"$venv/bin/python" -m secantus --port "$mongo_port" --storage-path "$run_dir/mongo" \
  >"$run_dir/secantus.log" 2>&1 &
mongo_pid=$!
cleanup() {
  kill "$redis_pid" "$mongo_pid" 2>/dev/null || true
  wait "$redis_pid" "$mongo_pid" 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT
wait_port "$redis_port" redis-server
wait_port "$mongo_port" secantusdb

export DDTEST_REDIS_URL="redis://127.0.0.1:$redis_port"
export DDTEST_MONGO_URL="mongodb://127.0.0.1:$mongo_port"
# Failure tests start servers of their own with these.
export DDTEST_REDIS_SERVER="$(command -v redis-server)"
export DDTEST_SECANTUS_PYTHON="$venv/bin/python"

# --- tests ----------------------------------------------------------------------
# Build first: the crash and signal tests run the server binary as a child process.
cargo build --workspace --all-targets --quiet
cargo test --workspace --quiet "$@"
