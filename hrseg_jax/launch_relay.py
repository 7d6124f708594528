"""Copies the stderr of a process started by scripts/launch_local.py to the
launcher's, minus JAX's fatal-error block.

When the coordination service of ``jax.distributed`` goes away (process 0,
which hosts it, has exited) or reports another process's failure, JAX's C++
client ends every other process with a block of its own: "Terminating process
because the JAX distributed service detected fatal errors", a check-failure
stack and the Python stacks of every thread.  That block says nothing about
what failed; the launcher shows one line instead (``process 1: stopped because
process 0 failed``).
"""
from __future__ import annotations

import threading
from typing import BinaryIO

FATAL = b'Terminating process because the JAX distributed service detected fatal errors'
# The C++ sources of JAX's log lines just before FATAL (the error it polled,
# the preemption barrier it could not cancel).
BEFORE_FATAL = (b'coordination_service_agent.cc', b'preemption_sync_manager.cc')


class Relay(threading.Thread):
  """Copies ``source`` to ``sink`` line by line until JAX's fatal-error block.

  ``cut`` is true once the block has begun: nothing of it, nor after it,
  is copied (the process aborts there).
  """

  def __init__(self, source: BinaryIO, sink: BinaryIO):
    super().__init__(daemon=True)
    self.source = source
    self.sink = sink
    self.cut = False

  def run(self):
    held = []   # lines that may begin the block: shown only if it does not follow
    for line in iter(self.source.readline, b''):   # read to the end: never blocks the process
      if self.cut:
        continue
      if FATAL in line:
        self.cut, held = True, []
      elif any(source in line for source in BEFORE_FATAL):
        held.append(line)
      else:
        self._write(b''.join(held) + line)
        held = []
    self._write(b''.join(held))
    self.source.close()

  def _write(self, data: bytes) -> None:
    if data and self.sink is not None:
      try:
        self.sink.write(data)
        self.sink.flush()
      except OSError:   # a closed pipe (| head): drop the rest, keep reading
        self.sink = None
