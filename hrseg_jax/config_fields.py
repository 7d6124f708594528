"""One-line errors for ``config.eval`` / ``config.data`` / ``train.dtype``
values of the wrong kind, checked at start-up.

A value the override parser or a config file lets through (``eval.scales``
given as ``0.5,x`` arrives as the string ``'0.5,x'``; ``data.image_size`` as
``(128,)``) would otherwise fail where it is first used: at the first
evaluation, hours into a training run, with a message that names no field.
:func:`check` goes through :data:`FIELDS` with one rule per kind of value
and raises the first mismatch as ``--config.eval.scales=0.5,x: eval.scales
takes numbers > 0, e.g. 0.5,0.75,1.0`` (the value as typed when it came
from the command line, else ``eval.scales=('0.5,x',)``).  Training calls it
before the workdir is made (:func:`hrseg_jax.train.loop.train_and_evaluate`),
``--mode eval`` and ``--mode predict`` before a checkpoint is loaded
(:mod:`hrseg_jax.modes`).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Kind:
  """What a field takes: ``ok(value)``, and the words and example of the error."""
  ok: Callable[[Any], bool]
  takes: str
  example: str


def _int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _number(v) -> bool:
  return (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(float(v)))


def _seq(v) -> bool:
  return isinstance(v, (tuple, list))


def int_at_least(low: int, example: str) -> Kind:
  return Kind(lambda v: _int(v) and v >= low,
              'an integer > 0' if low == 1 else f'an integer >= {low}', example)


def one_of(*choices: str) -> Kind:
  return Kind(lambda v: isinstance(v, str) and v in choices,
              f'one of {", ".join(choices)}', choices[0])


def or_none(kind: Kind) -> Kind:
  return Kind(lambda v: v is None or kind.ok(v), f'{kind.takes}, or None', kind.example)


SCALES = Kind(lambda v: _seq(v) and len(v) > 0 and all(_number(s) and s > 0 for s in v),
              'numbers > 0', '0.5,0.75,1.0')
SIZE = Kind(lambda v: _seq(v) and len(v) == 2 and all(_int(s) and s > 0 for s in v),
            '(height,width), two integers > 0', '(512,1024)')
BOOL = Kind(lambda v: isinstance(v, bool), 'True or False', 'False')
LABEL = Kind(lambda v: _int(v) and 0 <= v <= 255, 'an integer in 0..255', '255')
PAIRS = Kind(lambda v: _seq(v) and all(_seq(p) and len(p) == 2 and all(_int(c) and c >= 0
                                                                        for c in p)
                                       for p in v),
             'pairs of class ids', '((14,15),(16,17))')
# float16 would need loss scaling, which training does not do (--dtype of
# eval/predict takes the same two).
DTYPE = Kind(lambda v: v in ('float32', 'bfloat16'),
             'float32 or bfloat16 (float16 would need loss scaling, which training does '
             'not do)', 'bfloat16')

EVAL_FIELDS = {
    'eval.scales': SCALES,
    'eval.flip': BOOL,
    'eval.flip_pairs': PAIRS,
    'eval.mode': one_of('whole', 'sliding'),
    'eval.sliding_rule': one_of('cityscapes', 'base'),
    'eval.crop_size': or_none(SIZE),
    'eval.base_size': or_none(int_at_least(1, '2048')),
    'eval.batch_size': int_at_least(1, '8'),
    'eval.num_examples': Kind(lambda v: _int(v) and (v == -1 or v > 0),
                              '-1 (all) or an integer > 0', '-1'),
    'eval.save_predictions': BOOL,
    'eval.ignore_label': or_none(LABEL),
    'eval.every_steps': Kind(_int, 'an integer (<= 0: no evaluation)', '1000'),
}
DATA_FIELDS = {
    'data.source': one_of('files', 'tfds', 'synthetic'),
    'data.num_classes': int_at_least(1, '19'),
    'data.ignore_label': LABEL,
    'data.crop_size': SIZE,
    'data.base_size': int_at_least(1, '2048'),
    'data.scale_factor': int_at_least(0, '16'),
    'data.multi_scale': BOOL,
    'data.flip': BOOL,
    'data.pre_resize': one_of('none', 'fixed', 'short_side'),
    'data.eval_mode': one_of('full', 'fixed', 'short_side_pad'),
    'data.eval_size': SIZE,
    'data.eval_base_size': int_at_least(1, '2048'),
    'data.eval_stride': int_at_least(1, '8'),
    'data.eval_crop_size': SIZE,
    'data.readme_eval_scales': SCALES,
    'data.readme_eval_flip': BOOL,
    'data.eval_crop_padding': BOOL,
    'data.val_num_samples': int_at_least(0, '0'),
    'data.with_rows': BOOL,
    'data.num_workers': int_at_least(0, '4'),
    'data.read_threads': int_at_least(0, '2'),
    'data.prefetch_buffer': int_at_least(0, '2'),
    'data.skip_bad_examples': BOOL,
}
# Read only when another field says so: (field, value it needs).
USED_WHEN = {
    'data.pre_resize_size': ('data.pre_resize', 'fixed'),
    'data.image_size': ('data.source', 'synthetic'),
    'data.num_train': ('data.source', 'synthetic'),
    'data.num_val': ('data.source', 'synthetic'),
}
DATA_FIELDS.update({
    'data.pre_resize_size': SIZE,
    'data.image_size': SIZE,
    'data.num_train': int_at_least(0, '256'),
    'data.num_val': int_at_least(0, '32'),
})
TRAIN_FIELDS = {'train.dtype': DTYPE}
FIELDS = {**EVAL_FIELDS, **DATA_FIELDS, **TRAIN_FIELDS}


def _value(config, path: str):
  """``config``'s value at ``path`` ('eval.scales'); KeyError when absent."""
  value = config
  for part in path.split('.'):
    if value is None or part not in value:
      raise KeyError(path)
    value = value[part]
  return value


