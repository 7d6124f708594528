"""Evaluators: objects built from ``config.eval`` that evaluate model variables.

Like big_vision's ``evaluators/common.py::from_config``: ``config.eval.protocol``
names the evaluator, :func:`from_config` builds it, and its two callers, the
training loop and ``--mode eval``, run it the same way: ``run(variables) ->
metrics``, then ``report(metrics, step)``.

* ``'validation'`` -- :class:`ValidationEvaluator`, the original's
  training-time validation: batches of ``data.eval_size`` sharded over the
  mesh, one jitted forward and confusion matrix per batch (fast).
* ``'test'`` -- :class:`TestEvaluator`, the original's ``testval`` protocol
  (:func:`hrseg_jax.eval.evaluate.evaluate`: every example at its own size,
  multi-scale, flip, sliding windows, as ``config.eval`` says).
* ``''`` (the default) -- the caller's ``default_protocol``: the training
  loop validates, ``--mode eval`` tests.

Both count pixels into one confusion matrix, return the same metrics
(``miou``, ``pixel_acc``, ``mean_acc``, ``iou``, ``confusion_matrix``,
``class_names``, ``settings``) and report them the same way
(:meth:`Evaluator.report`): the IoU table on the console, TensorBoard
summaries when given a writer, ``metrics.json`` and ``confusion.png`` in the
output folder (``<workdir>/eval/`` for ``--mode eval``,
``<workdir>/eval/step_<N>/`` during training).

A new evaluator is a subclass with a ``protocol`` name, ``run``,
``num_examples`` and ``settings_line``, and an entry in :data:`EVALUATORS`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from hrseg_jax import console, paths, pipes
from hrseg_jax.data import pipeline, sources
from hrseg_jax.data.imagenet_stats import MEAN, STD
from hrseg_jax.eval import classes, evaluate, palettes, visuals
from hrseg_jax.eval import config as eval_config
from hrseg_jax.eval.metrics import confusion_matrix, format_iou_table, iou_metrics
from hrseg_jax.models import registry
from hrseg_jax.models.layers import resize_bilinear
from hrseg_jax.progress import Progress

EVAL_DIR = 'eval'
NUM_OVERLAYS = 3
SCALARS = ('miou', 'pixel_acc', 'mean_acc')


class Evaluator:
  """What every evaluator shares: its context, ``due`` and ``report``.

  Attributes:
    protocol: the ``eval.protocol`` value that selects it.
    every_steps: training: evaluate every that many steps and after the last
      one (``eval.every_steps``; <= 0: never).
    compile_s: host seconds the latest ``run`` spent in calls that traced
      and compiled before they dispatched (the training ETA leaves them out:
      later evaluations reuse the compiled code); 0 when it says nothing.
  """
  protocol = ''
  compile_s = 0.0

  def __init__(self, config, *, model_cfg: Mapping[str, Any],
               to_global: Callable[[dict], dict], dtype=jnp.float32,
               out_dir: str | os.PathLike | None = None, writer=None,
               log: Callable[[str], None] = print, progress: bool = False):
    """Builds the evaluator (nothing is compiled or read yet).

    Args:
      config: the run's config (``data``, ``eval``, ``loss.ignore_label``).
      model_cfg: the model's config (resolved here).
      to_global: per-process NumPy batch -> global arrays on the device mesh
        (:func:`hrseg_jax.train.sharding.global_batch`).
      dtype: the network's compute dtype.
      out_dir: the evaluation folder (``<workdir>/eval``); ``None``: no files.
      writer: a clu metric writer (TensorBoard), or ``None``.
      log: receives the console lines (progress, the IoU table); only
        process 0 calls it.
      progress: the validation protocol's progress lines for the first and
        last batch (``--mode eval``); without it (training) only those due
        ``eval.progress_seconds`` after the start (the test protocol prints
        its lines either way).
    """
    self.config = config
    self.model_cfg = registry.resolve(model_cfg)
    self.to_global = to_global
    self.dtype = dtype
    self.out_dir = out_dir
    self.writer = writer
    self.is_main = jax.process_index() == 0
    self.log = log if self.is_main else (lambda _: None)
    self.progress = progress
    self.progress_seconds = progress_seconds(config)
    self.every_steps = int(config.eval.get('every_steps', -1))
    self.split = eval_config.split_of(config.eval)
    self.num_classes = int(self.model_cfg['num_classes'])
    self.names = classes.class_names(config.data.name, self.num_classes)
    self.palette = palettes.get_palette(config.data.name)
    self.ignore_label = int(config.loss.ignore_label)

  def due(self, step: int, last: bool) -> bool:
    """Whether to evaluate after ``step`` (``last``: the run's final step)."""
    return self.every_steps > 0 and (step % self.every_steps == 0 or last)

  def num_examples(self) -> int | None:
    """Examples one evaluation reads (None: the split has no data)."""
    raise NotImplementedError

  def _split_size(self, limit: int) -> int | None:
    """Examples of ``eval.split``, at most ``limit`` when it is > 0."""
    return _split_size(self.config, self.split, limit)

  def run(self, variables) -> dict[str, Any]:
    """The metrics of ``variables`` on the split (confusion matrix included)."""
    raise NotImplementedError

  def settings_line(self) -> str:
    """What one evaluation reads and how it predicts, for the console."""
    raise NotImplementedError

  def _what(self) -> str:
    """``N <split> images (<where from>)``."""
    data = self.config.data
    source = str(data.get('source', 'files'))
    where = {'files': lambda: paths.shown(data.get(f'{self.split}_list', '')),
             'tfds': lambda: f"{data.get('tfds_name', '')} "
                             f"{data.get(f'tfds_{self.split}_split', '')}",
             }.get(source, lambda: source)()
    n = self.num_examples()
    total = self._split_size(limit=0)
    if n is not None and total is not None and n < total:   # a subset: say so
      return (f'{n} of {total} {self.split} images ({where}; {self.limit_field} '
              f'{n})')
    if n is None:
      return f'? {self.split} images ({where})'
    return f'{console.counted(n, self.split + " image")} ({where})'

  def announce(self, step: int) -> None:
    """The ``evaluation at step <step>:`` line a training evaluation prints
    when it starts (its progress lines and table follow)."""
    self.log(f'evaluation at step {step}:')

  def report(self, ev: Mapping[str, Any], step: int | None = None) -> None:
    """An evaluation's IoU table, TensorBoard summaries and files.

    The console gets the table (during training, after :meth:`announce`).
    With a writer and a step: the scalars ``eval/miou``, ``eval/pixel_acc``,
    ``eval/mean_acc`` and ``eval/iou/<class>``, the images
    ``eval/confusion_matrix`` and, when ``ev`` has examples,
    ``eval/overlays`` (image | ground truth | prediction).  Process 0 writes
    ``metrics.json`` and ``confusion.png`` to ``out_dir`` (``step=None``) or
    ``out_dir/step_<step>/``.
    """
    table = format_iou_table(ev, self.names)
    self.log(table)
    confusion = visuals.confusion_image(np.asarray(ev['confusion_matrix']), self.names)
    if self.writer is not None and step is not None:
      scalars = {f'eval/{k}': float(ev[k]) for k in SCALARS}
      scalars.update({f'eval/iou/{n}': float(v) for n, v in zip(self.names, ev['iou'])})
      self.writer.write_scalars(step, scalars)
      images = {'eval/confusion_matrix': confusion[None]}
      if len(ev.get('examples', {}).get('image', ())):
        ex = ev['examples']
        images['eval/overlays'] = visuals.overlay_strips(
            ex['image'], ex['label'], ex['pred'], self.palette, self.ignore_label)
      self.writer.write_images(step, images)
    if self.is_main and self.out_dir is not None:
      out = os.fspath(self.out_dir)
      if step is not None:
        out = os.path.join(out, f'step_{step}')
      evaluate.write_metrics(out, ev, self.names, confusion)
      if step is not None:
        best_step, best = best_so_far(self.out_dir, step)
        self.log(f'best mIoU {100 * best:.2f}% at step {best_step}')

  def _metrics(self, cm: np.ndarray, settings: dict) -> dict[str, Any]:
    result = iou_metrics(cm)
    result['confusion_matrix'] = np.asarray(cm, np.int64)
    result['class_names'] = list(self.names)
    result['settings'] = dict(settings, protocol=self.protocol)
    return result


def best_so_far(out_dir, step: int) -> tuple[int, float]:
  """(step, mIoU) of the best evaluation of a training run up to ``step``.

  Read from the ``step_<N>/metrics.json`` files every evaluation writes
  under ``out_dir`` (``<workdir>/eval``), so a resumed run counts the
  evaluations of the runs before it; steps after ``step`` (left by a longer
  run in the same workdir) are not counted.  Of equal mIoUs, the later step.
  """
  root = epath.Path(out_dir)
  found = {}
  for p in root.glob('step_*'):
    n = p.name[len('step_'):]
    if not n.isdigit() or int(n) > step:
      continue
    try:
      found[int(n)] = float(json.loads((p / evaluate.METRICS_FILE).read_text())['miou'])
    except (OSError, ValueError, KeyError, TypeError):
      continue   # a folder without (readable) metrics: not an evaluation
  best = max(found, key=lambda s: (found[s], s))
  return best, found[best]


class TestEvaluator(Evaluator):
  """The original's ``testval`` protocol (:func:`~hrseg_jax.eval.evaluate.evaluate`).

  Every example of ``eval.split`` at its own size, with ``eval.scales``,
  ``eval.flip``, ``eval.mode`` (whole or sliding windows); progress lines on
  the console; with ``eval.save_predictions`` each prediction in
  ``out_dir/predictions/`` (during training: the latest evaluation's).
  """
  protocol = 'test'

  def __init__(self, config, **context):
    super().__init__(config, **context)
    self.eval_cfg = eval_config.with_data_defaults(config.eval, config.data)
    self.ignore_label = int(self.eval_cfg['ignore_label'])

  limit_field = 'eval.num_examples'

  @staticmethod
  def examples_of(config) -> int | None:
    return _split_size(config, eval_config.split_of(config.eval),
                       int(config.eval.get('num_examples', -1)))

  def num_examples(self) -> int | None:
    return self.examples_of(self.config)

  def settings_line(self) -> str:
    from hrseg_jax.predict import describe_settings  # pylint: disable=g-import-not-at-top
    used = eval_config.predictor_kwargs(self.eval_cfg)
    pairs = ', '.join(f'{a}-{b}' for a, b in used['flip_pairs'])
    swapped = f' (left/right classes swapped: {pairs})' if used['flip'] and pairs else ''
    return (f'{self._what()}{self._preprocessing()}; {describe_settings(self.eval_cfg)}'
            f'{swapped}{self._readme_hint()}')

  def _preprocessing(self) -> str:
    """How each image is resized before inference (``data.eval_mode``), as
    the original's ``testval`` does; the label keeps its size."""
    data = self.config.data
    mode = str(data.get('eval_mode', 'full'))
    if mode == 'fixed':
      h, w = (int(v) for v in data.eval_size)
      return f', each resized to {h}x{w} (aspect not kept)'
    if mode == 'short_side_pad':
      kept = ('cropped from the prediction' if bool(data.get('eval_crop_padding', True))
              else 'kept in the prediction, as the original does for ADE20K')
      return (f', short side resized to {int(data.eval_base_size)} and padded to a '
              f'multiple of {int(data.get("eval_stride", 8))} (padding {kept})')
    return ''

  def _readme_hint(self) -> str:
    """Where the scales or flip differ from the original README's number
    (none for the synthetic scenes, which it has no number for)."""
    data = self.config.data
    if data.get('name', 'synthetic') == 'synthetic':
      return ''
    scales = tuple(float(x) for x in data.get('readme_eval_scales', (1.0,)))
    flip = bool(data.get('readme_eval_flip', False))
    used = eval_config.predictor_kwargs(self.eval_cfg)
    text = ','.join(f'{x:g}' for x in scales)
    fixes = []
    if tuple(float(x) for x in used['scales']) != scales:
      # A one-scale tuple needs its comma on the command line.
      fixes.append(f'--config.eval.scales={text}' + (',' if len(scales) == 1 else ''))
    if bool(used['flip']) != flip:
      fixes.append(f'--config.eval.flip={flip}')
    if not fixes:
      return ''
    return (f" (the original README's {data.get('name', 'dataset')} number uses scales "
            f"{text}, {'flip' if flip else 'no flip'}: {' '.join(fixes)})")

  def run(self, variables) -> dict[str, Any]:
    out = evaluate.evaluate(
        self.model_cfg, _process_local(variables), self.config.data, self.eval_cfg,
        out_dir=None if self.out_dir is None else os.fspath(self.out_dir),
        dtype=self.dtype, log=self.log, progress_seconds=self.progress_seconds,
        report=False)
    return self._metrics(np.asarray(out['confusion_matrix'], np.int64), out['settings'])


class ValidationEvaluator(Evaluator):
  """The original's training-time validation: fast, batched, on the mesh.

  Batches of ``eval.batch_size`` examples (rounded down to a multiple of
  the device count, at least one per device) of ``eval.split`` resized to
  ``data.eval_size`` (at most ``data.val_num_samples`` of them when that
  is > 0), sharded over the mesh by ``to_global``; the logits are resized
  to the labels at that size.  ``run`` keeps up to ``NUM_OVERLAYS`` of
  the first batch's examples for the TensorBoard overlays.  Every batch has
  one shape (the last one is padded): the first run's first call compiles,
  and ``compile_s`` is its time.
  """
  protocol = 'validation'

  def __init__(self, config, **context):
    super().__init__(config, **context)
    # Each batch is split evenly over the devices (the split's last batch is
    # padded with masked examples, so the metrics do not depend on it): a
    # size that does not split is rounded down to one that does, at least
    # one image per device (the original evaluates one image per GPU).
    n = jax.device_count()
    self.global_batch = max(int(config.eval.batch_size) // n, 1) * n
    self.batch_size = self.global_batch // jax.process_count()
    model = registry.build_model(self.model_cfg, self.dtype)
    self._eval_fn = jax.jit(make_eval_step(
        model, self.num_classes, self.ignore_label,
        bool(self.model_cfg.get('align_corners', False))))
    self._compiled = False

  limit_field = 'data.val_num_samples'

  @staticmethod
  def examples_of(config) -> int | None:
    return _split_size(config, eval_config.split_of(config.eval),
                       int(config.data.get('val_num_samples', 0)))

  def num_examples(self) -> int | None:
    return self.examples_of(self.config)

  def settings_line(self) -> str:
    h, w = (int(v) for v in self.config.data.eval_size)
    return f'{self._what()} at data.eval_size {h}x{w}, one scale, no flip'

  def run(self, variables) -> dict[str, Any]:
    cm = np.zeros((self.num_classes, self.num_classes), np.int64)
    it = pipeline.make_eval_iterator(self.config.data, batch_size=self.batch_size,
                                     shard_index=jax.process_index(),
                                     shard_count=jax.process_count(), split=self.split)
    examples, placed = None, False
    total = self.num_examples() or 0
    shown = Progress(total, 'eval') if total else None
    done = 0
    self.compile_s = 0.0
    for local in it:
      pipes.raise_if_ctrl_c()
      batch = self.to_global(local)
      if not placed:   # the variables join the batches' devices
        variables, placed = _on_devices_of(variables, batch['image'].sharding), True
      t_call = time.perf_counter()
      batch_cm, pred = self._eval_fn(variables, batch)
      if not self._compiled:   # traced and compiled before dispatching
        self.compile_s, self._compiled = time.perf_counter() - t_call, True
      cm += np.asarray(jax.device_get(batch_cm), np.int64)
      if examples is None and self.is_main:
        examples = _first_local_examples(batch, pred, NUM_OVERLAYS)
      if shown is not None:
        done = min(done + batch['image'].shape[0], total)
        if shown.due(done, self.progress_seconds, ends=self.progress):
          self.log(shown.line(done))
    result = self._metrics(cm, {
        'dataset': self.config.data.name, 'split': self.split,
        'num_examples': self.num_examples(),
        'eval_size': list(self.config.data.eval_size),
        'batch_size': self.global_batch,
        'ignore_label': self.ignore_label, 'dtype': jnp.dtype(self.dtype).name,
        'process_count': jax.process_count(), 'model': dict(self.model_cfg)})
    if examples is not None and len(examples['image']):
      result['examples'] = examples
    return result


EVALUATORS = {e.protocol: e for e in (ValidationEvaluator, TestEvaluator)}


def protocol_of(config, default_protocol: str) -> str:
  """``config.eval.protocol``, or ``default_protocol`` when it is ``''``.

  Raises:
    ValueError: a name that is not in :data:`EVALUATORS` (one line naming
      the field).
  """
  protocol = str(config.eval.get('protocol', '') or default_protocol)
  if protocol not in EVALUATORS:
    raise ValueError(f'eval.protocol={protocol!r}: expected one of '
                     f"{', '.join(repr(p) for p in EVALUATORS)} (or '' for the "
                     'default: validation in training, test in --mode eval)')
  return protocol


def num_examples(config, default_protocol: str) -> int | None:
  """Examples one evaluation of ``config.eval.protocol``'s evaluator reads,
  without building it (None: the split has no data)."""
  return EVALUATORS[protocol_of(config, default_protocol)].examples_of(config)


def _split_size(config, split: str, limit: int) -> int | None:
  """Examples of ``split``, at most ``limit`` when it is > 0."""
  try:
    n = len(sources.make_source(config.data, split))
  except (OSError, ValueError):
    return None
  return min(n, limit) if limit > 0 else n


def progress_seconds(config) -> float:
  """``eval.progress_seconds``, checked (one line naming the field)."""
  value = config.eval.get('progress_seconds', 10.0)
  try:
    seconds = float(value)
  except (TypeError, ValueError):
    seconds = -1.0
  if not seconds >= 0:   # also NaN
    raise ValueError(f'eval.progress_seconds={value!r}: expected seconds >= 0 '
                     '(10 by default; 0: a progress line per batch)')
  return seconds


def from_config(config, *, default_protocol: str, **context) -> Evaluator:
  """The evaluator that ``config.eval.protocol`` names.

  Args:
    config: the run's config (``model``, ``data``, ``eval``, ``loss``).
    default_protocol: the caller's protocol for ``eval.protocol=''``
      (training: ``'validation'``; ``--mode eval``: ``'test'``).
    **context: where it runs, the same for every evaluator
      (:class:`Evaluator`'s arguments: ``model_cfg``, ``to_global``,
      ``dtype``, ``out_dir``, ``writer``, ``log``, ``progress``).
  """
  return EVALUATORS[protocol_of(config, default_protocol)](config, **context)


def make_eval_step(model, num_classes: int, ignore_label: int, align_corners: bool):
  """``eval_step(variables, batch) -> (confusion matrix, uint8 prediction)``."""

  def eval_step(variables, batch):
    logits = model.apply(variables, batch['image'], train=False,
                         rows=batch.get('rows'))[-1].astype(jnp.float32)
    logits = resize_bilinear(logits, batch['label'].shape[1:3], align_corners)
    pred = jnp.argmax(logits, axis=-1)
    return confusion_matrix(pred, batch['label'], num_classes, ignore_label,
                            mask=batch['mask']), pred.astype(jnp.uint8)
  return eval_step


def _on_devices_of(variables, sharding: NamedSharding):
  """``variables`` replicated on ``sharding``'s mesh unless already on its
  devices (a loaded checkpoint sits on one device; a training state is
  already on the mesh)."""
  devices = sharding.device_set
  replicated = NamedSharding(sharding.mesh, P())

  def put(x):
    if getattr(x, 'sharding', None) is not None and x.sharding.device_set == devices:
      return x
    return jax.device_put(x, replicated)
  return jax.tree_util.tree_map(put, variables)


def _process_local(variables):
  """Arrays spread over several processes (a multi-host training state) as
  full NumPy copies on each process; others as they are."""
  def local(x):
    if getattr(x, 'is_fully_addressable', True):
      return x
    return multihost_utils.process_allgather(x, tiled=True)
  return jax.tree_util.tree_map(local, variables)


def _first_local_examples(batch, pred, count: int) -> dict:
  """Up to ``count`` of this process's examples: image, label, prediction."""

  def local(x):
    return np.asarray(x.addressable_shards[0].data)
  keep = local(batch['mask'])[:count]
  rgb = local(batch['image'])[:count][keep] * (255 * STD) + 255 * MEAN
  return {'image': rgb,
          'label': local(batch['label'])[:count][keep],
          'pred': local(pred)[:count][keep]}
