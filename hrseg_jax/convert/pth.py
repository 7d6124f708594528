"""Read PyTorch ``.pth`` checkpoints without PyTorch (writing: :mod:`hrseg_jax.convert.pth_write`).

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

Guarantees of :func:`load_pth` (checkpoints come from strangers; each
guarantee is tested in ``tests/test_pth_hostile.py``):

1. **No code runs.** The pickle is executed by our own machine
   (:mod:`hrseg_jax.convert.safe_pickle`), never by :mod:`pickle`. Only known
   globals resolve: the torch storage/dtype/rebuild names,
   ``collections.OrderedDict``, a few builtins and the numpy scalar/array
   reconstructors, each to a local, side-effect-free stand-in that checks its
   arguments; every other global becomes an inert :class:`Placeholder`.
   Nothing is imported.
2. **Storage types and dtypes are immutable.** ``BUILD``/``SETSTATE`` is
   refused on storage types, torch dtypes, storages, tensors and stand-ins;
   numpy dtypes only accept a state that describes themselves; an
   ``OrderedDict`` only accepts attributes that do not shadow its methods.
3. **Every tensor view is checked in bytes** before any copy: storage offset,
   sizes and strides (non-negative integers, rank <= 64) and the dtype's
   itemsize must address only bytes of the storage record. Only plain scalar
   dtypes are ever used to view a storage (no subarray, structured or object
   dtypes).
4. **No amplification.** A view may not materialise more than
   ``4 x`` its storage's bytes (plus 4 KiB): stride-0 and overlapping views
   cannot blow up. Everything a file makes the loader allocate (tensors,
   strings, bytes, objects) is charged to one budget of
   ``2 x file size + 96 MiB``; exceeding it is an error, before allocating.
5. **Bounded structure.** At most 2,000,000 objects; tuples/sets nested more
   than 100 levels are refused when built, and the result is walked
   (iteratively) to refuse deeper nesting and cycles: a clear error, never a
   ``RecursionError`` or a crash.
6. **Strict zip.** Entries must be stored (torch never compresses: nothing
   is inflated), unencrypted, uniquely named, inside one archive folder, inside
   the file and non-overlapping (no record read under two names); CRCs are
   checked. The file is memory-mapped: storages are read in place.
7. **One-line errors.** Every failure is a :class:`PthError` (a
   ``ValueError``) whose one-line message starts with the file name.

Tensors come back as independent C-contiguous ``numpy.ndarray`` copies
(bfloat16 and float8 via ``ml_dtypes``) of whatever dtype the file holds; which
dtypes a model may take is the converter's policy
(:func:`check_state_dict_dtypes`).
"""
from __future__ import annotations

import collections
import contextlib
import math
import mmap
import os
import re
import struct
import sys
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from hrseg_jax import paths
from hrseg_jax.convert import safe_pickle, zip_reader
from hrseg_jax.convert.safe_pickle import FormatError as _FormatError
from hrseg_jax.convert.safe_pickle import Placeholder

__all__ = [
    'PthError', 'Placeholder', 'load_pth', 'state_dict_from_checkpoint',
    'check_state_dict_dtypes',
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_VIEW_FACTOR = 4
_VIEW_SLACK = 4096
_BUDGET_FACTOR = 2
_BUDGET_SLACK = 96 << 20
_MAX_RANK = 64
_STORAGE_KEY = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}')

