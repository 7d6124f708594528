"""Deterministic fault injection for the reliability tests (``HRSEG_FAULT``).

The training loop reads ``$HRSEG_FAULT`` once per run; unset or empty (the
default) means no fault and nothing patched.  The value is a comma-separated
list of ``kind:step`` items, for example ``HRSEG_FAULT=kill_in_save:6``; a
kind written ``kind@P`` only acts in process P (``jax.process_index()``):

* ``sigterm:N``: SIGTERM to this process once step N has been trained, as a
  preemption notice would (the run saves step N and exits 0; on multi-host
  runs the processes agree on a step >= N through JAX's preemption service:
  the process then pauses 5 s, time for the notice to reach the others).
* ``sigint:N``: the same with SIGINT (Ctrl-C); ``sigint2:N`` sends two.
  ``sigterm:0`` and ``sigint:0`` send it during start-up, once the run's
  checkpoint folder is known (before the first step is compiled).
* ``sigint_computed:N``: SIGINT from another thread once the device has
  computed step N, however far the host has dispatched ahead by then (a
  Ctrl-C at a moment the host does not choose).
* ``kill:N``: SIGKILL once step N has been trained and logged, before its
  checkpoint (a crash between checkpoints).
* ``kill_in_save:N``: SIGKILL inside Orbax's background commit of step N's
  checkpoint, when every item is written and only the atomic rename of the
  step directory is left.
* ``kill_in_delete:N``: SIGKILL in the middle of deleting old checkpoint N
  (half of its files are already gone).
* ``nan:N``: step N's input images become NaN, so its loss and gradient are
  not finite.
* ``enospc:N``: every file write into step N's checkpoint fails with
  ``ENOSPC`` (a full disk when the save starts; the save call fails).
* ``enospc_commit:N``: only the commit-phase writes of step N's checkpoint
  fail with ``ENOSPC`` (the disk fills up during the background commit; the
  error surfaces at the next save or at the end of the run).

Each injection logs a ``fault:`` warning first.  The checkpoint faults patch
Orbax's rename step, ``shutil.rmtree`` and ``open`` for the lifetime of the
process; they only act on paths inside the run's checkpoint directory.
"""
from __future__ import annotations

import builtins
import dataclasses
import errno
import logging
import os
import pathlib
import shutil
import signal
import threading
import time
from typing import Any, Mapping

import numpy as np

ENV = 'HRSEG_FAULT'
KINDS = ('sigterm', 'sigint', 'sigint2', 'sigint_computed', 'kill', 'kill_in_save',
         'kill_in_delete', 'nan', 'enospc', 'enospc_commit')
AT_START_UP = ('sigterm', 'sigint')   # the kinds that take step 0
_TMP_SUFFIX = '.orbax-checkpoint-tmp'
_COMMIT_FILE = 'commit_success.txt'


def _process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def _process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def _sigkill(what: str) -> None:
  logging.warning('fault: SIGKILL %s (thread %s)', what,
                  threading.current_thread().name)
  for handler in logging.getLogger().handlers:
    handler.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def _sigint_when_computed(step: int, outputs: Any) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(outputs)
  logging.warning('fault: SIGINT once step %d is computed', step)
  os.kill(os.getpid(), signal.SIGINT)


def _enospc(path) -> OSError:
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))


