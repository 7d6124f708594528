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
import logging
import threading

from hrseg_jax import paths

log = logging.getLogger(__name__)


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

  Grain workers are separate processes; each keeps its own counter and logs
  every skip (with the running count) so the count reaches the user's log.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: collections.Counter[str] = collections.Counter()
    self._paths: list[str] = []

  def record(self, split: str, error: DataError) -> int:
    """Counts one skipped example and logs it; returns the new split count."""
    with self._lock:
      self._counts[split] += 1
      self._paths.append(error.path)
      count = self._counts[split]
    log.warning('Skipping bad %s example (%d skipped so far in this process):'
                ' %s', split, count, error)
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


SKIPPED = SkipCounter()
