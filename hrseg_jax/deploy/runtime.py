"""Runs a written export in its own runtime, and compares outputs.

``load(fmt, path)`` returns ``images -> outputs`` (NumPy in, NumPy out):

* ``stablehlo``: JAX alone (:func:`hrseg_jax.deploy.stablehlo.load`);
* ``onnx``: ONNX Runtime on CPU;
* ``savedmodel``: TensorFlow on CPU (it leaves the GPUs to JAX:
  :func:`hrseg_jax.console.import_tensorflow_quietly`), the
  ``serving_default`` signature.
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


# Agreement with JAX's float32 output on the check batch.
MAX_REL_L2, MIN_AGREEMENT = 1e-4, 0.999


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a.astype(np.float64), b.astype(np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _labels(x: np.ndarray) -> np.ndarray:
  return x if np.issubdtype(x.dtype, np.integer) else x.argmax(-1)


def compare(reference: np.ndarray, output: np.ndarray) -> dict:
  """Agreement of an export's output with JAX's on the same input.

  Logits (float, ``[..., K]``): relative L2 error and argmax agreement over
  pixels.  Class maps (integer): the fraction of identical pixels, and how
  many differ.
  """
  reference, output = np.asarray(reference), np.asarray(output)
  if reference.shape != output.shape:
    return {'shape': list(output.shape), 'expected_shape': list(reference.shape),
            'ok': False}
  integer = np.issubdtype(reference.dtype, np.integer)
  labels = output if integer else _labels(output)   # class maps: as they are
  expected = _labels(reference)
  differing = int(np.sum(expected != labels))
  pixels = int(expected.size)
  agree = 1.0 - differing / max(pixels, 1)
  if integer:
    return {'class_map_agreement': agree, 'differing_pixels': differing,
            'pixels': pixels, 'ok': agree >= MIN_AGREEMENT}
  rel = _rel_l2(output, reference)
  return {'rel_l2': rel, 'argmax_agreement': agree, 'differing_pixels': differing,
          'pixels': pixels, 'ok': bool(rel <= MAX_REL_L2 and agree >= MIN_AGREEMENT)}


def float32_error(float32: np.ndarray, exact: np.ndarray) -> dict:
  """How far JAX's own float32 logits are from the float64 ones (relative
  L2): the rounding error any float32 runtime has on the check batch."""
  return {'jax_float32_rel_l2': _rel_l2(np.asarray(float32), np.asarray(exact, np.float64))}


def describe(result: dict) -> str:
  """One human-readable line of a :func:`compare` result."""
  if 'expected_shape' in result:
    return f'output shape {tuple(result["shape"])}, expected {tuple(result["expected_shape"])}'
  differing = (f' ({result["differing_pixels"]:,} of {result["pixels"]:,} differ)'
               if result.get('differing_pixels') else '')
  if 'class_map_agreement' in result:
    text = (f'class maps identical on {_percent(result["class_map_agreement"])} of '
            f'pixels{differing}')
  else:
    text = (f'logits rel L2 {result["rel_l2"]:.2e}, argmax agreement '
            f'{_percent(result["argmax_agreement"])}{differing}')
  if 'jax_float32_rel_l2' in result:
    text += (f'; JAX float32 logits are at rel L2 {result["jax_float32_rel_l2"]:.2e} '
             'from float64 on this batch')
  return text


def _percent(fraction: float) -> str:
  """``100%`` only when exact: ``99.9996%`` rather than a rounded ``100.000%``."""
  if fraction >= 1:
    return '100%'
  text = f'{100 * fraction:.3f}'
  digits = 3
  while float(text) >= 100 and digits < 9:
    digits += 1
    text = f'{100 * fraction:.{digits}f}'
  return text + '%'
