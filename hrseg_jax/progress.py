"""Progress lines with throughput and ETA for eval and predict.

>>> p = Progress(500, 'eval', unit='img')
>>> p.line(1)     # 'eval 1/500 (0%) | 0.05 img/s incl. start-up'
>>> p.line(100)   # 'eval 100/500 (20%) | 4.1 img/s | ETA 1m38s'
"""
from __future__ import annotations

import math
import time
from typing import Callable


def format_duration(seconds: float) -> str:
  """``4h07m``, ``12m05s``, ``41s``; ``2d03h`` beyond a day; ``?`` if unknown."""
  if not math.isfinite(seconds) or seconds < 0:
    return '?'
  s = int(round(seconds))
  if s >= 86400:
    return f'{s // 86400}d{s % 86400 // 3600:02d}h'
  if s >= 3600:
    return f'{s // 3600}h{s % 3600 // 60:02d}m'
  if s >= 60:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s}s'


class Progress:
  """Counts finished items; :meth:`line` formats rate and ETA.

  The rate excludes the first item when more have finished, since it also
  pays for compilation; the line after the first item alone says its rate
  includes start-up and gives no ETA (that rate spread over every remaining
  item made a 500-image evaluation announce hours).
  """

  def __init__(self, total: int, label: str, *, unit: str = 'img',
               clock: Callable[[], float] = time.monotonic):
    self.total = int(total)
    self.label = label
    self.unit = unit
    self._clock = clock
    self._start = clock()
    self._first: tuple[int, float] | None = None
    self._last_line = None

  def rate(self, done: int) -> float | None:
    """Items per second so far (None before the first item)."""
    return self._rate(done)[0]

  def _rate(self, done: int) -> tuple[float | None, bool]:
    """(rate, whether it counts from the start, the first items' start-up in it)."""
    now = self._clock()
    if done <= 0:
      return None, True
    if self._first is None:
      self._first = (done, now)
    n0, t0 = self._first
    if done > n0 and now > t0:
      return (done - n0) / (now - t0), False
    return done / max(now - self._start, 1e-9), True

  def line(self, done: int, detail: str = '') -> str:
    """'LABEL done/total (p%) [detail] | r unit/s | ETA t' (one line)."""
    rate, from_start = self._rate(done)
    parts = [f'{self.label} {done}/{self.total} ({100 * done // max(self.total, 1)}%)'
             + (f' {detail}' if detail else '')]
    if rate:
      left = max(self.total - done, 0)
      speed = f'{rate:.2f} {self.unit}/s' if rate < 10 else f'{rate:.1f} {self.unit}/s'
      if left and from_start:   # the first items: compilation in it, no ETA yet
        parts.append(f'{speed} incl. start-up')
      else:
        parts.append(speed)
        parts.append('done in ' + format_duration(self._clock() - self._start)
                     if not left else f'ETA {format_duration(left / rate)}')
    return ' | '.join(parts)

  def due(self, done: int, every_seconds: float = 10.0) -> bool:
    """True for the first and last item and then every ``every_seconds``."""
    now = self._clock()
    if done <= 1 or done >= self.total or self._last_line is None or (
        now - self._last_line >= every_seconds):
      self._last_line = now
      return True
    return False
