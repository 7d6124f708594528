"""Write PyTorch ``.pth`` checkpoints without PyTorch: the formats that
:mod:`hrseg_jax.convert.pth` reads (zip, as ``torch.save`` writes since 1.6,
and the legacy stream of the 2019 checkpoints), loadable by ``torch.load``
with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import secrets
import struct
import sys
import zipfile
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from hrseg_jax.convert import pth

# Dtypes with a legacy storage class use ``_rebuild_tensor_v2``; the others
# are stored as an ``UntypedStorage`` plus ``torch.<dtype>`` (v3).
_WRITE_STORAGE = {np.dtype(t): name for name, t in pth.STORAGE_DTYPES.items()}
_WRITE_V3 = {
    np.dtype(pth.TORCH_DTYPES[name]): name
    for name in ('uint16', 'uint32', 'uint64', 'float8_e4m3fn', 'float8_e5m2',
                 'float8_e4m3fnuz', 'float8_e5m2fnuz', 'float8_e8m0fnu')
}
_ZIP_ALIGNMENT = 64
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# Writing.


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
  strides, step = [], 1
  for n in reversed(shape):
    strides.append(step)
    step *= max(n, 1)
  return tuple(reversed(strides))


def _little_endian_c_array(value: Any) -> np.ndarray:
  arr = np.asarray(value)
  big = arr.dtype.byteorder == '>' or (arr.dtype.byteorder == '='
                                       and sys.byteorder == 'big')
  if big and arr.dtype.itemsize > 1:
    arr = arr.astype(arr.dtype.newbyteorder('<'))
  return np.asarray(arr, order='C')


def _array_bytes(arr: np.ndarray) -> memoryview:
  return memoryview(arr.reshape(-1).view(np.uint8))


class _PickleWriter:
  """Protocol-2 pickle emitter for what ``torch.save`` checkpoints hold.

  Mappings are written as ``collections.OrderedDict``; arrays (and numpy
  scalars, and objects with ``__array__``) as tensors, each with its own
  storage, collected in :attr:`storages` (the key is the index).
  """

  def __init__(self, legacy: bool):
    self._legacy = legacy
    self._out = bytearray()
    self._memo: dict[tuple[str, str], int] = {}
    self.storages: list[np.ndarray] = []

  def dumps(self, obj: Any) -> bytes:
    self._out += b'\x80\x02'
    self._save(obj)
    self._out += b'.'
    return bytes(self._out)

  def _save(self, obj: Any) -> None:
    if obj is None:
      self._out += b'N'
    elif isinstance(obj, bool):
      self._out += b'\x88' if obj else b'\x89'
    elif isinstance(obj, (np.ndarray, np.generic)):
      self._save_tensor(obj)
    elif isinstance(obj, int):
      self._save_int(obj)
    elif isinstance(obj, float):
      self._out += b'G' + struct.pack('>d', obj)
    elif isinstance(obj, str):
      self._save_str(obj)
    elif isinstance(obj, Mapping):
      self._save_mapping(obj)
    elif isinstance(obj, list):
      self._save_list(obj)
    elif isinstance(obj, tuple):
      self._save_tuple(obj)
    elif hasattr(obj, '__array__'):
      self._save_tensor(obj)
    else:
      raise TypeError(f'cannot write a {type(obj).__name__} to a .pth file')

  def _save_int(self, value: int) -> None:
    if 0 <= value < 256:
      self._out += b'K' + bytes([value])
    elif 0 <= value < 65536:
      self._out += b'M' + struct.pack('<H', value)
    elif -2**31 <= value < 2**31:
      self._out += b'J' + struct.pack('<i', value)
    else:
      data = value.to_bytes((value.bit_length() + 8) // 8, 'little',
                            signed=True)
      if len(data) < 256:
        self._out += b'\x8a' + bytes([len(data)]) + data
      else:
        self._out += b'\x8b' + struct.pack('<i', len(data)) + data

  def _save_str(self, value: str) -> None:
    data = value.encode('utf-8', 'surrogatepass')
    self._out += b'X' + struct.pack('<I', len(data)) + data

  def _save_global(self, module: str, name: str) -> None:
    index = self._memo.get((module, name))
    if index is not None:
      self._out += (b'h' + bytes([index]) if index < 256 else
                    b'j' + struct.pack('<I', index))
      return
    index = self._memo[(module, name)] = len(self._memo)
    self._out += f'c{module}\n{name}\n'.encode('ascii')
    self._out += (b'q' + bytes([index]) if index < 256 else
                  b'r' + struct.pack('<I', index))

  def _save_mapping(self, obj: Mapping) -> None:
    self._save_global('collections', 'OrderedDict')
    self._out += b')R'
    if obj:
      self._out += b'('
      for key, value in obj.items():
        self._save(key)
        self._save(value)
      self._out += b'u'

  def _save_list(self, obj: list) -> None:
    self._out += b']'
    if obj:
      self._out += b'('
      for value in obj:
        self._save(value)
      self._out += b'e'

  def _save_tuple(self, obj: tuple) -> None:
    if not obj:
      self._out += b')'
      return
    short = len(obj) <= 3
    if not short:
      self._out += b'('
    for value in obj:
      self._save(value)
    self._out += b'\x85\x86\x87'[len(obj) - 1:len(obj)] if short else b't'

  def _save_tensor(self, value: Any) -> None:
    arr = _little_endian_c_array(value)
    dtype = arr.dtype if arr.dtype.isnative else arr.dtype.newbyteorder('=')
    storage_class, v3_dtype = _WRITE_STORAGE.get(dtype), _WRITE_V3.get(dtype)
    if storage_class is None and (v3_dtype is None or self._legacy):
      fmt = 'legacy .pth' if self._legacy else '.pth'
      raise TypeError(f'cannot write a {dtype} array to a {fmt} file')
    key = str(len(self.storages))
    self.storages.append(arr)
    self._save_global('torch._utils', '_rebuild_tensor_v2' if storage_class
                      else '_rebuild_tensor_v3')
    self._out += b'(('
    self._save_str('storage')
    if storage_class:
      self._save_global('torch', storage_class)
    else:
      self._save_global('torch.storage', 'UntypedStorage')
    self._save_str(key)
    self._save_str('cpu')
    self._save_int(arr.size if storage_class else arr.nbytes)
    if self._legacy:
      self._out += b'N'  # view_metadata
    self._out += b'tQ'
    self._save_int(0)
    self._save_tuple(tuple(int(n) for n in arr.shape))
    self._save_tuple(_contiguous_strides(arr.shape))
    self._out += b'\x89'  # requires_grad
    self._save_global('collections', 'OrderedDict')
    self._out += b')R'  # backward_hooks
    if not storage_class:
      self._save_global('torch', v3_dtype)
    self._out += b'tR'


def _write_atomic(path: str | os.PathLike,
                  write: Callable[[BinaryIO], None]) -> None:
  """Writes via a temporary file in the same folder and ``os.replace``."""
  path = os.fspath(path)
  folder, base = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder, f'.{base}.{secrets.token_hex(6)}.tmp')
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def _archive_name(path: str | os.PathLike) -> str:
  stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
  return stem if re.fullmatch(r'[A-Za-z0-9_.-]+', stem) else 'archive'


def _write_record(zf: zipfile.ZipFile, f: BinaryIO, name: str,
                  data: bytes | memoryview) -> None:
  """Adds a stored entry whose data starts on a 64-byte boundary."""
  info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
  info.file_size = len(data)
  zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT
  header = 30 + len(name.encode('utf-8')) + 4 + (20 if zip64 else 0)
  pad = -(f.tell() + header) % _ZIP_ALIGNMENT
  info.extra = struct.pack('<HH', 0x4246, pad) + b'Z' * pad  # 'FB', as torch.
  with zf.open(info, 'w', force_zip64=zip64) as w:
    w.write(data)


def _write_zip(f: BinaryIO, archive: str, data_pkl: bytes,
               storages: list[np.ndarray]) -> None:
  with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED) as zf:
    _write_record(zf, f, f'{archive}/data.pkl', data_pkl)
    _write_record(zf, f, f'{archive}/byteorder', b'little')
    for key, arr in enumerate(storages):
      _write_record(zf, f, f'{archive}/data/{key}', _array_bytes(arr))
    _write_record(zf, f, f'{archive}/version', b'3\n')


def save_pth(obj: Any, path: str | os.PathLike) -> None:
  """Writes ``obj`` in the torch zip format, loadable by ``torch.load``.

  ``torch.load`` (also with ``weights_only=True``) returns every mapping as an
  ``OrderedDict`` and every array as a plain CPU ``torch.Tensor`` with the
  same dtype, shape and bits. The file appears atomically: on any error,
  nothing is written at ``path``.

  Args:
    obj: a state dict (``Mapping[str, np.ndarray]``) or nested mappings,
      lists and tuples of arrays, numpy scalars (stored as 0-d tensors),
      ``None``, bools, ints, floats and strings.
    path: where to write.

  Raises:
    TypeError: ``obj`` holds something else, or an array of a dtype torch
      lacks.
  """
  writer = _PickleWriter(legacy=False)
  data_pkl = writer.dumps(obj)
  archive = _archive_name(path)
  _write_atomic(path, lambda f: _write_zip(f, archive, data_pkl,
                                           writer.storages))


def save_pth_legacy(obj: Any, path: str | os.PathLike) -> None:
  """Like :func:`save_pth` but in the pre-1.6 (non-zip) torch format.

  Args:
    obj: as for :func:`save_pth`; dtypes without a legacy storage class
      (uint16/32/64, float8) are refused.
    path: where to write.

  Raises:
    TypeError: ``obj`` cannot be written in this format.
  """
  writer = _PickleWriter(legacy=True)
  main = writer.dumps(obj)
  keys = sorted(str(i) for i in range(len(writer.storages)))  # As torch.
  sys_info = {
      'protocol_version': pth.LEGACY_PROTOCOL,
      'little_endian': True,
      'type_sizes': {'short': struct.calcsize('=h'),
                     'int': struct.calcsize('=i'),
                     'long': struct.calcsize('=l')},
  }
  head = b''.join(pickle.dumps(v, protocol=2)
                  for v in (pth.LEGACY_MAGIC, pth.LEGACY_PROTOCOL, sys_info))

  def write(f: BinaryIO) -> None:
    f.write(head)
    f.write(main)
    f.write(pickle.dumps(keys, protocol=2))
    for key in keys:
      arr = writer.storages[int(key)]
      f.write(struct.pack('<q', arr.size))
      f.write(_array_bytes(arr))

  _write_atomic(path, write)
