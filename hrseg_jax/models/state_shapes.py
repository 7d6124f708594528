"""Reading sizes off a state dict's tensors for architecture inference.

A checkpoint may lack a tensor the inference needs or hold one of another
rank or an empty one (a damaged or hostile file): :func:`dim` says so in one
line naming the key, instead of a ``KeyError``, an ``IndexError`` or a model
of width 0.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def dim(state: Mapping[str, np.ndarray], key: str, axis: int = 0) -> int:
  """Size of ``state[key]`` along ``axis``: a width, kernel size or class
  count, so at least 1.

  Raises:
    ValueError: ``key`` is missing, its tensor has too few dimensions or is
      empty along ``axis``.
  """
  value = state.get(key)
  if value is None:
    raise ValueError(f'{key} missing')
  shape = np.shape(value)
  if not -len(shape) <= axis < len(shape):
    raise ValueError(f'{key} has shape {tuple(shape)}: too few dimensions for '
                     'an architecture to be read from it')
  if shape[axis] < 1:
    raise ValueError(f'{key} has shape {tuple(shape)}: a model cannot have a width, '
                     'kernel size or class count of 0')
  return int(shape[axis])
