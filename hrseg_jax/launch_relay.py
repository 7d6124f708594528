"""Copies the stdout and stderr of a process started by scripts/launch_local.py
to the launcher's, minus Gloo's connection lines and JAX's fatal-error block.

XLA's CPU collectives (Gloo) print ``[Gloo] Rank N is connected to M peer
ranks. Expected number of connected peer ranks is : M`` to stdout for every
device of every process, each time a group of devices first communicates:
about 16 lines for 4 processes of 2 devices, nothing a user can act on.
They are written piece by piece where the C stdout is unbuffered
(``PYTHONUNBUFFERED``), so two devices of one process that connect at once
can mix their pieces on one line and leave the rest of a message on the
next: a line made only of such pieces is dropped too, and so is the rest
of a mixed message.

When the coordination service of ``jax.distributed`` goes away (process 0,
which hosts it, has exited) or reports another process's failure, JAX's C++
client ends every other process with a block of its own: "Terminating process
because the JAX distributed service detected fatal errors", a check-failure
stack and the Python stacks of every thread.  That block says nothing about
what failed; the launcher shows one line instead (``process 1: stopped because
process 0 failed``).

With a ``log`` (``--log_dir``: process 0's lines reach the terminal too),
every line goes to the log file as the process wrote it, the Gloo lines and
the fatal-error block included.
"""
from __future__ import annotations

import re
import threading
from typing import BinaryIO

GLOO = b'[Gloo] Rank '
# A line made only of pieces of Gloo's connection lines: their fixed texts,
# the numbers and the spaces between them.
GLOO_PIECES = re.compile(rb'(?:\[Gloo\] Rank | is connected to | peer ranks\. '
                         rb'|Expected number of connected peer ranks is : |\d+| )*\n?')

FATAL = b'Terminating process because the JAX distributed service detected fatal errors'
# The C++ sources of JAX's log lines just before FATAL (the error it polled,
# the preemption barrier it could not cancel).
BEFORE_FATAL = (b'coordination_service_agent.cc', b'preemption_sync_manager.cc')


class Relay(threading.Thread):
  """Copies ``source`` to ``sink`` line by line, without Gloo's connection
  lines, until JAX's fatal-error block; and every line to ``log``, if given.

  ``cut`` is true once the block has begun: nothing of it, nor after it,
  is copied to ``sink`` (the process aborts there).  ``log_lock`` is held
  while a line is written to ``log`` (a file shared by the relays of one
  process's stdout and stderr).
  """

  def __init__(self, source: BinaryIO, sink: BinaryIO, log: BinaryIO | None = None,
               log_lock: threading.Lock | None = None):
    super().__init__(daemon=True)
    self.source = source
    self.sink = sink
    self.log = log
    self.log_lock = log_lock or threading.Lock()
    self.cut = False
    self._gloo_owed = 0   # line ends of Gloo messages begun on dropped lines, not seen yet

  def _is_gloo(self, line: bytes) -> bool:
    """A line of Gloo's connection messages (one, or the mixed pieces of several)."""
    begun = line.count(GLOO)
    if not (begun or self._gloo_owed) or not GLOO_PIECES.fullmatch(line):
      return False
    self._gloo_owed = max(self._gloo_owed + begun - line.endswith(b'\n'), 0)
    return True

  def run(self):
    held = []   # lines that may begin the block: shown only if it does not follow
    for line in iter(self.source.readline, b''):   # read to the end: never blocks the process
      if self.log is not None:
        with self.log_lock:
          try:
            self.log.write(line)
            self.log.flush()
          except (OSError, ValueError):   # a full disk, or closed after a second Ctrl-C
            self.log = None
      if self.cut or self._is_gloo(line):
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
