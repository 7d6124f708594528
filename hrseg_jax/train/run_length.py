"""How many steps a training run trains, and what a resume says when it changed.

``train.num_steps``, or ``train.num_epochs`` over the training set; the
learning-rate schedule ends at that step, so a resumed run whose length
changed says so on its start-up line.
"""
from __future__ import annotations


def total_steps(config, num_train: int) -> tuple[int, int]:
  """(steps per epoch, total steps): epochs become steps from the data size."""
  steps_per_epoch = max(num_train // config.train.batch_size, 1)
  if config.train.num_steps > 0:
    return steps_per_epoch, int(config.train.num_steps)
  return steps_per_epoch, int(config.train.num_epochs * steps_per_epoch)


def schedule_length(config: dict | None) -> dict | None:
  """The fields that set the learning-rate schedule's length."""
  train = (config or {}).get('train')
  if not isinstance(train, dict):
    return None
  return {k: train.get(k) for k in ('num_steps', 'num_epochs')}


def change_note(previous: dict | None, config: dict, num_steps: int) -> str:
  """``'; the run length changed (train.num_steps 8 -> 12): …'`` for the
  start-up line of a resumed run, or '' (same length, or no earlier
  ``config.json``); ``previous``: :func:`schedule_length` of that file."""
  length = schedule_length(config)
  if not previous or previous == length:
    return ''
  return ('; the run length changed (' + ', '.join(
      f'train.{k} {previous[k]} -> {length[k]}' for k in length
      if previous.get(k) != length[k])
      + f'): the learning-rate schedule now ends at step {num_steps}')
