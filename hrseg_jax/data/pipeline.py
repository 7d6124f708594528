"""Grain input pipelines: training, batched evaluation, per-image evaluation.

Training (:func:`make_train_iterator`) follows the original's epoch
semantics exactly: each epoch is a fresh permutation of the whole training
set (NumPy, seeded by ``(seed, epoch)``), cut into
``num_train_examples // (batch_size * shard_count)`` global batches (the
remainder is dropped, like ``drop_last``); global batch t of an epoch is
permutation positions ``[t*G, (t+1)*G)``, and process p takes the slice
``[t*G + p*B, t*G + (p+1)*B)``.  So processes read disjoint examples, the
global batch does not depend on how it is split over processes, and the
augmentation randomness of an example is seeded by (seed, epoch, position),
independent of the number of processes and workers.

The order is therefore a function of (seed, epoch, global position) alone,
and the position of global step t is fixed by t and the global batch:
``make_train_iterator(..., start_step=t)`` yields, on any number of
processes, exactly the batches that an uninterrupted run reads from step
t + 1 on.  The training loop saves only (step, seed, global batch, dataset
size, and the images trained on so far, for the epoch count of a run resumed
with another batch) with a checkpoint (:func:`data_order_state`), a
process-count independent state.  The iterator is also Grain's ``DatasetIterator``
(``get_state()``/``set_state()`` resume at the exact next batch with the
same process and worker count).

Evaluation (:func:`make_eval_iterator`): process p evaluates source examples
p, p + P, p + 2P, ...; every process yields the same number of fixed-shape
batches, the last ones padded with ``mask == False`` filler examples.
"""
from __future__ import annotations

import math
import sys
from typing import Any

from absl import flags
import grain
import numpy as np

from hrseg_jax.data import augment
from hrseg_jax.data import sources
from hrseg_jax.data import workers
from hrseg_jax.data.errors import SKIPPED, DataError

# The end of a bad training example's error line.
SKIP_HINT = ('; pass --config.data.skip_bad_examples=True to train on without it '
             '(each file skipped is named once)')
# The end of a bad evaluation example's error line.
EVAL_SKIP_HINT = ('; pass --config.data.skip_bad_examples=True to evaluate without it '
                  '(each file skipped is named once, and counted in the results)')
# Consecutive bad examples tolerated (skip_bad_examples) before giving up.
MAX_CONSECUTIVE_BAD = 32
_U32 = 2 ** 32


def labelled_source(data_cfg, split: str):
  """The source of ``split``; DataError (one line) if it has no labels.

  A one-column list (Cityscapes' ``test.lst``) given as a train or
  validation list fails here, naming it, instead of at the first batch.
  """
  source = sources.make_source(data_cfg, split)
  if not source.has_labels:
    where = (data_cfg.get(f'{split}_list', '') if data_cfg.source == 'files'
             else f'{data_cfg.source} {split} split')
    raise DataError(where, f'no labels (one column: image paths only), but the {split} '
                    'split needs "image label" lines; a test list is for --mode predict')
  return source


def num_train_examples(data_cfg) -> int:
  """Number of training examples (the length of the train list / split)."""
  return len(labelled_source(data_cfg, 'train'))


class _TrainPlan:
  """Position k of one process's example stream -> (epoch, global position)."""

  def __init__(self, num_examples: int, batch_size: int, shard_index: int,
               shard_count: int, seed: int):
    if not 0 <= shard_index < shard_count:
      raise ValueError(f'shard_index {shard_index} not in [0, {shard_count})')
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.global_batch = batch_size * shard_count
    self.steps_per_epoch = num_examples // self.global_batch
    if self.steps_per_epoch == 0:
      raise ValueError(f'{num_examples} training examples are fewer than one '
                       f'global batch ({batch_size} x {shard_count} '
                       'processes)')
    self.shard_index = shard_index
    self.seed = seed % _U32
    self._permutations: dict[int, np.ndarray] = {}

  def position(self, k: int) -> tuple[int, int]:
    epoch, r = divmod(k, self.steps_per_epoch * self.batch_size)
    step, j = divmod(r, self.batch_size)
    offset = self.shard_index * self.batch_size + j
    return epoch, step * self.global_batch + offset

  def permutation(self, epoch: int) -> np.ndarray:
    """The epoch's order of the source (cached; threads may race harmlessly)."""
    perm = self._permutations.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(
          self.num_examples)
      if len(self._permutations) >= 2:
        self._permutations.clear()
      self._permutations[epoch] = perm
    return perm

  def source_index(self, epoch: int, position: int) -> int:
    return int(self.permutation(epoch)[position % self.num_examples])


