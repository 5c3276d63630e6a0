#!/usr/bin/env bash
# Prepare the speech-codec training corpus from Debian-packaged, freely licensed audio.
#
# Why Debian packages: they are reachable from the build machine, versioned,
# and carry clear licences (asterisk core sounds: CC-BY-SA-3.0; KDE klettres /
# ktuberling data: GPL-2+). Everything is decoded to 16 kHz mono s16 WAV and
# listed in manifest.tsv with a deterministic ~5% validation hold-out.
#
# Idempotent: downloads, extractions and decodes that already exist are reused.
# Usage: datasets/prepare_corpus.sh     (env AIC_CORPUS_DIR overrides the location)
set -euo pipefail

CORPUS="${AIC_CORPUS_DIR:-$HOME/.cache/aic/corpus}"
PACKAGES=(asterisk-core-sounds-en-g722 asterisk-core-sounds-es-g722
          asterisk-core-sounds-it-g722 asterisk-core-sounds-ru-g722
          klettres-data ktuberling-data)
MIN_DUR=0.3
JOBS="${AIC_JOBS:-2}"

mkdir -p "$CORPUS/debs" "$CORPUS/raw" "$CORPUS/wav"

# 1. download + extract
for pkg in "${PACKAGES[@]}"; do
  if ! ls "$CORPUS/debs/${pkg}"_*.deb >/dev/null 2>&1; then
    echo "downloading $pkg"
    if ! (cd "$CORPUS/debs" && apt-get download "$pkg"); then
      apt-get update
      (cd "$CORPUS/debs" && apt-get download "$pkg")
    fi
  fi
  if [ ! -e "$CORPUS/raw/$pkg/.done" ]; then
    rm -rf "$CORPUS/raw/$pkg"; mkdir -p "$CORPUS/raw/$pkg"
    dpkg-deb -x "$(ls "$CORPUS/debs/${pkg}"_*.deb | head -n1)" "$CORPUS/raw/$pkg"
    touch "$CORPUS/raw/$pkg/.done"
  fi
done

# 2. decode (parallel). One worker call per file: in -> out.wav; files shorter
#    than MIN_DUR get a ".short" marker instead so reruns do not redo them.
decode_one() {
  local in="$1" out="$2" min="$3"
  [ -e "$out" ] || [ -e "$out.short" ] && return 0
  mkdir -p "$(dirname "$out")"
  local fmt=()
  case "$in" in *.g722) fmt=(-f g722) ;; esac
  if ! ffmpeg -nostdin -v error -y "${fmt[@]}" -i "$in" -ar 16000 -ac 1 -c:a pcm_s16le "$out.tmp.wav"; then
    echo "decode failed: $in" >&2; rm -f "$out.tmp.wav"; touch "$out.short"; return 0
  fi
  local dur; dur=$(soxi -D "$out.tmp.wav" 2>/dev/null || echo 0)
  if awk -v d="$dur" -v m="$min" 'BEGIN{exit !(d < m)}'; then
    rm -f "$out.tmp.wav"; touch "$out.short"
  else
    mv "$out.tmp.wav" "$out"
  fi
}
export -f decode_one

for pkg in "${PACKAGES[@]}"; do
  (cd "$CORPUS/raw/$pkg" && find . -type f \( -name '*.g722' -o -name '*.ogg' -o -name '*.wav' -o -name '*.opus' \) | sort) |
  while IFS= read -r rel; do
    rel="${rel#./}"; short="${rel#usr/share/}"
    printf '%s\0%s\0' "$CORPUS/raw/$pkg/$rel" "$CORPUS/wav/$pkg/${short%.*}.wav"
  done | xargs -0 -n2 -P"$JOBS" bash -c 'decode_one "$1" "$2" '"$MIN_DUR" _
done

# 3. manifest
lang_of() {  # package, relative path -> language guess
  case "$1" in
    asterisk-core-sounds-*) echo "${1#asterisk-core-sounds-}" | cut -d- -f1; return ;;
  esac
  local comp
  IFS=/ read -ra comps <<< "$2"
  for comp in "${comps[@]:1:${#comps[@]}-2}"; do
    if [[ "$comp" =~ ^[a-z]{2,3}(_[A-Z]{2})?(@[a-z]+)?$ ]] && [[ "$comp" != "kde" && "$comp" != "sounds" ]]; then
      echo "$comp"; return
    fi
  done
  echo mixed
}
licence_of() { case "$1" in asterisk-*) echo CC-BY-SA-3.0 ;; *) echo GPL-2+ ;; esac; }

MAN="$CORPUS/manifest.tsv"
{
  printf 'path\tpackage\tlanguage\tduration_s\tlicence\tsplit\n'
  for pkg in "${PACKAGES[@]}"; do
    (cd "$CORPUS/wav" && find "$pkg" -type f -name '*.wav' ! -name '*.tmp.wav' | LC_ALL=C sort) |
    while IFS= read -r rel; do
      dur=$(soxi -D "$CORPUS/wav/$rel")
      h=$(printf '%s' "$rel" | md5sum | cut -c1-2)
      if [[ "$h" < "0d" ]]; then split=valid; else split=train; fi
      printf 'wav/%s\t%s\t%s\t%.3f\t%s\t%s\n' "$rel" "$pkg" "$(lang_of "$pkg" "${rel#*/}")" "$dur" "$(licence_of "$pkg")" "$split"
    done
  done
} > "$MAN.tmp"
mv "$MAN.tmp" "$MAN"

# 4. summary
echo "manifest: $MAN (paths relative to $CORPUS)"
awk -F'\t' 'NR>1{k=$2"\t"$6; n[k]++; s[k]+=$4; N[$6]++; S[$6]+=$4}
  END{for(k in n){split(k,a,"\t"); printf "%-32s %-6s %6d %9.1f\n",a[1],a[2],n[k],s[k]/60}
      for(x in N) printf "%-32s %-6s %6d %9.1f\n","TOTAL",x,N[x],S[x]/60}' "$MAN" | sort -k1,1 -k2,2r | { printf '%-32s %-6s %6s %9s\n' package split files minutes; cat; }
