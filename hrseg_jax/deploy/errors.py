"""One-line errors of the deployment exports."""
from __future__ import annotations

import importlib


class ExportError(ValueError):
  """An export that cannot be written (the message is one line)."""


# jax2onnx caps orbax-checkpoint below 0.11.37 in its metadata (it never
# imports it); --no-deps keeps this package's Orbax.
JAX2ONNX_INSTALL = "pip install --no-deps 'jax2onnx>=0.17,<0.18'"

EXTRAS = {
    'jax2onnx': 'onnx', 'onnx': 'onnx', 'onnxruntime': 'onnx',
    'orbax.export': 'savedmodel', 'tensorflow': 'savedmodel',
}


# The modules each export format needs (writing, then checking in its runtime).
FORMAT_MODULES = {'onnx': ('jax2onnx', 'onnx', 'onnxruntime'),
                  'savedmodel': ('tensorflow', 'orbax.export'), 'stablehlo': ()}


def require(module: str, what: str):
  """Imports ``module`` or raises ExportError naming the pip install to run.

  TensorFlow (also under orbax.export) is imported without its start-up lines.
  """
  if module == 'orbax.export':  # imports TensorFlow: name that when it is missing
    require('tensorflow', what)
  try:
    if module == 'tensorflow':
      from hrseg_jax import console  # pylint: disable=g-import-not-at-top
      if console.import_tensorflow_quietly() is None:
        raise ImportError("No module named 'tensorflow'")
    return importlib.import_module(module)
  except ImportError as e:
    extra = EXTRAS.get(module, module)
    cmd = f"pip install 'hrseg-jax[{extra}]'"
    if extra == 'onnx':
      cmd += f" && {JAX2ONNX_INSTALL}"
    raise ExportError(f'{what} needs the Python package {module.split(".")[0]!r} '
                      f'({e}); run: {cmd}') from None
