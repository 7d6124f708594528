"""Atomic file writing and PNG encoding, for every command's outputs:
evaluation, prediction, training (``config.json``), ``browse`` and the
deployment exports.

Paths are local paths or URIs (``gs://bucket/...``) written through
``etils.epath``.  A local file is written to a hidden temporary file in the
destination directory and renamed into place (``os.replace``); an object
store writes each object atomically by itself (it appears complete or not at
all), so a URI is written directly.  Either way a reader never sees a partial
file and an interrupted run leaves no truncated outputs.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Mapping

from etils import epath
import numpy as np
from PIL import Image


def is_uri(path) -> bool:
  """``scheme://...`` (gs://, s3://, ...): written through etils.epath."""
  return '://' in os.fspath(path)


def _file_mode() -> int:
  """The mode ``open`` gives a new file under this process's umask (0644 under
  the usual 022); temporary files are created private (0600) instead."""
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      umask = next(int(l.split()[1], 8) for l in f if l.startswith('Umask:'))
  except (OSError, StopIteration, ValueError):
    umask = os.umask(0o022)
    os.umask(umask)
  return 0o666 & ~umask


def missing_folders(path) -> list[str]:
  """``path`` and those of its parents that do not exist yet, deepest first:
  the folders to remove again (:func:`remove_empty_folders`) when what is
  being made in ``path`` fails.  A URI has none (an object store has no
  folders)."""
  if is_uri(path):
    return []
  missing, path = [], os.path.abspath(path)
  while not os.path.isdir(path) and os.path.dirname(path) != path:
    missing.append(path)
    path = os.path.dirname(path)
  return missing


def remove_empty_folders(folders) -> None:
  """Removes each of ``folders`` that is empty, deepest first; keeps the rest."""
  for folder in sorted(set(folders), key=lambda f: -f.count(os.sep)):
    try:
      os.rmdir(folder)
    except OSError:
      pass


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically, creating parent directories."""
  if is_uri(path):
    write_files_atomic({path: data})
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-',
                             suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, _file_mode())
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
  URIs: each object is written directly (atomic per object); one that fails
  removes the objects written before it.
  """
  remote = {p: d for p, d in files.items() if is_uri(p)}
  written = []
  try:
    for path, data in remote.items():
      target = epath.Path(path)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)
      written.append(target)
  except BaseException:
    for target in written:
      target.unlink(missing_ok=True)
    raise
  files = {p: d for p, d in files.items() if not is_uri(p)}
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
      os.chmod(tmp, _file_mode())
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
