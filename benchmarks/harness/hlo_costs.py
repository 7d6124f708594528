"""FLOPs of every instruction of an optimised HLO module, grouped by source.

``compiled.cost_analysis()`` gives one total.  To find where the arithmetic
goes, this walks ``compiled.as_text()`` (the optimised module, fusions
included) and counts each instruction the way XLA's ``HloCostAnalysis``
does: one FLOP per output element of an elementwise operation (exp, log,
rsqrt and the like are transcendentals, not FLOPs), the reducer's FLOPs per
reduced element, 2 x multiply-adds of convolutions and dots; data movement
(broadcast, slice, gather, transpose, copy, ...) is free.  Convolutions are
counted with their padding taps (XLA leaves those out), so the total is a
little above ``cost_analysis()`` on small feature maps (0.1% on Lite-HRNet-30
at 256x512, a few percent on tiny test models).  Each instruction is
attributed to the JAX operation named in its ``metadata={op_name=...}``
(module path, primitive, and whether it is part of the backward pass).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Iterable

_FREE = frozenset((
    'parameter', 'constant', 'broadcast', 'reshape', 'bitcast', 'transpose',
    'slice', 'dynamic-slice', 'dynamic-update-slice', 'concatenate', 'pad',
    'gather', 'copy', 'tuple', 'get-tuple-element', 'iota', 'reverse',
    'bitcast-convert', 'copy-start', 'copy-done', 'after-all', 'partition-id',
    'replica-id', 'rng-get-and-update-state', 'opt-barrier', 'optimization-barrier',
    'custom-call', 'infeed', 'outfeed', 'send', 'recv', 'send-done', 'recv-done',
    'domain', 'add-dependency', 'get-dimension-size', 'set-dimension-size',
    'convert', 'select', 'clamp', 'rng-bit-generator', 'sort', 'call', 'while',
    'conditional', 'fusion', 'reduce', 'reduce-window', 'convolution', 'dot',
    'scatter', 'select-and-scatter', 'all-reduce', 'all-gather', 'collective-permute',
    'all-to-all', 'reduce-scatter', 'map', 'batch-norm-training',
    'batch-norm-inference', 'batch-norm-grad', 'fft', 'cholesky',
    'triangular-solve', 'rng', 'stochastic-convert', 'reduce-precision'))
_TRANSCENDENTAL = frozenset((
    'exponential', 'exponential-minus-one', 'log', 'log-plus-one', 'rsqrt',
    'sqrt', 'cbrt', 'tanh', 'logistic', 'power', 'sine', 'cosine', 'tan',
    'atan2', 'erf'))

_SHAPE = re.compile(r'\b(pred|s8|s16|s32|s64|u8|u16|u32|u64|f16|bf16|f32|f64|'
                    r'c64|c128|f8e4m3fn|f8e5m2)\[([0-9,]*)\]')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$')
_COMP = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r'%([\w.\-]+)')
_CALLS = re.compile(r'(?:calls|to_apply|body|condition)=%?([\w.\-]+)')
_DIM_LABELS = re.compile(r'dim_labels=(\w+)_(\w+)->(\w+)')
_WINDOW = re.compile(r'window=\{size=([0-9x]+)')
_LHS_DILATE = re.compile(r'lhs_dilate=([0-9x]+)')
_CONTRACT = re.compile(r'lhs_contracting_dims=\{([0-9,]*)\}')


@dataclasses.dataclass
class Instr:
  """One HLO instruction: name, opcode, output shapes, operand shapes, text."""
  name: str
  opcode: str
  shapes: list[tuple[int, ...]]
  operand_shapes: list[tuple[int, ...]]
  text: str
  op_name: str


def _dims(text: str) -> list[tuple[int, ...]]:
  return [tuple(int(d) for d in m.group(2).split(',') if d)
          for m in _SHAPE.finditer(text)]


def _numel(shape: tuple[int, ...]) -> int:
  return math.prod(shape) if shape else 1


def _split_operands(rest: str) -> str:
  """The text inside the opcode's parentheses (operands)."""
  depth = 1
  for i, ch in enumerate(rest):
    if ch == '(':
      depth += 1
    elif ch == ')':
      depth -= 1
      if depth == 0:
        return rest[:i]
  return rest


def parse(text: str) -> dict[str, list[Instr]]:
  """Computations of an HLO module text: name -> instructions."""
  comps: dict[str, list[Instr]] = {}
  current = entry = None
  shapes: dict[str, list[tuple[int, ...]]] = {}
  for line in text.splitlines():
    m = _INSTR.match(line)
    if m and current is not None:
      name, out, opcode, rest = m.groups()
      operands = _split_operands(rest)
      op = _OP_NAME.search(rest)
      out_shapes = _dims(out)
      shapes[name] = out_shapes
      operand_shapes = _dims(operands) or [
          s for o in _OPERAND.findall(operands) for s in shapes.get(o, [])[:1]]
      comps[current].append(Instr(name, opcode, out_shapes, operand_shapes, rest,
                                  op.group(1) if op else ''))
      continue
    c = _COMP.match(line)
    if c and not line[:1].isspace() and not line.startswith('HloModule'):
      current = c.group(1)
      comps[current] = []
      if line.startswith('ENTRY'):
        entry = current
  if entry is not None:   # the entry computation last
    comps[entry] = comps.pop(entry)
  return comps