@dataclasses.dataclass(frozen=True)
class Faults:
  """The faults of one run: ``{kind: step}`` (empty = none)."""

  steps: Mapping[str, int] = dataclasses.field(default_factory=dict)

  @classmethod
  def parse(cls, value: str) -> 'Faults':
    """Parses ``kind:step[,kind:step...]``.

    Raises:
      ValueError: an unknown kind or a step that is not a positive integer.
    """
    steps = {}
    for item in filter(None, (s.strip() for s in value.split(','))):
      kind, _, step = item.partition(':')
      kind, at, process = kind.partition('@')
      first = 0 if kind in AT_START_UP else 1
      if (kind not in KINDS or not step.isdigit() or int(step) < first
          or (at and not process.isdigit())):
        raise ValueError(f'{ENV}={value!r}: expected kind[@process]:step items '
                         f'with kind in {KINDS} and step >= 1 (0: {"/".join(AT_START_UP)} '
                         f'during start-up), got {item!r}')
      if not at or int(process) == _process_index():
        steps[kind] = int(step)
    return cls(steps)

  @classmethod
  def from_env(cls, environ: Mapping[str, str] = os.environ) -> 'Faults':
    return cls.parse(environ.get(ENV, ''))

  def __bool__(self) -> bool:
    return bool(self.steps)

  def _at(self, kind: str, step: int) -> bool:
    return self.steps.get(kind) == step

  def on_batch(self, step: int, batch: dict[str, Any]) -> dict[str, Any]:
    """Returns step ``step``'s local batch, poisoned with NaN for ``nan``."""
    if not self._at('nan', step):
      return batch
    logging.warning('fault: NaN input images at step %d', step)
    return {**batch, 'image': np.full_like(batch['image'], np.nan)}

  def on_step_end(self, step: int, outputs: Any = None) -> None:
    """Runs after step ``step`` is dispatched (and logged on a log step),
    before its checkpoint; ``outputs``: the step's output arrays."""
    if self._at('sigint_computed', step):
      threading.Thread(target=_sigint_when_computed, args=(step, outputs),
                       daemon=True).start()
    for kind, sig, count in (('sigterm', signal.SIGTERM, 1),
                             ('sigint', signal.SIGINT, 1),
                             ('sigint2', signal.SIGINT, 2)):
      if self._at(kind, step):
        for _ in range(count):
          logging.warning('fault: %s %s', sig.name,
                          f'after step {step}' if step else 'during start-up')
          for handler in logging.getLogger().handlers:
            handler.flush()
          os.kill(os.getpid(), sig)
          time.sleep(0.1)   # lets Python run the handler of the first one
        if _process_count() > 1:
          time.sleep(5)
    if self._at('kill', step):
      _sigkill(f'after step {step}')

  def install(self, checkpoint_dir) -> None:
    """Patches the checkpoint write path for the checkpoint faults; sends
    the start-up signals (step 0)."""
    self.on_step_end(0)
    root = pathlib.Path(os.fspath(checkpoint_dir)).absolute()
    if 'kill_in_save' in self.steps:
      _patch_finalize(root, self.steps['kill_in_save'])
    if 'kill_in_delete' in self.steps:
      _patch_rmtree(root, self.steps['kill_in_delete'])
    if 'enospc' in self.steps or 'enospc_commit' in self.steps:
      _patch_open(root, self.steps.get('enospc'), self.steps.get('enospc_commit'))


def _step_of_tmp(root: pathlib.Path, path) -> int | None:
  """The step whose temporary checkpoint directory holds ``path``, if any."""
  p = pathlib.Path(os.fspath(path)).absolute()
  try:
    top = p.relative_to(root).parts[0]
  except (ValueError, IndexError):
    return None
  name = top.split(_TMP_SUFFIX)[0] if _TMP_SUFFIX in top else ''
  return int(name) if name.isdigit() else None


def _patch_finalize(root: pathlib.Path, step: int) -> None:
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  cls = atomicity.AtomicRenameTemporaryPath
  original = cls.finalize

  async def finalize(self):
    final = pathlib.Path(os.fspath(self.get_final())).absolute()
    if final.parent == root and final.name == str(step):
      _sigkill(f'before the rename that commits checkpoint {step}')
    return await original(self)

  cls.finalize = finalize


def _patch_rmtree(root: pathlib.Path, step: int) -> None:
  original = shutil.rmtree

  def rmtree(path, *args, **kwargs):
    p = pathlib.Path(os.fspath(path)).absolute()
    if p.name == str(step) and root in p.parents:
      for f in sorted(f for f in p.rglob('*') if f.is_file())[::2]:
        f.unlink()
      _sigkill(f'while deleting checkpoint {step} ({p})')
    return original(path, *args, **kwargs)

  shutil.rmtree = rmtree


def _patch_open(root: pathlib.Path, all_writes: int | None,
                commit_writes: int | None) -> None:
  original = builtins.open

  def open_(file, mode='r', *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in 'wax+'):
      step = _step_of_tmp(root, file)
      commit = os.path.basename(os.fspath(file)) == _COMMIT_FILE
      if step is not None and (step == all_writes or
                               (commit and step == commit_writes)):
        logging.warning('fault: ENOSPC writing %s', file)
        raise _enospc(file)
    return original(file, mode, *args, **kwargs)

  builtins.open = open_
