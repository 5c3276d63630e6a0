"""Discriminators and adversarial losses for the v2 GAN fine-tune (training only).

Why these two: a multi-period discriminator (waveform folded by a prime period,
2-D convs; HiFi-GAN's idea) judges periodic structure, i.e. pitch harmonics and
their phase coherence, which a regression loss smears; a multi-resolution STFT
discriminator (complex spectrogram, 2-D convs over time x frequency; the
EnCodec/DAC idea) judges spectral texture: noise floors, band edges, buzz.
Both are sized for a 2-core CPU: channel widths are an eighth of the published
ones, and the STFT discriminator strides early. Least-squares GAN losses plus relative feature matching (each layer's L1
divided by the mean magnitude of the real features) keep the balance stable
without a gradient balancer.

Nothing here is exported: the runtime graphs are the generator's only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class PeriodDisc(nn.Module):
    def __init__(self, period: int, ch=(16, 32, 64, 128)):
        super().__init__()
        self.period = period
        layers, c_in = [], 1
        for c in ch:
            layers.append(weight_norm(nn.Conv2d(c_in, c, (5, 1), (3, 1), padding=(2, 0))))
            c_in = c
        layers.append(weight_norm(nn.Conv2d(c_in, c_in, (5, 1), 1, padding=(2, 0))))
        self.layers = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(c_in, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x):  # x [B, N]
        b, n = x.shape
        pad = (-n) % self.period
        x = F.pad(x, (0, pad), mode="reflect")
        h = x.reshape(b, 1, -1, self.period)
        feats = []
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.1)
            feats.append(h)
        return self.post(h), feats


class StftDisc(nn.Module):
    def __init__(self, n_fft: int, ch: int = 16):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("win", torch.hann_window(n_fft), persistent=False)
        # Strided along frequency from the first layer and along time from the third: the
        # full-resolution 2-D convs of the published discriminators cost ~30x more on a CPU.
        self.layers = nn.ModuleList([
            weight_norm(nn.Conv2d(2, ch, (3, 9), (1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(ch, ch, (3, 9), (2, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(ch, ch, (3, 9), (2, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(ch, ch, (3, 3), padding=(1, 1))),
        ])
        self.post = weight_norm(nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)))

    def forward(self, x):
        spec = torch.stft(x, self.n_fft, self.n_fft // 4, window=self.win, center=True,
                          return_complex=True)                      # [B, F, T]
        h = torch.view_as_real(spec).permute(0, 3, 2, 1)            # [B, 2, T, F]
        feats = []
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.1)
            feats.append(h)
        return self.post(h), feats


class Discriminators(nn.Module):
    def __init__(self, periods=(2, 3, 5, 7, 11), ffts=(256, 512, 1024)):
        super().__init__()
        self.discs = nn.ModuleList([PeriodDisc(p) for p in periods] + [StftDisc(n) for n in ffts])

    def forward(self, x):
        return [d(x) for d in self.discs]


def d_loss(real_out, fake_out) -> torch.Tensor:
    """Least-squares discriminator loss, averaged over discriminators."""
    loss = 0.0
    for (r, _), (f, _) in zip(real_out, fake_out):
        loss = loss + torch.mean((1 - r) ** 2) + torch.mean(f ** 2)
    return loss / len(real_out)


def g_losses(real_out, fake_out):
    """(adversarial, feature matching) for the generator, each averaged over discriminators."""
    adv, fm = 0.0, 0.0
    for (_, rf), (f, ff) in zip(real_out, fake_out):
        adv = adv + torch.mean((1 - f) ** 2)
        layer = 0.0
        for a, b in zip(rf, ff):
            a = a.detach()
            layer = layer + F.l1_loss(b, a) / (a.abs().mean() + 1e-5)
        fm = fm + layer / len(rf)
    return adv / len(real_out), fm / len(real_out)
