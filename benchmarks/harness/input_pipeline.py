"""Input-pipeline headroom: images/s of the training iterator.

Writes synthetic street scenes as a Cityscapes tree of PNGs (labelIds) at
Cityscapes size, then times :func:`hrseg_jax.data.pipeline.make_train_iterator`
with the Cityscapes recipe (read, decode, label map, random rescale, crop,
flip, normalise, batch) for several Grain worker counts.  Synthetic scenes
are smoother than photographs, so their PNGs are smaller and decode faster
than real frames: read the figure as an upper bound.  Needs Grain and
ml_collections; where either is missing the section says so and nothing runs.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from typing import Any

from benchmarks.harness.cli import Settings

REQUIRED = ('grain', 'ml_collections', 'cv2')
_WARMUP_BATCHES = 2


def missing_packages() -> list[str]:
  """The packages the pipeline needs that are not importable here."""
  return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def _config(root: str, train_list: str, settings: Settings, workers: int):
  from hrseg_jax.data.config import default_data_config  # pylint: disable=g-import-not-at-top
  cfg = default_data_config('cityscapes')
  cfg.root = root
  cfg.train_list = train_list
  cfg.crop_size = tuple(settings.crop)
  cfg.base_size = int(settings.input_size[1])
  cfg.num_workers = int(workers)
  return cfg


def _time_iterator(cfg, batch: int, batches: int) -> float:
  """Images per second over ``batches`` batches after a short warm-up."""
  from hrseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.make_train_iterator(cfg, batch_size=batch, seed=0)
  try:
    for _ in range(_WARMUP_BATCHES):
      next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    return batches * batch / (time.perf_counter() - t0)
  finally:
    close = getattr(it, 'close', None)
    if close is not None:
      close()


def measure(settings: Settings) -> dict[str, Any]:
  """The ``input_pipeline`` section (status ``ok`` or ``skipped``)."""
  missing = missing_packages()
  if missing:
    return dict(status='skipped',
                reason=f'not importable here: {", ".join(missing)} (the GPU '
                       'machine lacks Grain and ml_collections)')
  from hrseg_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix='hrseg_bench_input_')
  try:
    t0 = time.perf_counter()
    lists = synthetic.write_cityscapes_layout(
        root, num_train=settings.input_images, num_val=0,
        image_size=tuple(settings.input_size), png_compression=6)
    write_s = time.perf_counter() - t0
    runs = []
    for workers in settings.input_workers:
      cfg = _config(root, lists['train'], settings, workers)
      rate = _time_iterator(cfg, settings.batch, settings.input_batches)
      runs.append(dict(workers=int(workers), images_per_s=rate))
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return dict(status='ok', image_size=list(settings.input_size),
              crop=list(settings.crop), batch=settings.batch,
              images=settings.input_images, batches=settings.input_batches,
              write_s=write_s, runs=runs)


def with_headroom(section: dict[str, Any],
                  results: list[dict[str, Any]]) -> dict[str, Any]:
  """Adds ``headroom``: best pipeline rate / fastest measured train rate."""
  train = [r['images_per_s'] for r in results
           if r.get('status') == 'ok' and r.get('mode') == 'train']
  if section.get('status') == 'ok' and train:
    best = max(r['images_per_s'] for r in section['runs'])
    section = dict(section, headroom=best / max(train))
  return section
