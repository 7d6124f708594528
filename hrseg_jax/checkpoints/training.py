"""Training checkpoints: Orbax CheckpointManager, async, keep-N + best mIoU.

Each step directory holds the items
``variables`` (params + BN statistics + constants), ``train`` (step,
optimizer state, rng, skipped-step count), ``model`` (JSON model config, so
the checkpoint is self-describing, see :mod:`hrseg_jax.checkpoints`) and
``data_order`` (JSON: step, seed, global batch, dataset size and the
images trained on so far, see :func:`hrseg_jax.data.pipeline.data_order_state`),
so a resumed run continues with exactly the next batch on any number of
processes, and counts its epochs from the images seen.  (Checkpoints of
earlier versions hold a per-process Grain state, ``data/``, instead; it is
not read: the step gives the same position.)

Crash safety (tested by ``tests/test_faults.py``):

* Orbax writes each step to ``<step>.orbax-checkpoint-tmp`` and renames it
  when complete, so a crash mid-save never leaves a step that looks complete;
  the next run removes the temporary directory.
* Old steps are deleted by first renaming them into ``.deleted/`` (one atomic
  rename) and then removing them there, so a crash mid-deletion never leaves
  a half-deleted step either.
* A failed save (a full disk, say) raises :class:`CheckpointSaveError` naming
  the step, the cause and the last complete step, after removing the partial
  step; a background commit that failed is reported by the next
  :meth:`Checkpointer.save`, :meth:`Checkpointer.wait` or
  :meth:`Checkpointer.close`.  In a multi-process run the process whose
  writes failed reports it as soon as they have ended, without waiting for
  the others (they wait for it; the launcher or the cluster stops them).
* Restoring a step that is unreadable or of another model raises
  :class:`CheckpointRestoreError` naming the step directory.
* Each committed step gets an integrity manifest (:mod:`hrseg_jax.checkpoints.manifest`:
  sizes and SHA-256 digests), written by process 0 once Orbax has finished
  the step (at the next save, :meth:`Checkpointer.wait` or
  :meth:`Checkpointer.close`; at once for synchronous saves). A restore
  checks it, naming a damaged file, and refuses restored values that are
  not finite, naming the step (a step without a manifest, e.g. one whose run
  was killed right after its commit, is checked for finiteness only).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from typing import Any, Callable

from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from hrseg_jax import console, paths
from hrseg_jax.checkpoints import manifest
from hrseg_jax.checkpoints import model as model_ckpt
from hrseg_jax.train.state import TrainState

TRAIN = 'train'
DATA_ORDER = 'data_order'
TRASH = '.deleted'
_TMP_SUFFIX = '.orbax-checkpoint-tmp'


class CheckpointSaveError(OSError):
  """A checkpoint could not be written; the previous steps are intact."""


class CheckpointRestoreError(ValueError):
  """A checkpoint step cannot be restored for this run."""


def _plain_json(tree: Any) -> Any:
  return json.loads(json.dumps(tree))


def _model_differences(saved: dict, current: dict) -> list[str]:
  def short(value):
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + '...'
  return [f'model.{k}: {short(saved.get(k))} in the checkpoint, '
          f'{short(current.get(k))} in the config'
          for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, minus its own look at JAX's preemption sync point.

  On several processes the training loop alone asks
  ``multihost_utils.reached_preemption_sync_point(step)``, once per step.
  Orbax asks too: in ``save`` and, on process 0, in the background thread
  that finalizes an asynchronous save, with the step being finalized, which
  may be older than the one the loop reached.  JAX records the last step
  each process reported and, on a preemption notice, makes every process
  stop at the largest reported step + 1: an older step reported by Orbax's
  thread lets the notice land on a step that process 0 has already passed,
  so the other processes stop and save there while process 0 trains on,
  and both wait for each other for ever.  (Orbax only uses the answer for
  logging and for ``should_save``, which the loop does not use: it saves
  with ``force=True``.)
  """

  def reached_preemption(self, step: int) -> bool:
    del step
    return False

  def _finalize(self, step: int, steps_to_remove: list[int]):
    """Orbax's finalization of an asynchronous save, ended at once when this
    process's writes failed (a full disk) in a multi-process run.

    Orbax waits for this process's writes and then, failed or not, meets the
    other processes at a barrier; they wait at an earlier barrier for this
    process's writes, so neither barrier is ever reached (until Orbax's
    20-minute timeout).  Here the failure ends the finalization before its
    barrier: :meth:`Checkpointer.wait` reports it and the process exits.
    """
    if jax.process_count() > 1:
      # Raise this process's write error; once done, Orbax's own waits return at once.
      store = getattr(self, '_non_blocking_metadata_store', None)
      if store is not None:
        store.wait_until_finished()
      self._wait_for_checkpointers()
    super()._finalize(step, steps_to_remove)


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for a :class:`TrainState`."""

  def __init__(self, directory, *, max_to_keep: int = 3, keep_best: bool = True,
               async_save: bool = True):
    console.quiet_orbax()
    self.directory = epath.Path(paths.resolve(os.fspath(directory)))
    policies = [pp.LatestN(max_to_keep)]
    if keep_best:
      policies.append(pp.BestN(get_metric_fn=lambda m: m['miou'], n=1,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        # Writes each save's metrics to disk, so a resumed run still knows
        # (and keeps) the best step.
        best_fn=(lambda m: m['miou']) if keep_best else None, best_mode='max',
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        todelete_subdir=TRASH)
    self.manager = _Manager(self.directory, options=options)
    # Orbax removes the unfinished saves of earlier runs in a thread; wait for
    # it, so that no thread outlives an error that stops this run early.
    getattr(self.manager, '_maybe_await_cleanup_tmp_directory', lambda: None)()
    self._in_flight = None
    self._manifest_thread = None
    self._async = async_save
    self._failed_with_peers = False   # a save failed in a multi-process run
    self._purge_deleted()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def complete_steps(self) -> list[int]:
    """The step directories on disk (temporary and deleted ones excluded)."""
    if not self.directory.exists():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

  def save(self, state: TrainState, data_order: dict | None, model_cfg: dict, *,
           metrics: dict | None = None, meta: dict | None = None,
           force: bool = False) -> bool:
    """Saves ``state`` (asynchronously if so configured).

    ``data_order`` is the input state (``pipeline.data_order_state``),
    written once (by process 0), whatever the process count.

    Raises:
      CheckpointSaveError: this save, or the previous asynchronous one, failed.
    """
    step = int(jax.device_get(state.step))
    self.wait()
    self._purge_deleted()
    args = {
        model_ckpt.VARIABLES: ocp.args.StandardSave(state.variables),
        TRAIN: ocp.args.StandardSave({'step': state.step, 'opt_state': state.opt_state,
                                      'rng': state.rng, 'skipped': state.skipped}),
        model_ckpt.MODEL: ocp.args.JsonSave({'model': model_cfg, 'meta': meta or {}}),
    }
    if data_order is not None:
      args[DATA_ORDER] = ocp.args.JsonSave(data_order)
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**args),
                                metrics=metrics, force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e
    self._in_flight = step if saved else None
    if not self._async:
      self.wait()  # Writes the manifest.
    return saved

  def check_model(self, model_cfg: dict, step: int | None = None, *,
                  resolve: Callable[[dict], dict] | None = None) -> dict:
    """Raises CheckpointRestoreError if ``step`` holds another model.

    Args:
      model_cfg: this run's (resolved) model config.
      step: the step to check (default: the latest).
      resolve: applied to the saved config first (fills the defaults that
        the code which wrote it may not have known).

    Returns:
      The step's ``meta`` (``{'config': the training config}``).
    """
    step = self.manager.latest_step() if step is None else step
    where = paths.shown(self.directory / str(step))   # as the user typed the workdir
    self._verify(step, only=model_ckpt.MODEL)
    try:
      item = self.manager.restore(step, args=ocp.args.Composite(
          **{model_ckpt.MODEL: ocp.args.JsonRestore()}))[model_ckpt.MODEL]
      saved = resolve(item['model']) if resolve else item['model']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointRestoreError(f'cannot read the model config of checkpoint '
                                   f'{where}: {console.first_line(e)}') from e
    diffs = _model_differences(_plain_json(saved), _plain_json(model_cfg))
    if diffs:
      raise CheckpointRestoreError(
          f'{where} is a checkpoint of another model ({"; ".join(diffs[:4])}'
          f'{"; …" if len(diffs) > 4 else ""}); use a new --workdir for this config')
    return item.get('meta') or {}

  def data_order(self, step: int | None = None) -> dict | None:
    """The step's saved input state (None in checkpoints that predate it)."""
    step = self.manager.latest_step() if step is None else step
    if not (self.directory / str(step) / DATA_ORDER).exists():
      return None
    self._verify(step, only=DATA_ORDER)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          **{DATA_ORDER: ocp.args.JsonRestore()}))[DATA_ORDER]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointRestoreError(
          f'cannot restore checkpoint {self.directory / str(step)}: '
          f'{console.first_line(e)}') from e

  def restore(self, abstract_state: TrainState,
              step: int | None = None) -> TrainState:
    """Restores onto the shardings carried by ``abstract_state``'s leaves.

    Raises:
      CheckpointRestoreError: the step is missing, unreadable or does not fit
        ``abstract_state``.
    """
    step = self.manager.latest_step() if step is None else step
    variables = {'params': abstract_state.params, **abstract_state.model_state}
    train = {'step': abstract_state.step, 'opt_state': abstract_state.opt_state,
             'rng': abstract_state.rng, 'skipped': abstract_state.skipped}
    args = {model_ckpt.VARIABLES: ocp.args.StandardRestore(variables),
            TRAIN: ocp.args.StandardRestore(train)}
    self._verify(step)
    try:
      r = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointRestoreError(
          f'cannot restore checkpoint {self.directory / str(step)}: '
          f'{console.first_line(e)}{self._earlier_hint(step)}') from e
    v, t = r[model_ckpt.VARIABLES], r[TRAIN]
    bad = _first_non_finite({'variables': v, 'opt_state': t['opt_state']})
    if bad:
      raise CheckpointRestoreError(
          f'checkpoint {self.directory / str(step)} (step {step}) holds non-finite '
          f'values in {bad}; it is damaged{self._earlier_hint(step)}')
    return TrainState(step=t['step'], params=v['params'],
                      model_state={k: x for k, x in v.items() if k != 'params'},
                      opt_state=t['opt_state'], rng=t['rng'], skipped=t['skipped'])

  def wait(self):
    """Blocks until the asynchronous save in flight, if any, is committed.

    Raises:
      CheckpointSaveError: its background commit failed.
    """
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      step, self._in_flight = self._in_flight, None
      raise self._save_failed(step, e) from e
    step, self._in_flight = self._in_flight, None
    self._join_manifest()
    if step is not None and jax.process_index() == 0:
      # Hashing runs beside training; it is joined before the next save, a
      # restore or close, so Orbax never deletes a step being hashed.
      self._manifest_thread = threading.Thread(
          target=self._write_manifest, args=(step,), daemon=True,
          name=f'manifest-{step}')
      self._manifest_thread.start()

  def _join_manifest(self):
    thread, self._manifest_thread = self._manifest_thread, None
    if thread is not None:
      thread.join()

  def _write_manifest(self, step: int):
    """The integrity manifest of a committed step (process 0, local disks)."""
    where = self.directory / str(step)
    if paths.is_url(str(where)) or not where.is_dir() or manifest.exists(where):
      return
    try:
      manifest.write(os.fspath(where), step)
    except Exception as e:  # pylint: disable=broad-except  # Never kills training.
      logging.error('cannot write the manifest of checkpoint %s: %s', where,
                    console.first_line(e))

  def _verify(self, step: int, only: str | None = None):
    """Checks a step against its manifest; CheckpointRestoreError if damaged."""
    self._join_manifest()
    where = self.directory / str(step)
    if paths.is_url(str(where)) or not where.is_dir():
      return
    try:
      manifest.verify(os.fspath(where), only=only)
    except manifest.CorruptCheckpointError as e:
      detail = str(e).split(' is corrupt: ', 1)[-1]
      raise CheckpointRestoreError(f'cannot restore checkpoint {where}: {detail}'
                                   f'{self._earlier_hint(step)}') from None

  def _earlier_hint(self, step: int) -> str:
    earlier = [s for s in self.complete_steps() if s < step]
    return (f' (move it away to resume from step {earlier[-1]})' if earlier else '')

  def close(self):
    self.wait()
    self._join_manifest()
    self.manager.close()
    self._purge_deleted()

  def abandon(self):
    """Closes after an error elsewhere: lets a save in flight commit; never raises.

    After a failed save of a multi-process run it leaves Orbax alone: its
    threads of that save wait at barriers for the other processes, which
    wait for this one; the process exits next
    (:func:`hrseg_jax.distributed.exit_after_error`).
    """
    if self._failed_with_peers:
      return
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.error('while stopping after an error: %s', console.first_line(e))

  def _save_failed(self, step: int | None, error: Exception) -> CheckpointSaveError:
    """Removes the partial step and describes the failure in one line."""
    self._failed_with_peers = jax.process_count() > 1
    try:
      # Orbax's background writers of the failed save may still be running
      # (and creating its temporary folder): let them end before cleaning up.
      self.manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass  # the failure reported below
    if jax.process_index() == 0:
      self._remove_partial_steps()
    steps = self.complete_steps()
    last = f'step {steps[-1]}' if steps else 'none'
    return CheckpointSaveError(
        f'saving checkpoint {step} in {paths.shown(self.directory)} failed: '
        f'{console.first_line(error)}; '
        f'last complete checkpoint: {last}')

  def _remove_partial_steps(self, quiet_s: float = 2.0, limit_s: float = 60.0):
    """Removes the temporary folders of a failed save, once no writer is left.

    A save fails at its first failed write, while the writes of its other
    items (TensorStore's, in background threads Orbax does not wait for)
    may still be creating files in the temporary folder: it is removed
    again until nothing has reappeared for ``quiet_s`` seconds.
    """
    deadline = time.monotonic() + limit_s
    quiet_until = time.monotonic() + quiet_s
    while time.monotonic() < min(quiet_until, deadline):
      partial = ([p for p in self.directory.iterdir() if _TMP_SUFFIX in p.name]
                 if self.directory.exists() else [])
      for p in partial:
        shutil.rmtree(os.fspath(p), ignore_errors=True)
      if partial:
        quiet_until = time.monotonic() + quiet_s
      time.sleep(0.1)

  def _purge_deleted(self):
    """Removes the steps Orbax has moved into ``.deleted/`` (process 0)."""
    trash = self.directory / TRASH
    if jax.process_index() != 0 or not trash.exists():
      return
    for p in trash.iterdir():
      try:
        shutil.rmtree(os.fspath(p))
      except OSError as e:
        logging.warning('cannot remove deleted checkpoint %s: %s', p, e)


def _first_non_finite(tree: Any) -> str | None:
  """The path of the first floating leaf with a NaN/inf in this process's shards."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shards = getattr(leaf, 'addressable_shards', None)
    parts = [s.data for s in shards] if shards is not None else [leaf]
    for part in parts:
      value = np.asarray(part)
      if value.dtype.kind == 'f' and not np.isfinite(value).all():
        return jax.tree_util.keystr(path)
  return None


def abstract_with_shardings(tree: Any, shardings: Any):
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
