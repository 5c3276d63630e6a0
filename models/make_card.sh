#!/usr/bin/env bash
# Regenerates a model's measured rate–quality table in one run: every codec side by side (AIC at
# every level of MODEL_DIR, Opus, Opus-OSCE, codec2) on the held-out set of
# `datasets/make_heldout.sh`, scored with STOI, PESQ-WB, ViSQOL and DNSMOS OVRL.
#   bash models/make_card.sh MODEL_DIR
# Writes MODEL_DIR/rate_quality.json (what `aic serve` reads for Hints), rate_quality.svg and
# rate_quality.txt (the table the model card shows, as printed). Needs the corpus
# (datasets/prepare_corpus.sh) and the Python evaluator (.venv from scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:?usage: models/make_card.sh MODEL_DIR}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | sort | tail -n1)}"
cargo build --release -p aic --locked >&2
out=$(cd "$dir" && pwd); aic="$PWD/target/release/aic"
# The report names its inputs as given: run from a temp dir holding `heldout/`, so the JSON says
# `heldout/…` and no machine path.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
datasets/make_heldout.sh "$tmp/heldout" >&2
{
  echo "# bash models/make_card.sh $dir   ($(date -u +%Y-%m-%d), $(nproc) CPUs, git $(git rev-parse --short HEAD))"
  (cd "$tmp" && "$aic" bench --model "$out" heldout \
    --json "$out/rate_quality.json" --plot "$out/rate_quality.svg")
} | tee "$out/rate_quality.txt"
