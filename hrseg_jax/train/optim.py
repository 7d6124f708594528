"""Optimizer and learning-rate schedule of the original recipe.

SGD with momentum 0.9 (no Nesterov) and coupled L2 weight decay on every
parameter (BN and biases included): ``add_decayed_weights(wd)`` then ``sgd``,
which is PyTorch's ``buf = m*buf + (g + wd*p); p -= lr*buf``.  The poly
schedule ``lr = base * (1 - t/T)^0.9`` is evaluated per step with the first
step at ``base`` (the original sets the LR after each step).  Optional linear
warm-up; optional x``nonbackbone_mult`` LR for parameters whose path contains
one of ``nonbackbone_keywords`` (PASCAL-Context and COCO-Stuff recipes).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import optax
from flax import traverse_util


def poly_schedule(base_lr: float, total_steps: int, power: float = 0.9,
                  warmup_steps: int = 0, warmup_factor: float = 0.1):
  total = max(int(total_steps), 1)

  def schedule(step):
    t = jnp.minimum(step, total).astype(jnp.float32)
    lr = base_lr * jnp.power(jnp.maximum(1.0 - t / total, 0.0), power)
    if warmup_steps > 0:
      alpha = jnp.minimum(t / warmup_steps, 1.0)
      lr = lr * (warmup_factor + (1.0 - warmup_factor) * alpha)
    return lr
  return schedule


def _labels(params, keywords: Sequence[str]):
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      k: ('head' if any(w in '/'.join(k) for w in keywords) else 'backbone')
      for k in flat})


def make_optimizer(train_cfg, total_steps: int):
  """Returns (optax transformation, lr schedule)."""
  sched = poly_schedule(train_cfg.base_lr, total_steps, train_cfg.poly_power,
                        train_cfg.warmup_steps)

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
  if train_cfg.get('grad_accum_steps', 1) > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=train_cfg.grad_accum_steps)
  return tx, sched
