"""Hostile ``.pth`` payloads, built by hand (no PyTorch), for the loader tests.

Each builder writes a file into a folder and returns its path. ``REFUSED``
maps a case name to (builder, a phrase the one-line error must contain).
"""
from __future__ import annotations

import io
import pathlib
import pickle
import struct
import warnings
import zipfile
import zlib

import numpy as np


def s(text: str) -> bytes:
  """A pickled str (BINUNICODE)."""
  data = text.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def i(value: int) -> bytes:
  """A pickled int (BININT or LONG1)."""
  if -2**31 <= value < 2**31:
    return b'J' + struct.pack('<i', value)
  data = value.to_bytes((value.bit_length() + 8) // 8, 'little', signed=True)
  return b'\x8a' + bytes([len(data)]) + data


def ints(values) -> bytes:
  return b'(' + b''.join(i(v) for v in values) + b't'


def storage_pid(key: str, numel: int, storage: str = 'FloatStorage') -> bytes:
  return (b'(' + s('storage') + f'ctorch\n{storage}\n'.encode() + s(key)
          + s('cpu') + i(numel) + b'tQ')


def tensor(key: str, numel: int, size, stride, offset: int = 0,
           storage: str = 'FloatStorage') -> bytes:
  """``_rebuild_tensor_v2`` of a storage record ``data/<key>``."""
  return (b'ctorch._utils\n_rebuild_tensor_v2\n(' + storage_pid(key, numel, storage)
          + i(offset) + ints(size) + ints(stride) + b'\x89N' + b'tR')


def state_dict(items: dict[str, bytes]) -> bytes:
  """A pickled OrderedDict from key -> pickled value bytes."""
  body = b''.join(s(k) + v for k, v in items.items())
  return b'\x80\x02ccollections\nOrderedDict\n)R(' + body + b'u.'


def zip_pth(path: pathlib.Path, data_pkl: bytes, records=(),
            compress: bool = False) -> pathlib.Path:
  method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as zf:
    zf.writestr('archive/data.pkl', data_pkl)
    for name, data in records:
      zf.writestr(f'archive/{name}', data, compress_type=method)
    zf.writestr('archive/version', '3\n')
  return path


def aliased_zip(path: pathlib.Path, data_pkl: bytes, record: bytes,
                names: list[str]) -> pathlib.Path:
  """A zip whose central directory lists ``names`` all at one record."""
  out = io.BytesIO()
  entries = []

  def local(name: str, data: bytes) -> int:
    offset = out.tell()
    raw = name.encode()
    out.write(struct.pack('<4sHHHHHIIIHH', b'PK\x03\x04', 20, 0, 0, 0, 0,
                          zlib.crc32(data), len(data), len(data), len(raw), 0))
    out.write(raw + data)
    return offset

  pkl_at = local('archive/data.pkl', data_pkl)
  entries.append(('archive/data.pkl', pkl_at, data_pkl))
  rec_at = local(f'archive/{names[0]}', record)
  for name in names:
    entries.append((f'archive/{name}', rec_at, record))
  cd_start = out.tell()
  for name, offset, data in entries:
    raw = name.encode()
    out.write(struct.pack('<4sHHHHHHIIIHHHHHII', b'PK\x01\x02', 20, 20, 0, 0,
                          0, 0, zlib.crc32(data), len(data), len(data),
                          len(raw), 0, 0, 0, 0, 0, offset) + raw)
  cd_size = out.tell() - cd_start
  out.write(struct.pack('<4sHHHHIIH', b'PK\x05\x06', 0, 0, len(entries),
                        len(entries), cd_size, cd_start, 0))
  path.write_bytes(out.getvalue())
  return path


# ---------------------------------------------------------------------------
# Payloads, one per family of the issue.


def storage_type_build(d: pathlib.Path) -> pathlib.Path:
  """BUILD on torch.FloatStorage setting its dtype to a 2-element subarray."""
  pkl = (b'\x80\x02ctorch\nFloatStorage\nq\x00' + b'}' + s('dtype')
         + b'cnumpy\ndtype\n' + s('f4') + b'\x85R' + b'sb0'
         + state_dict({'w': b'ctorch._utils\n_rebuild_tensor_v2\n((' + s('storage')
                       + b'h\x00' + s('0') + s('cpu') + i(4) + b'tQ' + i(0)
                       + ints([4]) + ints([1]) + b'\x89NtR'})[2:])
  return zip_pth(d / 'storage_type_build.pth', pkl, [('data/0', bytes(16))])


def subarray_dtype(d: pathlib.Path) -> pathlib.Path:
  """numpy.dtype(('<f4', (2,))) as a tensor dtype (v3)."""
  pkl = state_dict({'w': b'ctorch._utils\n_rebuild_tensor_v3\n(' + storage_pid(
      '0', 16, 'UntypedStorage') + i(0) + ints([2]) + ints([1]) + b'\x89N'
                    + b'cnumpy\ndtype\n((' + s('<f4') + ints([2]) + b'tt\x85R' + b'tR'})
  return zip_pth(d / 'subarray_dtype.pth', pkl, [('data/0', bytes(16))])


def overrun_bytes(d: pathlib.Path) -> pathlib.Path:
  """A float64 view of a 4-byte untyped storage (in bounds as elements)."""
  pkl = state_dict({'w': b'ctorch._utils\n_rebuild_tensor_v3\n(' + storage_pid(
      '0', 4, 'UntypedStorage') + i(0) + ints([1]) + ints([1]) + b'\x89N'
                    + b'ctorch\nfloat64\n' + b'tR'})
  return zip_pth(d / 'overrun_bytes.pth', pkl, [('data/0', bytes(4))])


def deep_tuple_key(d: pathlib.Path, levels: int = 200_000) -> pathlib.Path:
  pkl = b'\x80\x02}' + b')' + b'\x85' * levels + b'K\x01s.'
  return zip_pth(d / f'deep_tuple_{levels}.pth', pkl)


def deep_lists(d: pathlib.Path, levels: int = 20_000) -> pathlib.Path:
  pkl = b'\x80\x02' + b']' * levels + b'a' * (levels - 1) + b'.'
  return zip_pth(d / 'deep_lists.pth', pkl)


def cyclic_list(d: pathlib.Path) -> pathlib.Path:
  return zip_pth(d / 'cyclic.pth', b'\x80\x02]q\x00h\x00a.')


def stride_zero(d: pathlib.Path) -> pathlib.Path:
  pkl = state_dict({'w': tensor('0', 1, [300_000_000], [0])})
  return zip_pth(d / 'stride_zero.pth', pkl, [('data/0', bytes(4))])


def stride_zero_loss(d: pathlib.Path) -> pathlib.Path:
  pkl = state_dict({'loss.criterion.weight': tensor('0', 1, [5_000_000], [0])})
  return zip_pth(d / 'stride_zero_loss.pth', pkl, [('data/0', bytes(4))])


def deflated_record(d: pathlib.Path) -> pathlib.Path:
  pkl = state_dict({'w': tensor('0', 2**28, [2**28], [1])})
  return zip_pth(d / 'deflated.pth', pkl, [('data/0', bytes(2**20))],
                 compress=True)


def bytearray_size(d: pathlib.Path) -> pathlib.Path:
  pkl = b'\x80\x02cbuiltins\nbytearray\n' + i(2**30) + b'\x85R.'
  return zip_pth(d / 'bytearray.pth', pkl)


def aliased_records(d: pathlib.Path) -> pathlib.Path:
  names = [f'data/{k}' for k in range(32)]
  pkl = state_dict({f'w{k}': tensor(str(k), 2**22, [2**22], [1])
                    for k in range(32)})
  return aliased_zip(d / "aliased.pth", pkl, bytes(2**22), names)


def repeated_views(d: pathlib.Path) -> pathlib.Path:
  """300 full views of one 1 MiB storage: 300 MiB from a 1 MiB file."""
  pkl = state_dict({f'w{k}': tensor('0', 2**18, [2**18], [1])
                    for k in range(300)})
  return zip_pth(d / 'repeated_views.pth', pkl, [('data/0', bytes(2**20))])


def ordered_dict_get(d: pathlib.Path) -> pathlib.Path:
  pkl = (b'\x80\x02ccollections\nOrderedDict\n)R}' + s('get')
         + b'cbuiltins\nrange\nsb.')
  return zip_pth(d / 'ordered_dict_get.pth', pkl)


class _Opaque:
  pass


def object_array(d: pathlib.Path) -> pathlib.Path:
  arr = np.array([_Opaque(), _Opaque()], dtype=object)
  return zip_pth(d / 'object_array.pth',
                 pickle.dumps({'state_dict': {'w': arr}}, protocol=2))


def traversal_name(d: pathlib.Path) -> pathlib.Path:
  path = d / 'traversal.pth'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', state_dict({'w': tensor('0', 1, [1], [1])}))
    zf.writestr('archive/../../data/0', bytes(4))
  return path


def duplicate_names(d: pathlib.Path) -> pathlib.Path:
  path = d / 'duplicate.pth'
  with warnings.catch_warnings(), zipfile.ZipFile(path, 'w') as zf:
    warnings.simplefilter('ignore')
    zf.writestr('archive/data.pkl', state_dict({'w': tensor('0', 1, [1], [1])}))
    zf.writestr('archive/data/0', bytes(4))
    zf.writestr('archive/data/0', bytes(4))
  return path


def key_traversal(d: pathlib.Path) -> pathlib.Path:
  pkl = state_dict({'w': tensor('../../etc/passwd', 1, [1], [1])})
  return zip_pth(d / 'key_traversal.pth', pkl, [('data/0', bytes(4))])


def many_objects(d: pathlib.Path) -> pathlib.Path:
  """300,000 empty lists from a 300 KB pickle (over a 16 MiB budget)."""
  n = 300_000
  pkl = b'\x80\x02](' + b']' * n + b'e.'
  return zip_pth(d / 'many_objects.pth', pkl)


def huge_numpy_array(d: pathlib.Path) -> pathlib.Path:
  """A numpy array pickle claiming 2**40 elements with 8 bytes of data."""
  pkl = (b'\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n'
         + ints([0]) + b'C\x01b\x87R' + b'(' + i(1) + ints([2**40])
         + b'cnumpy\ndtype\n' + s('f8') + b'\x89\x88\x87R'
         + b'(' + i(3) + s('<') + b'NNN' + i(-1) + i(-1) + i(0) + b'tb'
         + b'\x89' + b'C\x08' + bytes(8) + b'tb.')
  return zip_pth(d / 'huge_numpy_array.pth', pkl)


def legacy_stride_zero(d: pathlib.Path) -> pathlib.Path:
  """The stride-0 blow-up in the legacy (pre-1.6) format."""
  sys_info = {'protocol_version': 1001, 'little_endian': True,
              'type_sizes': {'short': 2, 'int': 4, 'long': 8}}
  head = b''.join(pickle.dumps(v, protocol=2)
                  for v in (0x1950A86A20F9469CFC6C, 1001, sys_info))
  pid = (b'(' + s('storage') + b'ctorch\nFloatStorage\n' + s('0') + s('cpu')
         + i(1) + b'NtQ')
  main = state_dict({'w': b'ctorch._utils\n_rebuild_tensor_v2\n(' + pid + i(0)
                     + ints([300_000_000]) + ints([0]) + b'\x89NtR'})
  path = d / 'legacy_stride_zero.pth'
  path.write_bytes(head + main + pickle.dumps(['0'], protocol=2)
                   + struct.pack('<q', 1) + bytes(4))
  return path


REFUSED = {
    'storage_type_build': (storage_type_build, 'refusing to set the state'),
    'subarray_dtype': (subarray_dtype, 'refusing numpy dtype'),
    'overrun_bytes': (overrun_bytes, 'overruns its storage'),
    'deep_tuple_200k': (deep_tuple_key, 'nested more than'),
    'deep_tuple_10k': (lambda d: deep_tuple_key(d, 10_000), 'nested more than'),
    'deep_lists': (deep_lists, 'nested more than'),
    'cyclic_list': (cyclic_list, 'cyclic'),
    'stride_zero': (stride_zero, 'would materialise'),
    'stride_zero_loss': (stride_zero_loss, 'would materialise'),
    'legacy_stride_zero': (legacy_stride_zero, 'would materialise'),
    'deflated_record': (deflated_record, 'compressed'),
    'bytearray_size': (bytearray_size, 'bytearray'),
    'aliased_records': (aliased_records, 'overlap'),
    'repeated_views': (repeated_views, 'bytes of memory'),
    'ordered_dict_get': (ordered_dict_get, "attribute 'get'"),
    'object_array': (object_array, 'refusing numpy dtype'),
    'traversal_name': (traversal_name, 'outside the archive'),
    'duplicate_names': (duplicate_names, 'two records'),
    'key_traversal': (key_traversal, 'bad storage key'),
    'many_objects': (many_objects, 'objects'),
    'huge_numpy_array': (huge_numpy_array, 'numpy array'),
}