# Legacy storage classes (``torch.FloatStorage`` ...; ``torch.cuda.*`` too).
STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32,
    'HalfStorage': np.float16, 'BFloat16Storage': ml_dtypes.bfloat16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'ComplexFloatStorage': np.complex64, 'ComplexDoubleStorage': np.complex128,
}
# ``torch.<dtype>`` objects, pickled by name.
TORCH_DTYPES = {
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


# Every dtype a storage may be viewed as: plain scalars only.
_TENSOR_DTYPES = frozenset(
    np.dtype(t) for t in (*STORAGE_DTYPES.values(), *TORCH_DTYPES.values()))


class PthError(ValueError):
  """A file is not a readable PyTorch checkpoint (the message names it)."""


class _TorchType(safe_pickle.Frozen):
  """A storage class or ``torch.<dtype>`` named by a pickle (immutable)."""

  __slots__ = ('qualname', 'dtype')

  def __init__(self, qualname: str, dtype: Any):
    object.__setattr__(self, 'qualname', qualname)
    object.__setattr__(self, 'dtype', None if dtype is None else np.dtype(dtype))

  def require_dtype(self) -> np.dtype:
    if self.dtype is None:
      raise _FormatError(f'unsupported storage type {self.qualname}')
    return self.dtype

  def __repr__(self) -> str:
    return self.qualname


class _Marker(safe_pickle.Frozen):
  """A global that only marks an argument (``numpy.ndarray``)."""

  __slots__ = ('name',)

  def __init__(self, name: str):
    object.__setattr__(self, 'name', name)

  def __repr__(self) -> str:
    return self.name


_NDARRAY = _Marker('numpy.ndarray')


def _storage_dtype(storage_type: Any) -> np.dtype:
  if not isinstance(storage_type, _TorchType):
    raise _FormatError(f'bad storage type {safe_pickle._short(storage_type)}')  # pylint: disable=protected-access
  dtype = storage_type.require_dtype()
  if dtype not in _TENSOR_DTYPES:  # Cannot happen; belt and braces.
    raise _FormatError(f'unsupported storage type {storage_type.qualname}')
  return dtype


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or len(value) > _MAX_RANK:
    raise _FormatError(f'{what} is {safe_pickle._short(value)}, not a tuple '  # pylint: disable=protected-access
                       f'of at most {_MAX_RANK} integers')
  return tuple(safe_pickle.bounded_int(n, what) for n in value)


class _Storage(safe_pickle.Frozen):
  """The bytes of one storage record, read-only, in the file's byte order."""

  __slots__ = ('raw', 'dtype', 'swap', 'name', 'budget')

  def __init__(self, raw: memoryview, dtype: np.dtype, swap: bool, name: str,
               budget: safe_pickle.Budget):
    for key, value in (('raw', raw), ('dtype', dtype), ('swap', swap),
                       ('name', name), ('budget', budget)):
      object.__setattr__(self, key, value)

  def view(self, offset: Any, numel: Any) -> _Storage:
    itemsize = self.dtype.itemsize
    start = safe_pickle.bounded_int(offset, 'view offset') * itemsize
    stop = start + safe_pickle.bounded_int(numel, 'view size') * itemsize
    if stop > len(self.raw):
      raise _FormatError(f'storage view (bytes {start}..{stop}) overruns '
                         f'storage {self.name!r} of {len(self.raw)} bytes')
    return _Storage(self.raw[start:stop], self.dtype, self.swap,
                    f'{self.name}[{start}:{stop}]', self.budget)

  def tensor(self, offset: Any, size: Any, stride: Any,
             dtype: Any = None) -> np.ndarray:
    """Materialises ``as_strided(size, stride, offset)``, checked in bytes."""
    dtype = self.dtype if dtype is None else _storage_dtype(dtype)
    itemsize, nbytes = dtype.itemsize, len(self.raw)
    offset = safe_pickle.bounded_int(offset, 'storage offset')
    size = _int_tuple(size, 'tensor size')
    stride = _int_tuple(stride, 'tensor stride')
    if len(size) != len(stride):
      raise _FormatError(f'tensor size {size} and stride {stride} differ in '
                         'rank')
    where = (f'tensor (size {size}, stride {stride}, offset {offset}, '
             f'{dtype.name}) of storage {self.name!r} ({nbytes} bytes)')
    count = math.prod(size)
    if count == 0:
      return np.zeros(size, dtype)
    start = offset * itemsize
    end = start + itemsize + itemsize * sum(
        (n - 1) * s for n, s in zip(size, stride))
    if end > nbytes:
      raise _FormatError(f'{where} overruns its storage: it addresses bytes '
                         f'{start}..{end}')
    out_bytes = count * itemsize
    if out_bytes > _VIEW_FACTOR * nbytes + _VIEW_SLACK:
      raise _FormatError(f'{where} would materialise {out_bytes:,} bytes, more '
                         f'than {_VIEW_FACTOR}x its storage (stride-0 or '
                         'overlapping view)')
    self.budget.charge(out_bytes, where)
    # Strided over bytes (with the item as a last axis), then reinterpreted:
    # as_strided cannot express ml_dtypes types such as float8_e5m2.
    base = np.frombuffer(self.raw, dtype=np.uint8, count=nbytes - start,
                         offset=start)
    view = np.lib.stride_tricks.as_strided(
        base, shape=(*size, itemsize),
        strides=[*(s * itemsize if n > 1 else 0
                   for n, s in zip(size, stride)), 1], writeable=False)
    result = np.array(view, order='C', copy=True).view(dtype).reshape(size)
    return result.byteswap() if self.swap and itemsize > 1 else result


class _PendingStorage(safe_pickle.Frozen):
  """A storage whose bytes are not read yet (first legacy pass)."""

  __slots__ = ()

  def view(self, offset: Any, numel: Any) -> _PendingStorage:
    del offset, numel
    return self

  def tensor(self, offset: Any, size: Any, stride: Any,
             dtype: Any = None) -> None:
    del offset, size, stride, dtype


def _check_storage(storage: Any) -> Any:
  if not isinstance(storage, (_Storage, _PendingStorage)):
    raise _FormatError(f'tensor rebuilt from {safe_pickle._short(storage)}, '  # pylint: disable=protected-access
                       'not a storage')
  return storage


_NP_DTYPE_NAME = re.compile(r'[<>|=]?(?:b1|\?|[iu][1248]|f[248]|c(?:8|16)|'
                            r'[US]\d{0,5})')


def _check_np_dtype(dtype: Any) -> np.dtype:
  if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.shape != () \
      or dtype.names is not None or dtype.kind not in 'biufcUS' \
      or dtype.itemsize > 65536:
    raise _FormatError(f'refusing numpy dtype {safe_pickle._short(dtype)}')  # pylint: disable=protected-access
  if dtype.byteorder == ('<' if sys.byteorder == 'big' else '>'):
    raise _FormatError(f'numpy data of non-native byte order ({dtype.str}) is '
                       'not supported')
  return dtype


def _check_bytes(data: Any, nbytes: int, what: str) -> bytes:
  if not isinstance(data, (bytes, bytearray)) or len(data) != nbytes:
    raise _FormatError(f'{what}: expected {nbytes} bytes of data, got '
                       f'{safe_pickle._short(data)}'[:200])  # pylint: disable=protected-access
  return bytes(data)


def _plain(value: Any, types: tuple, what: str) -> Any:
  if not isinstance(value, types):
    raise _FormatError(f'{what} got {safe_pickle._short(value)}')  # pylint: disable=protected-access
  return value


_HASHABLE_SCALARS = (str, bytes, int, float, bool, type(None))


class _Loader:
  """Globals, stand-ins and BUILD rules for one file (shares its budget)."""

  def __init__(self, budget: safe_pickle.Budget):
    self.budget = budget
    self._fresh_arrays: dict[int, np.ndarray] = {}
    c = safe_pickle.Callable
    ordered_dict = c('collections.OrderedDict', self._ordered_dict)
    self.globals: dict[tuple[str, str], Any] = {
        ('collections', 'OrderedDict'): ordered_dict,
        ('torch', 'Size'): c('torch.Size', self._size),
        ('torch', 'device'): c('torch.device', self._device),
        ('torch._utils', '_rebuild_tensor'): c(
            '_rebuild_tensor', self._rebuild_tensor),
        ('torch._utils', '_rebuild_tensor_v2'): c(
            '_rebuild_tensor_v2', self._rebuild_tensor_v2),
        ('torch._utils', '_rebuild_tensor_v3'): c(
            '_rebuild_tensor_v3', self._rebuild_tensor_v3),
        ('torch._utils', '_rebuild_parameter'): c(
            '_rebuild_parameter', self._rebuild_parameter),
        ('torch._utils', '_rebuild_parameter_with_state'): c(
            '_rebuild_parameter_with_state', self._rebuild_parameter),
        ('torch._utils', '_rebuild_device_tensor_from_numpy'): c(
            '_rebuild_device_tensor_from_numpy', self._from_numpy),
        ('torch._tensor', '_rebuild_from_type'): c(
            '_rebuild_from_type', self._rebuild_from_type),
        ('torch._tensor', '_rebuild_from_type_v2'): c(
            '_rebuild_from_type_v2', self._rebuild_from_type),
        ('_codecs', 'encode'): c('_codecs.encode', self._codecs_encode),
        ('builtins', 'set'): c('set', lambda items=(): self._set(set, items)),
        ('builtins', 'frozenset'): c(
            'frozenset', lambda items=(): self._set(frozenset, items)),
        ('builtins', 'slice'): c('slice', self._slice),
        ('builtins', 'complex'): c('complex', self._complex),
        ('builtins', 'bytearray'): c('bytearray', self._bytearray),
        ('builtins', 'range'): c('range', self._range),
        ('numpy', 'dtype'): c('numpy.dtype', self._np_dtype),
        ('numpy', 'ndarray'): _NDARRAY,
    }
    for mod in ('numpy.core', 'numpy._core'):
      self.globals[(f'{mod}.multiarray', 'scalar')] = c(
          'numpy.scalar', self._np_scalar)
      self.globals[(f'{mod}.multiarray', '_reconstruct')] = c(
          'numpy._reconstruct', self._np_reconstruct)
      self.globals[(f'{mod}.numeric', '_frombuffer')] = c(
          'numpy._frombuffer', self._np_frombuffer)
    self._ordered_dict_global = ordered_dict

  # -- globals --------------------------------------------------------------

  def find_global(self, module: str, name: str) -> Any:
    """What a pickle's ``GLOBAL module name`` loads as; never imports."""
    module = _PY2_MODULES.get(module, module)
    found = self.globals.get((module, name))
    if found is not None:
      return found
    if module.split('.')[0] == 'torch':
      module, name = safe_pickle.printable(module[:200]), safe_pickle.printable(name[:200])
      if name in STORAGE_DTYPES:
        return _TorchType(f'{module}.{name}', STORAGE_DTYPES[name])
      if name == 'UntypedStorage':
        return _TorchType(f'{module}.{name}', np.uint8)
      if module == 'torch' and name in TORCH_DTYPES:
        return _TorchType(f'torch.{name}', TORCH_DTYPES[name])
      if name.endswith('Storage'):
        return _TorchType(f'{module}.{name}', None)
    self.budget.charge(4096, 'placeholder classes')  # A class per name.
    return safe_pickle.placeholder_class(module[:200], name[:200])

  def newobj(self, cls: Any) -> bool:
    return cls is self._ordered_dict_global

  # -- BUILD ------------------------------------------------------------------

  def build(self, target: Any, state: Any) -> None:
    """Applies a pickle's BUILD to ``target`` where that is safe, or refuses."""
    if type(target) is collections.OrderedDict:  # pylint: disable=unidiomatic-typecheck
      self._build_ordered_dict(target, state)
    elif isinstance(target, np.dtype):
      self._build_dtype(target, state)
    elif type(target) is np.ndarray and id(target) in self._fresh_arrays:  # pylint: disable=unidiomatic-typecheck
      self._build_array(target, state)
    else:
      raise _FormatError(f'refusing to set the state of '
                         f'{type(target).__name__} '
                         f'{safe_pickle._short(target)}')  # pylint: disable=protected-access

  @staticmethod
  def _build_ordered_dict(target: dict, state: Any) -> None:
    if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
      state = state[0]
    if state is None:
      return
    if not isinstance(state, dict):
      raise _FormatError(f'bad state for an OrderedDict: '
                         f'{safe_pickle._short(state)}')  # pylint: disable=protected-access
    for key, value in state.items():
      if (not isinstance(key, str) or not key.isidentifier() or
          key.startswith('__') or hasattr(collections.OrderedDict, key)):
        raise _FormatError(f'refusing to set attribute {key!r} on an '
                           'OrderedDict')
      setattr(target, key, value)

  @staticmethod
  def _build_dtype(target: np.dtype, state: Any) -> None:
    if (not isinstance(state, tuple) or len(state) not in (8, 9) or
        state[1] not in ('<', '>', '|', '=') or
        any(x is not None for x in state[2:5])):
      raise _FormatError(f'refusing numpy dtype state '
                         f'{safe_pickle._short(state)}')  # pylint: disable=protected-access
    if target.itemsize > 1 and state[1] == (
        '<' if sys.byteorder == 'big' else '>'):
      raise _FormatError('numpy data of non-native byte order is not '
                         'supported')
    if target.kind in 'US' and state[5] != target.itemsize:
      raise _FormatError(f'numpy dtype {target} with item size {state[5]!r}')

  def _build_array(self, target: np.ndarray, state: Any) -> None:
    del self._fresh_arrays[id(target)]
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise _FormatError(f'bad numpy array state {safe_pickle._short(state)}')  # pylint: disable=protected-access
    shape, dtype, fortran, data = state[-4:]
    shape = _int_tuple(shape, 'numpy array shape')
    dtype = _check_np_dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    self.budget.charge(nbytes, 'numpy array')
    data = _check_bytes(data, nbytes, 'numpy array')
    target.__setstate__((1, shape, dtype, bool(fortran), data))

  # -- stand-ins --------------------------------------------------------------

  def _ordered_dict(self, items: Any = ()) -> collections.OrderedDict:
    if isinstance(items, dict):
      items = list(items.items())
    _plain(items, (list, tuple), 'OrderedDict()')
    self.budget.charge(64 * len(items), 'OrderedDict')
    if not all(isinstance(p, tuple) and len(p) == 2 for p in items):
      raise _FormatError('OrderedDict() needs (key, value) pairs')
    return collections.OrderedDict(items)

  @staticmethod
  def _size(dims: Any = ()) -> tuple:
    return _int_tuple(dims, 'torch.Size')

  @staticmethod
  def _device(*args: Any) -> str:
    """``torch.device(...)`` is loaded as its string, e.g. ``'cuda:0'``."""
    if len(args) > 2 or not all(isinstance(a, (str, int)) for a in args):
      raise _FormatError('bad torch.device arguments')
    return ':'.join(str(a)[:100] for a in args)

  def _rebuild_tensor(self, storage, storage_offset, size, stride):
    return _check_storage(storage).tensor(storage_offset, size, stride)

  def _rebuild_tensor_v2(self, storage, storage_offset, size, stride,
                         requires_grad=False, backward_hooks=None,
                         metadata=None):
    del requires_grad, backward_hooks, metadata
    return _check_storage(storage).tensor(storage_offset, size, stride)

  def _rebuild_tensor_v3(self, storage, storage_offset, size, stride,
                         requires_grad, backward_hooks, dtype, metadata=None):
    del requires_grad, backward_hooks, metadata
    return _check_storage(storage).tensor(storage_offset, size, stride, dtype)

  @staticmethod
  def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    del requires_grad, backward_hooks, state
    return data

  def _from_numpy(self, data, dtype, device, requires_grad):
    del dtype, device, requires_grad
    if type(data) is not np.ndarray:  # pylint: disable=unidiomatic-typecheck
      raise _FormatError('_rebuild_device_tensor_from_numpy needs an array')
    _check_np_dtype(data.dtype)
    self.budget.charge(data.nbytes, 'numpy array')
    return np.array(data, order='C', copy=True)

  @staticmethod
  def _rebuild_from_type(func, new_type, args, state=None):
    del new_type, state
    _plain(args, (tuple,), '_rebuild_from_type')
    if isinstance(func, type) and issubclass(func, Placeholder):
      return func(args)
    if isinstance(func, safe_pickle.Callable):
      return func.fn(*args)
    raise _FormatError(f'_rebuild_from_type cannot call '
                       f'{safe_pickle._short(func)}')  # pylint: disable=protected-access

  def _codecs_encode(self, obj: Any, encoding: str = 'utf-8',
                     errors: str = 'strict') -> bytes:
    """``_codecs.encode`` as used by protocol-2 pickles of ``bytes``."""
    _plain(obj, (str,), '_codecs.encode')
    if not isinstance(encoding, str) or encoding.lower().replace(
        '_', '-') not in ('latin1', 'latin-1', 'utf-8', 'utf8', 'ascii'):
      raise _FormatError(f'refusing codec {safe_pickle._short(encoding)} in '  # pylint: disable=protected-access
                         'pickle')
    if errors != 'strict':
      raise _FormatError('refusing codec error handler in pickle')
    self.budget.charge(4 * len(obj), 'bytes')
    return obj.encode(encoding, errors)

  def _set(self, kind: type, items: Any) -> Any:
    _plain(items, (list, tuple, set, frozenset), f'{kind.__name__}()')
    if not all(isinstance(x, _HASHABLE_SCALARS) for x in items):
      raise _FormatError(f'{kind.__name__}() of non-scalar elements')
    self.budget.charge(32 * len(items), 'set')
    return kind(items)

  @staticmethod
  def _slice(*args: Any) -> slice:
    if len(args) > 3 or not all(a is None or type(a) is int for a in args):  # pylint: disable=unidiomatic-typecheck
      raise _FormatError('bad slice arguments')
    return slice(*args)

  @staticmethod
  def _complex(real: Any = 0, imag: Any = 0) -> complex:
    for x in (real, imag):
      if type(x) not in (int, float):  # pylint: disable=unidiomatic-typecheck
        raise _FormatError('bad complex arguments')
    return complex(real, imag)

  def _bytearray(self, *args: Any) -> bytearray:
    if not args:
      return bytearray()
    if len(args) == 1 and isinstance(args[0], bytes):
      data = args[0]
    elif (len(args) == 2 and isinstance(args[0], str)
          and isinstance(args[1], str)):
      data = self._codecs_encode(args[0], args[1])
    else:
      raise _FormatError('bytearray() takes bytes or (str, encoding) only; '
                         'refusing a size or an iterable')
    self.budget.charge(len(data), 'bytearray')
    return bytearray(data)

  @staticmethod
  def _range(*args: Any) -> range:
    if not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):  # pylint: disable=unidiomatic-typecheck
      raise _FormatError('bad range arguments')
    return range(*args)

  @staticmethod
  def _np_dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    del align, copy
    if not isinstance(name, str) or not _NP_DTYPE_NAME.fullmatch(name):
      raise _FormatError(f'refusing numpy dtype {safe_pickle._short(name)}')  # pylint: disable=protected-access
    return _check_np_dtype(np.dtype(name))

  def _np_scalar(self, dtype: Any, data: Any = None) -> Any:
    dtype = _check_np_dtype(dtype)
    data = _check_bytes(data, dtype.itemsize, f'numpy {dtype} scalar')
    self.budget.charge(dtype.itemsize, 'numpy scalar')
    return np.frombuffer(data, dtype)[0]

  def _np_reconstruct(self, cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    del shape, typecode
    if cls is not _NDARRAY:
      raise _FormatError(f'refusing to reconstruct a '
                         f'{safe_pickle._short(cls)}')  # pylint: disable=protected-access
    arr = np.empty(0, np.uint8)
    self._fresh_arrays[id(arr)] = arr
    return arr

  def _np_frombuffer(self, buf: Any, dtype: Any, shape: Any,
                     order: Any = 'C') -> np.ndarray:
    dtype = _check_np_dtype(dtype)
    shape = _int_tuple(shape, 'numpy array shape')
    nbytes = math.prod(shape) * dtype.itemsize
    self.budget.charge(nbytes, 'numpy array')
    data = _check_bytes(buf, nbytes, 'numpy array')
    if order not in ('C', 'F'):
      raise _FormatError('bad numpy array order')
    return np.array(np.frombuffer(data, dtype).reshape(shape, order=order),
                    order='C', copy=True)

  # -- running ----------------------------------------------------------------

  def run(self, buf, start: int, persistent_load=None) -> tuple[Any, int]:
    """Runs the pickle at ``buf[start:]``; returns (object, end offset)."""
    machine = safe_pickle.Machine(buf, start, self.find_global,
                                  persistent_load, self.budget, self.build,
                                  self.newobj)
    obj = machine.load()
    if self._fresh_arrays:
      raise _FormatError('numpy array reconstructed without its data')
    safe_pickle.check_structure(obj)
    return obj, machine.pos


# Python 2 module names; the stock find_class maps these, ours must too.
_PY2_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg',
                'torch.tensor': 'torch._tensor'}


