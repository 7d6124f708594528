"""Progress lines with throughput and ETA for eval and predict.

>>> p = Progress(500, 'eval', unit='img')
>>> p.line(1)     # 'eval 1/500 (0%) | 0.05 img/s incl. start-up'
>>> p.line(100)   # 'eval 100/500 (20%) | 4.1 img/s | ETA 1m38s'

Predict, whose images of each new size compile the model again, says which
items compiled (one line per item):

>>> p = Progress(9, 'predict')
>>> p.line(1, 'a.png', compiled='216x316', compiles_left=7)
... # 'predict 1/9 (11%) a.png | 6.1 s incl. compiling for 216x316'
>>> p.line(2, 'b.png', compiles_left=7)
... # 'predict 2/9 (22%) b.png | 12.5 img/s | ETA 43s' (7 compiles of 6.1 s)

A size read from the persistent compilation cache says so
(``from_cache=True``): ``... | 0.4 s incl. reading the compiled model for
216x316 from the cache``.  Percentages are rounded to the nearest, and never
read 100% before the last item (:func:`percent`).
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


def format_rate(rate: float) -> str:
  """``12.3`` from 10 on, ``4.07`` from 0.1, two significant digits below
  (``0.021``: a 47 s step of one image read ``0.0``)."""
  if rate >= 10:
    return f'{rate:.1f}'
  if rate >= 0.1 or rate <= 0 or not math.isfinite(rate):
    return f'{rate:.2f}'
  return f'{rate:.{1 - math.floor(math.log10(rate))}f}'


def percent(done: int, total: int) -> int:
  """``done`` of ``total`` in percent, rounded to the nearest (2/3: 67, 1/6:
  17; halves up), but 99 at most before the last item (199/200 read 100%)."""
  total = max(int(total), 1)
  rounded = (200 * done + total) // (2 * total)
  return min(rounded, 99) if done < total else rounded


class Progress:
  """Counts finished items; :meth:`line` formats rate and ETA.

  The rate excludes the first item when more have finished, since it also
  pays for compilation; the line after the first item alone says its rate
  includes start-up and gives no ETA (that rate spread over every remaining
  item made a 500-image evaluation announce hours).

  Items that compile (an image of a new size in predict) are told with
  ``compiled`` (:meth:`line`, called then for every item): the time since
  the previous line is that item's compile time (its own prediction
  included), which the rate leaves out; the ETA is the items left at the
  rate plus ``compiles_left`` times the mean compile time so far.  While
  every item so far compiled there is no rate: the ETA is then the mean
  compile time for every item left, an upper bound (``ETA at most``) when
  some of them reuse a compiled size; none when no item left compiles (the
  next line has a rate: 200 images of one size read 'ETA at most 5m19s'
  for 3 s of work).
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
    self._previous = self._start   # the previous line's time
    self.compiles = 0   # items that compiled, and their seconds
    self.cached = 0   # ... of which read the compiled model from the cache
    self.compile_seconds = 0.0
    self._late = (0, 0.0)   # compiles after the first line: out of the rate

  def elapsed(self) -> float:
    """Seconds since the start (what 'done in' says)."""
    return self._clock() - self._start

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
    items, seconds = done - n0 - self._late[0], now - t0 - self._late[1]
    if items > 0 and seconds > 0:
      return items / seconds, False
    if done > n0 and self.compiles:   # every item since the first compiled
      return None, False
    return done / max(now - self._start, 1e-9), True

  def line(self, done: int, detail: str = '', *, compiled: str = '',
           compiles_left: int | None = None, from_cache: bool = False) -> str:
    """'LABEL done/total (p%) [detail] | r unit/s | ETA t' (one line).

    Args:
      done: items finished.
      detail: what the line is about (e.g. the image).
      compiled: the last item compiled (for this shape, e.g. '216x316'):
        the time since the previous line is its compile time, out of the rate.
      compiles_left: items still to come that will compile (their mean
        compile time so far each, in the ETA); None: not known (no ETA
        while every item so far compiled).
      from_cache: the compiled program of ``compiled`` was read from the
        persistent compilation cache, not compiled (counted as a compile).
    """
    now = self._clock()
    if compiled:
      seconds = now - self._previous
      self.compiles += 1
      self.cached += bool(from_cache)
      self.compile_seconds += seconds
      if self._first is not None:
        self._late = (self._late[0] + 1, self._late[1] + seconds)
    self._previous = now
    rate, from_start = self._rate(done)
    parts = [f'{self.label} {done}/{self.total} ({percent(done, self.total)}%)'
             + (f' {detail}' if detail else '')]
    if compiled:
      parts.append(f'{seconds:.1f} s incl. reading the compiled model for {compiled} '
                   'from the cache' if from_cache else
                   f'{seconds:.1f} s incl. compiling for {compiled}')
    left = max(self.total - done, 0)
    steady = rate if rate and not from_start else None
    if rate and from_start and not compiled:   # the first items
      speed = self._speed(rate)
      if left:   # compilation in it, no ETA yet
        return ' | '.join(parts + [f'{speed} incl. start-up'])
      parts.append(speed)
    elif steady:
      parts.append(self._speed(steady))
    if not left:
      if rate or self.compiles:
        parts.append('done in ' + format_duration(now - self._start))
    elif steady:
      compiles_left = compiles_left or 0
      eta = (left - compiles_left) / steady + compiles_left * self._mean_compile()
      parts.append(f'ETA {format_duration(eta)}')
    elif self.compiles and compiles_left:   # every item so far compiled, more will
      bound = format_duration(left * self._mean_compile())
      # Items left that reuse a compiled size take at most a compile's time.
      parts.append(f'ETA {bound}' if left == compiles_left else f'ETA at most {bound}')
    return ' | '.join(parts)

  def _speed(self, rate: float) -> str:
    return f'{format_rate(rate)} {self.unit}/s'

  def _mean_compile(self) -> float:
    return self.compile_seconds / max(self.compiles, 1)

  def due(self, done: int, every_seconds: float = 10.0, *, ends: bool = True) -> bool:
    """True for the first and last item and then every ``every_seconds``.

    ``ends=False``: the first line ``every_seconds`` after the start, the
    last item's only after an earlier line (a short run prints none).
    """
    now = self._clock()
    if ends:
      due = (done <= 1 or done >= self.total or self._last_line is None
             or now - self._last_line >= every_seconds)
    else:
      due = (now - (self._start if self._last_line is None else self._last_line)
             >= every_seconds or (done >= self.total and self._last_line is not None))
    if due:
      self._last_line = now
    return due
