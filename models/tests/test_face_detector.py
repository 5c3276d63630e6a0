"""The committed face detector (`models/face-detector/`: MTCNN's P-, R- and O-net in ONNX).

Without PyTorch (the project's `.venv`, what `scripts/test.sh` runs):
- every graph the manifest `detector.json` names exists with the sha256 it states;
- each graph has the contract's input/outputs (`image` NCHW float32 -> `score`, `reg`);
- ONNX Runtime reproduces the PyTorch outputs written at export (`reference.npz`);
- a batch of different pictures equals each picture run alone (no cross-talk in the batch).
With PyTorch and facenet-pytorch's weights (the training venv + `pip install --no-deps
facenet-pytorch==2.6.0`, or `$FACENET_PYTORCH_DATA`): the graphs against the PyTorch nets on
fresh inputs, at several sizes and batch sizes; and the original cascade (facenet-pytorch's own
`detect_face`) still gives the reference boxes the Rust test compares with
(`video/tests/fixtures/roi_carphone_mtcnn.json`). Skipped loudly where either is missing.
"""
import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import pytest

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "face-detector")
TOL = 1e-4


def manifest():
    with open(os.path.join(DIR, "detector.json")) as f:
        return json.load(f)


def session(name):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    path = os.path.join(DIR, manifest()["graphs"][name]["file"])
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def run(s, x):
    score, reg = s.run(["score", "reg"], {"image": x.astype(np.float32)})
    return score, reg


NAMES = ["pnet", "rnet", "onet"]


def test_files_match_the_manifest():
    m = manifest()
    assert m["format"] == 1
    assert sorted(m["graphs"]) == sorted(NAMES)
    for name, g in m["graphs"].items():
        path = os.path.join(DIR, g["file"])
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == g["sha256"], name
        assert os.path.getsize(path) < 5 << 20, f"{name} is over 5 MB"


@pytest.mark.parametrize("name", NAMES)
def test_graph_io_contract(name):
    g = manifest()["graphs"][name]
    s = session(name)
    (i,) = s.get_inputs()
    assert i.name == "image" and i.type == "tensor(float)"
    assert len(i.shape) == 4 and i.shape[1] == 3
    if g["crop"] is None:
        assert all(isinstance(d, str) for d in (i.shape[0], i.shape[2], i.shape[3])), i.shape
    else:
        assert isinstance(i.shape[0], str) and i.shape[2:] == [g["crop"], g["crop"]], i.shape
    outs = {o.name: o.shape for o in s.get_outputs()}
    assert set(outs) == {"score", "reg"}
    want = 4 if g["crop"] is None else 2
    assert len(outs["score"]) == want and len(outs["reg"]) == want
    assert outs["score"][1] == 1 and outs["reg"][1] == 4


@pytest.mark.parametrize("name", NAMES)
def test_graphs_reproduce_the_pytorch_reference(name):
    ref = np.load(os.path.join(DIR, "reference.npz"))
    score, reg = run(session(name), ref[f"{name}_image"])
    assert score.shape == ref[f"{name}_score"].shape
    np.testing.assert_allclose(score, ref[f"{name}_score"], atol=TOL)
    np.testing.assert_allclose(reg, ref[f"{name}_reg"], atol=TOL)
    assert np.all((score >= 0) & (score <= 1))


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_one_at_a_time(name):
    crop = manifest()["graphs"][name]["crop"]
    h, w = (37, 52) if crop is None else (crop, crop)
    x = np.random.default_rng(7).integers(0, 256, (5, 3, h, w)).astype(np.float32)
    s = session(name)
    score, reg = run(s, x)
    for k in range(len(x)):
        s1, r1 = run(s, x[k:k + 1])
        np.testing.assert_allclose(score[k:k + 1], s1, atol=1e-5)
        np.testing.assert_allclose(reg[k:k + 1], r1, atol=1e-5)


def _skip(why):
    """A skip here, but under CI=true a failure: there scripts/setup.sh installs torch and the
    weights, so a missing one is a broken set-up, not a reason to pass."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {why}")
    pytest.skip(why)


def _pytorch_nets():
    try:
        import torch
    except ImportError:
        _skip("PyTorch is not installed here (training venv only): the face detector's "
              "graphs against the PyTorch nets SKIPPED; reference.npz checks them instead")
    sys.path.insert(0, DIR)
    from mtcnn import load, weights_dir
    data = weights_dir()
    if data is None or not os.path.exists(os.path.join(data, "pnet.pt")):
        _skip("facenet-pytorch's weights not found (pip install --no-deps "
                    "facenet-pytorch==2.6.0, or set FACENET_PYTORCH_DATA): graphs against the "
                    "PyTorch nets SKIPPED")
    return torch, {n: load(n, data) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_graphs_match_pytorch(name):
    torch, nets = _pytorch_nets()
    crop = manifest()["graphs"][name]["crop"]
    sizes = [(12, 12), (109, 193), (20, 35)] if crop is None else [(crop, crop)]
    g = np.random.default_rng(3)
    s = session(name)
    for batch in (1, 3):
        for h, w in sizes:
            x = g.integers(0, 256, (batch, 3, h, w)).astype(np.float32)
            with torch.no_grad():
                ts, tr = nets[name](torch.from_numpy(x))
            score, reg = run(s, x)
            np.testing.assert_allclose(score, ts.numpy(), atol=TOL)
            np.testing.assert_allclose(reg, tr.numpy(), atol=TOL)


def test_reference_boxes_of_the_original_cascade():
    """`video/tests/fixtures/roi_carphone_mtcnn.json` (what the Rust cascade is compared with)
    is what facenet-pytorch's own `detect_face` gives on the fixture frames."""
    _pytorch_nets()
    import shutil
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed: reference boxes of the original cascade SKIPPED")
    from reference_boxes import OUT, reference_boxes
    with open(OUT) as f:
        stored = json.load(f)["frames"]
    got = reference_boxes()
    assert len(got) == len(stored) == 2
    for g, s in zip(got, stored):
        assert len(g) == len(s) == 1
        np.testing.assert_allclose(g, s, atol=2e-3)
