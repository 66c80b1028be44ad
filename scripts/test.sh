#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the storage conformance suite
# and the integration scenarios (real servers, real WebSocket clients, real
# child processes killed with SIGKILL).
#
# Needs only a Rust toolchain today; when a test needs an external service,
# this script installs and starts it (and stops it afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi

# Build the server binary first: the crash and signal tests run it as a child process.
cargo build --workspace --all-targets --quiet
cargo test --workspace --quiet "$@"