class _TrainExample:
  """Stream position -> augmented example (substituting bad ones if asked)."""

  def __init__(self, source, transform, plan: _TrainPlan, skip_bad: bool):
    self.source, self.transform, self.plan = source, transform, plan
    self.skip_bad = skip_bad

  def __call__(self, k: int) -> dict[str, Any]:
    epoch, position = self.plan.position(int(k))
    rng = np.random.default_rng([self.plan.seed, epoch, position])
    for attempt in range(MAX_CONSECUTIVE_BAD):
      index = self.plan.source_index(epoch, position + attempt)
      try:
        example = self.source[index]
      except DataError as e:
        if not self.skip_bad:
          raise DataError(e.path, e.reason + SKIP_HINT) from None
        SKIPPED.record('train', e)
        continue
      return self.transform(example, rng)
    raise DataError('<train>', f'{MAX_CONSECUTIVE_BAD} consecutive bad '
                    'examples; is the dataset readable at all?')


def _to_iter(ds: grain.MapDataset, data_cfg) -> grain.IterDataset:
  threads = int(data_cfg.read_threads)
  buffer = max(int(data_cfg.prefetch_buffer), threads, 1)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                            prefetch_buffer_size=buffer))
  if int(data_cfg.num_workers) > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's multiprocessing reads absl flags; outside absl.app (tests,
      # notebooks, plain scripts) use their defaults.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=int(data_cfg.num_workers),
            per_worker_buffer_size=max(int(data_cfg.prefetch_buffer), 1)),
        worker_init_fn=workers.worker_init_fn)
  return it


def make_train_iterator(data_cfg, *, batch_size: int, seed: int,
                        shard_index: int = 0, shard_count: int = 1,
                        start_step: int = 0) -> grain.DatasetIterator:
  """Returns the infinite training iterator of this process.

  Args:
    data_cfg: ``config.data``.
    batch_size: per-process batch size B.
    seed: the global seed (same on every process).
    shard_index: this process's index (``jax.process_index()``).
    shard_count: number of processes (``jax.process_count()``).
    start_step: global steps already trained: the first batch is this
      process's part of global batch ``start_step`` (0-based), whatever
      process count trained the earlier steps.

  Returns:
    A Grain DatasetIterator of ``{'image': float32 [B, h, w, 3], 'label':
    int32 [B, h, w]}`` (+ ``'rows': int32 [B, h]`` if data.with_rows), with
    (h, w) = data.crop_size.
  """
  source = labelled_source(data_cfg, 'train')
  plan = _TrainPlan(len(source), int(batch_size), int(shard_index),
                    int(shard_count), int(seed))
  example = _TrainExample(
      source, augment.TrainTransform(data_cfg, normalize=False), plan,
      bool(data_cfg.skip_bad_examples))
  if start_step < 0:
    raise ValueError(f'start_step {start_step} < 0')
  ds = (grain.MapDataset.range(int(start_step) * plan.batch_size, sys.maxsize)
        .map(example)
        .batch(int(batch_size), drop_remainder=True,
               batch_fn=augment.collate))
  return iter(_to_iter(ds, data_cfg))


DATA_ORDER_FORMAT = 'hrseg-data-order/1'


def data_order_state(*, step: int, seed: int, global_batch: int,
                     num_examples: int, images_seen: int | None = None
                     ) -> dict[str, Any]:
  """The input state of a checkpoint at ``step`` (process-count independent).

  With the same seed, global batch and dataset size,
  ``make_train_iterator(start_step=step)`` continues the example order of
  the run that saved it, on any number of processes and workers.
  ``images_seen``: the training images of steps 1..``step``, whatever
  batches they came in (see :func:`images_seen`).
  """
  state = {'format': DATA_ORDER_FORMAT, 'step': int(step), 'seed': int(seed),
           'global_batch': int(global_batch),
           'num_examples': int(num_examples)}
  if images_seen is not None:
    state['images_seen'] = int(images_seen)
  return state


def images_seen(saved: dict[str, Any] | None, step: int, global_batch: int) -> int:
  """The training images of steps 1..``step``: ``saved`` (a checkpoint's
  :func:`data_order_state`) counts them across changes of the batch; a
  checkpoint that predates the count (or none) gives ``step`` batches of
  ``global_batch``."""
  if saved and saved.get('images_seen') is not None:
    return int(saved['images_seen'])
  return int(step) * int(global_batch)


def data_order_differences(saved: dict[str, Any], current: dict[str, Any]
                           ) -> list[str]:
  """Fields of :func:`data_order_state` that change the example order,
  named as the user sets them (``train.batch_size 8 -> 4``)."""
  named = {'seed': 'seed', 'global_batch': 'train.batch_size',
           'num_examples': 'training examples'}
  return [f'{named[k]} {saved.get(k)} -> {current[k]}'
          for k in ('seed', 'global_batch', 'num_examples')
          if saved.get(k) != current[k]]


