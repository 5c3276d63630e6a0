"""Causal streaming speech codec: STFT front end, ConvNeXt encoder, residual VQ,
ConvNeXt decoder with an inverse-DFT + overlap-add head (Vocos style).

Why explicit state everywhere: the Rust runtime runs encoder and decoder one
20 ms frame at a time. Every stateful layer implements
``forward(x, state) -> (y, new_state)``: it prepends its state (the past
context) to the new input along time and runs an *unpadded* op. Training runs
the same code on a whole sequence with a zero initial state, streaming runs it
with one frame at a time, so both give the same numbers by construction.

Shapes: PCM is [B, 320*T]; frame-rate tensors are channels-last [B, T, C].
Time line: encoder frame t sees samples < 320(t+1); decoder frame t emits
samples [320t-240, 320t+80) of the input time line (decoder delay 240).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import dsp
from .dsp import FRAME, HOP, NBINS, OVERLAP, SUB

FEAT_DIM = SUB * 2 * NBINS  # 1288 features (and decoder outputs) per codec frame


class Analysis(nn.Module):
    """STFT (window 320, hop 80) as strided conv with a fixed DFT basis.

    Returns per codec frame the 4 sub-frames' power-law compressed complex
    spectra (|X|^p * X/|X|), concatenated. State: the last 240 input samples.
    """

    def __init__(self, power: float = 0.3):
        super().__init__()
        self.power = power
        self.register_buffer("basis", dsp.analysis_basis().unsqueeze(1), persistent=False)

    def state_shapes(self):
        return [(OVERLAP,)]

    def macs_per_frame(self) -> int:
        return SUB * 2 * NBINS * dsp.WIN

    def forward(self, pcm: torch.Tensor, state: torch.Tensor):
        buf = torch.cat([state, pcm], dim=1)                       # [B, 240 + 320T]
        spec = F.conv1d(buf.unsqueeze(1), self.basis, stride=HOP)  # [B, 322, 4T]
        re, im = spec[:, :NBINS], spec[:, NBINS:]
        scale = (re * re + im * im + 1e-12).pow((self.power - 1.0) / 2.0)
        feats = torch.cat([re * scale, im * scale], dim=1)         # [B, 322, 4T]
        b = feats.shape[0]
        feats = feats.reshape(b, 2 * NBINS, -1, SUB)               # [B, 322, T, 4]
        feats = feats.permute(0, 2, 3, 1).reshape(b, -1, FEAT_DIM)  # [B, T, 1288]
        return feats, buf[:, buf.shape[1] - OVERLAP:]


class CausalConvNeXt(nn.Module):
    """ConvNeXt block at frame rate: causal depthwise conv -> LayerNorm ->
    pointwise MLP (GELU) -> layer-scale -> residual. State: last k-1 frames."""

    def __init__(self, dim: int, hidden: int, kernel: int, layer_scale: float):
        super().__init__()
        self.ctx = kernel - 1
        self.dim, self.hidden, self.kernel = dim, hidden, kernel
        self.dw = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, hidden)
        self.pw2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def state_shapes(self):
        return [(self.ctx, self.dim)]

    def macs_per_frame(self) -> int:
        return self.dim * self.kernel + 2 * self.dim * self.hidden

    def forward(self, x: torch.Tensor, state: torch.Tensor):
        buf = torch.cat([state, x], dim=1)                 # [B, k-1+T, C]
        h = self.dw(buf.transpose(1, 2)).transpose(1, 2)   # [B, T, C] (unpadded)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + self.gamma * h, buf[:, buf.shape[1] - self.ctx:]


def _linear_macs(lin: nn.Linear) -> int:
    return lin.in_features * lin.out_features


class Encoder(nn.Module):
    """PCM [B, 320T] -> latent [B, T, latent_dim]."""

    def __init__(self, dim=256, hidden=768, kernel=7, blocks=4, latent_dim=64):
        super().__init__()
        self.analysis = Analysis()
        self.inp = nn.Linear(FEAT_DIM, dim)
        self.blocks = nn.ModuleList(
            CausalConvNeXt(dim, hidden, kernel, 1.0 / blocks) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, latent_dim)

    def state_shapes(self):
        shapes = list(self.analysis.state_shapes())
        for blk in self.blocks:
            shapes += blk.state_shapes()
        return shapes

    def init_state(self, batch: int, device=None):
        return [torch.zeros(batch, *s, device=device) for s in self.state_shapes()]

    def macs_per_frame(self) -> int:
        return (self.analysis.macs_per_frame() + _linear_macs(self.inp)
                + sum(b.macs_per_frame() for b in self.blocks) + _linear_macs(self.out))

    def forward(self, pcm, state):
        feats, s0 = self.analysis(pcm, state[0])
        h = self.inp(feats)
        new_state = [s0]
        for blk, s in zip(self.blocks, state[1:]):
            h, ns = blk(h, s)
            new_state.append(ns)
        return self.out(self.norm(h)), new_state


class Decoder(nn.Module):
    """latent [B, T, latent_dim] -> PCM [B, 320T], delayed by 240 samples.

    Head: per sub-frame log-magnitude m and phase p, X = exp(min(m, 7)) e^{ip},
    inverse real DFT times synthesis window (one matmul), overlap-add at hop 80.
    OLA state: the pending 240-sample tail.
    """

    def __init__(self, dim=256, hidden=768, kernel=7, blocks=6, latent_dim=64,
                 max_log_mag: float = 7.0):
        super().__init__()
        self.max_log_mag = max_log_mag
        self.inp = nn.Linear(latent_dim, dim)
        self.blocks = nn.ModuleList(
            CausalConvNeXt(dim, hidden, kernel, 1.0 / blocks) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, FEAT_DIM)
        with torch.no_grad():  # start quiet: log-magnitude bias -4
            self.out.bias.view(SUB, 2, NBINS)[:, 0].fill_(-4.0)
        self.register_buffer("synth", dsp.synthesis_basis(), persistent=False)

    def state_shapes(self):
        shapes = []
        for blk in self.blocks:
            shapes += blk.state_shapes()
        return shapes + [(OVERLAP,)]

    def init_state(self, batch: int, device=None):
        return [torch.zeros(batch, *s, device=device) for s in self.state_shapes()]

    def macs_per_frame(self) -> int:
        return (_linear_macs(self.inp) + sum(b.macs_per_frame() for b in self.blocks)
                + _linear_macs(self.out) + SUB * 2 * NBINS * dsp.WIN)

    def forward(self, z, state):
        h = self.inp(z)
        new_state = []
        for blk, s in zip(self.blocks, state[:-1]):
            h, ns = blk(h, s)
            new_state.append(ns)
        h = self.out(self.norm(h))                        # [B, T, 1288]
        b = h.shape[0]
        h = h.reshape(b, -1, 2, NBINS)                    # [B, 4T, 2, 161]
        mag = torch.exp(torch.clamp(h[:, :, 0], max=self.max_log_mag))
        ph = h[:, :, 1]
        spec = torch.cat([mag * torch.cos(ph), mag * torch.sin(ph)], dim=-1)  # [B, 4T, 322]
        frames = torch.matmul(spec, self.synth)           # [B, 4T, 320] windowed frames
        chunks = frames.reshape(b, -1, SUB, HOP)          # [B, 4T, 4, 80]
        y = F.pad(chunks[:, :, 0], (0, 0, 0, 3))
        for c in range(1, SUB):                           # overlap-add at hop 80
            y = y + F.pad(chunks[:, :, c], (0, 0, c, SUB - 1 - c))
        y = y.reshape(b, -1)                              # [B, 320T + 240]
        ola = state[-1]
        y = torch.cat([y[:, :OVERLAP] + ola, y[:, OVERLAP:]], dim=1)
        n = y.shape[1] - OVERLAP
        new_state.append(y[:, n:])
        return y[:, :n], new_state


class ResidualVQ(nn.Module):
    """Plain residual VQ (squared L2 in latent space) with EMA codebooks.

    The codebooks are buffers updated by exponential moving averages of the
    assigned residuals (k-means style); codes whose usage EMA drops below a
    threshold are restarted from random residuals of the current batch. The
    encoder gets a commitment loss; the decoder input uses a straight-through
    estimator. In deployment the search and the codeword sum run in Rust.
    """

    def __init__(self, num_codebooks=12, codebook_size=1024, dim=64,
                 decay=0.99, dead_fraction=0.05):
        super().__init__()
        self.n_q, self.size, self.dim = num_codebooks, codebook_size, dim
        self.decay, self.dead_fraction = decay, dead_fraction
        self.register_buffer("codebooks", torch.randn(num_codebooks, codebook_size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(num_codebooks, codebook_size))
        self.register_buffer("ema_sum", self.codebooks.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def nearest(r: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
        d = (r * r).sum(-1, keepdim=True) - 2 * r @ cb.t() + (cb * cb).sum(-1)[None]
        return d.argmin(-1)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """z [..., D] -> codes [..., n_q] (no updates)."""
        n_q = n_q or self.n_q
        r = z.reshape(-1, self.dim)
        codes = []
        for i in range(n_q):
            idx = self.nearest(r, self.codebooks[i])
            codes.append(idx)
            r = r - self.codebooks[i][idx]
        return torch.stack(codes, -1).reshape(*z.shape[:-1], n_q)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        out = 0
        for i in range(codes.shape[-1]):
            out = out + self.codebooks[i][codes[..., i]]
        return out

    @torch.no_grad()
    def _sample(self, r: torch.Tensor, n: int) -> torch.Tensor:
        idx = torch.randint(0, r.shape[0], (n,), device=r.device)
        return r[idx] + 1e-3 * torch.randn(n, self.dim, device=r.device) * r.std()

    @torch.no_grad()
    def _update(self, i: int, r: torch.Tensor, idx: torch.Tensor):
        onehot = F.one_hot(idx, self.size).to(r.dtype)        # [N, K]
        counts = onehot.sum(0)
        sums = onehot.t() @ r
        self.ema_count[i].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum[i].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count[i].sum()
        smoothed = (self.ema_count[i] + 1e-5) / (n + self.size * 1e-5) * n
        self.codebooks[i].copy_(self.ema_sum[i] / smoothed[:, None])
        dead = self.ema_count[i] < self.dead_fraction * r.shape[0] / self.size
        nd = int(dead.sum())
        if nd:
            fresh = self._sample(r, nd)
            self.codebooks[i][dead] = fresh
            self.ema_sum[i][dead] = fresh
            self.ema_count[i][dead] = 1.0

    def forward(self, z: torch.Tensor, n_q: torch.Tensor | None = None):
        """z [B, T, D]; n_q [B] ints in 1..n_q (None: all).

        Returns (z_q with straight-through gradient, codes [B, T, n_q], commit loss).
        """
        b, t, d = z.shape
        r = z.reshape(-1, d)
        if self.training and not bool(self.initialised):
            with torch.no_grad():
                rr = r.detach()
                for i in range(self.n_q):
                    self.codebooks[i].copy_(self._sample(rr, self.size))
                    self.ema_sum[i].copy_(self.codebooks[i])
                    rr = rr - self.codebooks[i][self.nearest(rr, self.codebooks[i])]
                self.initialised.fill_(True)
        if n_q is None:
            n_q = torch.full((b,), self.n_q, device=z.device)
        keep = (torch.arange(self.n_q, device=z.device)[None] < n_q[:, None])  # [B, n_q]
        keep = keep[:, None, :].expand(b, t, self.n_q).reshape(-1, self.n_q).to(z.dtype)
        q_sum = torch.zeros_like(r)
        commit = z.new_zeros(())
        codes = []
        for i in range(self.n_q):
            idx = self.nearest(r.detach(), self.codebooks[i])
            q = self.codebooks[i][idx]
            commit = commit + F.mse_loss(r, q)
            if self.training:
                self._update(i, r.detach(), idx)
            q_sum = q_sum + keep[:, i:i + 1] * q
            r = r - q
            codes.append(idx)
        zq = z + (q_sum.reshape(b, t, d) - z).detach()
        return zq, torch.stack(codes, -1).reshape(b, t, self.n_q), commit / self.n_q


class Codec(nn.Module):
    """Encoder + RVQ + decoder, run on whole sequences (training/eval)."""

    def __init__(self, enc_dim=256, enc_hidden=768, enc_kernel=7, enc_blocks=4,
                 dec_dim=256, dec_hidden=768, dec_kernel=7, dec_blocks=6,
                 latent_dim=64, num_codebooks=12, codebook_size=1024,
                 ema_decay=0.99, dead_fraction=0.05):
        super().__init__()
        self.encoder = Encoder(enc_dim, enc_hidden, enc_kernel, enc_blocks, latent_dim)
        self.rvq = ResidualVQ(num_codebooks, codebook_size, latent_dim, ema_decay, dead_fraction)
        self.decoder = Decoder(dec_dim, dec_hidden, dec_kernel, dec_blocks, latent_dim)

    def forward(self, pcm: torch.Tensor, n_q: torch.Tensor | None = None):
        b = pcm.shape[0]
        z, _ = self.encoder(pcm, self.encoder.init_state(b, pcm.device))
        zq, codes, commit = self.rvq(z, n_q)
        y, _ = self.decoder(zq, self.decoder.init_state(b, pcm.device))
        return y, commit, codes


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def state_size(shapes) -> int:
    n = 0
    for s in shapes:
        k = 1
        for d in s:
            k *= d
        n += k
    return n
