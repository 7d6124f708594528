"""Evaluators: objects built from ``config.eval`` that evaluate model variables.

Like big_vision's ``evaluators/common.py::from_config``: :func:`from_config`
builds the evaluator of a config and every caller runs it the same way,
``run(variables) -> metrics``, then ``report(metrics, step)``:

* :class:`TestEvaluator` -- the original's ``testval`` protocol
  (:func:`hrseg_jax.eval.evaluate.evaluate`: every example at its own size,
  multi-scale, flip, sliding windows); ``--mode eval`` runs it.
* :class:`ValidationEvaluator` -- the validation inside training (the
  original's training-time validation): batched examples of
  ``data.eval_size`` sharded over the training mesh, one jitted forward and
  confusion matrix per batch, and the training run's reports (console table,
  TensorBoard scalars and images, ``<workdir>/eval/step_<N>/``).

Both count pixels into one confusion matrix and compute the metrics with
:mod:`hrseg_jax.eval.metrics`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax.data import pipeline, sources
from hrseg_jax.data.transforms import MEAN, STD
from hrseg_jax.eval import classes, evaluate, files, palettes, visuals
from hrseg_jax.eval.metrics import confusion_matrix, format_iou_table, iou_metrics
from hrseg_jax.models.layers import resize_bilinear

EVAL_DIR = 'eval'
NUM_OVERLAYS = 3


class TestEvaluator:
  """The original's test-time evaluation of a dataset split (``--mode eval``).

  ``run`` writes ``out_dir/metrics.json`` and ``confusion.png`` (and, with
  ``eval.save_predictions``, ``predictions/``) and logs progress and the IoU
  table; ``report`` has nothing left to do.
  """

  def __init__(self, model_cfg: Mapping[str, Any], data_cfg, eval_cfg, *,
               out_dir: str | None, dtype=jnp.float32,
               log: Callable[[str], None] = print):
    self.model_cfg = model_cfg
    self.data_cfg = data_cfg
    self.eval_cfg = eval_cfg
    self.out_dir = out_dir
    self.dtype = dtype
    self.log = log

  def run(self, variables) -> dict[str, Any]:
    return evaluate.evaluate(self.model_cfg, variables, self.data_cfg, self.eval_cfg,
                             out_dir=self.out_dir, dtype=self.dtype, log=self.log)

  def report(self, result: Mapping[str, Any], step: int | None = None) -> None:
    """``run`` has logged and written everything already."""


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


def _first_local_examples(batch, pred, count: int) -> dict:
  """Up to ``count`` of this process's examples: image, label, prediction."""

  def local(x):
    return np.asarray(x.addressable_shards[0].data)
  keep = local(batch['mask'])[:count]
  rgb = local(batch['image'])[:count][keep] * (255 * STD) + 255 * MEAN
  return {'image': rgb,
          'label': local(batch['label'])[:count][keep],
          'pred': local(pred)[:count][keep]}


def num_val_examples(data_cfg) -> int | None:
  """Validation examples used by the evaluations (None: no labelled val split)."""
  try:
    n = len(sources.make_source(data_cfg, 'val'))
  except (OSError, ValueError):
    return None
  limit = int(data_cfg.get('val_num_samples', 0))
  return min(n, limit) if limit > 0 else n


