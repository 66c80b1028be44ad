#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the storage conformance suite
# (embedded, and Redis + MongoDB), the integration scenarios (real servers,
# real WebSocket clients, real child processes killed with SIGKILL), and the
# JS SDK's tests against real servers and the web consoles' end-to-end tests
# in headless Chromium.
#
# It installs what the tests need when missing (redis-server, chromium and
# Node.js from Debian's packages; secantusdb, a MongoDB-wire-compatible
# server, from PyPI into a venv under .test-services/; playwright-core and
# axe-core from npm into tests/web/node_modules, the SDK's TypeScript, esbuild,
# ws and protobufjs into sdk/js/node_modules), starts a private Redis and a private
# secantusdb and a private 3-master Redis Cluster on free ports, points the
# tests at them, and stops them
# afterwards. Extra arguments go to `cargo test`. Builds go to
# CARGO_TARGET_DIR when it is set (CI keeps one outside the clone).
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
me=test.sh
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
command -v chromium >/dev/null 2>&1 || [ -n "${DD_CHROMIUM:-}" ] || apt_install chromium
command -v node >/dev/null 2>&1 || apt_install nodejs npm
if [ ! -d tests/web/node_modules/playwright-core ] || [ ! -d tests/web/node_modules/axe-core ]; then
  echo "test.sh: installing playwright-core and axe-core into tests/web/node_modules" >&2
  (cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
fi
venv="$services/venv"
if ! "$venv/bin/python" -c "import secantus" >/dev/null 2>&1; then
  echo "test.sh: installing secantusdb into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check secantusdb
fi

# --- private servers ------------------------------------------------------------
run_dir=$(mktemp -d "$services/run.XXXXXX")
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$run_dir" \
  --logfile "$run_dir/redis.log" &
redis_pid=$!
mongo_port=$(free_port)
"$venv/bin/python" -m secantus --port "$mongo_port" --storage-path "$run_dir/mongo" \
  >"$run_dir/secantus.log" 2>&1 &
mongo_pid=$!
redis_cluster_pids=()
cleanup() {
  kill "$redis_pid" "$mongo_pid" "${redis_cluster_pids[@]}" 2>/dev/null || true
  wait "$redis_pid" "$mongo_pid" "${redis_cluster_pids[@]}" 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT
wait_port "$redis_port" redis-server
wait_port "$mongo_port" secantusdb
# A 3-master Redis Cluster: the conformance suite and the 3-node tests run on
# it too.
start_redis_cluster "$run_dir/redis-cluster" 3 0

export DDTEST_REDIS_URL="redis://127.0.0.1:$redis_port"
export DDTEST_MONGO_URL="mongodb://127.0.0.1:$mongo_port"
export DDTEST_REDIS_CLUSTER="$redis_cluster_seeds"
# Failure tests start servers of their own with these.
export DDTEST_REDIS_SERVER="$(command -v redis-server)"
export DDTEST_SECANTUS_PYTHON="$venv/bin/python"

# --- tests ----------------------------------------------------------------------
# Build first: the crash and signal tests run the server binary as a child process.
cargo build --workspace --all-targets --quiet
cargo test --workspace --quiet "$@"

# --- the JS SDK against real servers ------------------------------------------------
# Built from sdk/js (TypeScript): the consoles' bundle must be the build of the
# sources, then the SDK's own tests run against real `dongdong serve`
# processes (killed with SIGKILL, a cluster on the private Redis and MongoDB).
echo "test.sh: the JS SDK (sdk/js) against real servers" >&2
if [ ! -d sdk/js/node_modules/typescript ] || [ ! -d sdk/js/node_modules/ws ]; then
  echo "test.sh: installing the SDK's build and test tools into sdk/js/node_modules" >&2
  (cd sdk/js && npm ci --no-audit --no-fund --loglevel=error)
fi
(cd sdk/js && npx tsc -p tsconfig.json && node scripts/bundle.mjs --check)
DD_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/dongdong" \
  node --test --test-concurrency=1 --test-reporter=spec sdk/js/test/*.test.mjs

# --- the web consoles in a real browser ------------------------------------------
# A real `dongdong serve` (the debug binary built above) and headless Chromium.
echo "test.sh: web consoles in headless Chromium (tests/web)" >&2
DD_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/dongdong" DD_CHROMIUM="${DD_CHROMIUM:-$(command -v chromium)}" \
  node --test --test-concurrency=1 --test-reporter=spec tests/web/console.test.mjs
