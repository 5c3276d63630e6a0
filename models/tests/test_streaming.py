"""Streaming == whole-sequence check for a randomly initialised codec.

Why: the Rust runtime runs the exported graphs one frame at a time with a
carried state, while training runs whole sequences. This test guarantees the
two paths agree, and prints the params / MACs / state sizes and the time of
one training step.

Run: python -m pytest models/tests  or  python models/tests/test_streaming.py
"""
import os
import sys
import time

import pytest

# The test command runs models/tests from the project's .venv, which has ONNX Runtime but not
# PyTorch (a 5 GB install for training only): these checks need the training venv
# (models/setup_train_env.sh) and say so loudly where it is absent.
torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed here (training venv only): streaming checks of "
    "the PyTorch model SKIPPED; test_exported.py checks the committed graphs instead")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aic_speech.losses import CodecLoss  # noqa: E402
from aic_speech.model import Codec, count_params, state_size  # noqa: E402

T = 12


def _model():
    torch.manual_seed(0)
    m = Codec()
    m.eval()
    return m


def test_encoder_streaming():
    m = _model()
    x = torch.randn(2, 320 * T) * 0.1
    with torch.no_grad():
        z, _ = m.encoder(x, m.encoder.init_state(2))
        st, zs = m.encoder.init_state(2), []
        for t in range(T):
            zt, st = m.encoder(x[:, 320 * t:320 * (t + 1)], st)
            zs.append(zt)
    err = (torch.cat(zs, 1) - z).abs().max().item()
    print(f"encoder streaming max abs diff {err:.3g}")
    assert z.shape == (2, T, 64)
    assert err < 1e-4


def test_decoder_streaming():
    m = _model()
    z = torch.randn(2, T, 64)
    with torch.no_grad():
        y, _ = m.decoder(z, m.decoder.init_state(2))
        st, ys = m.decoder.init_state(2), []
        for t in range(T):
            yt, st = m.decoder(z[:, t:t + 1], st)
            ys.append(yt)
    err = (torch.cat(ys, 1) - y).abs().max().item()
    print(f"decoder streaming max abs diff {err:.3g}")
    assert y.shape == (2, 320 * T)
    assert err < 1e-4


def test_train_step_timing():
    torch.set_num_threads(2)
    m = Codec()
    m.train()
    loss_fn = CodecLoss()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randn(16, 16000) * 0.1
    times = []
    for _ in range(3):
        t = time.time()
        y, commit, _ = m(x, torch.randint(1, 13, (16,)))
        loss, _ = loss_fn(y[:, 240:], x[:, :-240])
        loss = loss + 0.25 * commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.time() - t)
    print(f"train step (batch 16 x 1 s, 2 threads): {min(times):.3f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"encoder params {count_params(m.encoder)} MACs/frame {m.encoder.macs_per_frame()} "
          f"state {state_size(m.encoder.state_shapes())}")
    print(f"decoder params {count_params(m.decoder)} MACs/frame {m.decoder.macs_per_frame()} "
          f"state {state_size(m.decoder.state_shapes())}")
    assert torch.isfinite(loss)


if __name__ == "__main__":
    test_encoder_streaming()
    test_decoder_streaming()
    test_train_step_timing()
    print("ok")
