#!/usr/bin/env bash
# Runs every cargo-fuzz target for a while (not part of the test command or CI): libFuzzer with
# AddressSanitizer on the nightly toolchain. A crash leaves its input under
# fuzz/artifacts/<target>/; turn it into a regression test before fixing.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET=600] [TARGET...]
#
# Prints one line per target (runs, runs/s, coverage, result) and writes them to
# out/fuzz-summary.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"; shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
mkdir -p out
# Build every target once, then run the binaries: a source edit during a long run cannot turn
# into a rebuild (or a build failure reported as a crash) halfway through.
(cd fuzz && cargo +nightly fuzz build) > out/fuzz-build.log 2>&1 \
  || { tail -n 30 out/fuzz-build.log >&2; echo "fuzz: build failed (out/fuzz-build.log)" >&2; exit 1; }
bin=fuzz/target/$(rustc -vV | awk '/^host/ {print $2}')/release
printf 'target\tseconds\truns\truns_per_s\tcov\tresult\n' > out/fuzz-summary.tsv
for t in "${targets[@]}"; do
  log="out/fuzz-$t.log"
  result=ok
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  "$bin/$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
    "fuzz/corpus/$t" > "$log" 2>&1 || result="CRASH (see $log and fuzz/artifacts/$t/)"
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*')
  rate=$(awk -v r="${runs:-0}" -v s="$secs" 'BEGIN { printf "%.0f", r / s }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$secs" "${runs:-?}" "$rate" "${cov:-?}" "$result" \
    | tee -a out/fuzz-summary.tsv
done
