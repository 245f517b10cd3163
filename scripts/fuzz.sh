#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each; `scripts/fuzz.sh 600` for
# ten minutes), starting from and adding to the committed corpus in fuzz/corpus/.
#
# cargo-fuzz needs nightly-only compiler flags (sanitizers, coverage). This machine has one
# stable toolchain and no way to fetch another, so the script sets RUSTC_BOOTSTRAP=1, which lets
# the stable compiler accept them. With a nightly toolchain, drop it and use `cargo +nightly fuzz`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in bearer request_path receivers dpop; do
  echo "== fuzzing $target for ${seconds}s"
  cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=4096 -timeout=10
done
