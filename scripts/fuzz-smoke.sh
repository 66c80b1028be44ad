#!/usr/bin/env bash
# A short run of every fuzz target (fuzz/, cargo-fuzz on nightly Rust):
# FUZZ_SECONDS (default 5) each, starting from the committed corpus, with
# the limits the long runs use (docs/reliability.md). A crash, a panic, a
# 5xx from the HTTP API or an allocation past -rss_limit_mb fails it, and
# libFuzzer leaves the input under fuzz/artifacts/<target>/.
#
# The corpus in the repository is read, never written: what a run finds
# goes to a scratch directory (FUZZ_KEEP=DIR keeps it there, to merge by
# hand with `-merge=1` as docs/reliability.md shows; a failed run keeps it
# too). Installs cargo-fuzz when it is missing;
# needs the nightly toolchain (`rustup toolchain install nightly`).
# `.ci/run` runs it after the tests; the tests themselves (scripts/test.sh)
# need only stable Rust and replay the corpora without fuzzing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
me=fuzz-smoke.sh
seconds=${FUZZ_SECONDS:-5}
targets=(frame_protobuf frame_json config http_body)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "$me: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "$me: installing cargo-fuzz" >&2
  cargo install -q --locked cargo-fuzz --version 0.13.2
fi

scratch=${FUZZ_KEEP:-$(mktemp -d)}
mkdir -p "$scratch"
http_tmp=""
status=0
cleanup() {
  [ -z "$http_tmp" ] || rm -rf "$http_tmp"
  [ -n "${FUZZ_KEEP:-}" ] || [ "$status" != 0 ] || rm -rf "$scratch"
}
trap cleanup EXIT
# -s none: coverage-guided without AddressSanitizer (the code is safe Rust;
# panics and -rss_limit_mb still fail a run), several times faster to run.
echo "$me: building the fuzz targets" >&2
# FUZZ_TARGET_DIR (CI keeps one outside the clone) or fuzz/target.
target_dir=(--target-dir "${FUZZ_TARGET_DIR:-$PWD/target}")
if ! cargo +nightly fuzz build -O -s none "${target_dir[@]}" >"$scratch/build.log" 2>&1; then
  status=1
  tail -40 "$scratch/build.log" >&2
  exit 1
fi
# The HTTP target keeps its embedded database under TMPDIR: on tmpfs when
# there is one, so commits do not wait for a disk; removed at the end.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then shm=/dev/shm; else shm=${TMPDIR:-/tmp}; fi
http_tmp=$(mktemp -d "$shm/dd-fuzz.XXXXXX")
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if TMPDIR=$http_tmp cargo +nightly fuzz run -O -s none "${target_dir[@]}" "$t" "$scratch/$t" "$PWD/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "$me: $t: ${runs:-?} executions in ${seconds} s, no finding" >&2
  else
    echo "$me: $t FAILED; the end of its log ($log):" >&2
    tail -40 "$log" >&2
    status=1
  fi
done
exit "$status"
