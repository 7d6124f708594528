"""ONNX exports through ``jax2onnx``.

The graph takes NHWC images (a free batch dimension ``B``; height and width
fixed, or the symbolic ``32*h``, ``32*w`` where the model allows it) and
returns the model's output; the weights are initializers.  A JAX operation
that jax2onnx cannot express stops the export with a one-line error naming
it -- never a partial or approximate graph.
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
  """Names and ids of a builder's inputs and node outputs, extended
  incrementally (the builder only appends while lowering); initializers are
  looked up by name in the graph's own dictionary."""

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
    for key in ('inputs', 'nodes'):
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


def _initializer_names(builder):
  """The name -> value mapping behind ``builder.initializers``, or None.

  jax2onnx 0.17's initializer list copies every initializer on each index
  (``list(...)[i]``), so walking it per lowered value is quadratic again.
  """
  graph = getattr(builder.initializers, '_graph', None)
  names = getattr(graph, 'initializers', None)
  return names if hasattr(names, '__contains__') else None


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
    initializers = _initializer_names(ctx.builder)
    if initializers is None:
      return original(ctx, value)
    if value.name and value.name in initializers:
      return True
    return original(ctx, value) if value.name else False

  ob._value_is_graph_connected = connected  # pylint: disable=protected-access
  try:
    yield
  finally:
    ob._value_is_graph_connected = original  # pylint: disable=protected-access


class _ProducerIndex:
  """jax2onnx 0.17's ``_producer_node(nodes, value)`` rebuilds a set of the
  whole node list and may scan it on every call; its optimizer calls it per
  node input, so Lite-HRNet's export spent most of its time there.  Same
  answer (the first node of ``nodes`` with an output that is ``value`` or has
  its name) from an index built once per node list."""

  def __init__(self, original):
    self.original = original
    self.lists = {}  # id(nodes) -> (nodes, length, by_id, by_name)

  def _index(self, nodes):
    key = id(nodes)
    entry = self.lists.get(key)
    if entry is None or entry[0] is not nodes or entry[1] != len(nodes):
      by_id, by_name = {}, {}
      for i, node in enumerate(nodes):
        for out in node.outputs:
          by_id.setdefault(id(out), i)
          if out.name:
            by_name.setdefault(out.name, i)
      entry = (nodes, len(nodes), by_id, by_name)
      self.lists[key] = entry  # keeps `nodes` alive: its id is not reused
    return entry

  def __call__(self, nodes, value):
    if value is None:
      return None
    if not isinstance(nodes, list):
      return self.original(nodes, value)
    _, _, by_id, by_name = self._index(nodes)
    if isinstance(value, str):
      ref, name = None, value or None
    else:
      ref, name = value, (getattr(value, 'name', None) or None)
      producer = value.producer()
      if producer is not None and any(by_id.get(id(o)) is not None
                                      and nodes[by_id[id(o)]] is producer
                                      for o in producer.outputs):
        return producer
    hits = [i for i in (by_id.get(id(ref)) if ref is not None else None,
                        by_name.get(name) if name else None) if i is not None]
    return nodes[min(hits)] if hits else None


def _remove_orphan_transposes(graph) -> None:
  """jax2onnx's pass of that name (Transpose nodes whose outputs nothing
  consumes by name and that are no graph output), with one scan per round
  instead of one per Transpose."""
  while True:
    nodes = list(graph)
    live = {o.name for o in graph.outputs if o.name}
    live.update(v.name for node in nodes for v in node.inputs if v is not None and v.name)
    dead = [node for node in nodes if node.op_type == 'Transpose'
            and not any(o.name and o.name in live for o in node.outputs)]
    if not dead:
      return
    graph.remove(dead)


@contextlib.contextmanager
def _linear_optimizer():
  """Installs :class:`_ProducerIndex` and :func:`_remove_orphan_transposes`
  in jax2onnx's optimizer for one export (quadratic otherwise)."""
  try:
    import dataclasses  # pylint: disable=g-import-not-at-top
    from jax2onnx.converter import conv_transpose_bias_folding as cf  # pylint: disable=g-import-not-at-top
    from jax2onnx.converter import ir_optimizations as io  # pylint: disable=g-import-not-at-top
    passes = io._OPTIMIZER_PASSES  # pylint: disable=protected-access
    producer = io._producer_node  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    yield
    return
  index = _ProducerIndex(producer)
  replaced = tuple(
      dataclasses.replace(p, graph_runner=_remove_orphan_transposes,
                          function_graph_runner=_remove_orphan_transposes)
      if p.name == 'remove_orphan_transposes' and p.graph_runner is not None else p
      for p in passes)
  modules = [m for m in (io, cf) if getattr(m, '_producer_node', None) is producer]
  io._OPTIMIZER_PASSES = replaced  # pylint: disable=protected-access
  for m in modules:
    m._producer_node = index  # pylint: disable=protected-access
  try:
    yield
  finally:
    io._OPTIMIZER_PASSES = passes  # pylint: disable=protected-access
    for m in modules:
      m._producer_node = producer  # pylint: disable=protected-access


def unsupported_operator(err: BaseException) -> str | None:
  """The JAX primitive named by a jax2onnx 'no plugin' error, if any."""
  m = re.search(r"No plugins registered for primitive '([^']+)'", str(err))
  return m.group(1) if m else None


def export_model(fn: Callable, image_shape, dtype, *, opset: int = OPSET,
                 name: str = 'hrseg_jax'):
  """The ``onnx.ModelProto`` of ``fn`` on ``(B, *image_shape)`` inputs.

  ``image_shape`` entries may be symbolic dimension strings (``'32*h'``).
  """
  if opset < 17:
    raise ExportError(f'opset {opset}: ONNX exports need opset 17 or newer')
  jax2onnx = require('jax2onnx', 'ONNX export')
  require('onnx', 'ONNX export')
  try:
    with _linear_output_binding(), _linear_optimizer():
      return jax2onnx.to_onnx(fn, [_Spec(('B', *image_shape), dtype)],
                              model_name=name, opset=opset,
                              input_names=['images'], output_names=['output'])
  except NotImplementedError as e:
    op = unsupported_operator(e)
    if op is None:
      raise
    raise ExportError(f'ONNX export: the JAX operator {op!r} has no ONNX '
                      'conversion in jax2onnx; nothing was written') from None
