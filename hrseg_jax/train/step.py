"""The pure training step and its loss (jitted and sharded by the loop; the
evaluation step is :func:`hrseg_jax.eval.evaluator.make_eval_step`)."""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from hrseg_jax.train import losses
from hrseg_jax.train.state import TrainState


def loss_from_config(outputs, labels, loss_cfg, align_corners: bool):
  """The configured criterion; ``loss_cfg.num_chunks`` > 1 normalises the loss
  per chunk of the batch and averages, like the original's per-GPU losses."""
  fn = functools.partial(
      losses.segmentation_loss, ignore_label=loss_cfg.ignore_label,
      class_weights=loss_cfg.class_weights, align_corners=align_corners,
      balance_weights=tuple(loss_cfg.balance_weights), ohem=loss_cfg.ohem,
      ohem_thresh=loss_cfg.ohem_thresh, ohem_min_kept=loss_cfg.ohem_min_kept)
  n = int(loss_cfg.get('num_chunks', 1) or 1)
  if n <= 1:
    return fn(outputs, labels)
  split = lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jnp.mean(jax.vmap(fn)([split(o) for o in outputs], split(labels)))


def train_step(state: TrainState, batch: dict[str, Any], *, model, tx,
               loss_cfg, align_corners: bool, skip_nonfinite: bool = False):
  """One SGD step. BN statistics are global over the (sharded) batch."""
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    outputs, new_state = model.apply(
        {'params': params, **state.model_state}, batch['image'], train=True,
        rows=batch.get('rows'), mutable=['batch_stats'], rngs={'dropout': rng})
    loss = loss_from_config(outputs, batch['label'], loss_cfg, align_corners)
    return loss, new_state

  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new = state.replace(step=state.step + 1, params=params,
                      model_state={**state.model_state, **new_model_state},
                      opt_state=opt_state)
  if skip_nonfinite:
    keep_old = lambda a, b: jnp.where(finite, a, b)
    new = new.replace(
        params=jax.tree_util.tree_map(keep_old, new.params, state.params),
        model_state=jax.tree_util.tree_map(keep_old, new.model_state, state.model_state),
        opt_state=jax.tree_util.tree_map(keep_old, new.opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32))
  metrics = {'loss': loss, 'grad_norm': grad_norm, 'finite': finite}
  return new, metrics
