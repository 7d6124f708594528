"""ONNX exports through ``jax2onnx``.

The graph takes NHWC images (a free batch dimension ``B``, fixed height and
width) and returns the model's output; the weights are initializers.  A JAX
operation that jax2onnx cannot express stops the export with a one-line
error naming it -- never a partial or approximate graph.
"""
from __future__ import annotations

import re
from typing import Callable

from hrseg_jax.deploy.errors import ExportError, require

OPSET = 18


class _Spec:
  """An input spec with a named (symbolic) batch dimension."""

  def __init__(self, shape, dtype):
    self.shape, self.dtype = tuple(shape), dtype


def unsupported_operator(err: BaseException) -> str | None:
  """The JAX primitive named by a jax2onnx 'no plugin' error, if any."""
  m = re.search(r"No plugins registered for primitive '([^']+)'", str(err))
  return m.group(1) if m else None


def export_model(fn: Callable, image_shape, dtype, *, opset: int = OPSET,
                 name: str = 'hrseg_jax'):
  """The ``onnx.ModelProto`` of ``fn`` on ``(B, *image_shape)`` inputs."""
  if opset < 17:
    raise ExportError(f'opset {opset}: ONNX exports need opset 17 or newer')
  jax2onnx = require('jax2onnx', 'ONNX export')
  require('onnx', 'ONNX export')
  try:
    return jax2onnx.to_onnx(fn, [_Spec(('B', *image_shape), dtype)],
                            model_name=name, opset=opset,
                            input_names=['images'], output_names=['output'])
  except NotImplementedError as e:
    op = unsupported_operator(e)
    if op is None:
      raise
    raise ExportError(f'ONNX export: the JAX operator {op!r} has no ONNX '
                      'conversion in jax2onnx; nothing was written') from None