class Costs:
  """FLOP counts of the instructions of a parsed module."""

  def __init__(self, comps: dict[str, list[Instr]]):
    self.comps = comps
    self._memo: dict[str, float] = {}

  def computation_flops(self, name: str) -> float:
    """FLOPs of one evaluation of a (fused or reducer) computation."""
    if name not in self._memo:
      self._memo[name] = sum(self.flops(i) for i in self.comps.get(name, ()))
    return self._memo[name]

  def flops(self, ins: Instr) -> float:
    """FLOPs of one instruction (a fusion: the sum of its body)."""
    op = ins.opcode
    out = sum(_numel(s) for s in ins.shapes) if ins.shapes else 0
    if op in ('fusion', 'call'):
      return sum(self.computation_flops(c) for c in _CALLS.findall(ins.text))
    if op in ('while', 'conditional'):
      return sum(self.computation_flops(c) for c in _CALLS.findall(ins.text))
    if op in ('reduce', 'reduce-window', 'all-reduce', 'reduce-scatter', 'map',
              'scatter', 'select-and-scatter'):
      calls = _CALLS.findall(ins.text)
      per = sum(self.computation_flops(c) for c in calls) if calls else 1.0
      if op == 'reduce':
        n_in = len(ins.operand_shapes) // 2 or 1
        reduced = (sum(_numel(s) for s in ins.operand_shapes[:n_in]) / n_in
                   - out / max(len(ins.shapes), 1))
        return per * max(reduced, 0)
      if op == 'reduce-window':
        w = _WINDOW.search(ins.text)
        size = math.prod(int(v) for v in w.group(1).split('x')) if w else 1
        return per * out * max(size - 1, 1)
      if op == 'scatter':
        upd = ins.operand_shapes[-1] if ins.operand_shapes else ()
        return per * _numel(upd)
      return per * out
    if op == 'convolution':
      return self._conv(ins)
    if op == 'dot':
      return self._dot(ins)
    if op in _TRANSCENDENTAL or op in _FREE:
      return 0.0
    return float(out)   # elementwise arithmetic, compare, ...

  def _conv(self, ins: Instr) -> float:
    """2 x output elements x kernel window x kernel input features (per group)."""
    out = _numel(ins.shapes[0])
    m = _DIM_LABELS.search(ins.text)
    if not m or len(ins.operand_shapes) < 2:
      return 2.0 * out
    rhs, klabel = ins.operand_shapes[1], m.group(2)
    spatial = math.prod(rhs[i] for i, c in enumerate(klabel) if c.isdigit())
    # An input gradient of a strided convolution dilates its input: only one
    # tap in prod(lhs_dilate) meets a value (XLA counts only those).
    d = _LHS_DILATE.search(ins.text)
    holes = math.prod(int(v) for v in d.group(1).split('x')) if d else 1
    return 2.0 * out * spatial * rhs[klabel.index('i')] / holes

  def _dot(self, ins: Instr) -> float:
    lhs = ins.operand_shapes[0]
    m = _CONTRACT.search(ins.text)
    dims = [int(d) for d in m.group(1).split(',') if d] if m else []
    k = math.prod(lhs[d] for d in dims) if dims else 1
    return 2.0 * _numel(ins.shapes[0]) * k


_NOISE = re.compile(r'jit\([^)]*\)+/|jvp\(|transpose\(|\)|remat\(|checkpoint\(|'
                    r'vmap\(|pjit\([^)]*\)/?|custom_vjp_call\[?[^/]*/?')


def source_key(op_name: str, depth: int = 2) -> str:
  """A short grouping key for an ``op_name``: direction, last module names, primitive.

  Numbered instances collapse (``layers_3`` -> ``layers_*``) so the same layer
  of every block adds up.  Instructions without an ``op_name`` (code XLA
  generated, mostly weight-gradient convolutions) have neither: ``?``.
  """
  if not op_name.strip():
    return '?'
  backward = 'transpose(' in op_name
  parts = [p for p in _NOISE.sub('', op_name).split('/') if p]
  parts = [re.sub(r'_\d+$', '_*', p) for p in parts]
  prim = parts[-1] if parts else '?'
  mods = [p for p in parts[:-1] if p and not p.startswith('while')]
  key = '/'.join(mods[-depth:] + [prim])
  return ('bwd ' if backward else 'fwd ') + key


def instructions(comps: dict[str, list[Instr]]) -> Iterable[tuple[Instr, Instr]]:
  """Every non-fusion instruction reachable from the entry, with its top-level
  (entry) instruction: fusions are opened so each op keeps its own op_name."""
  entry = list(comps)[-1]

  def walk(comp, top):
    for ins in comps.get(comp, ()):
      t = top or ins
      if ins.opcode in ('fusion', 'call', 'while', 'conditional'):
        for c in _CALLS.findall(ins.text):
          yield from walk(c, t)
      else:
        yield ins, t
  yield from walk(entry, None)


def breakdown(text: str, depth: int = 2, by: str = 'source') -> tuple[float, list]:
  """(total FLOPs, [(key, flops, count)] sorted by FLOPs) of an HLO module.

  ``by='source'`` groups by :func:`source_key`; ``by='opcode'`` by opcode.
  Reducer computations are counted through their reduce instruction.
  """
  comps = parse(text)
  costs = Costs(comps)
  groups: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
  total = 0.0
  for ins, _ in instructions(comps):
    f = costs.flops(ins)
    if not f:
      continue
    key = source_key(ins.op_name, depth) if by == 'source' else ins.opcode
    groups[key][0] += f
    groups[key][1] += 1
    total += f
  rows = sorted(((k, v[0], v[1]) for k, v in groups.items()), key=lambda r: -r[1])
  return total, rows
