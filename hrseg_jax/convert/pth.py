"""Read and write PyTorch ``.pth`` checkpoints without PyTorch.

Two on-disk formats written by ``torch.save`` are understood:

* **zip** (torch >= 1.6): an uncompressed zip archive whose entries live under
  one top-level folder ``<archive>/``: ``data.pkl`` (the pickled object),
  ``byteorder`` (``little``/``big``, optional), ``version`` and one record
  ``data/<key>`` per storage. Storages are referenced from the pickle through
  persistent ids ``('storage', storage_type, key, location, numel)``.
* **legacy** (torch < 1.6): a stream of pickles -- magic number, protocol
  version, system info, the main pickle (persistent ids
  ``('storage', storage_type, root_key, location, numel, view_metadata)``), the
  list of storage keys -- followed by each storage's bytes, in the key order,
  prefixed by its int64 little-endian element count.

The still older tar format (torch < 0.1.10) is detected and rejected.

Loading never runs code from the file: the unpickler resolves only the torch
storage/dtype/rebuild names, ``collections.OrderedDict``, a few builtins and
the numpy scalar/array reconstructors to local, side-effect-free stand-ins;
every other global becomes an inert :class:`Placeholder`. Tensors come back as
independent C-contiguous ``numpy.ndarray`` copies (bfloat16 and float8 via
``ml_dtypes``).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import io
import operator
import os
import pickle
import re
import secrets
import struct
import sys
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Mapping

import ml_dtypes
import numpy as np

__all__ = [
    'PthError', 'Placeholder', 'load_pth', 'save_pth', 'save_pth_legacy',
    'state_dict_from_checkpoint',
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_ALIGNMENT = 64
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# Legacy storage classes (``torch.FloatStorage`` ...; ``torch.cuda.*`` too).
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'ComplexFloatStorage': np.complex64, 'ComplexDoubleStorage': np.complex128,
}
# ``torch.<dtype>`` objects, pickled by name.
_TORCH_DTYPES = {
    'float64': np.float64, 'double': np.float64, 'float32': np.float32,
    'float': np.float32, 'float16': np.float16, 'half': np.float16,
    'bfloat16': ml_dtypes.bfloat16, 'int64': np.int64, 'long': np.int64,
    'int32': np.int32, 'int': np.int32, 'int16': np.int16, 'short': np.int16,
    'int8': np.int8, 'uint8': np.uint8, 'bool': np.bool_,
    'complex64': np.complex64, 'cfloat': np.complex64,
    'complex128': np.complex128, 'cdouble': np.complex128,
    'uint16': np.uint16, 'uint32': np.uint32, 'uint64': np.uint64,
    'float8_e4m3fn': ml_dtypes.float8_e4m3fn,
    'float8_e5m2': ml_dtypes.float8_e5m2,
    'float8_e4m3fnuz': ml_dtypes.float8_e4m3fnuz,
    'float8_e5m2fnuz': ml_dtypes.float8_e5m2fnuz,
    'float8_e8m0fnu': ml_dtypes.float8_e8m0fnu,
}
# Writing: dtypes with a legacy storage class use ``_rebuild_tensor_v2``; the
# others are stored as an ``UntypedStorage`` plus ``torch.<dtype>`` (v3).
_WRITE_STORAGE = {np.dtype(t): name for name, t in _STORAGE_DTYPES.items()}
_WRITE_V3 = {
    np.dtype(_TORCH_DTYPES[name]): name
    for name in ('uint16', 'uint32', 'uint64', 'float8_e4m3fn', 'float8_e5m2',
                 'float8_e4m3fnuz', 'float8_e5m2fnuz', 'float8_e8m0fnu')
}


class PthError(ValueError):
  """A file is not a readable PyTorch checkpoint (the message names it)."""


class _FormatError(Exception):
  """Internal: the bytes being parsed are not a valid checkpoint."""


class Placeholder:
  """Inert stand-in for a pickled object of a class ``load_pth`` won't import.

  Subclasses are created per global; ``module`` and ``qualname`` name it.
  Whatever the pickle feeds the object is recorded, never acted upon.

  Attributes:
    args: positional arguments of the reconstructing call.
    kwargs: keyword arguments of the reconstructing call.
    state: the ``__setstate__`` argument, if any.
    dict_items: items set as with a dict subclass.
    list_items: items appended as with a list subclass.
  """

  module = ''
  qualname = ''

  def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
    obj = super().__new__(cls)
    obj.args, obj.kwargs, obj.state = args, kwargs, None
    obj.dict_items, obj.list_items = {}, []
    return obj

  def __init__(self, *args: Any, **kwargs: Any):
    del args, kwargs  # Recorded by __new__, which pickle's NEWOBJ calls alone.

  def __setstate__(self, state: Any) -> None:
    self.state = state

  def __setitem__(self, key: Any, value: Any) -> None:
    self.dict_items[key] = value

  def append(self, value: Any) -> None:
    self.list_items.append(value)

  def extend(self, values: Any) -> None:
    self.list_items.extend(values)

  def __repr__(self) -> str:
    return f'<Placeholder for {self.module}.{self.qualname}>'


@functools.lru_cache(maxsize=1024)
def _placeholder_class(module: str, qualname: str) -> type[Placeholder]:
  return type(f'Placeholder[{module}.{qualname}]', (Placeholder,),
              {'module': module, 'qualname': qualname})


class _TorchType:
  """A storage class or ``torch.<dtype>`` named by a pickle."""

  def __init__(self, qualname: str, dtype: Any):
    self.qualname = qualname
    self.dtype = None if dtype is None else np.dtype(dtype)

  def require_dtype(self) -> np.dtype:
    if self.dtype is None:
      raise _FormatError(f'unsupported storage type {self.qualname}')
    return self.dtype

  def __repr__(self) -> str:
    return self.qualname


def _storage_dtype(storage_type: Any) -> np.dtype:
  if not isinstance(storage_type, _TorchType):
    raise _FormatError(f'bad storage type {storage_type!r}')
  return storage_type.require_dtype()


def _index(value: Any, what: str) -> int:
  try:
    result = operator.index(value)
  except TypeError:
    raise _FormatError(f'{what} is {value!r}, not an integer') from None
  if result < 0:
    raise _FormatError(f'{what} is negative ({result})')
  return result


def _strided_copy(base: np.ndarray, offset: Any, size: Any,
                  stride: Any) -> np.ndarray:
  """Materialises ``base.as_strided(size, stride, offset)`` as a new array."""
  offset = _index(offset, 'storage offset')
  size = tuple(_index(n, 'tensor size') for n in size)
  stride = tuple(_index(s, 'tensor stride') for s in stride)
  if len(size) != len(stride):
    raise _FormatError(f'tensor size {size} and stride {stride} differ in rank')
  if 0 in size:
    return np.zeros(size, base.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= base.size:
    raise _FormatError(
        f'tensor (size {size}, stride {stride}, offset {offset}) overruns its '
        f'storage of {base.size} elements')
  view = np.lib.stride_tricks.as_strided(
      base[offset:], shape=size,
      strides=[s * base.itemsize for s in stride], writeable=False)
  return view.copy(order='C')


class _Storage:
  """The bytes of one storage, read-only, in the file's byte order."""

  def __init__(self, raw: memoryview, dtype: np.dtype, swap: bool):
    self._raw, self._dtype, self._swap = raw, dtype, swap

  def view(self, offset: Any, numel: Any) -> _Storage:
    start = _index(offset, 'view offset') * self._dtype.itemsize
    stop = start + _index(numel, 'view size') * self._dtype.itemsize
    if stop > len(self._raw):
      raise _FormatError('storage view overruns its root storage')
    return _Storage(self._raw[start:stop], self._dtype, self._swap)

  def tensor(self, offset: Any, size: Any, stride: Any,
             dtype: Any = None) -> np.ndarray:
    dtype = self._dtype if dtype is None else _storage_dtype(dtype)
    count = len(self._raw) // dtype.itemsize
    base = np.frombuffer(self._raw, dtype, count=count)
    result = _strided_copy(base, offset, size, stride)
    return result.byteswap() if self._swap and dtype.itemsize > 1 else result


