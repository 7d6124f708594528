"""Training checkpoints: Orbax CheckpointManager, async, keep-N + best mIoU.

Each step directory holds the items
``variables`` (params + BN statistics + constants), ``train`` (step,
optimizer state, rng, skipped-step count), ``model`` (JSON model config, so
the checkpoint is self-describing, see :mod:`hrseg_jax.checkpoints`) and
``data`` (the Grain iterator state, one file per process), so a resumed run
continues with exactly the next batch.  Orbax writes each step to a
temporary directory and renames it when complete: a crash mid-save never
leaves a step that looks complete.
"""
from __future__ import annotations

import logging
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from hrseg_jax import checkpoints as model_ckpt
from hrseg_jax.train.state import TrainState

TRAIN = 'train'
DATA = 'data'


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for a :class:`TrainState`."""

  def __init__(self, directory, *, max_to_keep: int = 3, keep_best: bool = True,
               async_save: bool = True):
    for name in ('orbax', 'absl'):
      logging.getLogger(name).setLevel(logging.WARNING)
    policies = [pp.LatestN(max_to_keep)]
    if keep_best:
      policies.append(pp.BestN(get_metric_fn=lambda m: m['miou'], n=1,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, data_iter, model_cfg: dict, *,
           metrics: dict | None = None, meta: dict | None = None,
           force: bool = False) -> bool:
    step = int(jax.device_get(state.step))
    args = {
        model_ckpt.VARIABLES: ocp.args.StandardSave(state.variables),
        TRAIN: ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state,
                                      'rng': state.rng, 'skipped': state.skipped}),
        model_ckpt.MODEL: ocp.args.JsonSave({'model': model_cfg, 'meta': meta or {}}),
    }
    if data_iter is not None:
      args[DATA] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**args),
                             metrics=metrics, force=force)

  def restore(self, abstract_state: TrainState, data_iter=None,
              step: int | None = None) -> TrainState:
    """Restores onto the shardings carried by ``abstract_state``'s leaves."""
    step = self.manager.latest_step() if step is None else step
    variables = {'params': abstract_state.params, **abstract_state.model_state}
    train = {'step': abstract_state.step, 'opt_state': abstract_state.opt_state,
             'rng': abstract_state.rng, 'skipped': abstract_state.skipped}
    args = {model_ckpt.VARIABLES: ocp.args.StandardRestore(variables),
            TRAIN: ocp.args.StandardRestore(train)}
    if data_iter is not None:
      args[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
    r = self.manager.restore(step, args=ocp.args.Composite(**args))
    v, t = r[model_ckpt.VARIABLES], r[TRAIN]
    return TrainState(step=t['step'], params=v['params'],
                      model_state={k: x for k, x in v.items() if k != 'params'},
                      opt_state=t['opt_state'], rng=t['rng'], skipped=t['skipped'])

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any):
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
