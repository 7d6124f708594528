"""Runs a written export in its own runtime, and compares outputs.

``load(fmt, path)`` returns ``images -> outputs`` (NumPy in, NumPy out):

* ``stablehlo``: JAX alone (:func:`hrseg_jax.deploy.stablehlo.load`);
* ``onnx``: ONNX Runtime on CPU;
* ``savedmodel``: TensorFlow, the ``serving_default`` signature.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from hrseg_jax.deploy.errors import require

RUNTIMES = {'stablehlo': 'jax', 'onnx': 'onnxruntime', 'savedmodel': 'tensorflow'}


def load(fmt: str, path) -> Callable[[np.ndarray], np.ndarray]:
  """``images -> output`` of the export at ``path``."""
  path = os.fspath(path)
  if fmt == 'stablehlo':
    from hrseg_jax.deploy import stablehlo  # pylint: disable=g-import-not-at-top
    return stablehlo.load(path)
  if fmt == 'onnx':
    ort = require('onnxruntime', 'Running an ONNX export')
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images)})[0]
  if fmt == 'savedmodel':
    tf = require('tensorflow', 'Running a SavedModel export')
    model = tf.saved_model.load(path)
    signature = model.signatures['serving_default']
    return lambda images: signature(images=tf.constant(images))['output'].numpy()
  raise ValueError(f'unknown export format {fmt!r}')


def runtime_version(fmt: str) -> str:
  """``'<runtime> <version>'`` of the runtime that ``load`` uses."""
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  name = RUNTIMES[fmt]
  dist = {'tensorflow': 'tensorflow-cpu', 'jax': 'jax'}.get(name, name)
  for d in (dist, name):
    try:
      return f'{name} {md.version(d)}'
    except md.PackageNotFoundError:
      pass
  return name


def compare(reference: np.ndarray, output: np.ndarray) -> dict:
  """Agreement of an export's output with JAX's on the same input.

  Logits (float, ``[..., K]``): relative L2 error and argmax agreement over
  pixels.  Class maps (integer): the fraction of identical pixels.
  """
  reference, output = np.asarray(reference), np.asarray(output)
  if reference.shape != output.shape:
    return {'shape': list(output.shape), 'expected_shape': list(reference.shape),
            'ok': False}
  if np.issubdtype(reference.dtype, np.integer):
    same = float(np.mean(reference == output))
    return {'class_map_agreement': same, 'ok': same >= 0.999}
  ref64, out64 = reference.astype(np.float64), output.astype(np.float64)
  rel = float(np.linalg.norm(out64 - ref64) / max(np.linalg.norm(ref64), 1e-30))
  agree = float(np.mean(reference.argmax(-1) == output.argmax(-1)))
  return {'rel_l2': rel, 'argmax_agreement': agree,
          'ok': bool(rel <= 1e-4 and agree >= 0.999)}


def describe(result: dict) -> str:
  """One human-readable line of a :func:`compare` result."""
  if 'expected_shape' in result:
    return f'output shape {tuple(result["shape"])}, expected {tuple(result["expected_shape"])}'
  if 'class_map_agreement' in result:
    return f'class maps identical on {100 * result["class_map_agreement"]:.3f}% of pixels'
  return (f'logits rel L2 {result["rel_l2"]:.2e}, argmax agreement '
          f'{100 * result["argmax_agreement"]:.3f}%')