def _storage_pid(pid: Any, length: int) -> tuple:
  if (not isinstance(pid, tuple) or len(pid) != length or
      pid[0] != 'storage'):
    raise _FormatError(f'unknown persistent id {safe_pickle._short(pid)}')  # pylint: disable=protected-access
  return pid[1:]


def _storage_key(key: Any) -> str:
  if not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
    raise _FormatError(f'bad storage key {safe_pickle._short(key)}')  # pylint: disable=protected-access
  return key


# --------------------------------------------------------------------------
# Zip format.


def _load_zip(buf, budget: safe_pickle.Budget) -> Any:
  archive = zip_reader.ZipArchive(buf)
  prefix = archive.prefix
  byteorder = b'little'
  if prefix + 'byteorder' in archive:
    byteorder = bytes(archive.read(prefix + 'byteorder'))
  if byteorder not in (b'little', b'big'):
    raise _FormatError(f'unknown byteorder {byteorder[:20]!r}')
  swap = byteorder.decode() != sys.byteorder
  records: dict[str, memoryview] = {}

  def load_storage(pid: Any) -> _Storage:
    storage_type, key, _, numel = _storage_pid(pid, 5)
    key = _storage_key(key)
    dtype = _storage_dtype(storage_type)
    nbytes = safe_pickle.bounded_int(numel, 'storage size') * dtype.itemsize
    name = f'{prefix}data/{key}'
    if key not in records:
      records[key] = archive.read(name, 'storage record')
    raw = records[key]
    if len(raw) < nbytes:
      raise _FormatError(f'storage record {key!r} holds {len(raw)} bytes, '
                         f'expected {nbytes}')
    return _Storage(raw[:nbytes], dtype, swap, f'data/{key}', budget)

  data_pkl = archive.read(prefix + 'data.pkl')
  return _Loader(budget).run(data_pkl, 0, load_storage)[0]


