"""Data errors and the skip-and-count policy for bad examples.

Every problem with an input file (missing, undecodable, truncated, image and
label of different sizes, a label value the label map does not define) raises
:class:`DataError` with the offending path in the message.  When
``data.skip_bad_examples`` is true the pipeline catches these errors instead,
substitutes another example (training) or masks the example out (evaluation),
logs a warning naming the file and counts it in :data:`SKIPPED`.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading

from hrseg_jax import paths

log = logging.getLogger(__name__)

# Set by :func:`named_once` for the data workers it starts (they inherit the
# environment): a folder where each process marks the bad files it named, so
# that they name each file once between them, and the run's log.txt.
MARKS_ENV = 'HRSEG_BAD_EXAMPLE_MARKS'
LOG_FILE_ENV = 'HRSEG_LOG_FILE'


class DataError(ValueError):
  """An input file is missing, corrupt or inconsistent.

  Attributes:
    path: the file (or files, joined by ' / ') the error is about; the
      message names it as the user typed it (:func:`hrseg_jax.paths.shown`).
  """

  def __init__(self, path: str, reason: str):
    named = ' / '.join(paths.shown(p) for p in str(path).split(' / '))
    super().__init__(f'{named}: {reason}')
    self.path = path
    self.reason = reason

  def __reduce__(self):
    # Grain worker processes send errors to the main process by pickling;
    # the default would call DataError(message) and lose the file name.
    return type(self), (self.path, self.reason)


class SkipCounter:
  """Thread-safe count of skipped examples, per split, in this process.

  Grain workers are separate processes; each keeps its own counter and
  names each bad file once (the pipeline may read a file many times ahead:
  one line per read was dozens of lines for one file), on the console and,
  in training, in log.txt (:func:`named_once`).
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: collections.Counter[str] = collections.Counter()
    self._paths: list[str] = []
    self._named: set[str] = set()

  def record(self, split: str, error: DataError) -> int:
    """Counts one skipped example, logs its file the first time; returns
    the new split count."""
    with self._lock:
      self._counts[split] += 1
      self._paths.append(error.path)
      count = self._counts[split]
      first = error.path not in self._named and _first_in_run(error.path)
      self._named.add(error.path)
    if first:
      log.warning('skipping bad %s example %s; skipped each time it comes '
                  '(data.skip_bad_examples)', split, error)
    return count

  def count(self, split: str | None = None) -> int:
    """Returns the number of skipped examples (of one split, or all)."""
    with self._lock:
      if split is None:
        return sum(self._counts.values())
      return self._counts[split]

  def paths(self) -> list[str]:
    """Returns the paths of all skipped examples, in skip order."""
    with self._lock:
      return list(self._paths)

  def reset(self) -> None:
    with self._lock:
      self._counts.clear()
      self._paths.clear()
      self._named.clear()


def _first_in_run(path: str) -> bool:
  """Whether no other process of this run named ``path`` yet (True outside
  :func:`named_once`)."""
  folder = os.environ.get(MARKS_ENV)
  if not folder:
    return True
  mark = os.path.join(folder, hashlib.sha256(str(path).encode()).hexdigest())
  try:
    os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
  except FileExistsError:
    return False
  except OSError:
    return True
  return True


def log_to(log_path: str | None) -> list[logging.Handler]:
  """Sends this module's lines to stderr as the console has them
  (``warning: ...``, not logging's ``WARNING:name:...`` or absl's
  ``W1202 ... errors.py:66]``) and to ``log_path`` (a training run's
  log.txt, stamped like its other lines).  Returns the handlers added.
  A data worker calls it at its start (:mod:`hrseg_jax.data.workers`)."""
  log.setLevel(logging.WARNING)
  log.propagate = False
  console = logging.StreamHandler(sys.stderr)
  console.setFormatter(logging.Formatter('warning: %(message)s'))
  added = [console]
  if log_path:
    try:
      log_file = logging.FileHandler(log_path, encoding='utf-8')   # appends
    except OSError:
      log_file = None   # the console has them
    if log_file is not None:
      log_file.setFormatter(logging.Formatter('%(asctime)s  warning: %(message)s',
                                              '%Y-%m-%d %H:%M:%S'))
      added.append(log_file)
  for handler in added:
    log.addHandler(handler)
  return added


@contextlib.contextmanager
def named_once(log_path: str | None):
  """Within it (a training run), each bad file skipped is named once, on
  stderr and in ``log_path``, between this process and the data workers it
  starts."""
  folder = tempfile.mkdtemp(prefix='hrseg-bad-examples-')
  saved = {name: os.environ.get(name) for name in (MARKS_ENV, LOG_FILE_ENV)}
  os.environ[MARKS_ENV] = folder
  if log_path:
    os.environ[LOG_FILE_ENV] = log_path
  else:
    os.environ.pop(LOG_FILE_ENV, None)
  handlers = log_to(log_path)
  try:
    yield
  finally:
    for handler in handlers:
      log.removeHandler(handler)
      handler.close()
    log.propagate = True
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
    shutil.rmtree(folder, ignore_errors=True)


SKIPPED = SkipCounter()
