"""What a resumed run compares with what its checkpoint recorded.

The processes and devices it was saved on (:func:`topology`, a note on the
start-up line when they changed) and the example order (a warning when the
resumed run will read other examples than an uninterrupted one would have).
"""
from __future__ import annotations

import jax

from hrseg_jax import console as console_lib
from hrseg_jax.data import pipeline


def topology() -> dict[str, int]:
  """The processes and devices this run trains on (saved with checkpoints)."""
  return {'processes': jax.process_count(), 'devices': jax.device_count()}


def topology_change(saved: dict | None, now: dict) -> str:
  """``'; saved on 2 processes, 8 devices, now 1 process, 4 devices'``, or ''.

  Empty when the topology is the same or the checkpoint predates the record.
  The batch order and the global batch do not depend on it.
  """
  if not saved or dict(saved) == dict(now):
    return ''
  def text(t):
    p, d = int(t['processes']), int(t['devices'])
    return (f'{console_lib.counted(p, "process", "processes")}, '
            f'{console_lib.counted(d, "device")}')
  return f'; saved on {text(saved)}, now {text(now)}'


def check_data_order(saved: dict | None, current: dict, where) -> str | None:
  """The warning for a resumed run that will not read the examples the saver
  would have (None when it will)."""
  if saved is None:
    return None
  diffs = pipeline.data_order_differences(saved, current)
  if not diffs:
    return None
  return (f'warning: checkpoint {where} was trained with another example order '
          f'({", ".join(diffs)}): from here on the run reads other examples than '
          'the uninterrupted run would have')