# --------------------------------------------------------------------------
# Legacy format.


def _legacy_storage_pid(pid: Any) -> tuple | None:
  """Splits a legacy persistent id; None for ``('module', ...)`` ids."""
  if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == 'module':
    return None
  return _storage_pid(pid, 6)


def _load_legacy(buf, budget: safe_pickle.Budget) -> Any:
  loader = _Loader(budget)
  magic, pos = loader.run(buf, 0)
  if magic != LEGACY_MAGIC:
    raise _FormatError('not a torch.save checkpoint (bad magic number)')
  protocol, pos = loader.run(buf, pos)
  if protocol != LEGACY_PROTOCOL:
    raise _FormatError(f'unsupported legacy protocol version '
                       f'{safe_pickle._short(protocol)}')  # pylint: disable=protected-access
  _, pos = loader.run(buf, pos)  # sys_info: sizes of C types; little-endian.
  main_start = pos
  specs: dict[str, tuple[np.dtype, int]] = {}

  def record(pid: Any) -> Any:
    parts = _legacy_storage_pid(pid)
    if parts is None:
      return pid[1]
    storage_type, root_key, _, numel, _ = parts
    spec = (_storage_dtype(storage_type),
            safe_pickle.bounded_int(numel, 'storage size'))
    if specs.setdefault(_storage_key(root_key), spec) != spec:
      raise _FormatError(f'storage {root_key!r} is declared twice with '
                         'different types or sizes')
    return _PendingStorage()

  _, pos = loader.run(buf, pos, record)
  keys, pos = loader.run(buf, pos)
  if not isinstance(keys, list) or len(set(map(repr, keys))) != len(keys):
    raise _FormatError(f'bad storage key list {safe_pickle._short(keys)}')  # pylint: disable=protected-access
  storages: dict[str, _Storage] = {}
  for key in keys:
    if not isinstance(key, str) or key not in specs:
      raise _FormatError(f'storage {safe_pickle._short(key)} is listed but '  # pylint: disable=protected-access
                         'never used')
    dtype, numel = specs[key]
    if pos + 8 > len(buf):
      raise _FormatError(f'truncated: storage {key!r} missing at offset {pos}')
    (count,) = struct.unpack_from('<q', buf, pos)
    pos += 8
    if count != numel:
      raise _FormatError(f'storage {key!r} holds {count} elements, '
                         f'expected {numel}')
    nbytes = numel * dtype.itemsize
    if pos + nbytes > len(buf):
      raise _FormatError(f'truncated: storage {key!r} needs {nbytes} bytes '
                         f'at offset {pos}, the file has {len(buf) - pos}')
    storages[key] = _Storage(memoryview(buf)[pos:pos + nbytes], dtype,
                             sys.byteorder == 'big', key, budget)
    pos += nbytes

  def load_storage(pid: Any) -> Any:
    parts = _legacy_storage_pid(pid)
    if parts is None:
      return pid[1]
    _, root_key, _, _, view_metadata = parts
    if root_key not in storages:
      raise _FormatError(f'missing storage record {root_key!r}')
    storage = storages[root_key]
    if view_metadata is not None:
      if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
        raise _FormatError('bad storage view metadata')
      _, offset, numel = view_metadata
      storage = storage.view(offset, numel)
    return storage

  return loader.run(buf, main_start, load_storage)[0]


