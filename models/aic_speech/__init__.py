"""aic_speech: a small causal, streaming neural speech codec (16 kHz, 20 ms frames).

The package holds the model definition (model.py), the fixed DSP bases it is
built from (dsp.py), training losses (losses.py), the corpus loader (data.py),
the training entry point (train.py) and the ONNX/codebook exporter (export.py).
"""
