"""Starting a command that Ctrl-C stops as it would in a terminal."""
import sys

# Prefix of a command line: the command runs with SIGINT's default action
# even when the tests run with it ignored (a background job), which the
# command would otherwise inherit.  (An exec wrapper, not preexec_fn, which
# is unsafe to fork with the test process's threads.)
WITH_CTRL_C = [sys.executable, '-c', 'import os, signal, sys; '
               'signal.signal(signal.SIGINT, signal.SIG_DFL); '
               'os.execv(sys.argv[1], sys.argv[1:])']
