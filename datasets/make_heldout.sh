#!/usr/bin/env bash
# Build the held-out evaluation set used for the model card's numbers: from the corpus manifest's
# `valid` split (never trained on), 3 clips per package of 2-8 s, chosen by a stable hash of the
# path (so the same corpus always gives the same set), plus the synthetic en_espeak fixture.
# Usage: datasets/make_heldout.sh OUT_DIR      (env AIC_CORPUS_DIR as for prepare_corpus.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: datasets/make_heldout.sh OUT_DIR}"
CORPUS="${AIC_CORPUS_DIR:-$HOME/.cache/aic/corpus}"
MAN="$CORPUS/manifest.tsv"
[ -f "$MAN" ] || { echo "no $MAN: run datasets/prepare_corpus.sh first" >&2; exit 1; }
mkdir -p "$OUT"
rm -f "$OUT"/*.wav
n=0
while IFS=$'\t' read -r path; do
  n=$((n + 1))
  cp "$CORPUS/$path" "$OUT/$(printf '%02d' "$n")_$(basename "$path")"
done < <(awk -F'\t' 'NR>1 && $6=="valid" && $4>=2.0 && $4<=8.0 {print $2"\t"$1}' "$MAN" |
  while IFS=$'\t' read -r pkg path; do
    printf '%s\t%s\t%s\n' "$pkg" "$(printf '%s' "$path" | sha256sum | cut -c1-16)" "$path"
  done | LC_ALL=C sort -k1,1 -k2,2 | awk -F'\t' '{ if (c[$1]++ < 3) print $3 }')
n=$((n + 1))
cp datasets/fixtures/speech/en_espeak.wav "$OUT/$(printf '%02d' "$n")_en_espeak.wav"
echo "held-out set: $n clips in $OUT" >&2
