"""Face boxes of the *original* MTCNN cascade (facenet-pytorch 2.6.0's `detect_face`, run from
the installed package's own file) on the Rust tests' carphone frames, written as JSON for
`video/tests/roi.rs` to compare the Rust cascade with.

    nice -n 19 python models/face-detector/reference_boxes.py

Needs torch, facenet-pytorch's files (`pip install --no-deps facenet-pytorch==2.6.0`) and
ffmpeg (the Y4M fixture is converted to RGB by ffmpeg, BT.601 limited range). facenet-pytorch
imports torchvision for `batched_nms` only; a plain reimplementation stands in for it.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, HERE)

from mtcnn import NETS, weights_dir  # noqa: E402

FIXTURE = os.path.join(ROOT, "video", "tests", "fixtures", "roi_carphone.y4m")
OUT = os.path.join(ROOT, "video", "tests", "fixtures", "roi_carphone_mtcnn.json")
MIN_FACE, THRESHOLDS, FACTOR = 20, [0.6, 0.7, 0.7], 0.709


def batched_nms(boxes, scores, idxs, threshold):
    """torchvision.ops.boxes.batched_nms: greedy, per index, IoU (no +1) > threshold drops."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long)
    b = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    gone = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in torch.argsort(scores, descending=True).tolist():
        if gone[i]:
            continue
        keep.append(i)
        w = (torch.minimum(b[i, 2], b[:, 2]) - torch.maximum(b[i, 0], b[:, 0])).clamp(min=0)
        h = (torch.minimum(b[i, 3], b[:, 3]) - torch.maximum(b[i, 1], b[:, 1])).clamp(min=0)
        inter = w * h
        gone |= inter / (area[i] + area - inter) > threshold
    return torch.tensor(keep, dtype=torch.long)


def load_detect_face(data):
    """facenet-pytorch's `models/utils/detect_face.py`, without its package `__init__`."""
    shims = {
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.ops": types.ModuleType("torchvision.ops"),
        "torchvision.ops.boxes": types.ModuleType("torchvision.ops.boxes"),
        "torchvision.transforms": types.ModuleType("torchvision.transforms"),
        "torchvision.transforms.functional": types.ModuleType("torchvision.transforms.functional"),
    }
    shims["torchvision.ops.boxes"].batched_nms = batched_nms
    if importlib.util.find_spec("PIL") is None:
        shims["PIL"] = types.ModuleType("PIL")
        shims["PIL"].Image = None
    for name, mod in shims.items():
        sys.modules.setdefault(name, mod)
    path = os.path.join(data, "..", "models", "utils", "detect_face.py")
    spec = importlib.util.spec_from_file_location("facenet_detect_face", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.detect_face


def read_rgb(path):
    header = open(path, "rb").readline().decode().split()
    w = int(next(f[1:] for f in header if f.startswith("W")))
    h = int(next(f[1:] for f in header if f.startswith("H")))
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24",
                          "-"], check=True, capture_output=True, timeout=60).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, h, w, 3)


def reference_boxes(data=None):
    data = weights_dir(data)
    nets = {}
    for name, cls in NETS.items():
        net = cls()
        net.load_state_dict(torch.load(os.path.join(data, f"{name}.pt"), map_location="cpu",
                                       weights_only=True))
        nets[name] = net.eval()
    detect_face = load_detect_face(data)
    frames = read_rgb(FIXTURE)
    with torch.no_grad():
        boxes, _ = detect_face(frames.copy(), MIN_FACE, nets["pnet"], nets["rnet"], nets["onet"],
                               THRESHOLDS, FACTOR, "cpu")
    return [np.asarray(b, dtype=np.float64).reshape(-1, 5).round(3).tolist() for b in boxes]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", help="facenet-pytorch's data/ folder (default: the installed package)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {
        "what": "facenet-pytorch 2.6.0 detect_face (min face 20, thresholds 0.6/0.7/0.7, factor "
                "0.709) on roi_carphone.y4m converted to RGB by ffmpeg; [x0, y0, x1, y1, score] "
                "per face, frame pixels",
        "frames": reference_boxes(args.weights),
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps(out["frames"]))


if __name__ == "__main__":
    main()
