"""Deployment exports: StableHLO, ONNX and TF SavedModel (``python -m hrseg_jax.export``).

* :mod:`~hrseg_jax.deploy.graph`: the exported function (model with the
  weights baked in, optional normalisation and upsample + argmax).
* :mod:`~hrseg_jax.deploy.stablehlo`, :mod:`~hrseg_jax.deploy.onnx_export`,
  :mod:`~hrseg_jax.deploy.savedmodel`: one writer per format.
* :mod:`~hrseg_jax.deploy.runtime`: runs a written export (JAX, ONNX Runtime,
  TensorFlow) for parity checks and latency numbers.
* :mod:`~hrseg_jax.deploy.card`: the JSON card written beside every export.
* :mod:`~hrseg_jax.deploy.cli`: ``export``'s options, the check and the
  atomic write; :mod:`~hrseg_jax.deploy.errors`: ``ExportError`` and
  the missing extras as one line naming the install.
* :mod:`~hrseg_jax.deploy.latency`: ``python -m hrseg_jax.deploy.latency``.
"""
