"""Writes a small weights-only checkpoint that can be committed and trained on from.

    python -m aic_speech.slim --ckpt $HOME/aic-train/ckpt_last.pt --out checkpoints/aic-speech-v1.pt

Network weights (and stage two's discriminators) are stored in float16 (the RVQ codebooks and their EMA statistics stay float32:
they define the bitstream); the optimizer state is dropped. `train --init-from` continues from
it on a machine that has no `ckpt_last.pt` (a new session's machine), with a fresh optimizer.
"""

import argparse
import os

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    slim = {}
    for k, v in ck["model"].items():
        if v.is_floating_point() and not k.startswith("rvq."):
            v = v.half()
        slim[k] = v
    out = {"model": slim, "step": int(ck["step"]), "config": ck["config"], "slim": True}
    if "gan" in ck:
        # Stage two carries its discriminators (float16, ~1.5 MB) so a new machine resumes the
        # adversarial game where it stood instead of against fresh critics.
        out["gan"] = {"disc": {k: v.half() if v.is_floating_point() else v
                               for k, v in ck["gan"]["disc"].items()},
                      "start": int(ck["gan"]["start"])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(out, args.out)
    print(f"{args.out}: step {ck['step']}, {os.path.getsize(args.out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
