"""Reference outputs that let the Rust runtime prove streaming == whole-sequence.

PyTorch runs the *whole-sequence* encoder, RVQ and decoder over a short shipped clip; the Rust
test (`pipeline/tests/reference.rs`) runs the exported graphs *frame by frame* through ONNX
Runtime with its own RVQ search, and compares. Written next to the model as `reference.json`.
"""

import json
import os
import wave

import numpy as np
import torch

from .dsp import FRAME

FRAMES = 25
CLIP = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "fixtures", "speech", "en_espeak.wav")


def read_clip(path: str = CLIP) -> np.ndarray:
    with wave.open(path, "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


@torch.no_grad()
def write_reference(model, out_dir: str, level: int = 12) -> dict:
    x = read_clip()[: FRAMES * FRAME]
    xt = torch.from_numpy(x)[None]
    z, _ = model.encoder(xt, model.encoder.init_state(1))
    codes = model.rvq.encode(z, level)
    zq = model.rvq.decode(codes)
    y, _ = model.decoder(zq, model.decoder.init_state(1))
    ref = {
        "clip": "datasets/fixtures/speech/en_espeak.wav",
        "frames": FRAMES,
        "level": level,
        "pcm_in": [round(float(v), 7) for v in x],
        "latent": [round(float(v), 7) for v in z[0].reshape(-1)],
        "codes": [int(v) for v in codes[0].reshape(-1)],
        "pcm_out": [round(float(v), 7) for v in y[0]],
    }
    path = os.path.join(out_dir, "reference.json")
    with open(path, "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    return {"reference": path, "bytes": os.path.getsize(path)}
