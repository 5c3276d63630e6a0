"""Train the aic-speech codec on CPU, resumably.

Why this shape: the run lives in the background for hours on a shared 2-core
machine, so it must survive interruption. State (model incl. EMA codebooks,
optimizer, step, RNG states) is checkpointed every few minutes and on SIGTERM
to $AIC_TRAIN_DIR/ckpt_last.pt; ``--resume`` continues from it.

Usage (from models/):  python -m aic_speech.train --config train_config.toml [--resume]
                                                        [--init-from checkpoints/aic-speech-v1.pt]
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import sys
import time
import tomllib

import numpy as np
import torch

from .data import CropSampler, corpus_dir, validation_clips
from .disc import Discriminators, d_loss, g_losses
from .dsp import OVERLAP
from .losses import CodecLoss
from .model import Codec, count_params


def train_dir() -> str:
    return os.environ.get("AIC_TRAIN_DIR", os.path.expanduser("~/aic-train"))


def build_model(cfg) -> Codec:
    return Codec(**cfg["model"])


def build_loss(cfg) -> CodecLoss:
    lc = {k: v for k, v in cfg["loss"].items() if k != "w_commit"}
    return CodecLoss(**lc)


def lr_at(step: int, tc) -> float:
    if step < tc["warmup_steps"]:
        return tc["lr"] * (step + 1) / tc["warmup_steps"]
    p = min(1.0, (step - tc["warmup_steps"]) / max(1, tc["decay_steps"] - tc["warmup_steps"]))
    return tc["lr_min"] + 0.5 * (tc["lr"] - tc["lr_min"]) * (1 + math.cos(math.pi * p))


def draw_nq(b: int, n_q: int, frac: float) -> torch.Tensor:
    rand = torch.randint(1, n_q + 1, (b,))
    return torch.where(torch.rand(b) < frac, rand, torch.full((b,), n_q))


def aligned(y: torch.Tensor, x: torch.Tensor):
    """Output sample n corresponds to input sample n - 240."""
    return y[..., OVERLAP:], x[..., :x.shape[-1] - OVERLAP]


@torch.no_grad()
def validate(model: Codec, loss_fn: CodecLoss, clips, levels=(12, 2)) -> dict:
    from pystoi import stoi
    model.eval()
    out = {}
    for lv in levels:
        mel, st = [], []
        for _, a in clips:
            x = torch.from_numpy(a)[None]
            y, _, _ = model(x, torch.tensor([lv]))
            ya, xa = aligned(y, x)
            mel.append(float(loss_fn(ya, xa)[1]["mel"]))
            st.append(stoi(xa[0].numpy(), ya[0].numpy(), 16000, extended=False))
        out[f"mel@{lv}"] = float(np.mean(mel))
        out[f"stoi@{lv}"] = float(np.mean(st))
    model.train()
    return out


def save_ckpt(path, model, opt, step, cfg, sampler, gan=None):
    state = dict(model=model.state_dict(), opt=opt.state_dict(), step=step, config=cfg,
                 rng=dict(torch=torch.get_rng_state(), numpy=sampler.rng.bit_generator.state,
                          python=random.getstate()))
    if gan is not None:
        state["gan"] = dict(disc=gan["disc"].state_dict(), opt_d=gan["opt_d"].state_dict(),
                            start=gan["start"])
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--resume", action="store_true", help="continue from ckpt_last.pt if present")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    ap.add_argument("--init-from", default=None,
                    help="when no ckpt_last.pt exists: start from this (slim) checkpoint's weights and step")
    args = ap.parse_args(argv)

    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    tc = cfg["train"]
    torch.set_num_threads(tc["threads"])
    torch.set_num_interop_threads(1)
    out_dir = train_dir()
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "ckpt_last.pt")
    log = open(os.path.join(out_dir, "train.log"), "a", buffering=1)

    def say(msg):
        line = time.strftime("%Y-%m-%dT%H:%M:%S ") + msg
        print(line, flush=True)
        log.write(line + "\n")

    torch.manual_seed(tc["seed"])
    random.seed(tc["seed"])
    root = corpus_dir(cfg["data"].get("corpus_dir") or None)
    dc = cfg["data"]
    sampler = CropSampler(root, "train", dc["crop_samples"], tc["seed"], dc["gain_db"], dc["min_rms_db"])
    clips = validation_clips(root, tc["valid_clips"])
    model = build_model(cfg)
    loss_fn = build_loss(cfg)
    gc = cfg.get("gan", {})
    gan = None
    if gc.get("enabled", False):
        # Stage two: the encoder and the RVQ (the bitstream) stay as stage one left them when
        # freeze_encoder is set; only the decoder learns against the discriminators.
        frozen = gc.get("freeze_encoder", True)
        if frozen:
            for p_ in list(model.encoder.parameters()) + list(model.rvq.parameters()):
                p_.requires_grad_(False)
        disc = Discriminators()
        gan = dict(disc=disc, frozen=frozen, start=None,
                   opt_d=torch.optim.AdamW(disc.parameters(), lr=gc["lr_d"], betas=(0.8, 0.99)))
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc["lr"], betas=tuple(tc["betas"]),
                            weight_decay=tc["weight_decay"])
    step = 0
    if os.path.exists(ckpt_path):
        if not args.resume:
            sys.exit(f"{ckpt_path} exists: pass --resume to continue, or move it away")
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        torch.set_rng_state(ck["rng"]["torch"])
        sampler.rng.bit_generator.state = ck["rng"]["numpy"]
        random.setstate(ck["rng"]["python"])
        if gan is not None and "gan" in ck:
            gan["disc"].load_state_dict(ck["gan"]["disc"])
            gan["opt_d"].load_state_dict(ck["gan"]["opt_d"])
            gan["start"] = ck["gan"]["start"]
        say(f"resumed from {ckpt_path} at step {step}")
    elif args.init_from:
        ck = torch.load(args.init_from, map_location="cpu", weights_only=False)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
        step = int(ck["step"])
        if gan is not None and "gan" in ck:
            gan["disc"].load_state_dict({k: v.float() if v.is_floating_point() else v
                                         for k, v in ck["gan"]["disc"].items()})
            gan["start"] = int(ck["gan"]["start"])
            say(f"discriminators restored from {args.init_from} (GAN stage since {gan['start']})")
        say(f"initialised from {args.init_from} at step {step} (fresh optimizer)")
    if gan is not None and gan["start"] is None:
        gan["start"] = step
    if gan is not None:
        say(f"GAN stage since step {gan['start']}: w_adv {gc['w_adv']} w_fm {gc['w_fm']} "
            f"frozen encoder/RVQ {gan['frozen']}; disc params {count_params(gan['disc'])}")
    say(f"corpus {root}: {sampler.minutes:.1f} min train, {len(clips)} valid clips; "
        f"params enc={count_params(model.encoder)} dec={count_params(model.decoder)}")

    stop = {"flag": False}

    def on_term(signum, frame):
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    model.train()
    n_q = cfg["model"]["num_codebooks"]
    last_ckpt = time.time()
    acc, t0, n_acc = {}, time.time(), 0
    while not stop["flag"] and (args.max_steps is None or step < args.max_steps):
        lr = lr_at(step - (gan["start"] if gan else 0), tc)
        for g in opt.param_groups:
            g["lr"] = lr
        x = torch.from_numpy(sampler.batch(tc["batch_size"]))
        nq = draw_nq(x.shape[0], n_q, tc["quantizer_dropout"])
        if gan is not None and gan["frozen"]:
            with torch.no_grad():
                model.encoder.eval()
                model.rvq.eval()
                z, _ = model.encoder(x, model.encoder.init_state(x.shape[0]))
                zq, _, commit = model.rvq(z, nq)
            y, _ = model.decoder(zq, model.decoder.init_state(x.shape[0]))
        else:
            y, commit, _ = model(x, nq)
        ya, xa = aligned(y, x)
        rec, parts = loss_fn(ya, xa)
        loss = rec + cfg["loss"]["w_commit"] * commit
        if gan is not None:
            disc = gan["disc"]
            # The discriminators see one random window of each batch (half a second by
            # default): they cost more than the generator per sample on this CPU.
            seg = min(int(gc.get("segment", 8000)), xa.shape[-1])
            off = random.randrange(0, xa.shape[-1] - seg + 1)
            xs, ys = xa[:, off:off + seg], ya[:, off:off + seg]
            ld = d_loss(disc(xs), disc(ys.detach()))
            gan["opt_d"].zero_grad(set_to_none=True)
            ld.backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), tc["grad_clip"] * 10)
            gan["opt_d"].step()
            with torch.no_grad():
                real = disc(xs)
            adv, fm = g_losses(real, disc(ys))
            loss = loss + gc["w_adv"] * adv + gc["w_fm"] * fm
            parts.update(d=ld.detach(), adv=adv.detach(), fm=fm.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
        if torch.isfinite(gn):
            opt.step()
        step += 1
        parts = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}
        parts.update(loss=float(loss), commit=float(commit), gnorm=float(gn))
        for k, v in parts.items():
            acc[k] = acc.get(k, 0.0) + v
        n_acc += 1
        if step % tc["log_every"] == 0:
            dt = (time.time() - t0) / n_acc
            say(f"step {step} lr {lr:.2e} " + " ".join(f"{k} {v / n_acc:.4f}" for k, v in acc.items())
                + f" s/step {dt:.3f}")
            acc, t0, n_acc = {}, time.time(), 0
        if step % tc["valid_every"] == 0:
            tv = time.time()
            v = validate(model, loss_fn, clips)
            say(f"valid step {step} " + " ".join(f"{k} {x:.4f}" for k, x in v.items())
                + f" ({time.time() - tv:.1f}s)")
            t0 += time.time() - tv  # keep validation time out of s/step
        if step % tc["keep_every"] == 0:
            save_ckpt(ckpt_path, model, opt, step, cfg, sampler, gan)
            shutil.copy(ckpt_path, os.path.join(out_dir, f"ckpt_step{step:07d}.pt"))
            last_ckpt = time.time()
        elif time.time() - last_ckpt > tc["ckpt_minutes"] * 60:
            save_ckpt(ckpt_path, model, opt, step, cfg, sampler, gan)
            last_ckpt = time.time()
    save_ckpt(ckpt_path, model, opt, step, cfg, sampler, gan)
    say(f"stopped at step {step}; saved {ckpt_path}")


if __name__ == "__main__":
    main()
