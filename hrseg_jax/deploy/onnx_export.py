"""ONNX exports through ``jax2onnx``.

The graph takes NHWC images (a free batch dimension ``B``, fixed height and
width) and returns the model's output; the weights are initializers.  A JAX
operation that jax2onnx cannot express stops the export with a one-line
error naming it -- never a partial or approximate graph.
"""
from __future__ import annotations

import contextlib
import itertools
import re
from typing import Callable

from hrseg_jax.deploy.errors import ExportError, require

OPSET = 18


class _Spec:
  """An input spec with a named (symbolic) batch dimension."""

  def __init__(self, shape, dtype):
    self.shape, self.dtype = tuple(shape), dtype


class _ConnectedIndex:
  """Names and ids of a builder's inputs, initializers and node outputs,
  extended incrementally (the builder only appends while lowering)."""

  def __init__(self):
    self.seen = {}
    self.ids, self.names = set(), set()

  def _add(self, value):
    self.ids.add(id(value))
    name = getattr(value, 'name', None)
    if name:
      self.names.add(name)

  def update(self, builder) -> bool:
    """Returns False if a list shrank (then the caller falls back)."""
    for key in ('inputs', 'initializers', 'nodes'):
      items = getattr(builder, key)
      n, start = len(items), self.seen.get(key, 0)
      if n < start:
        return False
      if n > start:
        for item in itertools.islice(reversed(items), n - start):  # the new ones
          for value in (item.outputs if key == 'nodes' else (item,)):
            self._add(value)
      self.seen[key] = n
    return True


@contextlib.contextmanager
def _linear_output_binding():
  """jax2onnx 0.17 checks every lowered value against every node so far
  (quadratic: Lite-HRNet takes hours); answer the same question from an
  index.  Renamed values fall back to the original check.  The export is
  run against JAX afterwards, so a wrong answer cannot go unnoticed."""
  try:
    from jax2onnx.converter import output_binding as ob  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  original = getattr(ob, '_value_is_graph_connected', None)
  if original is None:
    yield
    return
  indexes = {}

  def connected(ctx, value):
    index = indexes.setdefault(id(ctx), _ConnectedIndex())
    if not index.update(ctx.builder):
      return original(ctx, value)
    if id(value) in index.ids or (value.name and value.name in index.names):
      return True
    return original(ctx, value) if value.name else False

  ob._value_is_graph_connected = connected  # pylint: disable=protected-access
  try:
    yield
  finally:
    ob._value_is_graph_connected = original  # pylint: disable=protected-access


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
    with _linear_output_binding():
      return jax2onnx.to_onnx(fn, [_Spec(('B', *image_shape), dtype)],
                              model_name=name, opset=opset,
                              input_names=['images'], output_names=['output'])
  except NotImplementedError as e:
    op = unsupported_operator(e)
    if op is None:
      raise
    raise ExportError(f'ONNX export: the JAX operator {op!r} has no ONNX '
                      'conversion in jax2onnx; nothing was written') from None
