"""Corpus loading and random cropping for training/validation.

Why one concatenated buffer: many corpus files (single letters, short prompts)
are shorter than the 1 s training crop. All train files are joined into one
int16 array with short silences between them, and crops are drawn uniformly
from it (so sampling is proportional to duration and crops may span file
boundaries, which the codec must handle anyway). Near-silent crops are
re-drawn; a random gain of +-6 dB is applied.
"""
from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
import soundfile as sf

GAP = 1600  # 0.1 s of silence between files


def corpus_dir(cfg_dir: str | None = None) -> str:
    d = cfg_dir or os.environ.get("AIC_CORPUS_DIR") or os.path.expanduser("~/.cache/aic/corpus")
    return os.path.expanduser(d)


def read_manifest(root: str):
    with open(os.path.join(root, "manifest.tsv"), newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def load_wav(root: str, rel: str) -> np.ndarray:
    a, sr = sf.read(os.path.join(root, rel), dtype="int16")
    assert sr == 16000, (rel, sr)
    return a if a.ndim == 1 else a[:, 0]


class CropSampler:
    def __init__(self, root: str, split: str = "train", crop: int = 16000,
                 seed: int = 0, gain_db: float = 6.0, min_rms_db: float = -50.0):
        rows = [r for r in read_manifest(root) if r["split"] == split]
        parts = []
        gap = np.zeros(GAP, np.int16)
        for r in rows:
            parts += [load_wav(root, r["path"]), gap]
        self.audio = np.concatenate(parts)
        self.rows = rows
        self.crop, self.gain_db = crop, gain_db
        self.min_rms = 10 ** (min_rms_db / 20)
        self.rng = np.random.default_rng(seed)
        self.packages = sorted({r["package"] for r in rows})

    @property
    def minutes(self) -> float:
        return len(self.audio) / 16000 / 60

    def one(self) -> np.ndarray:
        for _ in range(20):
            s = int(self.rng.integers(0, len(self.audio) - self.crop))
            x = self.audio[s:s + self.crop].astype(np.float32) / 32768.0
            if np.sqrt(np.mean(x * x)) >= self.min_rms:
                break
        x = x * 10 ** (self.rng.uniform(-self.gain_db, self.gain_db) / 20)
        peak = np.abs(x).max()
        if peak > 0.999:
            x = x * (0.999 / peak)
        return x

    def batch(self, n: int) -> np.ndarray:
        return np.stack([self.one() for _ in range(n)])


def validation_clips(root: str, n: int = 20, max_len: int = 48000, min_len: int = 16000):
    """n fixed held-out clips (deterministic order by path hash), each cut to a
    multiple of 320 samples, at most max_len long."""
    rows = [r for r in read_manifest(root) if r["split"] == "valid"
            and float(r["duration_s"]) * 16000 >= min_len]
    rows.sort(key=lambda r: hashlib.md5(r["path"].encode()).hexdigest())
    # spread over packages: round-robin
    by_pkg: dict[str, list] = {}
    for r in rows:
        by_pkg.setdefault(r["package"], []).append(r)
    chosen = []
    while len(chosen) < n and any(by_pkg.values()):
        for k in sorted(by_pkg):
            if by_pkg[k] and len(chosen) < n:
                chosen.append(by_pkg[k].pop(0))
    clips = []
    for r in chosen:
        a = load_wav(root, r["path"]).astype(np.float32) / 32768.0
        L = min(len(a), max_len) // 320 * 320
        clips.append((r["path"], a[:L]))
    return clips
