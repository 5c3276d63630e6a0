"""Scores checkpoints side by side on the validation clips: STOI, PESQ-WB and DNSMOS OVRL per
level, in PyTorch (no export needed), so stage two's progress is visible while it trains.

    python -m aic_speech.evalq --ckpt checkpoints/aic-speech-v1.pt --ckpt $HOME/aic-train-v2/ckpt_last.pt \
        [--levels 2,6,12] [--clips 20]

Why DNSMOS beside the intrusive metrics: an adversarial decoder may invent plausible detail
that PESQ/STOI punish and a listener does not; DNSMOS (non-intrusive) sees naturalness. These
are the training corpus' validation clips, not the held-out set of the model card
(`datasets/make_heldout.sh`), which only the exported model is scored on.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from .data import corpus_dir, validation_clips
from .dsp import OVERLAP
from .model import Codec


def load(path: str) -> Codec:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    m = Codec(**ck["config"]["model"])
    m.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
    m.eval()
    return m, int(ck["step"])


@torch.no_grad()
def score(m: Codec, clips, level: int) -> dict:
    from pesq import pesq
    from pystoi import stoi
    from speechmos import dnsmos
    st, pq, dm = [], [], []
    for _, a in clips:
        x = torch.from_numpy(a)[None]
        y, _, _ = m(x, torch.tensor([level]))
        ya = y[0, OVERLAP:].numpy()
        xa = a[: len(a) - OVERLAP]
        st.append(stoi(xa, ya, 16000, extended=False))
        try:
            pq.append(pesq(16000, xa, ya, "wb"))
        except Exception:  # noqa: BLE001 (silence: no utterance)
            pass
        dm.append(float(dnsmos.run(np.clip(ya, -1, 1).astype(np.float32), 16000)["ovrl_mos"]))
    return dict(stoi=float(np.mean(st)), pesq_wb=float(np.mean(pq)) if pq else float("nan"),
                dnsmos=float(np.mean(dm)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", action="append", required=True)
    ap.add_argument("--levels", default="2,6,12")
    ap.add_argument("--clips", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("AIC_THREADS", "2")))
    clips = validation_clips(corpus_dir(None), args.clips)
    print("checkpoint\tstep\tlevel\tstoi\tpesq_wb\tdnsmos_ovrl")
    for path in args.ckpt:
        m, step = load(path)
        for lv in (int(v) for v in args.levels.split(",")):
            r = score(m, clips, lv)
            print(f"{os.path.basename(path)}\t{step}\tL{lv}\t{r['stoi']:.4f}\t{r['pesq_wb']:.3f}\t"
                  f"{r['dnsmos']:.3f}", flush=True)


if __name__ == "__main__":
    main()
