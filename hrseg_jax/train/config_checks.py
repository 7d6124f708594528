"""The one-line errors for a training config the loop cannot run with.

:func:`~hrseg_jax.train.loop.train_and_evaluate` calls these before the
workdir is made: a bad ``config.train`` value, a model and data that disagree
on the classes, a batch that does not split over the devices or the loss's
chunks, too little training data, an unreadable validation split; and, once
it knows the step it starts at, a ``train.stop_at_step`` it would never
reach.  Each error names the field and what to pass instead.
:func:`compute_dtype` and :func:`loss_chunks` read two of those fields.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from hrseg_jax import config_fields
from hrseg_jax.data import pipeline
from hrseg_jax.data.errors import DataError
from hrseg_jax.eval import config as eval_config
from hrseg_jax.train import sharding

# float16 is refused (config_fields.DTYPE): training has no loss scaling.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
NONFINITE = ('stop', 'skip')
TRANSFER_GUARDS = ('allow', 'disallow')


def compute_dtype(name: str):
  """``train.dtype`` as a JAX dtype (a one-line error for another name)."""
  config_fields.check_field({'train': {'dtype': name}}, 'train.dtype')
  return DTYPES[name]


def check_train_config(train_cfg) -> None:
  """One-line errors for ``config.train`` values the loop cannot run with."""
  compute_dtype(train_cfg.dtype)
  if train_cfg.nonfinite not in NONFINITE:
    raise ValueError(f'train.nonfinite={train_cfg.nonfinite!r}: expected one of {NONFINITE}')
  guard = train_cfg.get('transfer_guard', 'allow')
  if guard not in TRANSFER_GUARDS:
    raise ValueError(f'train.transfer_guard={guard!r}: expected one of {TRANSFER_GUARDS}')
  for name in ('batch_size', 'log_every_steps', 'checkpoint_every_steps',
               'keep_checkpoints'):
    value = train_cfg[name]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'train.{name}={value!r}: expected a positive integer')
  if not isinstance(train_cfg.get('grad_accum_steps', 1), int) or \
      train_cfg.get('grad_accum_steps', 1) < 1:
    raise ValueError(f'train.grad_accum_steps={train_cfg.grad_accum_steps!r}: expected a '
                     'positive integer')
  warmup = train_cfg.get('warmup_steps', 0)
  if not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f'train.warmup_steps={warmup!r}: expected an integer >= 0')
  # The original's SGD refuses negative ones; momentum 1 or more never forgets.
  for name, high in (('base_lr', math.inf), ('weight_decay', math.inf),
                     ('poly_power', math.inf), ('momentum', 1.0)):
    value = train_cfg.get(name, 0.0)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not 0 <= value < high):
      raise ValueError(f'train.{name}={value!r}: expected a number >= 0'
                       + (f' and < {high:g}' if high < math.inf else ''))


def check_stop_at_step(train_cfg, start: int, num_steps: int) -> None:
  """ValueError for a ``train.stop_at_step`` this run never reaches: at or
  before the step it starts (or resumes) at, it would stop before training
  anything, or be passed by and ignored."""
  stop_at = int(train_cfg.get('stop_at_step', -1))
  if stop_at < 0 or stop_at > start or start >= num_steps:
    return
  where = 'resumes from its checkpoint' if start else 'starts'
  raise ValueError(
      f'train.stop_at_step={stop_at} is not after step {start}, where this run {where} '
      f'(train.num_steps {num_steps}), so it would never stop there: give a step in '
      f'{start + 1}..{num_steps - 1}, or -1 (the default) to train to the end')


def loss_chunks(config) -> int:
  """``loss.num_chunks`` (1 when unset)."""
  return int((config.get('loss') or {}).get('num_chunks', 1) or 1)


def check_loss_chunks(config) -> None:
  """``loss.num_chunks`` must divide the batch (the loss is normalised per
  chunk, like the original's per-GPU losses)."""
  chunks = loss_chunks(config)
  batch = config.train.batch_size
  if chunks > 1 and batch % chunks:
    raise ValueError(
        f'loss.num_chunks={chunks} does not divide train.batch_size={batch} (the loss '
        'is averaged over that many equal parts of the batch, like the original\'s '
        'per-GPU losses): pass --config.loss.num_chunks=1 or a divisor of the batch')


def check_batch_sizes(config) -> None:
  """The global training batch must split evenly over the devices (the
  validation batch is rounded to whole images per device by the evaluator)."""
  sharding.check_splits_over_devices(int(config.train.batch_size), jax.device_count())


def check_num_train(num_train: int, global_batch: int, num_chunks: int = 1) -> None:
  """A training set must hold at least one global batch."""
  if num_train >= global_batch:
    return
  # The largest batch that fits and splits evenly over the devices and the
  # loss's chunks (check_loss_chunks).
  n = math.lcm(jax.device_count(), num_chunks)
  fit = num_train // n * n
  raise ValueError(
      f'{num_train} training example{" is" if num_train == 1 else "s are"} fewer than '
      f'one global batch (train.batch_size={global_batch}): '
      + (f'pass --config.train.batch_size={fit} or ' if fit else '')
      + 'use more training data')


def check_num_classes(config) -> None:
  """The model predicts the classes the labels are mapped to."""
  model_k, data_k = config.model.get('num_classes'), config.data.get('num_classes')
  if model_k is None or data_k is None or int(model_k) == int(data_k):
    return
  raise ValueError(f'model.num_classes={model_k} but data.num_classes={data_k} '
                   f'({config.data.name}, label map {config.data.get("label_map")!r}): '
                   'the model must predict the classes the labels are mapped to; set '
                   'both, or use the config of the dataset you mean')


def check_val_data(config) -> None:
  """A run that validates (``eval.every_steps`` > 0) must be able to read its
  validation split: a missing or empty list fails at start-up, not at the
  first evaluation hours later."""
  every = int(config.eval.get('every_steps', -1))
  if every <= 0:
    return
  hint = (f'; validation every {every} steps (eval.every_steps) reads it, '
          '--config.eval.every_steps=-1 trains without')
  try:
    pipeline.labelled_source(config.data, eval_config.split_of(config.eval))
  except DataError as e:
    raise DataError(e.path, e.reason + hint) from None
  except (OSError, ValueError) as e:
    raise ValueError(f'{e}{hint}') from None
