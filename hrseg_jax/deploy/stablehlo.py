"""StableHLO exports through ``jax.export``, and their loader.

>>> from hrseg_jax.deploy import stablehlo
>>> run = stablehlo.load('model.stablehlo')
>>> class_maps = run(images)

The file is ``jax.export.Exported.serialize()``: the StableHLO module with
the weights inside and a symbolic batch dimension (and height and width
with ``--dynamic-size``, where the model allows it).  :func:`load` needs JAX
only -- no model code, no checkpoint, no Flax.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np


def export_bytes(fn: Callable, image_shape, dtype, platforms=('cpu', 'cuda')) -> bytes:
  """Serialises ``fn`` for images of ``image_shape`` (H, W, C) and any batch.

  H and W may be symbolic (``'32*h'``, ``'32*w'``): any multiple of 32 then.
  ``platforms`` are the backends the module is lowered for; a runtime on
  another backend refuses to run it.
  """
  dims = jax.export.symbolic_shape(', '.join(str(d) for d in ('b', *image_shape)))
  spec = jax.ShapeDtypeStruct(dims, dtype)
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(spec)
  return bytes(exported.serialize())


def load(path) -> Callable[[np.ndarray], np.ndarray]:
  """A function ``images -> outputs`` from a file written by the exporter."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    exported = jax.export.deserialize(bytearray(data))
  except Exception as e:  # pylint: disable=broad-except  (flatbuffer parsing: any error)
    raise ValueError(f'{path}: not a StableHLO export of python -m hrseg_jax.export, or '
                     f'a damaged copy of one ({" ".join(str(e).split())[:200]})') from None
  call = jax.jit(exported.call)

  def run(images):
    x = np.asarray(images)
    try:
      return np.asarray(call(x))
    except (ValueError, TypeError) as e:   # jax.export's shape check, multi-line
      want = exported.in_avals[0].str_short()
      raise ValueError(f'images of shape {list(x.shape)} ({x.dtype}) do not fit '
                       f'this export, which takes {want}: '
                       f'{" ".join(str(e).split())[:300]}') from None

  run.exported = exported
  return run
