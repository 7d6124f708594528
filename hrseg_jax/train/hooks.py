"""What the training loop calls around its steps, one object per concern.

The loop (:mod:`hrseg_jax.train.loop`) dispatches the train steps and, at
the steps each one asks for, calls:

* :class:`ProgressHook` -- fetches the step metrics from the devices (only at
  log and checkpoint steps), appends the losses to ``losses.txt``, stops on a
  non-finite step, writes the ``train/*`` scalars and the console line;
* the evaluator ``config.eval.protocol`` names (:mod:`hrseg_jax.eval.evaluator`:
  ``due``/``run``/``report``; the batched validation unless it says ``'test'``);
* :class:`CheckpointHook` -- saves the state, with the evaluation's mIoU;
* the fault injection of the tests (:class:`hrseg_jax.train.faults.Faults`:
  ``on_batch``, ``on_step_end``; no-ops unless ``$HRSEG_FAULT`` is set).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np

from hrseg_jax import files, paths
from hrseg_jax.train import progress as progress_lib


class NonFiniteLoss(RuntimeError):
  """Raised when the loss or gradient is not finite (train.nonfinite='stop')."""


class LossLog:
  """``<workdir>/losses.txt``: one ``step loss`` line per trained step.

  Process 0 appends the losses whenever the loop fetches metrics from the
  devices (every ``train.log_every_steps`` steps and before every
  checkpoint), in one ``write`` per fetch, so a crash never tears a line.
  The loss is ``repr(float)`` (exact; ``nan`` for a non-finite one).  A run
  that starts from step S (its checkpoint's, 0 from scratch) first drops the
  lines of the steps after S (:meth:`keep_up_to`): those an earlier run
  trained after its last checkpoint before a crash, ``kill -9`` or a second
  Ctrl-C, which this run trains again; the file keeps one line per step.
  """

  def __init__(self, path, enabled: bool = True):
    self.path = os.fspath(path)
    self.enabled = enabled

  def keep_up_to(self, step: int) -> int:
    """Drops the lines of the steps after ``step`` (and any torn line), in
    one atomic rewrite, only when there are some; returns how many."""
    if not self.enabled or not os.path.exists(self.path):
      return 0
    with open(self.path, encoding='utf-8', errors='replace') as f:
      lines = f.read().splitlines()
    kept = [l for l in lines if (s := _line_step(l)) is not None and s <= step]
    if len(kept) < len(lines):
      files.write_bytes_atomic(self.path, ''.join(l + '\n' for l in kept).encode())
    return len(lines) - len(kept)

  def append(self, losses: list[tuple[int, float]]) -> None:
    if self.enabled and losses:
      with open(self.path, 'a') as f:
        f.write(''.join(f'{step} {loss!r}\n' for step, loss in losses))


def _line_step(line: str) -> int | None:
  """The step of a ``step loss`` line (None: not such a line)."""
  parts = line.split()
  if len(parts) != 2 or not parts[0].isdigit():
    return None
  try:
    float(parts[1])
  except ValueError:
    return None
  return int(parts[0])


def first_nonfinite(fetched: list[tuple[int, dict]]) -> tuple[int, dict] | None:
  """The first ``(step, metrics)`` whose loss or gradient is not finite."""
  return next(((s, m) for s, m in fetched if not bool(m['finite'])), None)


class ProgressHook:
  """Step metrics: fetched in groups, logged every ``log_every_steps``.

  Attributes:
    history: every fetched loss of this run, in step order.
  """

  def __init__(self, *, log_every_steps: int, nonfinite: str, loss_log: LossLog,
               writer, console, progress: progress_lib.Progress,
               lr_fn: Callable[[int], Any], checkpointer):
    self.log_every_steps = log_every_steps
    self.nonfinite = nonfinite
    self.loss_log = loss_log
    self.writer = writer
    self.console = console
    self.progress = progress
    self.lr_fn = lr_fn
    self.checkpointer = checkpointer
    self.history = []
    self._pending = []   # (step, device metrics) not fetched yet
    self._window = []    # fetched host metrics not written to the writer yet

  def due(self, step: int, last: bool) -> bool:
    """Whether ``step`` is a log step."""
    return step % self.log_every_steps == 0 or last

  def add(self, step: int, metrics) -> None:
    """Records a dispatched step's device metrics (nothing waits here)."""
    self._pending.append((step, metrics))

  def add_compile_time(self, seconds: float, from_cache: bool = False) -> None:
    """The first training call's tracing and compilation (left out of the ETA;
    ``from_cache``: the compiled step was read from the persistent cache)."""
    self.progress.add_compile_time(seconds, from_cache)

  def add_data_time(self, seconds: float) -> None:
    """Time spent waiting for input (the console line's data share)."""
    self.progress.add_data_time(seconds)

  def add_paused_time(self, seconds: float) -> None:
    """Time spent evaluating and saving (left out of the speeds)."""
    self.progress.add_paused_time(seconds)

  def add_eval_time(self, seconds: float, compile_s: float = 0.0) -> None:
    """An evaluation's time, ``compile_s`` of it compiling (the ETA's
    evaluations still to come take the rest)."""
    self.progress.add_eval_time(seconds, compile_s)

  @property
  def has_pending(self) -> bool:
    return bool(self._pending)

  def fetch(self) -> None:
    """Fetches pending metrics; logs losses; stops on a non-finite step."""
    pending = self._pending
    fetched = list(zip([s for s, _ in pending], jax.device_get([m for _, m in pending])))
    pending.clear()
    losses = [(s, float(m['loss'])) for s, m in fetched]
    self.history.extend(loss for _, loss in losses)
    self.loss_log.append(losses)
    self._window.extend(m for _, m in fetched)
    bad = first_nonfinite(fetched)
    if bad is not None and self.nonfinite == 'stop':
      ckpt = self.checkpointer
      ckpt.wait()
      good = ckpt.latest_step()
      raise NonFiniteLoss(
          f'non-finite loss or gradient at step {bad[0]} (loss {float(bad[1]["loss"])}, '
          f'gradient norm {float(bad[1]["grad_norm"])}); stopped. Last good checkpoint: '
          + (f'step {good} in {paths.shown(ckpt.directory)}' if good is not None else 'none')
          + "; rerun to resume from it, or set train.nonfinite='skip'")

  def write(self, step: int, state) -> None:
    """The ``train/*`` scalars and the console line of a log step."""
    window = self._window
    scalars = {
        'train/loss': float(np.mean([m['loss'] for m in window])),
        'train/grad_norm': float(np.mean([m['grad_norm'] for m in window])),
        'train/lr': float(self.lr_fn(step - 1)),
        'train/skipped_steps': int(jax.device_get(state.skipped))}
    speed = self.progress.window(step)
    if not speed.includes_compilation:   # would drag the curves down
      scalars.update(speed.scalars())
    self.writer.write_scalars(step, scalars)
    window.clear()
    self.console.print(self.progress.line(step, {
        'loss': scalars['train/loss'], 'lr': scalars['train/lr'],
        'grad_norm': scalars['train/grad_norm'],
        'skipped': scalars['train/skipped_steps']},
        memory=progress_lib.device_memory(jax.local_devices()), window=speed))


class CheckpointHook:
  """Saves the training state every ``checkpoint_every_steps`` and on demand."""

  def __init__(self, checkpointer, *, every_steps: int, model_cfg,
               data_order: Callable[[int], dict], meta: dict):
    self.checkpointer = checkpointer
    self.every_steps = every_steps
    self.model_cfg = model_cfg
    self.data_order = data_order
    self.meta = meta

  def periodic(self, step: int) -> bool:
    """Whether ``step`` is a regular checkpoint step."""
    return step % self.every_steps == 0

  def save(self, step: int, state, ev: dict | None) -> None:
    """Saves ``state`` at ``step``, with ``ev``'s mIoU when it evaluated."""
    self.checkpointer.save(
        state, self.data_order(step), self.model_cfg, force=True,
        metrics={'miou': float(ev['miou'])} if ev else None,
        meta=dict(self.meta, eval={'miou': float(ev['miou'])}) if ev else self.meta)
