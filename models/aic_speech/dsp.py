"""Fixed DSP building blocks expressed as plain matrices.

Why matrices: the STFT analysis and the inverse DFT + windowing in the decoder
are written as conv1d / matmul with constant bases so that the ONNX graphs only
contain ordinary Conv/MatMul ops (no STFT/DFT ops, which runtimes support
unevenly) and so that streaming is trivially exact.
"""
import math

import torch

SAMPLE_RATE = 16000
FRAME = 320          # codec frame (20 ms)
WIN = 320            # STFT window
HOP = 80             # STFT hop: 4 sub-frames per codec frame
SUB = FRAME // HOP   # 4
NBINS = WIN // 2 + 1  # 161
OVERLAP = WIN - HOP  # 240: analysis context and decoder delay


def sqrt_hann(n: int) -> torch.Tensor:
    """Periodic sqrt-Hann window (float64)."""
    k = torch.arange(n, dtype=torch.float64)
    return torch.sqrt(0.5 - 0.5 * torch.cos(2 * math.pi * k / n))


def analysis_basis() -> torch.Tensor:
    """[2*NBINS, WIN] windowed forward real DFT: rows = Re bins then Im bins.

    X_k = sum_n w[n] x[n] exp(-2 pi i k n / N).
    """
    n = torch.arange(WIN, dtype=torch.float64)
    k = torch.arange(NBINS, dtype=torch.float64)[:, None]
    ang = 2 * math.pi * k * n / WIN
    w = sqrt_hann(WIN)
    basis = torch.cat([torch.cos(ang) * w, -torch.sin(ang) * w], 0)
    return basis.float()


def synthesis_basis() -> torch.Tensor:
    """[2*NBINS, WIN] inverse real DFT times the synthesis window.

    Maps [Re X_0..Re X_160, Im X_0..Im X_160] to one windowed 320-sample frame.
    With sqrt-Hann analysis and synthesis windows at hop N/4 the squared
    windows sum to 2, hence the factor 1/2: analysis followed by synthesis and
    overlap-add reconstructs the input exactly (delayed by OVERLAP samples).
    """
    n = torch.arange(WIN, dtype=torch.float64)
    k = torch.arange(NBINS, dtype=torch.float64)[:, None]
    ang = 2 * math.pi * k * n / WIN
    c = torch.full((NBINS, 1), 2.0, dtype=torch.float64)
    c[0] = 1.0
    c[-1] = 1.0
    w = sqrt_hann(WIN) * 0.5
    re = c * torch.cos(ang) / WIN * w
    im = -c * torch.sin(ang) / WIN * w
    return torch.cat([re, im], 0).float()


def mel_filterbank(n_fft: int, n_mels: int, sr: int = SAMPLE_RATE,
                   fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """[n_mels, n_fft//2+1] triangular HTK-mel filterbank (area-normalised rows)."""
    fmax = fmax or sr / 2
    def hz2mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)
    def mel2hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)
    mels = torch.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2, dtype=torch.float64)
    hz = torch.tensor([mel2hz(float(m)) for m in mels], dtype=torch.float64)
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, ce, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lo) / (ce - lo)
    down = (hi - freqs[None]) / (hi - ce)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (hi - lo))  # slaney-style area normalisation
    return fb.float()
