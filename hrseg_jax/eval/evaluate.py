"""The evaluation loop: predict every example, confusion matrix, metrics.json.

The original's ``testval`` (spec 5.1-5.5): for every example, the multi-scale
(optionally flipped, optionally sliding-window) fused prediction at the
image's size; the dataset's bottom/right border padding cropped; a bilinear
resize to the label size when it differs (LIP, PASCAL-Context, COCO-Stuff,
ADE20K test preprocessing); argmax; confusion matrix summed over the set
(and over processes); per-class IoU, mIoU, pixel and mean accuracy.

Example contract (``hrseg_jax.data.pipeline.eval_examples``): a sized,
random-access sequence of dicts (or ``None`` for a bad example skipped by
``data.skip_bad_examples``; counted and reported) with

* ``'image'``: normalised float32 [H, W, 3] after the dataset's test
  preprocessing (RGB uint8 is normalised here);
* ``'label'``: integer [h, w] training ids at the original size (``h, w``
  may differ from ``H, W``), ``ignore_label`` for void;
* ``'id'``: a string naming the example (used for saved predictions);
* optional ``'pad'``: (pad_h, pad_w) stride padding added at the
  bottom/right; cropped from the prediction before the resize to the label
  unless ``data.eval_crop_padding`` is False (ADE20K, as the original);
* optional ``'rows'``: int [H] original-image row of each image row.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax.data import pipeline
from hrseg_jax.data.transforms import normalize
from hrseg_jax import console, files, pipes
from hrseg_jax.eval import classes, metrics, multihost, visuals
from hrseg_jax.eval import config as eval_config
from hrseg_jax.eval.inference import Predictor, label_prediction
from hrseg_jax.models import registry
from hrseg_jax.progress import Progress

METRICS_FILE = 'metrics.json'
PREDICTIONS_DIR = 'predictions'


def _field(cfg, name, default=None):
  if cfg is None:
    return default
  value = cfg.get(name, default) if hasattr(cfg, 'get') else getattr(cfg, name, default)
  return default if value is None else value


def prepare_image(image) -> np.ndarray:
  """uint8 RGB -> normalised float32; float images pass through."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected an [H, W, 3] image, got shape {image.shape}')
  if image.dtype == np.uint8:
    return normalize(image)
  return image.astype(np.float32)


