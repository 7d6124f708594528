"""Command line of ``benchmarks/benchmark.py`` -> :class:`Settings` (no JAX here).

The script parses its arguments before JAX is imported, so ``--xla-flags``
can still reach ``XLA_FLAGS`` and ``--tiny`` can still switch XLA:CPU to its
fast-compile mode.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import tempfile
from typing import Any, Sequence

from benchmarks.harness import models
from benchmarks.harness import peer

DTYPES = ('float32', 'bfloat16')
MODES = ('infer', 'sliding', 'train')   # the order each model runs them in
PRECISIONS = ('default', 'high', 'highest')
SLIDING_RULES = ('cityscapes', 'base')
DEPTHWISE_GRADS = ('shifted', 'xla')   # hrseg_jax.models.layers.DEPTHWISE_KERNEL_GRADS
# Dense bf16 matrix rate and device-to-device copy bandwidth measured on one
# H200 SXM (769-798 TFLOP/s on random data, about 4.3 TB/s); for another
# accelerator pass its own figures with --peak-tflops and --peak-tbps.
H200_BF16_TFLOPS = 790.0
H200_HBM_TBPS = 4.3


@dataclasses.dataclass
class Settings:
  """Everything one benchmark run needs (JSON-serialisable).

  Sizes are (height, width).  ``steps`` timed steps form one round; the
  reported step time is the median over ``repeats`` rounds.
  """
  models: list[str]
  dtypes: list[str]
  modes: list[str]
  batch: int
  crop: tuple[int, int]
  infer_size: tuple[int, int]
  infer_batch: int
  window: tuple[int, int]
  sliding_rule: str
  steps: int
  warmup: int
  repeats: int
  latency_runs: int
  precision: str
  xla_flags: str
  depthwise_grad: str
  peak_tflops: float
  peak_tbps: float
  tiny: bool
  isolate: bool
  time_budget_s: float
  profile: str | None
  profile_steps: int
  input_pipeline: bool
  input_workers: list[int]
  input_images: int
  input_batches: int
  input_size: tuple[int, int]
  peer_dir: str | None
  out: str | None
  report: list[str]
  seed: int
  # Seconds of the time budget a parent (--isolate) spent before this child.
  budget_spent_s: float = 0.0

  def to_dict(self) -> dict[str, Any]:
    """Plain data for JSON (which writes the tuples as lists)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> 'Settings':
    """Inverse of :meth:`to_dict`."""
    data = dict(data)
    for key in ('crop', 'infer_size', 'window', 'input_size'):
      data[key] = tuple(data[key])
    return cls(**data)


class Parser(argparse.ArgumentParser):
  """argparse whose bad arguments are one line (``error: ...``), exit 2."""

  def error(self, message: str):
    self.exit(2, f'error: {message}\n')


def check_writable(path: str, flag: str, folder: bool = False) -> None:
  """Checks that ``path`` (a file, or a folder) can be written; creates nothing.

  Missing folders on the way are fine (they are made when writing); the
  nearest existing one must be a folder this process can write in.

  Raises:
    ValueError: one line naming ``flag`` and ``path``.
  """
  given = pathlib.Path(path)
  if given.is_dir() and not folder:
    raise ValueError(f'{flag} {path}: is a folder, not a file')
  if given.exists() and not given.is_dir() and folder:
    raise ValueError(f'{flag} {path}: is a file, not a folder')
  existing = next(p for p in ([given] if folder else []) + list(given.parents)
                  if p.exists() or p == pathlib.Path(p.anchor or '.'))
  if not existing.is_dir():
    raise ValueError(f'{flag} {path}: {existing} is not a folder')
  try:
    with tempfile.TemporaryFile(dir=existing.absolute()):
      pass
  except OSError as e:
    raise ValueError(f'{flag} {path}: cannot write in {existing}: '
                     f'{e.strerror or e}') from None


def parse_size(text: str) -> tuple[int, int]:
  """``'512x1024'`` (or ``'512,1024'``) -> (512, 1024)."""
  parts = text.lower().replace(',', 'x').split('x')
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    raise argparse.ArgumentTypeError(f'expected HxW, e.g. 512x1024; got {text!r}')
  h, w = (int(p) for p in parts)
  if h < 1 or w < 1:
    raise argparse.ArgumentTypeError(f'sizes must be positive; got {text!r}')
  return h, w