def typed(path: str, argv=None) -> str | None:
  """The text ``--config.<path>`` was given on the command line; None when
  it was not, or more than once (absl joined the values)."""
  argv = sys.argv if argv is None else argv
  flag = f'--config.{path}'
  texts = []
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith(flag + '='):
      texts.append(arg[len(flag) + 1:])
    elif arg == flag and i + 1 < len(argv):   # the two-word form
      texts.append(argv[i + 1])
  return texts[0] if len(texts) == 1 else None


def error(path: str, value, kind: Kind, argv=None) -> str:
  """``--config.eval.scales=0.5,x: eval.scales takes numbers > 0, e.g. 0.5,0.75,1.0``."""
  text = typed(path, argv)
  if text is not None:
    shown = f'--config.{path}={text}'
  else:
    shown = f'{path}={tuple(value) if isinstance(value, list) else value!r}'
  return f'{shown}: {path} takes {kind.takes}, e.g. {kind.example}'


def check_field(config, path: str, kind: Kind | None = None, argv=None) -> None:
  """ValueError (:func:`error`) unless ``config``'s ``path`` is ``kind``'s
  (default: :data:`FIELDS`'); absent fields and fields not read (:data:`USED_WHEN`)
  pass."""
  kind = kind or FIELDS[path]
  try:
    value = _value(config, path)
    if path in USED_WHEN:
      when, needs = USED_WHEN[path]
      if _value(config, when) != needs:
        return
  except KeyError:
    return
  if not kind.ok(value):
    raise ValueError(error(path, value, kind, argv))


def check(config, fields=None, argv=None) -> None:
  """:func:`check_field` for each of ``fields`` (default: all of :data:`FIELDS`)."""
  for path in (FIELDS if fields is None else fields):
    check_field(config, path, argv=argv)
