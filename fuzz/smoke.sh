#!/usr/bin/env bash
# Opt-in fuzz smoke test (not run in CI): runs every target in fuzz_targets/
# for SECONDS each (default 30), starting from the checked-in seed corpus.
#
#   fuzz/smoke.sh [SECONDS] [TARGET...]
#
# cargo-fuzz needs nightly-only flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets
# the stable toolchain accept them. New inputs go to a scratch directory so
# the checked-in corpus only changes by hand; crashes land in
# fuzz/artifacts/<target>/ and make the script fail.
set -euo pipefail

secs="${1:-30}"
shift || true
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${secs}s"
    mkdir -p "$scratch/$t"
    # The first corpus directory receives new inputs; the seed corpus is read only.
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1
done