def _csv(choices: Sequence[str] | None = None):
  def parse(text: str) -> list[str]:
    items = [t.strip() for t in text.split(',') if t.strip()]
    bad = [t for t in items if choices is not None and t not in choices]
    if bad or not items:
      raise argparse.ArgumentTypeError(
          f'{text!r}: expected a comma-separated subset of {list(choices or [])}')
    return items
  return parse


def _ints(text: str) -> list[int]:
  try:
    return [int(t) for t in text.split(',') if t.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected integers, got {text!r}') from None


def build_parser() -> argparse.ArgumentParser:
  """The argument parser (defaults of None are filled by :func:`settings`)."""
  p = Parser(
      prog='benchmarks/benchmark.py',
      description='Training and inference throughput of the HRNet family, '
                  'measured like the PyTorch reference runs (docs/performance.md).')
  a = p.add_argument
  a('--models', type=str, default=None,
    help=f'comma-separated; default {",".join(models.DEFAULT_MODELS)} '
         f'(--tiny: {",".join(models.DEFAULT_TINY_MODELS)}); known: '
         f'{",".join(list(models.MODELS) + list(models.TINY_MODELS))}')
  a('--dtypes', type=_csv(DTYPES), default=list(DTYPES),
    help='compute dtypes (parameters stay float32)')
  a('--modes', type=_csv(MODES), default=list(MODES),
    help='train: SGD step; infer: whole image to argmax; sliding: windows')
  a('--batch', type=int, default=None, help='train batch (12; tiny 2)')
  a('--crop', type=parse_size, default=None, help='train crop HxW (512x1024)')
  a('--infer-size', type=parse_size, default=None,
    help='inference image HxW (1024x2048)')
  a('--infer-batch', type=int, default=1,
    help='images per inference call (1 = batch-1 latency)')
  a('--window', type=parse_size, default=None,
    help='sliding-window size HxW (default: the crop)')
  a('--sliding-rule', choices=SLIDING_RULES, default='cityscapes',
    help='cityscapes: stride = window; base: stride 2/3 window, padded')
  a('--steps', type=int, default=None, help='timed steps per round (10)')
  a('--warmup', type=int, default=None, help='untimed steps after compiling (3)')
  a('--repeats', type=int, default=None, help='timed rounds; median reported (5)')
  a('--latency-runs', type=int, default=None,
    help='individually synchronised inference calls (20)')
  a('--precision', choices=PRECISIONS, default='default',
    help='jax_default_matmul_precision (default = TF32 for float32 on GPUs)')
  a('--xla-flags', default='', help='appended to $XLA_FLAGS; recorded in the JSON')
  a('--depthwise-grad', choices=DEPTHWISE_GRADS, default='shifted',
    help="kernel gradient of depthwise convolutions (Lite-HRNet): 'shifted' "
         "(k*k shifted products, the default) or 'xla' (XLA's own grouped "
         "convolution); sets $HRSEG_DEPTHWISE_KERNEL_GRAD, names the rows")
  a('--peak-tflops', type=float, default=H200_BF16_TFLOPS,
    help='dense bf16 peak for the utilisation column (H200 measured: 790)')
  a('--peak-tbps', type=float, default=H200_HBM_TBPS,
    help='memory bandwidth for the bandwidth column (H200 measured: 4.3)')
  a('--tiny', action='store_true',
    help='tiny models and shapes, fast XLA compile: a CPU smoke run')
  a('--isolate', action='store_true',
    help='one process per (model, dtype), so peak memory is per workload')
  a('--time-budget', type=float, default=0.0, dest='time_budget_s',
    help='seconds (0: none); later workloads are skipped (and recorded so) after it')
  a('--profile', default=None, metavar='DIR',
    help='jax.profiler trace of a few steps of every workload into DIR')
  a('--profile-steps', type=int, default=3)
  a('--input-pipeline', action='store_true',
    help='also time hrseg_jax.data.pipeline.make_train_iterator (needs Grain)')
  a('--input-workers', type=_ints, default=None,
    help=f'Grain worker counts to time (0,{os.cpu_count()})')
  a('--input-images', type=int, default=None,
    help='distinct synthetic PNG pairs written (16; tiny 4)')
  a('--input-batches', type=int, default=None, help='timed batches (10; tiny 3)')
  a('--input-size', type=parse_size, default=None,
    help='synthetic frame HxW (1024x2048; tiny 256x512)')
  a('--peer-dir', default=None,
    help='folder of newer reference JSON files ($HRSEG_PEER; default: the '
         'figures built into benchmarks/harness/peer.py)')
  a('--out', default=None, help='write the JSON here (after every workload)')
  a('--report', nargs='+', default=[], metavar='JSON',
    help='print the table of earlier JSON outputs (merged) and exit')
  a('--seed', type=int, default=0)
  a('--child', default=None, help=argparse.SUPPRESS)
  return p


def impl_label(depthwise_grad: str) -> str:
  """The table's ``impl`` column: ``hrseg_jax``, naming a non-default variant."""
  if depthwise_grad != DEPTHWISE_GRADS[0]:
    return f'hrseg_jax (depthwise grad {depthwise_grad})'
  return 'hrseg_jax'


def _pick(value, full, tiny, is_tiny: bool):
  if value is not None:
    return value
  return tiny if is_tiny else full


def _check(s: Settings) -> None:
  for m in s.models:
    models.get(m)
  for name in ('batch', 'infer_batch', 'steps', 'repeats', 'latency_runs',
               'input_images', 'input_batches', 'profile_steps'):
    if getattr(s, name) < 1:
      raise ValueError(f'--{name.replace("_", "-")} must be >= 1')
  if s.warmup < 1:
    raise ValueError('--warmup must be >= 1 (the first call may still compile)')
  if s.time_budget_s < 0:
    raise ValueError(f'--time-budget must be >= 0 seconds (0: none); got '
                     f'{s.time_budget_s:g}')
  for name in ('peak_tflops', 'peak_tbps'):
    if not getattr(s, name) > 0:
      raise ValueError(f'--{name.replace("_", "-")} must be > 0; got {getattr(s, name):g}')
  if s.peer_dir:
    peer.load(pathlib.Path(s.peer_dir))
  if s.out:
    check_writable(s.out, '--out')
  if s.profile:
    check_writable(s.profile, '--profile', folder=True)


def settings(args: argparse.Namespace) -> Settings:
  """Fills the defaults (full-size or ``--tiny``) and validates.

  Raises:
    ValueError: unknown model names or non-positive counts.
  """
  t = bool(args.tiny)
  crop = _pick(args.crop, (512, 1024), (64, 128), t)
  model_list = (args.models.split(',') if args.models else
                list(models.DEFAULT_TINY_MODELS if t else models.DEFAULT_MODELS))
  s = Settings(
      models=[m.strip() for m in model_list if m.strip()],
      dtypes=list(args.dtypes), modes=[m for m in MODES if m in args.modes],
      batch=_pick(args.batch, 12, 2, t), crop=crop,
      infer_size=_pick(args.infer_size, (1024, 2048), (128, 256), t),
      infer_batch=args.infer_batch, window=args.window or crop,
      sliding_rule=args.sliding_rule,
      steps=_pick(args.steps, 10, 2, t), warmup=_pick(args.warmup, 3, 1, t),
      repeats=_pick(args.repeats, 5, 2, t),
      latency_runs=_pick(args.latency_runs, 20, 3, t),
      precision=args.precision, xla_flags=args.xla_flags,
      depthwise_grad=args.depthwise_grad,
      peak_tflops=args.peak_tflops, peak_tbps=args.peak_tbps, tiny=t,
      isolate=bool(args.isolate), time_budget_s=float(args.time_budget_s),
      profile=args.profile, profile_steps=args.profile_steps,
      input_pipeline=bool(args.input_pipeline),
      input_workers=_pick(args.input_workers, [0, os.cpu_count() or 1], [0], t),
      input_images=_pick(args.input_images, 16, 4, t),
      input_batches=_pick(args.input_batches, 10, 3, t),
      input_size=_pick(args.input_size, (1024, 2048), (256, 512), t),
      peer_dir=args.peer_dir or os.environ.get('HRSEG_PEER') or None, out=args.out,
      report=list(args.report), seed=args.seed)
  _check(s)
  return s
