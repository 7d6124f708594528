"""Flax models (NHWC, PyTorch padding and BN semantics): HRNetV2, OCR, HANet,
Lite-HRNet; :mod:`~hrseg_jax.models.registry` builds one from a model config."""
