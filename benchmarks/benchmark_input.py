"""Benchmarks the training input pipeline on Cityscapes-sized PNG pairs.

Writes 2048x1024 street scenes in the Cityscapes layout (RGB PNG + labelIds
PNG, zlib level 6 like libpng's default; the scenes are synthetic ones
rendered at 512x256 and upscaled bicubically, which gives PNGs of about the
size of real Cityscapes frames, ~2 MB) to a temporary directory, then
measures images/s through the full training path (read, decode, labelIds ->
trainIds, random rescale 0.5-2.1, pad, 512x1024 crop, flip, normalise,
batch):

* ``in-process``: one thread in the main process, OpenCV single-threaded:
  the per-core cost of the chain.  Reported both per wall-clock second and
  per CPU second of this process (the latter is unaffected by other load on
  the machine);
* ``N worker(s)``: Grain multiprocess prefetch, as training runs; also
  reported per CPU second of the workers and the main process (Linux /proc),
  which shows the per-core rate even on a busy machine.

Usage:
  python benchmarks/benchmark_input.py [--workers 1,2] [--batches 20]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

# pylint: disable=wrong-import-position
from benchmarks.harness import cli
from hrseg_jax.data import label_maps
from hrseg_jax.data import lists
from hrseg_jax.data import pipeline
from hrseg_jax.data.config import default_data_config
from hrseg_jax.data.synthetic import SyntheticSource


def write_pngs(root: str, count: int) -> float:
  """Writes ``count`` 2048x1024 Cityscapes-layout pairs; returns mean MB."""
  to_label_id = np.full(256, 1, np.uint8)
  to_label_id[:19] = label_maps.CITYSCAPES_TRAIN_TO_LABEL
  source = SyntheticSource(count, (256, 512), 19, seed=0, split='train')
  sizes = []
  for i in range(count):
    ex = source[i]
    stem = f'bench_{i:06d}_000019'
    image = cv2.resize(ex['image'], (2048, 1024),
                       interpolation=cv2.INTER_CUBIC)
    label = cv2.resize(cv2.LUT(ex['label'], to_label_id), (2048, 1024),
                       interpolation=cv2.INTER_NEAREST)
    for kind, array, suffix in (('leftImg8bit', image, 'leftImg8bit'),
                                ('gtFine', label, 'gtFine_labelIds')):
      path = os.path.join(root, kind, 'train', 'bench', f'{stem}_{suffix}.png')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(array).save(path, compress_level=6)
      if kind == 'leftImg8bit':
        sizes.append(os.path.getsize(path))
  lists.make_lists('cityscapes', root, root)
  return float(np.mean(sizes)) / 1e6


def _cpu_seconds() -> float:
  """CPU time of this process plus its live children (Grain workers)."""
  total = time.process_time()
  tick = os.sysconf('SC_CLK_TCK')
  for child in multiprocessing.active_children():
    try:
      with open(f'/proc/{child.pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / tick   # utime + stime
    except (OSError, IndexError, ValueError):
      pass
  return total


def measure(cfg, batch_size: int, batches: int, warmup: int
            ) -> tuple[float, float]:
  """Returns (images per wall second, images per CPU second used)."""
  it = pipeline.make_train_iterator(cfg, batch_size=batch_size, seed=0)
  try:
    for _ in range(warmup):
      next(it)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
      next(it)
    wall = time.perf_counter() - wall
    cpu = _cpu_seconds() - cpu
  finally:
    close = getattr(it, 'close', None)
    if close is not None:
      close()
  images = batches * batch_size
  return images / wall, images / cpu


def _workers_label(workers: int) -> str:
  if workers == 0:
    return '0 workers (in-process)'
  return f'{workers:2d} worker(s)'


def _per_worker(rate: float, workers: int) -> str:
  """`` (x per worker)``; nothing for 0 workers (the main process decodes)."""
  return f' ({rate / workers:.1f} per worker)' if workers > 0 else ''


def _counts(text: str) -> list[int]:
  """``--workers``: comma-separated worker counts, each >= 0."""
  try:
    counts = [int(t) for t in text.split(',') if t.strip()]
  except ValueError:
    counts = []
  if not counts or min(counts) < 0:
    raise argparse.ArgumentTypeError(
        f'expected worker counts >= 0 such as 0,2; got {text!r}')
  return counts


def _check(args) -> None:
  """One line (ValueError) for a bad argument, before any PNG is written."""
  for name in ('num_images', 'batch_size', 'batches'):
    if getattr(args, name) < 1:
      raise ValueError(f'--{name} must be >= 1; got {getattr(args, name)}')
  if args.warmup < 0:
    raise ValueError(f'--warmup must be >= 0; got {args.warmup}')
  if args.dir:
    cli.check_writable(args.dir, '--dir', folder=True)


def main(argv=None):
  parser = cli.Parser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=16,
                      help='distinct PNG pairs written (cycled through)')
  parser.add_argument('--batch_size', type=int, default=4)
  parser.add_argument('--batches', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--workers', type=_counts, default=[1, os.cpu_count()],
                      help='comma-separated worker counts to measure (0: in '
                           'the main process)')
  parser.add_argument('--dir', default='',
                      help='reuse/keep this directory instead of a temp one')
  args = parser.parse_args(argv)
  try:
    _check(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2

  root = args.dir or tempfile.mkdtemp(prefix='hrseg_bench_')
  try:
    train_list = os.path.join(root, 'train.lst')
    if not os.path.exists(train_list):
      t = time.perf_counter()
      mb = write_pngs(root, args.num_images)
      print(f'wrote {args.num_images} 1024x2048 (HxW) PNG pairs ({mb:.2f} MB per '
            f'image) to {root} in {time.perf_counter() - t:.1f}s')
    cfg = default_data_config('cityscapes')
    cfg.root = root
    cfg.train_list = train_list
    cfg.prefetch_buffer = 2
    print(f'batch {args.batch_size}, crop {tuple(cfg.crop_size)}, '
          f'{args.batches} batches, {os.cpu_count()} cores, load average '
          f'{os.getloadavg()[0]:.1f} before start')

    cv2.setNumThreads(1)
    cfg.num_workers, cfg.read_threads = 0, 0
    wall, cpu = measure(cfg, args.batch_size, args.batches, args.warmup)
    print(f'in-process, 1 thread : {wall:6.1f} images/s wall, {cpu:6.1f} '
          'images per CPU-second')
    cfg.read_threads = 1
    for workers in args.workers:
      cfg.num_workers = workers
      wall, cpu = measure(cfg, args.batch_size, args.batches, args.warmup)
      print(f'{_workers_label(workers):21s}: {wall:6.1f} images/s wall'
            f'{_per_worker(wall, workers)}, {cpu:6.1f} images per '
            'CPU-second (workers + main)')
  finally:
    if not args.dir:
      shutil.rmtree(root, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