# --------------------------------------------------------------------------
# Loading entry points.


def _load(buf, budget: safe_pickle.Budget) -> Any:
  head = bytes(buf[:512])
  if head.startswith((b'PK\x03\x04', b'PK\x05\x06')):
    return _load_zip(buf, budget)
  if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
    return _load_legacy(buf, budget)
  if head[257:262] == b'ustar':
    raise _FormatError('legacy tar-format checkpoint (torch < 0.1.10) is not '
                       'supported; re-save it with a newer torch')
  raise _FormatError('not a PyTorch checkpoint (neither a torch.save zip '
                     'archive nor a legacy torch.save pickle stream)')


def _one_line(text: str, limit: int = 400) -> str:
  text = ' '.join(text.split())
  return text if len(text) <= limit else text[:limit - 4] + ' ...'


def load_pth(path: str | os.PathLike) -> Any:
  """Loads a ``torch.save`` file with every tensor as a ``numpy.ndarray``.

  See the module docstring for what is guaranteed about hostile files.

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
    PthError: the file is empty, truncated, corrupt, hostile or not a
      checkpoint (the one-line message starts with ``path``).
    OSError: the file cannot be opened.
  """
  path = os.fspath(path)
  name = paths.shown(path)   # in messages
  with open(path, 'rb') as f:
    size = os.fstat(f.fileno()).st_size
    if size == 0:
      raise PthError(f'{name}: empty file')
    try:
      buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
      raise PthError(_one_line(f'{name}: cannot map the file ({e})')) from None
  budget = safe_pickle.Budget(_BUDGET_FACTOR * size + _BUDGET_SLACK)
  try:
    return _load(buf, budget)
  except _FormatError as e:
    raise PthError(_one_line(f'{name}: {e}')) from None
  except (MemoryError, RecursionError) as e:
    raise PthError(_one_line(f'{name}: refusing a checkpoint that needs too '
                             f'much memory or nesting ({type(e).__name__})')
                  ) from None
  except Exception as e:  # pylint: disable=broad-except
    # Any other failure to parse untrusted bytes means a damaged file.
    raise PthError(_one_line(
        f'{name}: corrupt or truncated checkpoint '
        f'({type(e).__name__}: {e})')) from None
  finally:
    with contextlib.suppress(BufferError):
      buf.close()  # Else closed when the last view is released.


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
      raise ValueError(f'state dict entry {safe_pickle._short(key)} is a '  # pylint: disable=protected-access
                       f'{type(value).__name__}, not an array')
    result[key] = value
  return result


