#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `fuzz/run.sh [SECONDS_PER_TARGET]`
# (default 60). Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz
# pass its -Z flags, and `-s none` skips the sanitizer (which needs nightly).
# The seeds in fuzz/seeds/ are kept small in the repo; what libFuzzer finds
# goes to fuzz/corpus/ (ignored) and crashes to fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target-fuzz}"
status=0
for target in control_request config_file request_head; do
  mkdir -p "corpus/$target"
  echo "== fuzzing $target for ${secs}s"
  cargo fuzz run -s none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 || status=1
done
exit "$status"