class _EvalPlan:
  """Strided shard of the eval set, padded to whole batches."""

  def __init__(self, num_examples: int, batch_size: int, shard_index: int,
               shard_count: int):
    if not 0 <= shard_index < shard_count:
      raise ValueError(f'shard_index {shard_index} not in [0, {shard_count})')
    self.num_examples = num_examples
    self.shard_index, self.shard_count = shard_index, shard_count
    per_shard = math.ceil(num_examples / shard_count)
    self.num_batches = math.ceil(per_shard / batch_size)
    self.length = self.num_batches * batch_size

  def source_index(self, k: int) -> int | None:
    index = self.shard_index + k * self.shard_count
    return index if index < self.num_examples else None


class _EvalExample:
  """Shard position -> fixed-shape example with 'mask'."""

  def __init__(self, source, transform: augment.ValTransform,
               plan: _EvalPlan, skip_bad: bool, split: str):
    self.source, self.transform, self.plan = source, transform, plan
    self.skip_bad, self.split = skip_bad, split

  def __call__(self, k: int) -> dict[str, Any]:
    index = self.plan.source_index(int(k))
    if index is not None:
      try:
        example = self.source[index]
      except DataError as e:
        if not self.skip_bad:
          raise DataError(e.path, e.reason + EVAL_SKIP_HINT) from None
        SKIPPED.record(self.split, e)
      else:
        out = self.transform(example, np.random.default_rng([0, index]))
        out['mask'] = np.bool_(True)
        return out
    out = self.transform.padding_example()
    out['mask'] = np.bool_(False)
    return out


def _eval_source(data_cfg, split: str):
  source = sources.make_source(data_cfg, split)
  limit = int(data_cfg.val_num_samples)
  return source, (min(len(source), limit) if limit > 0 else len(source))


def make_eval_iterator(data_cfg, *, batch_size: int, shard_index: int = 0,
                       shard_count: int = 1, split: str = 'val'
                       ) -> grain.IterDataset:
  """Returns this process's batched validation data (a re-iterable).

  Every process yields ``ceil(ceil(N / shard_count) / batch_size)`` batches
  of ``{'image': float32 [B, h, w, 3], 'label': int32 [B, h, w], 'mask':
  bool [B]}`` (+ 'rows'), (h, w) = data.eval_size; filler examples (and bad
  ones, with data.skip_bad_examples) have mask False and label 255.  N is the
  split size, capped at data.val_num_samples when that is > 0.  The ids of
  the examples are given by :func:`eval_batch_ids`.
  """
  source, n = _eval_source(data_cfg, split)
  if not source.has_labels:
    raise ValueError(f'the {split!r} split has no labels; use eval_examples '
                     'to predict on it')
  plan = _EvalPlan(n, int(batch_size), int(shard_index), int(shard_count))
  example = _EvalExample(
      source, augment.ValTransform(data_cfg, normalize=False), plan,
      bool(data_cfg.skip_bad_examples), split)
  ds = grain.MapDataset.range(plan.length).map(example).batch(
      int(batch_size), batch_fn=augment.collate)
  return _to_iter(ds, data_cfg)


def eval_batch_ids(data_cfg, *, batch_size: int, shard_index: int = 0,
                   shard_count: int = 1, split: str = 'val'
                   ) -> list[list[str | None]]:
  """The example ids of :func:`make_eval_iterator`'s batches (None = filler)."""
  source, n = _eval_source(data_cfg, split)
  plan = _EvalPlan(n, int(batch_size), int(shard_index), int(shard_count))
  ids = [None if (i := plan.source_index(k)) is None else source.example_id(i)
         for k in range(plan.length)]
  return [ids[b:b + batch_size] for b in range(0, plan.length, batch_size)]


class _EvalSource:
  """A bad example: None (counted, logged) with data.skip_bad_examples,
  else its error, saying how to evaluate without it."""

  def __init__(self, source, split: str, skip_bad: bool):
    self.source, self.split, self.skip_bad = source, split, skip_bad

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    try:
      return self.source[index]
    except DataError as e:
      if not self.skip_bad:
        raise DataError(e.path, e.reason + EVAL_SKIP_HINT) from None
      SKIPPED.record(self.split, e)
      return None


def eval_examples(data_cfg, split: str = 'val') -> grain.MapDataset:
  """Full-size examples for per-image (multi-scale, sliding-window) evaluation.

  Random access (``len(ds)``, ``ds[i]``; ``ds[p::P]`` to shard) to
  **normalised** examples, preprocessed like the original's ``testval``:
  ``{'image': float32 [H, W, 3] (see data.eval_mode), 'label': int32 [H0, W0]
  at the original size (absent for test splits), 'id': str, 'pad': int32
  (pad_h, pad_w)}`` (+ 'rows': int32 [H] if data.with_rows): what
  :func:`hrseg_jax.eval.evaluate.evaluate` reads (its multi-scale, flip and
  sliding-window prediction is :mod:`hrseg_jax.eval.inference`).  With
  data.skip_bad_examples a bad example is None (MapDataset's "filtered").
  """
  source = _EvalSource(sources.make_source(data_cfg, split), split,
                       bool(data_cfg.skip_bad_examples))
  return grain.MapDataset.source(source).map(
      augment.FullEvalTransform(data_cfg))
