"""SIGTERM and Ctrl-C during training: checkpoint within two steps, then stop.

:class:`StopSignal` installs the handlers for the training loop
(:mod:`hrseg_jax.train.loop`) and tells it, once per step, whether to save
and stop; on several processes they all stop at the same step.
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

from hrseg_jax import console as console_lib


class StopSignal:
  """SIGTERM or Ctrl-C -> checkpoint within two steps, then stop.

  A second Ctrl-C exits at once (exit code 130), without a checkpoint,
  after one line naming the latest checkpoint.

  One process: the signal handler sets a flag that the loop reads after
  every step; since the host runs at most ``loop.QUEUED_STEPS`` steps ahead
  of the device (:func:`host_sync.wait_for_earlier_step`), the run stops after
  the step the device is running and the ones queued behind it.  Several processes
  must agree on the step to save without a collective every step (it would
  make the host wait for the device and stall asynchronous dispatch), so:

  * with JAX's preemption service (``jax.distributed``, on by default),
    SIGTERM is left to JAX's own handler: the notice reaches every process
    in the background and :func:`multihost_utils.reached_preemption_sync_point`
    (a host-side check, called every step) turns true on all processes at
    the same step.  Ctrl-C is passed on to it as a SIGTERM to this process;
  * in any case the flag is also exchanged (``process_allgather``) at the
    steps that already wait for the device (``sync=True``: log, checkpoint
    and evaluation steps), so a flag is seen by all processes at the same
    step even without the preemption service.
  """

  def __init__(self):
    self.requested = False
    self.reason = None   # what asked to stop, for the run's last line
    # The run's console once it exists: the notices go to its log file too.
    self.console: console_lib.Console | None = None
    # The run's Checkpointer once it exists: a second Ctrl-C names its latest step.
    self.checkpointer = None
    self._old = {}
    self._service = False
    self._first_check = True   # should_stop's call before the first step

  def __enter__(self):
    import signal  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
    pipes.raise_if_ctrl_c()   # one pressed during start-up that a callback lost
    self._service = jax.process_count() > 1 and _sync_ok()
    if threading.current_thread() is threading.main_thread():
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
      if not self._service:
        self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._terminate)
    return self

  def _notice(self, text: str) -> None:
    # os.write, not print or logging: a handler may interrupt a print.
    if self.console is not None:
      self.console.notice(text)
    elif jax.process_index() == 0:
      os.write(sys.stderr.fileno(), (text + '\n').encode())

  def _sync_point_notice(self, step: int) -> None:
    """The notice of a SIGTERM that JAX's handler took (no line when it
    arrived): once every process has reached the preemption sync point.
    Process 0 writes it to the console and log.txt, the others to their
    stderr after ``process N:``, like their last line."""
    what = (f'stopping before step {step + 1}' if self._first_check else
            f'saving a checkpoint of step {step}, then stopping')
    text = f'{self.reason} reached every process: {what}'
    if jax.process_index() == 0:
      self._notice(text)
    else:
      os.write(sys.stderr.fileno(), f'process {jax.process_index()}: {text}\n'.encode())

  def _terminate(self, signum, frame):  # pylint: disable=unused-argument
    import signal  # pylint: disable=g-import-not-at-top
    if self.requested:   # already stopping (Ctrl-C, then launch_local's SIGTERM)
      return
    self.reason = signal.Signals(signum).name
    self._notice(f'{self.reason}: stopping before the first step' if self._first_check
                 else f'{self.reason}: saving a checkpoint after the steps already '
                 'queued (two at most), then stopping')
    self.requested = True

  def _interrupt(self, signum, frame):  # pylint: disable=unused-argument
    import signal  # pylint: disable=g-import-not-at-top
    signal.signal(signal.SIGINT, self._second_interrupt)   # exits at once
    self.reason = 'Ctrl-C'
    if self._first_check:   # no step dispatched yet: nothing to save
      self._notice('Ctrl-C: stopping before the first step (press Ctrl-C again '
                   'to exit at once)')
    else:
      self._notice('Ctrl-C: saving a checkpoint after the steps already queued (two '
                   'at most), then stopping (press Ctrl-C again to exit at once, '
                   'without saving)')
    self.requested = True
    if self._service:
      os.kill(os.getpid(), signal.SIGTERM)   # JAX's preemption notice

  def _second_interrupt(self, signum, frame):  # pylint: disable=unused-argument
    """A second Ctrl-C: one line (console and log.txt), then exit 130 at
    once, without saving."""
    from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
    try:
      steps = self.checkpointer.complete_steps() if self.checkpointer else []
    except OSError:
      steps = []
    self._notice('second Ctrl-C: exiting without saving; ' + (
        f'the latest checkpoint is step {steps[-1]}' if steps else 'no checkpoint yet'))
    pipes.exit_now(130)

  def __exit__(self, *exc):
    import signal  # pylint: disable=g-import-not-at-top
    for sig, old in self._old.items():
      # None: the previous handler was not installed from Python.
      signal.signal(sig, signal.SIG_DFL if old is None else old)

  def should_stop(self, step: int, sync: bool = True) -> bool:
    """Whether to save and stop after ``step`` (the same on every process).

    Args:
      step: the global step just dispatched; every process calls this once
        per step, with the same ``sync``.
      sync: whether this step already waits for the device (the flag is then
        exchanged between processes); without it nothing here touches the
        device.
    """
    if jax.process_count() == 1:
      self._first_check = False
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    preempted = (multihost_utils.reached_preemption_sync_point(step)
                 if self._service else False)
    if preempted and self.reason is None:
      self.reason = 'a preemption notice (SIGTERM)'
      self._sync_point_notice(step)
    self._first_check = False
    if sync:
      flags = multihost_utils.process_allgather(np.int32(self.requested))
      if np.any(flags) and self.reason is None:
        self.reason = "another process's stop signal"
      preempted = preempted or bool(np.any(flags))
    return preempted


def _sync_ok() -> bool:
  """Whether JAX's preemption service runs in this process."""
  try:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.reached_preemption_sync_point  # noqa: B018  pylint: disable=pointless-statement
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.preemption_sync_manager is not None
  except Exception:  # pylint: disable=broad-except
    return False
