#!/usr/bin/env python3
"""Optional perceptual-quality evaluator called by the `aic` CLI.

    python3 scripts/eval_quality.py REF.wav DEG.wav
    python3 scripts/eval_quality.py --pairs LIST.tsv     (one "REF<TAB>DEG" per line)
    python3 scripts/eval_quality.py --metrics plcmos,dnsmos_ovrl --pairs LIST.tsv

Both files: 16 kHz mono WAV, already delay-aligned by the caller (if their lengths differ, the
longer one is truncated). Prints exactly ONE line of JSON on stdout:

    {"pesq_wb": float|null, "visqol": float|null, "dnsmos_ovrl": float|null,
     "errors": {"<metric or stage>": "<reason>"}}

* ``pesq_wb``: ITU-T P.862.2 wide-band PESQ MOS-LQO via the ``pesq`` package
  (``pesq(16000, ref, deg, "wb")``), range about 1.04..4.64.
* ``visqol``: ViSQOL v3 speech-mode MOS-LQO via the pure-Python ``visqol-python`` package
  (``VisqolApi().create(mode="speech", use_lattice_model=False)``: the polynomial mapping,
  scaled to 5.0; the C++ tool's default lattice model needs the TFLite runtime), range 1..5.

* ``dnsmos_ovrl``: DNSMOS P.835 overall MOS of DEG alone (non-intrusive: no reference, so it
  does not punish a decoder that invents plausible phase, as PESQ and STOI do; it hears
  naturalness) via the ``speechmos`` package (``dnsmos.run(x, 16000)["ovrl_mos"]``, its shipped
  ONNX models), range about 1..5.

* ``plcmos``: PLCMOS v2 (Microsoft's packet-loss-concealment MOS, INTERSPEECH 2023) of DEG
  alone (non-intrusive) via the same ``speechmos`` package (``plcmos.run(x, 16000)["plcmos"]``,
  its shipped ``plcmos_v2.onnx``), range about 1..5. It averages 15 random "rater embeddings";
  numpy's generator is seeded with 0 before each clip so a score is reproducible. Computed only
  when asked for with ``--metrics`` (``aic bench loss`` does).

``--metrics a,b`` computes (and prints) only those metrics, any of ``pesq_wb``, ``visqol``,
``dnsmos_ovrl``, ``plcmos``; the default is ``pesq_wb,visqol,dnsmos_ovrl``.

A metric whose package is missing or that fails is ``null``, with the reason under its name in
``errors``; the exit status is still 0, so callers can treat the whole evaluator as optional.
Only wrong usage exits with status 2. With ``--pairs`` it prints one such line per pair, in
order, loading the libraries and the ViSQOL model once (about 6 s) instead of once per pair. Anything the libraries print
is sent to stderr so stdout stays one line of JSON.

The project's training venv has both packages: $HOME/aic-train-venv/bin/python
(pesq 0.0.4, visqol-python 3.8.0, numpy 2.4).
"""

import contextlib
import json
import math
import sys

SAMPLE_RATE = 16000
ALL_METRICS = ("pesq_wb", "visqol", "dnsmos_ovrl", "plcmos")
DEFAULT_METRICS = ("pesq_wb", "visqol", "dnsmos_ovrl")


def read_wav(path):
    """Returns (sample_rate, float64 numpy array in [-1, 1)); mono only."""
    import numpy as np

    try:
        import soundfile as sf
    except ImportError:
        sf = None
    if sf is not None:
        x, sr = sf.read(path, dtype="float64", always_2d=True)
        if x.shape[1] != 1:
            raise ValueError(f"{path}: {x.shape[1]} channels, expected mono")
        return sr, x[:, 0]
    import wave

    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit mono PCM (install soundfile for other formats)")
        sr = w.getframerate()
        data = w.readframes(w.getnframes())
    return sr, np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0


def finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


def describe(e):
    return f"{type(e).__name__}: {e}"


