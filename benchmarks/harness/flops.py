"""FLOP and memory figures: the model's own count and XLA's analyses.

Model FLOPs come from :func:`hrseg_jax.summary.count_macs` (traced, not
compiled): 2 x the multiply-adds of every convolution and attention matmul of
one eval-mode forward; bilinear resizes are not model FLOPs.  A training step
counts 3 x the forward (forward, and backward for activations and weights),
the usual convention for utilisation figures.  XLA's figures are whatever
``compiled.cost_analysis()`` and ``compiled.memory_analysis()`` report for
the executable actually timed.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any

from hrseg_jax import summary

TRAIN_FLOP_FACTOR = 3


@functools.lru_cache(maxsize=64)
def _forward_macs(config_json: str, height: int, width: int) -> int:
  macs = summary.count_macs(json.loads(config_json), height, width, batch=1)
  return int(macs['conv'] + macs['matmul'])


def forward_flops(config: dict[str, Any], height: int, width: int,
                  batch: int = 1) -> int:
  """Model FLOPs (2 x MAC) of one eval-mode forward of ``batch`` images."""
  macs = _forward_macs(json.dumps(config, sort_keys=True), int(height), int(width))
  return 2 * macs * int(batch)


def train_flops(config: dict[str, Any], height: int, width: int,
                batch: int) -> int:
  """Model FLOPs of one training step: 3 x the forward of the batch."""
  return TRAIN_FLOP_FACTOR * forward_flops(config, height, width, batch)


def _positive(value) -> float | None:
  try:
    value = float(value)
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) and value > 0 else None


def xla_cost(compiled) -> dict[str, float | None]:
  """``flops`` and ``bytes accessed`` of a compiled executable (None if absent).

  ``cost_analysis()`` returns a dict (or, in older JAX, a list with one dict
  per program); backends that do not implement it give None.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    cost = None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  cost = cost or {}
  return dict(xla_flops=_positive(cost.get('flops')),
              xla_bytes=_positive(cost.get('bytes accessed')))


def xla_memory(compiled) -> int | None:
  """Bytes the executable needs: arguments + outputs + temporaries - aliased."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  total = (m.argument_size_in_bytes + m.output_size_in_bytes
           + m.temp_size_in_bytes - m.alias_size_in_bytes)
  return int(total) if total > 0 else None