# Dtype policy of model weights (see check_state_dict_dtypes).
_FLOAT_DTYPES = frozenset(np.dtype(t) for t in (
    np.float16, np.float32, np.float64, ml_dtypes.bfloat16,
    ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e5m2fnuz, ml_dtypes.float8_e8m0fnu))
INTEGER_BUFFERS = ('num_batches_tracked',)


def check_state_dict_dtypes(state: Mapping[str, np.ndarray],
                            where: str = '') -> None:
  """Refuses weights a model cannot take, naming the key.

  Floating tensors (float16/32/64, bfloat16, float8) are weights; integer
  tensors are accepted only as the integer buffers torch keeps
  (``*.num_batches_tracked``, a scalar); complex, bool, object and other
  tensors are errors.

  Raises:
    ValueError: one line naming ``where`` and the key.
  """
  prefix = f'{where}: ' if where else ''
  for key, value in state.items():
    dtype = value.dtype
    if key.rsplit('.', 1)[-1] in INTEGER_BUFFERS:
      if dtype.kind not in 'iu' or value.size != 1:
        raise ValueError(f'{prefix}{key} must be an integer scalar, got '
                         f'{dtype.name} {value.shape}')
    elif dtype not in _FLOAT_DTYPES:
      kind = {'c': 'a complex', 'b': 'a bool', 'O': 'an object', 'i': 'an integer',
              'u': 'an integer'}.get(dtype.kind, f'a {dtype.name}')
      raise ValueError(f'{prefix}{key} is {kind} tensor ({dtype.name}); '
                       'model weights must be floating point')