class _PendingStorage:
  """A storage whose bytes are not read yet (first legacy pass)."""

  def view(self, offset: Any, numel: Any) -> _PendingStorage:
    del offset, numel
    return self

  def tensor(self, offset: Any, size: Any, stride: Any,
             dtype: Any = None) -> None:
    del offset, size, stride, dtype


# Rebuild functions named in pickles, with torch's signatures.
def _rebuild_tensor(storage, storage_offset, size, stride):
  return storage.tensor(storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  return storage.tensor(storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  return storage.tensor(storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type(func, new_type, args, state):
  del new_type, state
  return func(*args)


def _rebuild_device_tensor_from_numpy(data, dtype, device, requires_grad):
  del dtype, device, requires_grad
  return np.array(data)


def _device(*args: Any) -> str:
  """``torch.device(...)`` is loaded as its string, e.g. ``'cuda:0'``."""
  return ':'.join(str(a) for a in args)


def _codecs_encode(obj: str, encoding: str = 'utf-8', errors: str = 'strict'):
  """``_codecs.encode`` as used by protocol-2 pickles of ``bytes``."""
  if encoding.lower().replace('_', '-') not in ('latin1', 'latin-1', 'utf-8',
                                                'utf8', 'ascii'):
    raise _FormatError(f'refusing codec {encoding!r} in pickle')
  return obj.encode(encoding, errors)


def _numpy_module(new: str, old: str):
  try:
    return importlib.import_module(new)
  except ImportError:  # numpy < 2
    return importlib.import_module(old)


_NP_MULTIARRAY = _numpy_module('numpy._core.multiarray',
                               'numpy.core.multiarray')
_NP_NUMERIC = _numpy_module('numpy._core.numeric', 'numpy.core.numeric')

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch', 'Size'): tuple,
    ('torch', 'device'): _device,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'):
        _rebuild_parameter_with_state,
    ('torch._utils', '_rebuild_device_tensor_from_numpy'):
        _rebuild_device_tensor_from_numpy,
    ('torch._tensor', '_rebuild_from_type'): _rebuild_from_type,
    ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type,
    ('_codecs', 'encode'): _codecs_encode,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
    ('builtins', 'complex'): complex,
    ('builtins', 'bytearray'): bytearray,
    ('builtins', 'range'): range,
    ('numpy', 'dtype'): np.dtype,
    ('numpy', 'ndarray'): np.ndarray,
}
for _mod in ('numpy.core', 'numpy._core'):
  _SAFE_GLOBALS[(f'{_mod}.multiarray', 'scalar')] = _NP_MULTIARRAY.scalar
  _SAFE_GLOBALS[(f'{_mod}.multiarray', '_reconstruct')] = (
      _NP_MULTIARRAY._reconstruct)  # pylint: disable=protected-access
  _SAFE_GLOBALS[(f'{_mod}.numeric', '_frombuffer')] = (
      _NP_NUMERIC._frombuffer)  # pylint: disable=protected-access

# Python 2 module names; the stock find_class maps these, ours must too.
_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg',
                'torch.tensor': 'torch._tensor'}


def _resolve_global(module: str, name: str) -> Any:
  """What a pickle's ``GLOBAL module name`` loads as; never imports."""
  module = _PY2_MODULES.get(module, module)
  if (module, name) in _SAFE_GLOBALS:
    return _SAFE_GLOBALS[(module, name)]
  if module.split('.')[0] == 'torch':
    if name in _STORAGE_DTYPES:
      return _TorchType(f'{module}.{name}', _STORAGE_DTYPES[name])
    if name == 'UntypedStorage':
      return _TorchType(f'{module}.{name}', np.uint8)
    if module == 'torch' and name in _TORCH_DTYPES:
      return _TorchType(f'torch.{name}', _TORCH_DTYPES[name])
    if name.endswith('Storage'):
      return _TorchType(f'{module}.{name}', None)
  return _placeholder_class(module, name)


class _Unpickler(pickle.Unpickler):
  """Unpickler whose globals come from :func:`_resolve_global` only."""

  def __init__(self, file: BinaryIO,
               load_storage: Callable[[tuple], Any] | None = None):
    super().__init__(file, encoding='latin1')
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    return _resolve_global(module, name)

  def persistent_load(self, pid: Any) -> Any:
    if self._load_storage is None:
      raise _FormatError(f'unexpected persistent id {pid!r}')
    if not isinstance(pid, tuple) or not pid:
      raise _FormatError(f'bad persistent id {pid!r}')
    return self._load_storage(pid)


def _read_exact(f: BinaryIO, n: int) -> bytes:
  pos = f.tell()
  data = f.read(n)
  if len(data) != n:
    raise _FormatError(f'truncated: needed {n} bytes at offset {pos}, '
                       f'found {len(data)}')
  return data


def _storage_pid(pid: tuple, length: int) -> tuple:
  if pid[0] != 'storage' or len(pid) != length:
    raise _FormatError(f'unknown persistent id {pid!r}')
  return pid[1:]


# --------------------------------------------------------------------------
# Zip format.


def _archive_prefix(names: list[str]) -> str:
  for name in names:
    head, sep, tail = name.partition('/')
    if sep and tail == 'data.pkl':
      return head + '/'
  raise _FormatError('zip archive has no <archive>/data.pkl record '
                     '(not a torch.save checkpoint)')


def _read_record(zf: zipfile.ZipFile, f: BinaryIO, name: str) -> bytes:
  """Reads an entry; stored entries are read raw so a zero CRC is allowed."""
  try:
    info = zf.getinfo(name)
  except KeyError:
    raise _FormatError(f'missing storage record {name!r}') from None
  if info.compress_type != zipfile.ZIP_STORED:
    return zf.read(info)
  f.seek(info.header_offset)
  signature, name_len, extra_len = struct.unpack(
      '<4s22xHH', _read_exact(f, 30))
  if signature != b'PK\x03\x04':
    raise _FormatError(f'bad local header for record {name!r}')
  f.seek(info.header_offset + 30 + name_len + extra_len)
  raw = _read_exact(f, info.file_size)
  if info.CRC and zlib.crc32(raw) != info.CRC:
    raise _FormatError(f'CRC mismatch in record {name!r}')
  return raw


def _load_zip(f: BinaryIO) -> Any:
  try:
    zf = zipfile.ZipFile(f)
  except zipfile.BadZipFile as e:
    raise _FormatError(f'truncated or corrupt zip archive ({e})') from None
  with zf:
    prefix = _archive_prefix(zf.namelist())
    byteorder = b'little'
    if prefix + 'byteorder' in zf.NameToInfo:
      byteorder = _read_record(zf, f, prefix + 'byteorder')
    if byteorder not in (b'little', b'big'):
      raise _FormatError(f'unknown byteorder {byteorder!r}')
    swap = byteorder.decode() != sys.byteorder
    storages: dict[str, _Storage] = {}

    def load_storage(pid: tuple) -> _Storage:
      storage_type, key, _, numel = _storage_pid(pid, 5)
      if key not in storages:
        dtype = _storage_dtype(storage_type)
        raw = _read_record(zf, f, f'{prefix}data/{key}')
        nbytes = _index(numel, 'storage size') * dtype.itemsize
        if len(raw) < nbytes:
          raise _FormatError(f'storage record {key!r} holds {len(raw)} bytes, '
                             f'expected {nbytes}')
        storages[key] = _Storage(memoryview(raw)[:nbytes], dtype, swap)
      return storages[key]

    data_pkl = _read_record(zf, f, prefix + 'data.pkl')
    return _Unpickler(io.BytesIO(data_pkl), load_storage).load()


# --------------------------------------------------------------------------
# Legacy format.


def _legacy_header(f: BinaryIO) -> None:
  magic = _Unpickler(f).load()
  if magic != _LEGACY_MAGIC:
    raise _FormatError('not a torch.save checkpoint (bad magic number)')
  protocol = _Unpickler(f).load()
  if protocol != _LEGACY_PROTOCOL:
    raise _FormatError(f'unsupported legacy protocol version {protocol!r}')
  _Unpickler(f).load()  # sys_info: sizes of C types; data is little-endian.


def _legacy_storage_pid(pid: tuple) -> tuple | None:
  """Splits a legacy persistent id; None for ``('module', ...)`` ids."""
  if pid[0] == 'module' and len(pid) >= 2:
    return None
  return _storage_pid(pid, 6)


def _scan_legacy_storages(f: BinaryIO) -> dict[str, tuple[np.dtype, int]]:
  """First pass over the main pickle: root storage key -> (dtype, numel)."""
  specs: dict[str, tuple[np.dtype, int]] = {}

  def record(pid: tuple) -> Any:
    parts = _legacy_storage_pid(pid)
    if parts is None:
      return pid[1]
    storage_type, root_key, _, numel, _ = parts
    specs[root_key] = (_storage_dtype(storage_type),
                       _index(numel, 'storage size'))
    return _PendingStorage()

  _Unpickler(f, record).load()
  return specs


def _read_legacy_storages(f: BinaryIO, specs: dict[str, tuple[np.dtype, int]]
                         ) -> dict[str, _Storage]:
  keys = _Unpickler(f).load()
  if not isinstance(keys, list):
    raise _FormatError(f'bad storage key list {keys!r}')
  storages = {}
  for key in keys:
    if key not in specs:
      raise _FormatError(f'storage {key!r} is listed but never used')
    dtype, numel = specs[key]
    (count,) = struct.unpack('<q', _read_exact(f, 8))
    if count != numel:
      raise _FormatError(f'storage {key!r} holds {count} elements, '
                         f'expected {numel}')
    raw = _read_exact(f, numel * dtype.itemsize)
    storages[key] = _Storage(memoryview(raw), dtype, sys.byteorder == 'big')
  return storages


def _load_legacy(f: BinaryIO) -> Any:
  _legacy_header(f)
  start = f.tell()
  storages = _read_legacy_storages(f, _scan_legacy_storages(f))

  def load_storage(pid: tuple) -> Any:
    parts = _legacy_storage_pid(pid)
    if parts is None:
      return pid[1]
    _, root_key, _, _, view_metadata = parts
    if root_key not in storages:
      raise _FormatError(f'missing storage record {root_key!r}')
    storage = storages[root_key]
    if view_metadata is not None:
      _, offset, numel = view_metadata
      storage = storage.view(offset, numel)
    return storage

  f.seek(start)
  return _Unpickler(f, load_storage).load()


# --------------------------------------------------------------------------
# Loading entry points.


def _load(f: BinaryIO) -> Any:
  head = f.read(512)
  f.seek(0)
  if not head:
    raise _FormatError('empty file')
  if head.startswith((b'PK\x03\x04', b'PK\x05\x06')):
    return _load_zip(f)
  if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
    return _load_legacy(f)
  if head[257:262] == b'ustar':
    raise _FormatError('legacy tar-format checkpoint (torch < 0.1.10) is not '
                       'supported; re-save it with a newer torch')
  raise _FormatError('not a PyTorch checkpoint (neither a torch.save zip '
                     'archive nor a legacy torch.save pickle stream)')


def _one_line(text: str) -> str:
  return ' '.join(text.split())


def load_pth(path: str | os.PathLike) -> Any:
  """Loads a ``torch.save`` file with every tensor as a ``numpy.ndarray``.

  Args:
    path: a checkpoint in the zip (torch >= 1.6) or legacy (torch < 1.6)
      format.

  Returns:
    The saved object: dicts (``OrderedDict`` where torch used one), lists,
    tuples (``torch.Size`` too), Python scalars and strings (``torch.device``
    as e.g. ``'cuda:0'``), and independent C-contiguous arrays for tensors
    and parameters. Objects of other classes come back as
    :class:`Placeholder` instances.

  Raises:
    PthError: the file is empty, truncated, corrupt or not a checkpoint, or
      refers to a missing storage record or an unsupported storage type.
    OSError: the file cannot be opened.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    try:
      return _load(f)
    except _FormatError as e:
      raise PthError(_one_line(f'{path}: {e}')) from None
    except Exception as e:  # pylint: disable=broad-except
      # Any failure to parse untrusted bytes means a damaged file.
      raise PthError(_one_line(
          f'{path}: corrupt or truncated checkpoint '
          f'({type(e).__name__}: {e})')) from e


def state_dict_from_checkpoint(obj: Any) -> dict[str, np.ndarray]:
  """Returns the state dict held by a loaded checkpoint, keys unchanged.

  Args:
    obj: what :func:`load_pth` returned: a state dict, or a dict holding one
      under ``'state_dict'`` (HRNet and mmpose training checkpoints, next to
      ``epoch``/``meta``/``optimizer``...) or ``'model'``.

  Returns:
    A new dict from parameter name to array, in the checkpoint's order.

  Raises:
    ValueError: ``obj`` is not such a layout, or an entry is not an array.
  """
  if isinstance(obj, Mapping):
    for wrapper in ('state_dict', 'model'):
      if isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
        break
  if not isinstance(obj, Mapping):
    raise ValueError(f'expected a state dict or a dict holding one, got '
                     f'{type(obj).__name__}')
  result = {}
  for key, value in obj.items():
    if not isinstance(key, str) or not isinstance(value, np.ndarray):
      raise ValueError(f'state dict entry {key!r} is a '
                       f'{type(value).__name__}, not an array')
    result[key] = value
  return result


# --------------------------------------------------------------------------
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
      'protocol_version': _LEGACY_PROTOCOL,
      'little_endian': True,
      'type_sizes': {'short': struct.calcsize('=h'),
                     'int': struct.calcsize('=i'),
                     'long': struct.calcsize('=l')},
  }
  head = b''.join(pickle.dumps(v, protocol=2)
                  for v in (_LEGACY_MAGIC, _LEGACY_PROTOCOL, sys_info))

  def write(f: BinaryIO) -> None:
    f.write(head)
    f.write(main)
    f.write(pickle.dumps(keys, protocol=2))
    for key in keys:
      arr = writer.storages[int(key)]
      f.write(struct.pack('<q', arr.size))
      f.write(_array_bytes(arr))

  _write_atomic(path, write)
