"""Starting a command that Ctrl-C stops as it would in a terminal."""
import signal
import sys
import time

# Prefix of a command line: the command runs with SIGINT's default action
# even when the tests run with it ignored (a background job), which the
# command would otherwise inherit.  (An exec wrapper, not preexec_fn, which
# is unsafe to fork with the test process's threads.)
WITH_CTRL_C = [sys.executable, '-c', 'import os, signal, sys; '
               'signal.signal(signal.SIGINT, signal.SIG_DFL); '
               'os.execv(sys.argv[1], sys.argv[1:])']


def ctrl_c_when(p, ready, timeout: float = 120) -> tuple[str, str]:
  """Once ``ready()`` (``p`` still running), Ctrl-C (SIGINT) to ``p``;
  returns its (stdout, stderr) after it exits."""
  while not ready():
    assert p.poll() is None, p.communicate()
    time.sleep(0.05)
  p.send_signal(signal.SIGINT)
  return p.communicate(timeout=timeout)
