"""Timing primitives: compile timing, pipelined rounds, synchronised calls.

Device work is asynchronous.  A *round* dispatches ``steps`` calls back to
back and blocks once at the end (no host synchronisation inside it), so it
measures throughput as a training loop sees it; the step time of a round is
its wall time over ``steps``, and the reported figure is the median over
rounds.  *Latency* runs block after every call (batch-1 inference latency).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax


@dataclasses.dataclass
class Compiled:
  """An AOT-compiled executable and how long lowering and compiling took."""
  executable: Any
  lower_s: float
  compile_s: float


def compile_timed(jitted, *args) -> Compiled:
  """Lowers and compiles ``jitted`` for ``args``, timing both phases."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  executable = lowered.compile()
  t2 = time.perf_counter()
  return Compiled(executable, t1 - t0, t2 - t1)


def rounds(step: Callable[[Any], Any], carry: Any, *, repeats: int,
           steps: int) -> tuple[Any, list[float]]:
  """Times ``repeats`` rounds of ``steps`` chained calls ``carry = step(carry)``.

  Returns:
    The final carry and the per-call seconds of every round.
  """
  per_call = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      carry = step(carry)
    jax.block_until_ready(carry)
    per_call.append((time.perf_counter() - t0) / steps)
  return carry, per_call


def latency(call: Callable[[], Any], runs: int) -> list[float]:
  """Seconds of ``runs`` calls, each synchronised before the next starts."""
  out = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    out.append(time.perf_counter() - t0)
  return out


def warm(step: Callable[[Any], Any], carry: Any, n: int) -> Any:
  """Runs ``n`` untimed calls and waits for them."""
  for _ in range(n):
    carry = step(carry)
  return jax.block_until_ready(carry)


def summary_ms(seconds: list[float]) -> dict[str, float]:
  """Median, min and max in milliseconds."""
  return dict(ms=1e3 * statistics.median(seconds), ms_min=1e3 * min(seconds),
              ms_max=1e3 * max(seconds))


def peak_bytes() -> int | None:
  """Peak device memory in use so far in this process (None if unknown)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  value = (stats or {}).get('peak_bytes_in_use')
  return int(value) if value else None
