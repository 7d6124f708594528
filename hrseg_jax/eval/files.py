"""Atomic file writing and PNG encoding for evaluation outputs.

Every file is written to a hidden temporary file in the destination
directory and renamed into place (``os.replace``), so a reader never sees a
partial file and an interrupted run leaves no truncated outputs.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Mapping

import numpy as np
from PIL import Image


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically, creating parent directories."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                             suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_files_atomic(files: Mapping[str, bytes]) -> None:
  """Writes several files; on any failure none of them is left behind.

  All contents are first written to temporary files; only then are they
  renamed into place.  (A failure between two renames, e.g. a full disk
  cannot cause one, since renames need no space, leaves earlier ones.)
  """
  temps = []
  try:
    for path, data in files.items():
      directory = os.path.dirname(os.path.abspath(path))
      os.makedirs(directory, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                                 suffix=os.path.basename(path))
      temps.append((tmp, path))
      with os.fdopen(fd, 'wb') as f:
        f.write(data)
    for tmp, path in temps:
      os.replace(tmp, path)
  except BaseException:
    for tmp, _ in temps:
      if os.path.exists(tmp):
        os.unlink(tmp)
    raise


def write_json_atomic(path: str, obj: Mapping[str, Any]) -> None:
  write_bytes_atomic(path, (json.dumps(obj, indent=2) + '\n').encode())


def encode_png(array: np.ndarray, palette: np.ndarray | None = None) -> bytes:
  """PNG bytes of a uint8 [H, W] ('L', or 'P' with ``palette``) or [H, W, 3].

  Args:
    array: uint8 class map [H, W] or RGB image [H, W, 3].
    palette: optional uint8 [N, 3]; writes a palette-mode PNG whose pixel
      values are the class ids (the original's ``save_pred``).
  """
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f'encode_png expects uint8, got {array.dtype}')
  if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
    raise ValueError(f'encode_png expects [H, W] or [H, W, 3], got {array.shape}')
  img = Image.fromarray(np.ascontiguousarray(array))
  if palette is not None:
    if array.ndim != 2:
      raise ValueError('encode_png: a palette needs a [H, W] class map')
    img.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
  buf = io.BytesIO()
  img.save(buf, format='PNG')
  return buf.getvalue()