class ValidationEvaluator:
  """The validation of a training run (``config.eval.every_steps``).

  Attributes:
    every_steps: evaluate every that many steps and after the last one
      (<= 0: never).
  """

  def __init__(self, model, model_cfg: Mapping[str, Any], config, *,
               to_global: Callable[[dict], dict], writer, console, workdir,
               is_main: bool):
    """Builds the evaluator.

    Args:
      model: the Flax module (the training run's compute dtype).
      model_cfg: its resolved config.
      config: the run's config (``data``, ``eval``, ``loss.ignore_label``).
      to_global: per-process NumPy batch -> global arrays on the mesh.
      writer: the run's metric writer (TensorBoard).
      console: the run's console (``print``).
      workdir: the run's workdir (``eval/step_<N>/``, process 0).
      is_main: whether this is process 0 (pictures and files).
    """
    self.every_steps = int(config.eval.every_steps)
    self.data_cfg = config.data
    self.num_classes = int(model_cfg['num_classes'])
    self.ignore_label = int(config.loss.ignore_label)
    self.batch_size = max(config.eval.batch_size // jax.process_count(), 1)
    self.names = classes.class_names(config.data.name, self.num_classes)
    self.palette = palettes.get_palette(config.data.name)
    self.to_global = to_global
    self.writer = writer
    self.console = console
    self.workdir = workdir
    self.is_main = is_main
    self.num_examples = NUM_OVERLAYS if is_main else 0
    self._eval_fn = jax.jit(make_eval_step(
        model, self.num_classes, self.ignore_label,
        bool(model_cfg.get('align_corners', False))))

  def due(self, step: int, last: bool) -> bool:
    """Whether to evaluate after ``step`` (``last``: the run's final step)."""
    return self.every_steps > 0 and (step % self.every_steps == 0 or last)

  def run(self, variables) -> dict[str, Any]:
    """Metrics of the validation split (confusion matrix included).

    On process 0, ``result['examples']`` holds up to ``NUM_OVERLAYS`` of the
    first batch's examples (``image``, ``label``, ``pred``) for pictures.
    """
    cm = np.zeros((self.num_classes, self.num_classes), np.int64)
    it = pipeline.make_eval_iterator(self.data_cfg, batch_size=self.batch_size,
                                     shard_index=jax.process_index(),
                                     shard_count=jax.process_count())
    examples = None
    for local in it:
      batch = self.to_global(local)
      batch_cm, pred = self._eval_fn(variables, batch)
      cm += np.asarray(jax.device_get(batch_cm), np.int64)
      if examples is None and self.num_examples > 0:
        examples = _first_local_examples(batch, pred, self.num_examples)
    result = iou_metrics(cm)
    result['confusion_matrix'] = cm
    if examples is not None:
      result['examples'] = examples
    return result

  def report(self, ev: Mapping[str, Any], step: int) -> None:
    """An evaluation's table, TensorBoard summaries and files.

    Writes the scalars ``eval/miou``, ``eval/pixel_acc``, ``eval/mean_acc``
    and ``eval/iou/<class>``, the images ``eval/overlays`` (image | ground
    truth | prediction) and ``eval/confusion_matrix``, and (process 0)
    ``<workdir>/eval/step_<step>/{metrics.json,confusion.png}``.
    """
    names = self.names
    scalars = {f'eval/{k}': float(v) for k, v in ev.items() if np.isscalar(v)}
    scalars.update({f'eval/iou/{n}': float(v) for n, v in zip(names, ev['iou'])})
    self.writer.write_scalars(step, scalars)
    confusion = visuals.confusion_image(ev['confusion_matrix'], names)
    images = {'eval/confusion_matrix': confusion[None]}
    if 'examples' in ev and len(ev['examples']['image']):
      ex = ev['examples']
      images['eval/overlays'] = visuals.overlay_strips(
          ex['image'], ex['label'], ex['pred'], self.palette, self.ignore_label)
    self.writer.write_images(step, images)
    self.console.print(f'evaluation at step {step}:\n{format_iou_table(ev, names)}')
    if self.is_main:
      out = self.workdir / EVAL_DIR / f'step_{step}'
      saved = {k: v for k, v in ev.items() if k != 'examples'}
      saved['confusion_matrix'] = np.asarray(ev['confusion_matrix']).tolist()
      saved['iou'] = [float(x) for x in ev['iou']]
      saved['class_names'] = list(names)
      files.write_json_atomic(os.fspath(out / 'metrics.json'),
                              json.loads(json.dumps(saved, default=float)))
      files.write_bytes_atomic(os.fspath(out / visuals.CONFUSION_FILE),
                               files.encode_png(confusion))


def from_config(config, *, during_training: bool, **kwargs):
  """The evaluator of ``config.eval``.

  Args:
    config: the run's config (``model``, ``data``, ``eval``, ``loss``).
    during_training: ``True``: the :class:`ValidationEvaluator` of a training
      run (``kwargs``: its ``model``, ``model_cfg``, ``to_global``,
      ``writer``, ``console``, ``workdir``, ``is_main``); ``False``: the
      :class:`TestEvaluator` (``kwargs``: ``model_cfg``, ``out_dir``,
      ``dtype``, ``log``).
  """
  if during_training:
    return ValidationEvaluator(kwargs.pop('model'), kwargs.pop('model_cfg'),
                               config, **kwargs)
  return TestEvaluator(kwargs.pop('model_cfg'), config.data, config.eval, **kwargs)
