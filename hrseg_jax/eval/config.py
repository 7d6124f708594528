"""The ``eval`` config section: fields, per-dataset defaults, validation.

Fields (tuples so ``--config.eval.X=...`` can override them):

* ``protocol`` -- which evaluator runs (:mod:`hrseg_jax.eval.evaluator`),
  in the training loop and in ``--mode eval`` alike: ``'validation'`` (the
  training-time validation: batches at ``data.eval_size`` sharded over the
  mesh, fast) or ``'test'`` (the original's ``testval``: every image at its
  own size with the settings below).  ``''`` (default): validation inside
  training, test in ``--mode eval``.
* ``split`` -- dataset split to evaluate (``'val'``).
* ``scales`` -- multi-scale factors; the exp-logits are summed (``(1.0,)``).
  The README's multi-scale numbers use ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``
  (Cityscapes) or up to ``2.0`` (PASCAL-Context, COCO-Stuff, ADE20K).
* ``flip`` -- flip test (the original's ``TEST.FLIP_TEST``; ``False``).
* ``flip_pairs`` -- class pairs swapped by a flip (LIP: 14-15, 16-17, 18-19).
* ``mode`` -- ``'whole'`` (one forward per scale) or ``'sliding'``.
* ``sliding_rule`` -- ``'cityscapes'`` (stride = crop, windows shifted back,
  whole image for scales <= 1) or ``'base'`` (stride 2/3 crop, padded
  windows; LIP, PASCAL-Context, COCO-Stuff, ADE20K).
* ``crop_size`` -- (h, w) sliding-window size (the yaml's ``TEST.IMAGE_SIZE``
  reversed).  ``None``: ``data.eval_crop_size`` when evaluating
  (:func:`with_data_defaults`).
* ``base_size`` -- long side at scale 1 (``TEST.BASE_SIZE``).  ``None``:
  ``data.eval_base_size`` when evaluating (:func:`with_data_defaults`);
  otherwise (predict, or no data value) each image's own long side, so
  scale 1 keeps the size.
* ``batch_size`` -- network inputs (images or windows) per forward call; also
  the training loop's validation batch, over all devices (rounded down to a
  multiple of the device count, at least one image per device).
* ``num_examples`` -- evaluate the first N examples (-1 = all).
* ``save_predictions`` -- also write each prediction as a trainId PNG.
* ``progress_seconds`` -- seconds between two ``eval N/M (p%) | img/s |
  ETA`` lines (10; 0: one per batch).  ``--mode eval`` prints the first
  and last batch's too; an evaluation during training prints none until
  that long has passed, so a short one prints only its table.
* ``ignore_label`` -- ground-truth value excluded from the metrics;
  ``None``: ``data.ignore_label``, else 255.

The data config's ``readme_eval_scales``/``readme_eval_flip`` (the settings
of the original README's number) are not read: ``scales`` and ``flip`` here
decide.

:func:`default_eval_config` fills the original's test settings per dataset;
single-scale, no flip unless changed.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from hrseg_jax.eval import windows

LIP_FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))

# dataset: (mode, rule, crop (h, w), base size, flip pairs)
_PRESETS = {
    'cityscapes': ('sliding', 'cityscapes', (1024, 2048), 2048, ()),
    'lip': ('sliding', 'base', (473, 473), 473, LIP_FLIP_PAIRS),
    'pascal_ctx': ('sliding', 'base', (520, 520), 520, ()),
    'pascal_ctx60': ('sliding', 'base', (520, 520), 520, ()),
    'cocostuff': ('sliding', 'base', (520, 520), 520, ()),
    'ade20k': ('sliding', 'base', (520, 520), 520, ()),
}


def default_eval_config(dataset: str | None = None) -> ml_collections.ConfigDict:
  """The ``eval`` section, with the original's test settings for ``dataset``.

  Args:
    dataset: a dataset name of :mod:`hrseg_jax.recipes` ('cityscapes', 'lip',
      'pascal_ctx', 'pascal_ctx60', 'cocostuff', 'ade20k'); any other name
      or ``None`` gives generic whole-image settings.
  """
  c = ml_collections.ConfigDict()
  c.protocol = ''
  c.split = 'val'
  c.scales = (1.0,)
  c.flip = False
  c.flip_pairs = ()
  c.mode = 'whole'
  c.sliding_rule = 'cityscapes'
  c.crop_size = config_dict.placeholder(tuple)
  c.base_size = config_dict.placeholder(int)
  c.batch_size = 1
  c.num_examples = -1
  c.save_predictions = False
  c.progress_seconds = 10.0
  c.ignore_label = config_dict.placeholder(int)
  if dataset in _PRESETS:
    mode, rule, crop, base, pairs = _PRESETS[dataset]
    c.mode, c.sliding_rule, c.crop_size, c.base_size = mode, rule, crop, base
    c.flip_pairs = pairs
  return c


def _get(cfg, name, default):
  if cfg is None:
    return default
  if isinstance(cfg, Mapping) or hasattr(cfg, 'get'):
    value = cfg.get(name, default)
  else:
    value = getattr(cfg, name, default)
  return default if value is None and default is not None else value


def split_of(eval_cfg) -> str:
  """``eval.split``, checked: a split of the data config, named in the error."""
  from hrseg_jax.data.sources import SPLITS  # pylint: disable=g-import-not-at-top
  split = str(_get(eval_cfg, 'split', 'val'))
  if split not in SPLITS:
    hint = (" (the original's testval is the val images at their own size, which the "
            "test protocol evaluates: keep eval.split='val', or read another list with "
            '--config.data.val_list=PATH)' if split == 'testval' else '')
    raise ValueError(f'eval.split={split!r}: expected one of '
                     f'{", ".join(map(repr, SPLITS))}{hint}')
  return split


def with_data_defaults(eval_cfg, data_cfg) -> dict[str, Any]:
  """``eval_cfg`` as a dict, unset sizes and ignore label taken from data.

  ``crop_size``/``base_size``/``ignore_label`` that are ``None`` become
  ``data.eval_crop_size``/``data.eval_base_size``/``data.ignore_label``
  (255 for the ignore label if the data config has none either).
  """
  if eval_cfg is None:
    out = default_eval_config().to_dict()
  elif hasattr(eval_cfg, 'to_dict'):
    out = eval_cfg.to_dict()
  else:
    out = dict(eval_cfg)
  for ours, theirs in (('crop_size', 'eval_crop_size'),
                       ('base_size', 'eval_base_size'),
                       ('ignore_label', 'ignore_label')):
    if out.get(ours) is None:
      out[ours] = _get(data_cfg, theirs, None)
  if out.get('ignore_label') is None:
    out['ignore_label'] = 255
  return out


def predictor_kwargs(eval_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
  """Validated :class:`~hrseg_jax.eval.inference.Predictor` keyword args."""
  d = default_eval_config()
  kw = dict(
      scales=tuple(float(s) for s in _get(eval_cfg, 'scales', d.scales)),
      flip=bool(_get(eval_cfg, 'flip', d.flip)),
      flip_pairs=tuple(tuple(int(v) for v in p)
                       for p in _get(eval_cfg, 'flip_pairs', d.flip_pairs)),
      mode=str(_get(eval_cfg, 'mode', d.mode)),
      sliding_rule=str(_get(eval_cfg, 'sliding_rule', d.sliding_rule)),
      crop_size=_get(eval_cfg, 'crop_size', None),
      base_size=_get(eval_cfg, 'base_size', None),
      batch_size=int(_get(eval_cfg, 'batch_size', d.batch_size)),
  )
  if kw['crop_size'] is not None:
    kw['crop_size'] = tuple(int(v) for v in kw['crop_size'])
    if len(kw['crop_size']) != 2 or min(kw['crop_size']) < 1:
      raise ValueError(f'eval.crop_size must be (h, w), got {kw["crop_size"]}')
  if kw['base_size'] is not None:
    kw['base_size'] = int(kw['base_size'])
  if not kw['scales'] or min(kw['scales']) <= 0:
    raise ValueError(f'eval.scales must be positive, got {kw["scales"]}')
  if any(len(p) != 2 for p in kw['flip_pairs']):
    raise ValueError(f'eval.flip_pairs must be pairs, got {kw["flip_pairs"]}')
  if kw['batch_size'] < 1:
    raise ValueError(f'eval.batch_size must be >= 1, got {kw["batch_size"]}')
  windows.plan_scale((8, 8), 1.0, mode=kw['mode'], rule=kw['sliding_rule'],
                     crop_size=kw['crop_size'], base_size=kw['base_size'])
  return kw