def prefetch(source: Sequence[Mapping[str, Any]], indices: Iterable[int],
             depth: int = 4) -> Iterator[Mapping[str, Any]]:
  """``source[i]`` for ``indices`` in order, read ahead by ``depth`` threads."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=depth) as pool:
    it = iter(indices)
    pending = collections.deque(pool.submit(source.__getitem__, i)
                                for _, i in zip(range(depth), it))
    while pending:
      done = pending.popleft().result()
      nxt = next(it, None)
      if nxt is not None:
        pending.append(pool.submit(source.__getitem__, nxt))
      yield done


def same_shape_groups(examples: Iterable[Mapping[str, Any] | None], size: int
                      ) -> Iterator[list[Mapping[str, Any]]]:
  """Consecutive examples with equal image shapes, at most ``size`` each.

  ``None`` entries (skipped bad examples) are dropped.
  """
  group = []
  for ex in examples:
    if ex is None:
      continue
    if group and (len(group) == size or
                  np.shape(ex['image']) != np.shape(group[0]['image'])):
      yield group
      group = []
    group.append(ex)
  if group:
    yield group


def prediction_path(out_dir: str, example_id: str) -> str:
  """``out_dir/predictions/<id>.png``; ids may contain sub-directories."""
  rel = os.path.normpath(str(example_id)).lstrip(os.sep)
  if rel.startswith('..') or not rel or rel == '.':
    raise ValueError(f'example id {example_id!r} is not a relative file name')
  return os.path.join(out_dir, PREDICTIONS_DIR, rel + '.png')


def settings_of(eval_cfg: Mapping[str, Any], data_cfg,
                model_cfg: Mapping[str, Any], dtype, num_examples: int,
                skipped: int, crop_padding: bool) -> dict[str, Any]:
  """The JSON-friendly description of an evaluation run."""
  kw = eval_config.predictor_kwargs(eval_cfg)
  return {
      'dataset': _field(data_cfg, 'name'),
      'split': eval_cfg.get('split', 'val'),
      'num_examples': num_examples,
      'skipped_examples': skipped,
      'crop_padding': crop_padding,
      'scales': list(kw['scales']),
      'flip': kw['flip'],
      'flip_pairs': [list(p) for p in kw['flip_pairs']],
      'mode': kw['mode'],
      'sliding_rule': kw['sliding_rule'],
      'crop_size': None if kw['crop_size'] is None else list(kw['crop_size']),
      'base_size': kw['base_size'],
      'batch_size': kw['batch_size'],
      'ignore_label': int(eval_cfg['ignore_label']),
      'dtype': jnp.dtype(dtype).name,
      'process_count': jax.process_count(),
      'model': dict(model_cfg),
  }


def evaluate(model_cfg: Mapping[str, Any], variables, data_cfg, eval_cfg, *,
             out_dir: str | None = None, dtype=jnp.float32,
             log: Callable[[str], None] = print,
             examples: Sequence[Mapping[str, Any]] | None = None,
             progress_seconds: float = 10.0, report: bool = True) -> dict[str, Any]:
  """Evaluates a model on a dataset split; writes ``out_dir/metrics.json``.

  Args:
    model_cfg: model config (:mod:`hrseg_jax.models.registry`).
    variables: model variables.
    data_cfg: data config, passed to ``pipeline.eval_examples``; its ``name``
      picks the class names, ``eval_crop_padding`` whether ``'pad'`` is
      cropped, and it supplies unset eval sizes / ignore label
      (:func:`~hrseg_jax.eval.config.with_data_defaults`).
    eval_cfg: the ``eval`` section (:func:`~hrseg_jax.eval.config.default_eval_config`).
    out_dir: where ``metrics.json`` and ``confusion.png`` (process 0) and, with
      ``eval_cfg.save_predictions``, ``predictions/<id>.png`` (trainId uint8,
      every process its own examples) go; nothing is written when ``None``.
    dtype: the network's compute dtype.
    log: receives progress lines (examples done, images/s, ETA: the first,
      the last and one every ``progress_seconds``) and the IoU table
      (process 0).
    examples: the example sequence; default
      ``pipeline.eval_examples(data_cfg, split=eval_cfg.split)``.
    progress_seconds: interval of the progress lines.
    report: log the IoU table and write ``metrics.json`` and
      ``confusion.png``; ``False`` leaves that to the caller (the evaluator
      of :mod:`hrseg_jax.eval.evaluator`; predictions are still written).

  Returns:
    The content of ``metrics.json``: ``miou``, ``pixel_acc``, ``mean_acc``,
    ``iou`` (per class), ``class_names``, ``confusion_matrix`` (rows =
    ground truth), ``settings``.
  """
  cfg = registry.resolve(model_cfg)
  k = cfg['num_classes']
  align = bool(cfg.get('align_corners', False))
  eval_cfg = eval_config.with_data_defaults(eval_cfg, data_cfg)
  ignore = int(eval_cfg['ignore_label'])
  crop_padding = bool(_field(data_cfg, 'eval_crop_padding', True))
  split = eval_cfg.get('split', 'val')
  if examples is None:
    examples = pipeline.eval_examples(data_cfg, split=split)
  n = len(examples)
  limit = int(eval_cfg.get('num_examples', -1))
  if limit > 0:
    n = min(n, limit)
  if n == 0:
    raise ValueError(f'evaluate: no examples in split {split!r}')
  save = bool(eval_cfg.get('save_predictions', False)) and out_dir is not None
  predictor = Predictor.from_config(cfg, variables, eval_cfg, dtype=dtype)
  main = jax.process_index() == 0

  cm = np.zeros((k, k), np.int64)
  done, skipped = 0, 0
  mine = range(jax.process_index(), n, jax.process_count())
  progress = Progress(len(mine), 'eval')

  def counted(stream):
    nonlocal skipped
    for ex in stream:
      skipped += ex is None
      yield ex

  for group in same_shape_groups(counted(prefetch(examples, mine)),
                                 predictor.batch_size):
    for ex in group:
      if ex.get('label') is None:
        raise ValueError(f'example {ex.get("id")!r} has no label; evaluate '
                         'needs labels (use predict for test sets)')
    images = np.stack([prepare_image(ex['image']) for ex in group])
    rows = (np.stack([np.asarray(ex['rows']) for ex in group])
            if all('rows' in ex for ex in group) else None)
    fused = predictor.multi_scale(images, rows)
    for i, ex in enumerate(group):
      label = np.asarray(ex['label'])
      pad = ex.get('pad') if crop_padding else None
      pred = label_prediction(fused[i:i + 1], label.shape, align, pad)[0]
      cm += metrics.confusion_matrix(pred, label, k, ignore)
      if save:
        files.write_bytes_atomic(prediction_path(out_dir, ex['id']),
                                 files.encode_png(pred.astype(np.uint8)))
    done += len(group)
    pipes.raise_if_ctrl_c()
    if main and progress.due(done, progress_seconds):
      log(progress.line(done))

  cm = multihost.sum_across_processes(cm)
  skipped = int(multihost.sum_across_processes(np.array([skipped]))[0])
  result = metrics.iou_metrics(cm)
  names = classes.class_names(_field(data_cfg, 'name'), k)
  result['class_names'] = list(names)
  result['confusion_matrix'] = cm.tolist()
  result['settings'] = settings_of(eval_cfg, data_cfg, cfg, dtype, n, skipped,
                                   crop_padding)
  if main and skipped:
    log(f'eval: {console.counted(skipped, "bad example")} skipped (see the warnings above)')
  if main and report:
    log(metrics.format_iou_table(result, names))
    if out_dir is not None:
      write_metrics(out_dir, result, names)
  return result


def write_metrics(out_dir: str, result: Mapping[str, Any], names: Sequence[str],
                  confusion: np.ndarray | None = None) -> None:
  """``out_dir/metrics.json`` (``result`` but its example pictures) and
  ``out_dir/confusion.png`` (``confusion``, if already drawn)."""
  cm = np.asarray(result['confusion_matrix'])
  saved = {k: v for k, v in result.items() if k != 'examples'}
  saved['confusion_matrix'] = cm.tolist()
  files.write_json_atomic(os.path.join(out_dir, METRICS_FILE),
                          json.loads(json.dumps(saved, default=float)))
  if confusion is None:
    confusion = visuals.confusion_image(cm, names)
  files.write_bytes_atomic(os.path.join(out_dir, visuals.CONFUSION_FILE),
                           files.encode_png(confusion))
