#!/usr/bin/env bash
# libFuzzer (cargo-fuzz) over the WebSocket frame parser and the command input validators
# (fuzz/fuzz_targets/): each target runs FUZZ_SECONDS (default 30); any crash (a panic, a failed
# assertion, an out-of-memory or a 10 s input) fails the script, with the input saved under
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                              # every target, 30 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh ws_frame    # one target, longer
#
# Stable Rust: RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags cargo-fuzz passes, and
# `--sanitizer none` needs no sanitizer runtime (what is checked is panics and assertions, and
# this code has no `unsafe`). The seeds in fuzz/corpus/<target>/ are read, never written; what
# libFuzzer finds goes to fuzz/work/<target>/ (ignored by git), kept between runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-30}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "==> cargo fuzz build --sanitizer none"
cargo fuzz build --sanitizer none

for target in "${targets[@]}"; do
    echo "==> fuzzing $target for ${FUZZ_SECONDS}s"
    mkdir -p "fuzz/work/$target" "fuzz/corpus/$target"
    cargo fuzz run --sanitizer none "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
echo "==> fuzzing found nothing"
