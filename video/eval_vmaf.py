#!/usr/bin/env python3
"""Optional VMAF evaluator for `aic video bench` (VMAF v0.6.1, the default model).

    python3 video/eval_vmaf.py --pairs LIST.tsv

Each line of LIST.tsv: ``REF.yuv<TAB>DIST.yuv<TAB>WIDTH<TAB>HEIGHT[<TAB>X0,Y0,X1,Y1]`` -- raw
8-bit I420 files of the same frames in the same order (the caller aligns them); the optional
rectangle is the region of interest, scored again on both clips cropped to it (``vmaf_roi``).
Prints exactly one line of JSON per pair, in order:

    {"vmaf": float|null, "vmaf_roi": float|null, "frames": int, "errors": {"<stage>": "<reason>"}}

VMAF comes from the PyPI package ``vmaf-torch`` (a PyTorch re-implementation of Netflix's
libvmaf: its README reports a mean absolute difference of 0.006 VMAF points against the C tool
on Netflix's public dataset). Debian 12 has neither libvmaf nor an FFmpeg built with it, and
``pyvmaf`` needs libvmaf to build, so this is the one that installs here. It needs torch (large:
``scripts/setup.sh`` installs it into .venv, with a way to skip it). Each frame's score is
clipped to the model's ``score_clip`` range [0, 100], as libvmaf does with the v0.6.1 model by
default; the clip's score is the mean over frames. When the package is
missing every line says so under ``errors`` and the exit status is still 0: callers treat VMAF
as optional. Only wrong usage exits with status 2. Library chatter goes to stderr.
"""

import contextlib
import json
import math
import os
import sys


def read_y(path, width, height):
    """Y planes of an I420 file as a float32 tensor [N, 1, H, W] in [0, 255]."""
    import numpy as np
    import torch

    frame = width * height * 3 // 2
    raw = np.fromfile(path, dtype=np.uint8)
    n = raw.size // frame
    if n == 0:
        raise ValueError(f"{path}: no whole {width}x{height} I420 frame")
    planes = raw[: n * frame].reshape(n, frame)[:, : width * height].reshape(n, 1, height, width)
    return torch.from_numpy(planes.astype(np.float32))


def score(model, ref, dist):
    import torch

    with torch.no_grad():
        v = model(ref, dist).reshape(-1)
    m = float(v.mean())
    return m if math.isfinite(m) else None


def main(argv):
    if len(argv) != 3 or argv[1] != "--pairs":
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[2]) as f:
        pairs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    model, load_error = None, None
    with contextlib.redirect_stdout(sys.stderr):
        try:
            import torch
            from vmaf_torch import VMAF

            torch.set_num_threads(int(os.environ.get("AIC_VMAF_THREADS", "2")))
            model = VMAF(temporal_pooling=False, clip_score=True)
            model.eval()
        except Exception as e:  # noqa: BLE001 -- any failure only disables the metric
            load_error = f"{type(e).__name__}: {e}"
    for p in pairs:
        out = {"vmaf": None, "vmaf_roi": None, "frames": 0, "errors": {}}
        if len(p) not in (4, 5):
            out["errors"]["usage"] = f"expected 4 or 5 tab-separated fields, got {len(p)}"
        elif model is None:
            out["errors"]["vmaf"] = f"vmaf-torch unavailable: {load_error}"
        else:
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    w, h = int(p[2]), int(p[3])
                    ref, dist = read_y(p[0], w, h), read_y(p[1], w, h)
                    n = min(ref.shape[0], dist.shape[0])
                    ref, dist = ref[:n], dist[:n]
                    out["frames"] = n
                    out["vmaf"] = score(model, ref, dist)
                    if len(p) == 5:
                        x0, y0, x1, y1 = (int(v) for v in p[4].split(","))
                        out["vmaf_roi"] = score(model, ref[..., y0:y1, x0:x1], dist[..., y0:y1, x0:x1])
                except Exception as e:  # noqa: BLE001
                    out["errors"]["vmaf"] = f"{type(e).__name__}: {e}"
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
