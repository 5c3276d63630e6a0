"""Exports MTCNN's P-, R- and O-net (weights from the PyPI package facenet-pytorch 2.6.0) to ONNX,
with the manifest `detector.json` the Rust side checks and `reference.npz` (seeded inputs and the
PyTorch outputs) that `models/tests/test_face_detector.py` replays through ONNX Runtime.

    pip install --no-deps facenet-pytorch==2.6.0   # the weights only; torch comes from the venv
    nice -n 19 python models/face-detector/export.py [--weights DIR]

Deterministic: the same weights give the same files (sha256 in README.md and detector.json).
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from mtcnn import CROP, load, weights_dir  # noqa: E402

OPSET = 17
THRESHOLDS = [0.6, 0.7, 0.7]


def reference_inputs():
    """Seeded 8-bit pictures (stored as uint8, fed as float32): P-net at two odd sizes (it is fully convolutional), R-/O-net crops."""
    g = np.random.default_rng(14)
    return {
        "pnet": g.integers(0, 256, (2, 3, 21, 30), dtype=np.uint8),
        "rnet": g.integers(0, 256, (3, 3, 24, 24), dtype=np.uint8),
        "onet": g.integers(0, 256, (2, 3, 48, 48), dtype=np.uint8),
    }


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", help="facenet-pytorch's data/ folder (default: the installed package)")
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()
    data = weights_dir(args.weights)
    if data is None or not os.path.exists(os.path.join(data, "pnet.pt")):
        sys.exit("facenet-pytorch's weights not found: pip install --no-deps facenet-pytorch==2.6.0 "
                 "or pass --weights DIR")
    torch.set_num_threads(1)
    refs = {}
    graphs = {}
    for name, x in reference_inputs().items():
        g = load(name, data)
        crop = CROP[name]
        if crop is None:
            dummy = torch.zeros(1, 3, 24, 32)
            axes = {"image": {0: "batch", 2: "height", 3: "width"},
                    "score": {0: "batch", 2: "rows", 3: "cols"},
                    "reg": {0: "batch", 2: "rows", 3: "cols"}}
        else:
            dummy = torch.zeros(1, 3, crop, crop)
            axes = {"image": {0: "batch"}, "score": {0: "batch"}, "reg": {0: "batch"}}
        path = os.path.join(args.out, f"{name}.onnx")
        torch.onnx.export(g, (dummy,), path, input_names=["image"], output_names=["score", "reg"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        with torch.no_grad():
            score, reg = g(torch.from_numpy(x.astype(np.float32)))
        refs[f"{name}_image"] = x
        refs[f"{name}_score"] = score.numpy()
        refs[f"{name}_reg"] = reg.numpy()
        graphs[name] = {"file": f"{name}.onnx", "sha256": sha256(path), "input": "image",
                        "crop": crop, "outputs": ["score", "reg"]}
        print(f"{name}: {os.path.getsize(path)} bytes, sha256 {graphs[name]['sha256']}")
    np.savez_compressed(os.path.join(args.out, "reference.npz"), **refs)
    manifest = {
        "format": 1,
        "model_id": "mtcnn-facenet-pytorch-2.6.0",
        "source": "facenet-pytorch 2.6.0 (PyPI): data/pnet.pt, rnet.pt, onet.pt",
        "licence": "MIT",
        "input": "RGB, float32 in 0..255, NCHW (normalised inside the graphs)",
        "pnet_stride": 2,
        "pnet_cell": 12,
        "thresholds": THRESHOLDS,
        "graphs": graphs,
    }
    with open(os.path.join(args.out, "detector.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
