"""Optimizer and learning-rate schedule of the original recipe.

SGD with momentum 0.9 (no Nesterov) and coupled L2 weight decay on every
parameter (BN and biases included): ``add_decayed_weights(wd)`` then ``sgd``,
which is PyTorch's ``buf = m*buf + (g + wd*p); p -= lr*buf``.

The LR schedule follows the official loop exactly.  It calls
``adjust_learning_rate(..., i)`` *after* ``optimizer.step()``, with ``i`` the
0-based index of the step just taken, so the first step runs at the LR the
optimizer was built with and every later step at the poly value of the
*previous* step's index: step ``t`` (1-based) of ``T`` runs at
``base * (1 - max(t - 2, 0) / T) ** power`` (steps 1 and 2 both at ``base``).
The index is the global step count (the official ``i_iter + epoch *
epoch_iters``), which the optimizer state carries, so a run resumed anywhere,
mid-epoch included, continues the same sequence.  The optional linear
warm-up (not in the official code) multiplies the same lagged index's LR.
With gradient accumulation the index, ``T`` and the warm-up count updates
(:func:`make_optimizer`).
Parameters whose path contains one of ``nonbackbone_keywords`` (PASCAL-Context
and COCO-Stuff recipes) get ``nonbackbone_mult`` times the scheduled LR at
every step, weight decay included, like the official second parameter group.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import optax
from flax import traverse_util


def poly_schedule(base_lr: float, total_steps: int, power: float = 0.9,
                  warmup_steps: int = 0, warmup_factor: float = 0.1):
  """The official poly LR as a function of the number of completed updates.

  Args:
    base_lr: the LR of the first two steps.
    total_steps: ``T``, the official ``num_iters``.
    power: the poly exponent.
    warmup_steps: length of the optional linear warm-up (0: none), counted
      on the same index as the poly term.
    warmup_factor: the warm-up's starting fraction of the LR.

  Returns:
    ``schedule(count)``: the LR of the update that follows ``count``
    completed updates (optax's step count), i.e. of 1-based step
    ``count + 1``: ``base * (1 - max(count - 1, 0) / T) ** power``.
  """
  total = max(int(total_steps), 1)

  def schedule(count):
    # The index of the previous step: the official loop sets the LR for the
    # next step right after taking one.
    i = jnp.clip(jnp.asarray(count) - 1, 0, total).astype(jnp.float32)
    lr = base_lr * jnp.power(jnp.maximum(1.0 - i / total, 0.0), power)
    if warmup_steps > 0:
      alpha = jnp.minimum(i / warmup_steps, 1.0)
      lr = lr * (warmup_factor + (1.0 - warmup_factor) * alpha)
    return lr
  return schedule


def _labels(params, keywords: Sequence[str]):
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      k: ('head' if any(w in '/'.join(k) for w in keywords) else 'backbone')
      for k in flat})


def make_optimizer(train_cfg, total_steps: int):
  """Returns (optax transformation, lr of the step that follows ``count`` steps).

  ``total_steps`` counts training steps (batches of ``train.batch_size``);
  with ``train.grad_accum_steps`` = k, every k steps make one update, and
  the poly schedule (and warm-up) runs over those updates, ending where a
  run without accumulation ends.
  """
  accum = int(train_cfg.get('grad_accum_steps', 1))
  sched = poly_schedule(train_cfg.base_lr, -(-int(total_steps) // accum),
                        train_cfg.poly_power, train_cfg.warmup_steps)

  def sgd(scale):
    return optax.chain(
        optax.add_decayed_weights(train_cfg.weight_decay),
        optax.sgd(lambda s: sched(s) * scale, momentum=train_cfg.momentum,
                  nesterov=train_cfg.nesterov))

  keywords = tuple(train_cfg.get('nonbackbone_keywords', ()) or ())
  if keywords:
    tx = optax.multi_transform(
        {'backbone': sgd(1.0), 'head': sgd(train_cfg.nonbackbone_mult)},
        lambda p: _labels(p, keywords))
  else:
    tx = sgd(1.0)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, lambda count: sched(count // accum)