def evaluate(ref_path, deg_path, metrics=DEFAULT_METRICS):
    out = {m: None for m in metrics}
    out["errors"] = {}
    errors = out["errors"]
    try:
        import numpy  # noqa: F401
    except ImportError as e:
        for m in metrics:
            errors[m] = f"numpy unavailable ({describe(e)})"
        return out
    try:
        sr_r, ref = read_wav(ref_path)
        sr_d, deg = read_wav(deg_path)
        if sr_r != SAMPLE_RATE or sr_d != SAMPLE_RATE:
            raise ValueError(f"sample rates {sr_r}/{sr_d} Hz, expected {SAMPLE_RATE} Hz")
        n = min(len(ref), len(deg))
        if n == 0:
            raise ValueError("empty input")
        ref, deg = ref[:n], deg[:n]
    except Exception as e:  # noqa: BLE001
        errors["input"] = describe(e)
        return out

    if "pesq_wb" in metrics:
        try:
            from pesq import pesq
        except Exception as e:  # noqa: BLE001 (ImportError, or a broken binary extension)
            errors["pesq_wb"] = f"pesq package unavailable ({describe(e)})"
        else:
            try:
                out["pesq_wb"] = finite_or_none(pesq(SAMPLE_RATE, ref, deg, "wb"))
            except Exception as e:  # noqa: BLE001 (e.g. NoUtterancesError on silence)
                errors["pesq_wb"] = describe(e)

    if "visqol" in metrics:
        try:
            from visqol import VisqolApi
        except Exception as e:  # noqa: BLE001
            errors["visqol"] = f"visqol-python package unavailable ({describe(e)})"
        else:
            try:
                api = _visqol_api(VisqolApi)
                out["visqol"] = finite_or_none(api.measure_from_arrays(ref, deg, SAMPLE_RATE).moslqo)
            except Exception as e:  # noqa: BLE001
                errors["visqol"] = describe(e)

    if "dnsmos_ovrl" in metrics:
        try:
            from speechmos import dnsmos
        except Exception as e:  # noqa: BLE001
            errors["dnsmos_ovrl"] = f"speechmos package unavailable ({describe(e)})"
        else:
            try:
                out["dnsmos_ovrl"] = finite_or_none(dnsmos.run(deg.astype("float32"), SAMPLE_RATE)["ovrl_mos"])
            except Exception as e:  # noqa: BLE001
                errors["dnsmos_ovrl"] = describe(e)

    if "plcmos" in metrics:
        try:
            import numpy as np
            from speechmos import plcmos
        except Exception as e:  # noqa: BLE001
            errors["plcmos"] = f"speechmos package unavailable ({describe(e)})"
        else:
            try:
                # PLCMOS draws its rater embeddings from numpy's global generator.
                np.random.seed(0)
                x = np.clip(deg, -1.0, 1.0).astype("float32")
                out["plcmos"] = finite_or_none(plcmos.run(x, SAMPLE_RATE)["plcmos"])
            except Exception as e:  # noqa: BLE001
                errors["plcmos"] = describe(e)
    return out


_API = None


def _visqol_api(cls):
    """One ViSQOL instance per process: creating it is the slow part."""
    global _API
    if _API is None:
        api = cls()
        api.create(mode="speech", use_lattice_model=False)
        _API = api
    return _API


def main(argv):
    metrics = DEFAULT_METRICS
    if len(argv) >= 3 and argv[1] == "--metrics":
        metrics = tuple(m.strip() for m in argv[2].split(",") if m.strip())
        unknown = [m for m in metrics if m not in ALL_METRICS]
        if unknown or not metrics:
            print(f"--metrics: unknown {unknown}; choose from {', '.join(ALL_METRICS)}", file=sys.stderr)
            return 2
        argv = argv[:1] + argv[3:]
    if len(argv) == 3 and argv[1] == "--pairs":
        with open(argv[2], encoding="utf-8") as f:
            pairs = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        if any(len(p) != 2 for p in pairs):
            print("--pairs: each line must be REF<TAB>DEG", file=sys.stderr)
            return 2
    elif len(argv) == 3:
        pairs = [(argv[1], argv[2])]
    else:
        print(
            f"usage: {argv[0]} [--metrics a,b] REF.wav DEG.wav | [--metrics a,b] --pairs LIST.tsv  (16 kHz mono, delay-aligned)",
            file=sys.stderr,
        )
        return 2
    for ref, deg in pairs:
        with contextlib.redirect_stdout(sys.stderr):
            result = evaluate(ref, deg, metrics)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
