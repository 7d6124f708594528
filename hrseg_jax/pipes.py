"""A command whose console is piped into a reader that goes away
(``python -m hrseg_jax.main ... | head -3``) ends quietly, as ``cat`` does.

Python turns the closed pipe into ``BrokenPipeError`` (an ``OSError``) on the
next write, which the commands' own error handling would print as
``error: [Errno 32] Broken pipe`` with exit 2.  :func:`end_quietly_on_broken_pipe`,
called first by every command's ``__main__``, makes such a write end the
command instead: the rest of its console goes to ``os.devnull`` and it exits
1, as Python's documentation recommends
(https://docs.python.org/3/library/signal.html#note-on-sigpipe), without an
error line or a traceback.  The exit unwinds like Ctrl-C, so files are never
left half-written (they are written to a temporary name and renamed).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading

EXIT_CODE = 1


def _silence(stream) -> None:
  """Points ``stream``'s file descriptor at os.devnull: later writes and the
  flush at exit go nowhere instead of raising again."""
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)
  except (OSError, ValueError, AttributeError):
    pass


class _QuietWhenReaderGoes:
  """``stream`` whose writes end the command (exit 1) on a broken pipe."""

  def __init__(self, stream):
    self._stream = stream

  def _ended(self):
    _silence(self._stream)
    raise SystemExit(EXIT_CODE)

  def write(self, text):
    try:
      return self._stream.write(text)
    except BrokenPipeError:
      self._ended()

  def writelines(self, lines):
    try:
      return self._stream.writelines(lines)
    except BrokenPipeError:
      self._ended()

  def flush(self):
    try:
      return self._stream.flush()
    except BrokenPipeError:
      self._ended()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _flush_quietly(stream) -> None:
  try:
    stream.flush()
  except BrokenPipeError:
    _silence(stream)
  except (OSError, ValueError, RuntimeError):   # RuntimeError: from a signal
    pass   # handler that interrupted a write to the same stream


def exit_now(code: int) -> None:
  """Flushes stdout and stderr, then ends the process at once with ``code``.

  For Ctrl-C: ``sys.exit`` runs the interpreter's shutdown while XLA may
  still be compiling in its own threads, which can crash it (a segmentation
  fault after the last line, exit 139).  Nothing else is lost: log files are
  flushed after every line, and output files are written to a temporary name
  and renamed.
  """
  for stream in (sys.__stdout__, sys.__stderr__):
    if stream is not None:
      _flush_quietly(stream)
  os._exit(code)  # pylint: disable=protected-access


def end_quietly_on_broken_pipe() -> None:
  """Makes a broken pipe on stdout or stderr end this command quietly.

  Only for a command's ``__main__``: a program that imports hrseg_jax keeps
  its own streams.  Streams already replaced (pytest's capture) are left alone.
  """
  for name in ('stdout', 'stderr'):
    stream = getattr(sys, name)
    if stream is None or stream is not getattr(sys, f'__{name}__'):
      continue
    setattr(sys, name, _QuietWhenReaderGoes(stream))
    # What is still buffered when the command ends (a pipe is block-buffered)
    # is flushed here, where a closed pipe is silenced, not at interpreter exit.
    atexit.register(_flush_quietly, stream)


# ---- Ctrl-C that a callback would swallow ---------------------------------


class Stopped(KeyboardInterrupt):
  """A Ctrl-C that a command caught to say what it had done by then: its
  message is the command's last line (instead of ``stopped by Ctrl-C``)."""


def stopped_line(error: KeyboardInterrupt) -> str:
  return str(error) if isinstance(error, Stopped) and str(error) else 'stopped by Ctrl-C'

_ctrl_c_pending = False


def _on_ctrl_c(signum, frame):  # pylint: disable=unused-argument
  global _ctrl_c_pending
  _ctrl_c_pending = True
  raise KeyboardInterrupt


def _quiet_lost_ctrl_c(hook):
  def unraisable(info):
    if not isinstance(info.exc_value, KeyboardInterrupt):   # raised again later
      hook(info)
  return unraisable


def _stopped_while_starting(signum, frame):  # pylint: disable=unused-argument
  os.write(2, b'stopped by Ctrl-C\n')
  os._exit(130)  # pylint: disable=protected-access


def stop_at_once_on_ctrl_c() -> None:
  """Ctrl-C while a command's modules import (a second or two, nothing
  written yet): one line and exit 130, not a traceback from inside an
  import.  Only in a command's ``__main__``, before its imports;
  :func:`keep_ctrl_c` (:func:`run_command`) takes over once they are done."""
  if (threading.current_thread() is threading.main_thread()
      and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, _stopped_while_starting)


def keep_ctrl_c() -> None:
  """Makes Ctrl-C stop a command even when it lands inside a callback.

  Python raises ``KeyboardInterrupt`` wherever the main thread is.  Inside a
  callback whose exceptions are ignored (JAX runs one at every garbage
  collection) it is printed as ``Exception ignored in ...`` and lost, and the
  command would run on to its end.  The handler installed here raises it as
  Python's does and also remembers it: :func:`raise_if_ctrl_c` raises it again
  at the command's next check (between images, batches or workloads), and the
  lost one is not printed.  Only for a command's ``__main__``, in the main
  thread, and only where Ctrl-C has Python's own handler (a background job
  that ignores SIGINT keeps ignoring it).
  """
  if threading.current_thread() is not threading.main_thread():
    return
  if signal.getsignal(signal.SIGINT) not in (signal.default_int_handler,
                                             _stopped_while_starting):
    return
  signal.signal(signal.SIGINT, _on_ctrl_c)
  sys.unraisablehook = _quiet_lost_ctrl_c(sys.unraisablehook)


def raise_if_ctrl_c() -> None:
  """Raises ``KeyboardInterrupt`` if a Ctrl-C was pressed and not handled
  (see :func:`keep_ctrl_c`)."""
  if _ctrl_c_pending:
    raise KeyboardInterrupt


def ctrl_c_handled() -> None:
  """Called where a ``KeyboardInterrupt`` is caught and the command goes on
  (a video stopped early is still written): the next check does not stop it."""
  global _ctrl_c_pending
  _ctrl_c_pending = False


@contextlib.contextmanager
def ctrl_c_deferred():
  """Holds a Ctrl-C pressed in the block back until the block ends.

  For writes that background threads finish (Orbax's): a KeyboardInterrupt
  in the middle would delete the temporary folder while they still write
  into it, leaving it behind.  At the end of the block the Ctrl-C is
  delivered again, to the handler that was there before.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pressed = []
  old = signal.getsignal(signal.SIGINT)
  if old is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
  try:
    yield
  finally:
    if old is not signal.SIG_IGN:
      signal.signal(signal.SIGINT, signal.SIG_DFL if old is None else old)
  if pressed:
    signal.raise_signal(signal.SIGINT)


def run_command(main) -> None:
  """A command's ``__main__``: ``sys.exit(main())``, where a reader that goes
  away ends it quietly (:func:`end_quietly_on_broken_pipe`) and Ctrl-C is
  one line, ``stopped by Ctrl-C``, and exit code 130, after the files being
  written are cleaned up (not a traceback)."""
  end_quietly_on_broken_pipe()
  keep_ctrl_c()
  try:
    code = main()
  except KeyboardInterrupt as e:
    print(stopped_line(e), file=sys.stderr)
    exit_now(130)   # XLA may still be compiling in its threads
  sys.exit(code)
