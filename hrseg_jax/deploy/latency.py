"""python -m hrseg_jax.deploy.latency EXPORT [EXPORT ...] [--checkpoint CKPT]

Median latency of one image through each export in its own runtime
(StableHLO: JAX; ONNX: ONNX Runtime on CPU; SavedModel: TensorFlow on CPU,
which leaves the GPUs to JAX), and,
with ``--checkpoint``, through the JAX model itself (``Segmenter``: class
maps, or logits when the exports output logits), on the same random image
of the exports' input size (read from their JSON cards; ``--size H W`` for
exports with a free height and width).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from hrseg_jax import arguments


def median_ms(fn, x, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    np.asarray(fn(x))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    np.asarray(fn(x))
    times.append(time.perf_counter() - t)
  return 1000 * statistics.median(times)


def read_card(path) -> dict:
  """The JSON card beside the export ``path``; ValueError naming what is wrong."""
  from hrseg_jax.deploy.card import card_path  # pylint: disable=g-import-not-at-top
  card_file = card_path(path)
  if not os.path.exists(path):
    raise ValueError(f'{path}: no such file')
  if not os.path.isfile(card_file):
    raise ValueError(f'{path}: no card {card_file} beside it; pass exports written by '
                     'python -m hrseg_jax.export')
  try:
    with open(card_file) as f:
      card = json.load(f)
    for key in ('format', 'input', 'output'):
      card[key]  # pylint: disable=pointless-statement
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{card_file}: not a card written by python -m hrseg_jax.export '
                     f'({type(e).__name__}: {e})') from None
  return card


def image_size(exports, cards, size=None) -> tuple[int, int]:
  """(H, W) to time: ``size``, else that of the fixed-size exports, else 512x1024.

  An export with a free height and width (``--dynamic-size``, its card's
  shape has symbols such as ``32*h``) takes any size; the fixed-size ones
  must all take the same.
  """
  fixed = None
  for path, card in zip(exports, cards):
    dims = tuple(card['input']['shape'][1:3])
    if not all(isinstance(d, int) for d in dims):
      continue
    if fixed is None:
      fixed = (path, dims)
    elif dims != fixed[1]:
      raise ValueError(f'{path}: takes {dims[0]}x{dims[1]} images, {fixed[0]} '
                       f'{fixed[1][0]}x{fixed[1][1]}; time them separately')
  if size is not None and fixed is not None and tuple(size) != fixed[1]:
    raise ValueError(f'--size {size[0]} {size[1]}: {fixed[0]} takes '
                     f'{fixed[1][0]}x{fixed[1][1]} images only')
  if size is not None:
    return tuple(size)
  return fixed[1] if fixed else (512, 1024)


def load_export(fmt: str, path: str):
  """``runtime.load``, with a file its runtime cannot read (damaged, truncated,
  of another format) as a ValueError naming it instead of the runtime's
  traceback."""
  from hrseg_jax import console  # pylint: disable=g-import-not-at-top
  from hrseg_jax.deploy import runtime  # pylint: disable=g-import-not-at-top
  from hrseg_jax.deploy.errors import ExportError  # pylint: disable=g-import-not-at-top
  try:
    return runtime.load(fmt, path)
  except ExportError:   # a missing runtime: the pip install to run
    raise
  except Exception as e:  # pylint: disable=broad-except
    reason = console.first_line(e, limit=200)
    if isinstance(e, ValueError) and reason.startswith(f'{path}: '):
      raise   # the StableHLO loader's own line
    raise ValueError(f'{path}: {runtime.runtime_version(fmt)} cannot load this {fmt} '
                     f'export ({reason}); a damaged or incomplete copy? export it again '
                     'with python -m hrseg_jax.export') from None


def main(argv=None) -> int:
  p = arguments.ArgumentParser(prog='python -m hrseg_jax.deploy.latency', description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('exports', nargs='+', help='files written by python -m hrseg_jax.export')
  p.add_argument('--checkpoint', help='also time the JAX model of this checkpoint')
  p.add_argument('--repeats', type=int, default=10,
                 help='timed calls per runtime; the median is reported (default: 10)')
  p.add_argument('--warmup', type=int, default=2,
                 help='untimed calls before them (default: 2)')
  p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                 help='image size for exports with a free height and width '
                 "(--dynamic-size); default: the other exports' size, else 512 1024")
  args = p.parse_args(argv)
  for flag, value, least in (('--repeats', args.repeats, 1), ('--warmup', args.warmup, 0)):
    if value < least:
      print(f'error: {flag} {value}: must be at least {least}', file=sys.stderr)
      return 2
  if args.size is not None and min(args.size) < 1:
    print(f'error: --size {args.size[0]} {args.size[1]}: height and width must be '
          'positive', file=sys.stderr)
    return 2
  from hrseg_jax import console  # pylint: disable=g-import-not-at-top
  console.configure()
  from hrseg_jax.deploy import cli, runtime  # pylint: disable=g-import-not-at-top
  try:
    cards = []
    for path in args.exports:
      cards.append(read_card(path))
    shape = (*image_size(args.exports, cards, args.size), 3)
    if args.checkpoint:   # a wrong one fails before the exports are timed
      from hrseg_jax import checkpoints, paths  # pylint: disable=g-import-not-at-top
      cfg, variables, _ = checkpoints.load_model(paths.resolve(args.checkpoint))
    runs = [load_export(card['format'], os.fspath(path).rstrip('/'))
            for path, card in zip(args.exports, cards)]
    rows = []
    for run, card in zip(runs, cards):
      dtype = np.uint8 if card['input']['dtype'] == 'uint8' else np.float32
      x = cli.sample_input(shape, dtype, batch=1)
      rows.append((runtime.runtime_version(card['format']), card['format'],
                   median_ms(run, x, args.warmup, args.repeats)))
    if args.checkpoint:
      import jax  # pylint: disable=g-import-not-at-top
      from hrseg_jax.deploy import graph  # pylint: disable=g-import-not-at-top
      card = cards[0]
      pre = card['input']['dtype'] == 'uint8'
      post = card['output']['kind'] == 'class_map'
      fn = jax.jit(graph.apply_fn(cfg, pre=pre, post=post))
      v = jax.device_put(graph.float_variables(variables))
      x = cli.sample_input(shape, np.uint8 if pre else np.float32, batch=1)
      rows.append((f'jax {jax.__version__} ({jax.default_backend()})', 'JAX model',
                   median_ms(lambda a: fn(v, a), x, args.warmup, args.repeats)))
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
    return 2
  print(f'one {shape[0]}x{shape[1]} image, median of {args.repeats} runs:')
  for name, fmt, ms in rows:
    print(f'  {fmt:<11} {name:<28} {ms:8.1f} ms')
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
