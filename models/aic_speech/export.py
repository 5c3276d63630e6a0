"""Export a trained checkpoint to the runtime's model directory.

Why this layout: the Rust runtime streams one 20 ms frame at a time and owns
the RVQ search, the codeword sum and the entropy coder. So we export two small
single-frame ONNX graphs whose whole internal state is ONE flat float vector per
stream (sliced/reshaped inside the graph; zeros initially), the codebooks as a
raw f32 array, and per-codebook symbol frequencies (sum exactly 2^15, every
entry >= 1) measured on training audio for the range coder. The script checks
that onnxruntime run frame-by-frame with carried state matches the PyTorch
whole-sequence output.

Usage (from models/):  python -m aic_speech.export --ckpt CKPT --out aic-speech-v1/

A model whose encoder and codebooks are another's (v2: v1's decoder fine-tuned, encoder and RVQ
frozen) takes that model's entropy tables with `--entropy-from aic-speech-v1/` (its code
statistics are the other model's; the export refuses if the codebooks differ). The encoder is
exported from the checkpoint as trained: after a slim (fp16) checkpoint it is the other model's
encoder rounded to fp16, so a rare frame may pick a different code than the other model would.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np
import torch
from torch import nn

from .data import CropSampler, corpus_dir, validation_clips
from .dsp import FRAME, OVERLAP, SAMPLE_RATE
from .model import Codec, count_params, state_size

LEVELS = [1, 2, 3, 4, 6, 8, 10, 12]
PRECISION_BITS = 15
LICENCES = ("asterisk-core-sounds-*-g722: CC-BY-SA-3.0; "
            "klettres-data, ktuberling-data: GPL-2+")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def unpack(flat: torch.Tensor, shapes):
    out, off = [], 0
    for s in shapes:
        n = _numel(s)
        out.append(flat[:, off:off + n].reshape(-1, *s))
        off += n
    return out


def pack(states) -> torch.Tensor:
    return torch.cat([s.reshape(s.shape[0], -1) for s in states], dim=1)


class EncoderStep(nn.Module):
    """(pcm [B,320], state [B,S_enc]) -> (latent [B,64], state_out [B,S_enc])."""

    def __init__(self, enc):
        super().__init__()
        self.enc, self.shapes = enc, enc.state_shapes()

    def forward(self, pcm, state):
        z, new = self.enc(pcm, unpack(state, self.shapes))
        return z[:, 0], pack(new)


class DecoderStep(nn.Module):
    """(latent [B,64], state [B,S_dec]) -> (pcm [B,320], state_out [B,S_dec])."""

    def __init__(self, dec):
        super().__init__()
        self.dec, self.shapes = dec, dec.state_shapes()

    def forward(self, latent, state):
        y, new = self.dec(latent[:, None, :], unpack(state, self.shapes))
        return y, pack(new)


def to_frequencies(counts: np.ndarray, total: int = 1 << PRECISION_BITS) -> list[int]:
    """Integer frequencies proportional to counts, each >= 1, summing to total."""
    n = len(counts)
    c = counts.astype(np.float64)
    if c.sum() <= 0:
        c = np.ones(n)
    budget = total - n
    share = c / c.sum() * budget
    f = np.floor(share).astype(np.int64)
    rem = int(budget - f.sum())
    order = np.argsort(-(share - f), kind="stable")
    f[order[:rem]] += 1
    f += 1
    assert f.sum() == total and f.min() >= 1
    return [int(v) for v in f]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(module, args, names_in, names_out, path, out_dims):
    """Export with dynamic batch; then pin the (static) non-batch output dims,
    which the tracer leaves symbolic, so consumers see [B, 320] etc."""
    import onnx
    torch.onnx.export(module, args, path, input_names=names_in, output_names=names_out,
                      dynamic_axes={n: {0: "B"} for n in names_in + names_out},
                      opset_version=17, dynamo=False)
    m = onnx.load(path)
    for out, dim in zip(m.graph.output, out_dims):
        d = out.type.tensor_type.shape.dim[1]
        d.ClearField("dim_param")
        d.dim_value = dim
    onnx.checker.check_model(m)
    onnx.save(m, path)


@torch.no_grad()
def code_counts(model: Codec, root: str, minutes: float) -> np.ndarray:
    """Run encoder + RVQ over ~minutes of training audio (10 s pieces spread
    evenly over the whole concatenated train corpus); count code usage."""
    audio = CropSampler(root, "train").audio
    piece = 10 * SAMPLE_RATE
    n_pieces = len(audio) // piece
    want = max(1, min(n_pieces, int(minutes * 6)))
    idx = np.linspace(0, n_pieces - 1, want).astype(int)
    counts = np.zeros((model.rvq.n_q, model.rvq.size), np.int64)
    for i in range(0, len(idx), 8):
        x = np.stack([audio[j * piece:(j + 1) * piece] for j in idx[i:i + 8]])
        x = torch.from_numpy(x.astype(np.float32) / 32768.0)
        z, _ = model.encoder(x, model.encoder.init_state(x.shape[0]))
        codes = model.rvq.encode(z).reshape(-1, model.rvq.n_q).numpy()
        for q in range(model.rvq.n_q):
            counts[q] += np.bincount(codes[:, q], minlength=model.rvq.size)
    return counts


@torch.no_grad()
def verify(model: Codec, enc_path: str, dec_path: str, root: str) -> dict:
    import onnxruntime as ort
    clips = validation_clips(root, 2, max_len=2 * SAMPLE_RATE)
    L = min(len(a) for _, a in clips)
    x = torch.from_numpy(np.stack([a[:L] for _, a in clips]))
    b, T = x.shape[0], L // FRAME
    z, _ = model.encoder(x, model.encoder.init_state(b))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    enc = ort.InferenceSession(enc_path, so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(dec_path, so, providers=["CPUExecutionProvider"])
    s_enc = state_size(model.encoder.state_shapes())
    s_dec = state_size(model.decoder.state_shapes())
    st = np.zeros((b, s_enc), np.float32)
    zs = []
    for t in range(T):
        zt, st = enc.run(None, {"pcm": x[:, t * FRAME:(t + 1) * FRAME].numpy(), "state": st})
        zs.append(zt)
    z_ort = np.stack(zs, 1)
    res = {"frames": T, "batch": b,
           "encoder_max_abs_diff": float(np.abs(z_ort - z.numpy()).max()),
           "latent_abs_max": float(z.abs().max())}
    for lv in (12, 2):
        zq = model.rvq.decode(model.rvq.encode(z, lv))
        y, _ = model.decoder(zq, model.decoder.init_state(b))
        st = np.zeros((b, s_dec), np.float32)
        ys = []
        zq_np = zq.numpy().astype(np.float32)
        for t in range(T):
            yt, st = dec.run(None, {"latent": zq_np[:, t], "state": st})
            ys.append(yt)
        y_ort = np.concatenate(ys, 1)
        res[f"decoder_max_abs_diff@{lv}"] = float(np.abs(y_ort - y.numpy()).max())
        res[f"pcm_abs_max@{lv}"] = float(y.abs().max())
        xa, ya = x[:, :L - OVERLAP].numpy(), y_ort[:, OVERLAP:]
        snr = 10 * np.log10((xa ** 2).sum() / (((xa - ya) ** 2).sum() + 1e-12))
        res[f"snr_db@{lv}"] = float(snr)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--entropy-minutes", type=float, default=15.0)
    ap.add_argument("--corpus-dir", default=None)
    ap.add_argument("--model-id", default="aic-speech-v1")
    ap.add_argument("--entropy-from", default=None,
                    help="model dir whose entropy tables to reuse (same codebooks required)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    cfg, step = ck["config"], int(ck["step"])
    model = Codec(**cfg["model"])
    model.load_state_dict(ck["model"])
    model.eval()
    root = corpus_dir(args.corpus_dir or cfg["data"].get("corpus_dir") or None)
    os.makedirs(args.out, exist_ok=True)
    enc_path = os.path.join(args.out, "encoder.onnx")
    dec_path = os.path.join(args.out, "decoder.onnx")
    cb_path = os.path.join(args.out, "codebooks.bin")
    s_enc = state_size(model.encoder.state_shapes())
    s_dec = state_size(model.decoder.state_shapes())
    latent_dim, n_q, size = model.rvq.dim, model.rvq.n_q, model.rvq.size

    export_onnx(EncoderStep(model.encoder), (torch.zeros(1, FRAME), torch.zeros(1, s_enc)),
                ["pcm", "state"], ["latent", "state_out"], enc_path, [latent_dim, s_enc])
    export_onnx(DecoderStep(model.decoder), (torch.zeros(1, latent_dim), torch.zeros(1, s_dec)),
                ["latent", "state"], ["pcm", "state_out"], dec_path, [FRAME, s_dec])
    model.rvq.codebooks.numpy().astype("<f4").tofile(cb_path)

    res = verify(model, enc_path, dec_path, root)
    print("verification:", json.dumps(res, indent=1))
    ok = res["encoder_max_abs_diff"] < 1e-3 and all(
        res[f"decoder_max_abs_diff@{lv}"] < 1e-3 for lv in (12, 2))
    print("verification", "PASSED" if ok else "FAILED", "(tolerance 1e-3)")

    from .reference import write_reference
    print("reference:", write_reference(model, args.out))

    if args.entropy_from:
        with open(os.path.join(args.entropy_from, "manifest.json")) as f:
            other = json.load(f)
        if other["codebooks"]["sha256"] != sha256(cb_path):
            raise SystemExit(f"--entropy-from {args.entropy_from}: its codebooks differ")
        freqs = other["entropy"]["frequencies"]
        print(f"entropy tables from {other['model_id']} {other['model_version']}")
    else:
        counts = code_counts(model, root, args.entropy_minutes)
        freqs = [to_frequencies(c) for c in counts]
        used = [(c > 0).sum() for c in counts]
        print("codes used per codebook:", used)

    from .data import read_manifest
    packages = sorted({r["package"] for r in read_manifest(root)})
    manifest = {
        "format": "aic-model-manifest", "format_version": 1,
        "model_id": args.model_id, "model_version": f"0.1.0-step{step}",
        "sample_rate": SAMPLE_RATE, "frame_samples": FRAME,
        "decoder_delay_samples": OVERLAP, "algorithmic_latency_ms": 35,
        "latent_dim": latent_dim, "num_codebooks": n_q, "codebook_size": size,
        "encoder": {"file": "encoder.onnx", "sha256": sha256(enc_path), "state_size": s_enc,
                    "params": count_params(model.encoder),
                    "macs_per_frame": model.encoder.macs_per_frame()},
        "decoder": {"file": "decoder.onnx", "sha256": sha256(dec_path), "state_size": s_dec,
                    "params": count_params(model.decoder),
                    "macs_per_frame": model.decoder.macs_per_frame()},
        "codebooks": {"file": "codebooks.bin", "sha256": sha256(cb_path), "dtype": "f32le",
                      "shape": [n_q, size, latent_dim]},
        "entropy": {"precision_bits": PRECISION_BITS, "frequencies": freqs},
        "levels": LEVELS,
        "training": {"steps": step, "corpus": packages, "licences": LICENCES, "config": cfg},
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, separators=(",", ":"))
        f.write("\n")
    for p in (enc_path, dec_path, cb_path):
        print(f"{p}: {os.path.getsize(p) / 1e6:.2f} MB")
    if not ok:
        raise SystemExit("ONNX verification failed")


if __name__ == "__main__":
    main()
