"""Tests for ``hrseg_jax.convert.pth``: .pth files without PyTorch."""
from __future__ import annotations

import collections
import functools
import io
import json
import os
import pathlib
import pickle
import struct
import subprocess
import tarfile
import textwrap
import zipfile

import ml_dtypes
import numpy as np
import pytest

from hrseg_jax.convert import pth, pth_write

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'pth'
BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
# From the golden README.md ("3,939,579 parameters"); the .json lacks it.
HRNET_W18_SMALL_V2_PARAMS = 3_939_579


@functools.lru_cache(maxsize=None)
def _load_golden(path: pathlib.Path):
  return pth.load_pth(path)


def _param_count(sd):
  return sum(v.size for k, v in sd.items() if not k.endswith(BUFFERS))


def _buffer_count(sd):
  return sum(v.size for k, v in sd.items() if k.endswith(BUFFERS))


def _native(dtype):
  return dtype if dtype.isnative else dtype.newbyteorder('=')


def _assert_bits_equal(got, want):
  want = np.asarray(want)
  assert got.dtype == _native(want.dtype)
  assert got.shape == want.shape
  assert got.tobytes() == want.astype(got.dtype).tobytes()


# ---------------------------------------------------------------------------
# Golden checkpoints written by real PyTorch 2.13.


def test_every_golden_checkpoint_loads(golden):
  files = sorted(golden.glob('*.pth'))
  assert files, f'no .pth files in {golden}'
  for path in files:
    assert path.with_suffix('.json').exists(), path
    sd = pth.state_dict_from_checkpoint(_load_golden(path))
    assert sd, path
    for key, value in sd.items():
      assert isinstance(value, np.ndarray)
      assert value.flags.c_contiguous and value.flags.writeable
      if key.endswith('num_batches_tracked'):
        assert value.dtype == np.int64 and value.shape == (), key
      else:
        assert value.dtype == np.float32, key
        assert np.isfinite(value).all(), key


def test_hanet_goldens_match_their_json(golden):
  jsons = sorted(golden.glob('hanet_*.json'))
  assert len(jsons) == 4
  for meta_path in jsons:
    meta = json.loads(meta_path.read_text())
    obj = _load_golden(meta_path.with_suffix('.pth'))
    # {'state_dict': {'module.hanetN.<key>': tensor}, 'epoch': 0,
    #  'mean_iu': 0.0}
    assert set(obj) == {'state_dict', 'epoch', 'mean_iu'}
    assert obj['epoch'] == 0 and obj['mean_iu'] == 0.0
    sd = pth.state_dict_from_checkpoint(obj)
    prefix = f'module.{meta["deepv3_attribute"]}.'
    want = {prefix + k: tuple(v) for k, v in meta['state_dict_shapes'].items()}
    assert {k: v.shape for k, v in sd.items()} == want
    assert _param_count(sd) == meta['num_params']
    # The frozen position table is a parameter, but not a trainable one.
    (table,) = [v for k, v in sd.items() if k.endswith('pos_layer.weight')]
    assert meta['num_params'] - table.size == meta['num_trainable_params']


def test_litehrnet_goldens_match_their_json(golden):
  paths = sorted(golden.glob('*.json'))
  metas = [(p, json.loads(p.read_text())) for p in paths]
  metas = [(p, m) for p, m in metas if m.get('model') == 'LiteHRNet backbone']
  assert len(metas) == 3
  for meta_path, meta in metas:
    obj = _load_golden(meta_path.with_suffix('.pth'))
    # mmpose layout: {'state_dict': {'backbone.<key>': tensor}, 'meta': {}}
    assert set(obj) == {'state_dict', 'meta'} and obj['meta'] == {}
    sd = pth.state_dict_from_checkpoint(obj)
    assert len(sd) == meta['num_state_dict_keys']
    assert all(k.startswith('backbone.') for k in sd)
    assert _param_count(sd) == meta['num_params']
    assert _buffer_count(sd) == meta['num_buffer_elements']
    stem = meta['extra']['stem']['stem_channels']
    assert sd['backbone.stem.conv1.conv.weight'].shape == (stem, 3, 3, 3)
    tracked = [v for k, v in sd.items() if k.endswith('num_batches_tracked')]
    assert tracked and all(int(v) == 1000 for v in tracked)


@pytest.mark.parametrize('name, first_conv', [
    ('hrnet_w18_small_v2_cityscapes', 'model.conv1.weight'),
    ('lite_hrnet_30_hanet_cityscapes', 'model.stem.conv1.conv.weight'),
])
def test_fullmodel_goldens(golden, name, first_conv):
  meta = json.loads((golden / f'{name}.json').read_text())
  obj = _load_golden(golden / f'{name}.pth')
  # FullModel layout: 'model.'-prefixed keys plus the loss's class weights.
  assert type(obj) is dict  # pylint: disable=unidiomatic-typecheck
  sd = pth.state_dict_from_checkpoint(obj)
  loss_weight = sd.pop('loss.criterion.weight')
  assert loss_weight.shape == (meta['num_classes'],)
  assert all(k.startswith('model.') for k in sd)
  want = meta.get('params', HRNET_W18_SMALL_V2_PARAMS)
  assert _param_count(sd) == want
  assert sd[first_conv].shape[1:] == (3, 3, 3)  # OIHW, RGB input.


def test_hrnet_golden_shapes_match_npz(golden):
  name = 'hrnet_w18_small_v2_cityscapes'
  sd = pth.state_dict_from_checkpoint(_load_golden(golden / f'{name}.pth'))
  with np.load(golden / f'{name}.npz') as ref:
    keys = [k for k in ref.files if k.startswith(('grad/', 'updated/'))]
    assert keys
    for key in keys:
      assert sd['model.' + key.split('/', 1)[1]].shape == ref[key].shape, key
  assert sd['model.conv1.weight'].shape == (64, 3, 3, 3)
  assert sd['model.last_layer.3.weight'].shape == (19, 270, 1, 1)


# ---------------------------------------------------------------------------
# Fixtures written by real PyTorch (see fixtures/pth/README.md).


def _legacy_fixture_expected():
  a = np.arange
  return {
      'conv.weight': (a(54, dtype=np.float32) / 8 - 3).reshape(2, 3, 3, 3),
      'bn.weight': a(2, dtype=np.float32) + 1,
      'bn.bias': a(2, dtype=np.float32) / 4 - 0.5,
      'bn.running_mean': a(2, dtype=np.float32) / 2 + 0.25,
      'bn.running_var': a(2, dtype=np.float32) + 1.5,
      'bn.num_batches_tracked': np.array(7, np.int64),
      'fc.weight_t': a(12, dtype=np.float32).reshape(3, 4).T,
      'shared.full': a(10, dtype=np.float64),
      'shared.view': a(10, dtype=np.float64)[2:8:2],
      'half': a(6, dtype=np.float16).reshape(2, 3) / np.float16(4),
      'mask': a(5) % 2 == 0,
  }


def _assert_state_dict(got, want):
  assert list(got) == list(want)
  for key, value in want.items():
    _assert_bits_equal(got[key], value)


def test_real_torch_legacy_fixture():
  obj = pth.load_pth(FIXTURES / 'legacy_state_dict.pth')
  assert isinstance(obj, collections.OrderedDict)
  _assert_state_dict(obj, _legacy_fixture_expected())


def test_real_torch_legacy_fixture_as_saved_from_gpu(tmp_path):
  # 2019 checkpoints were saved from CUDA: torch.cuda.FloatStorage, 'cuda:0'.
  data = (FIXTURES / 'legacy_state_dict.pth').read_bytes()
  cpu = b'X' + struct.pack('<I', 3) + b'cpu'
  cuda = b'X' + struct.pack('<I', 6) + b'cuda:0'
  assert cpu in data
  data = data.replace(b'ctorch\n', b'ctorch.cuda\n').replace(cpu, cuda)
  path = tmp_path / 'gpu.pth'
  path.write_bytes(data)
  _assert_state_dict(pth.load_pth(path), _legacy_fixture_expected())


def test_real_torch_zip_fixture():
  obj = pth.load_pth(FIXTURES / 'zip_checkpoint.pth')
  assert set(obj) == {'state_dict', 'epoch', 'best_mIoU', 'meta', 'extras'}
  assert obj['epoch'] == 3 and obj['best_mIoU'] == 0.5
  assert obj['meta'] == {'size': (2, 3), 'device': 'cpu', 'names': ['a', 'b'],
                         'pair': (1, None)}
  a = np.arange
  _assert_state_dict(pth.state_dict_from_checkpoint(obj), {
      '0.weight': a(54, dtype=np.float32).reshape(2, 3, 3, 3) / 16,
      '1.weight': a(2, dtype=np.float32) + 1,
      '1.bias': a(2, dtype=np.float32) - 1,
      '1.running_mean': a(2, dtype=np.float32) / 2,
      '1.running_var': a(2, dtype=np.float32) + 2,
      '1.num_batches_tracked': np.array(1000, np.int64),
  })
  grid = a(24, dtype=np.int32).reshape(2, 3, 4)
  _assert_state_dict(obj['extras'], {
      'bf16': (a(6).reshape(2, 3) / 8).astype(ml_dtypes.bfloat16),
      'uint16': a(5, dtype=np.uint16) * 1000,
      'permuted': grid.transpose(2, 0, 1),
      'row_view': grid[1, 1:, ::2],
      'param': a(3, dtype=np.float64),
  })


def _pickled_str(text):
  data = text.encode()
  return b'X' + struct.pack('<I', len(data)) + data


def _legacy_file(path, main_body, storages):
  """A legacy .pth from a hand-written main pickle and (key, array) pairs."""
  sys_info = {'protocol_version': 1001, 'little_endian': True,
              'type_sizes': {'short': 2, 'int': 4, 'long': 8}}
  parts = [pickle.dumps(v, protocol=2)
           for v in (0x1950A86A20F9469CFC6C, 1001, sys_info)]
  parts.append(b'\x80\x02' + main_body + b'.')
  parts.append(pickle.dumps([key for key, _ in storages], protocol=2))
  for _, arr in storages:
    parts.append(struct.pack('<q', arr.size) + arr.tobytes())
  path.write_bytes(b''.join(parts))


def test_legacy_storage_views_and_old_rebuild_function(tmp_path):
  # Pre-1.0 checkpoints: views of a root storage carried in view_metadata,
  # and tensors rebuilt by _rebuild_tensor(storage, offset, size, stride).
  def pid(view):
    return (b'((' + _pickled_str('storage') + b'ctorch.cuda\nFloatStorage\n'
            + _pickled_str('140') + _pickled_str('cuda:0') + b'K\x06' + view
            + b'tQ')

  view = b'(' + _pickled_str('141') + b'K\x02K\x03t'
  body = (b'}(' + _pickled_str('v2') + b'ctorch._utils\n_rebuild_tensor_v2\n'
          + pid(view) + b'K\x01K\x02\x85K\x01\x85\x89NtR'
          + _pickled_str('v1') + b'ctorch._utils\n_rebuild_tensor\n'
          + pid(b'N') + b'K\x00K\x02K\x02\x86K\x01K\x02\x86tRu')
  path = tmp_path / 'old.pth'
  _legacy_file(path, body, [('140', np.arange(6, dtype=np.float32))])
  got = pth.load_pth(path)
  np.testing.assert_array_equal(got['v2'], [3.0, 4.0])
  np.testing.assert_array_equal(got['v1'], [[0.0, 2.0], [1.0, 3.0]])


# ---------------------------------------------------------------------------
# save_pth / save_pth_legacy round trips.


def _tricky_arrays(legacy=False):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 4, 5)).astype(np.float32)
  nan_payload = np.array([0x7FC00001, 0xFF800000, 0x00000001],
                         np.uint32).view(np.float32)
  arrays = {
      'conv.weight': x,
      'transposed': x.transpose(2, 0, 1),
      'strided': x[:, ::2, 1:],
      'reversed': x[::-1, :, ::-2],
      'float32_bits': nan_payload,
      'float16': rng.standard_normal(7).astype(np.float16),
      'bfloat16': rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
      'float64': np.array([np.nan, np.inf, -0.0, 5e-324]),
      'num_batches_tracked': np.array(2**40 + 3, np.int64),
      'int32': np.arange(-5, 5, dtype=np.int32),
      'int16': np.arange(-5, 5, dtype=np.int16),
      'int8': np.arange(-5, 5, dtype=np.int8),
      'uint8': np.arange(250, 256, dtype=np.uint8),
      'bool': np.array([[True, False], [False, True]]).T,
      'complex64': np.array([1 + 2j, 3 - 4j], np.complex64),
      'empty': np.zeros((0, 3), np.float32),
      'big_endian': np.arange(4, dtype='>f4'),
      'numpy_scalar': np.float32(2.5),
  }
  if not legacy:
    arrays['uint16'] = np.array([0, 65535], np.uint16)
    arrays['uint64'] = np.array([0, 2**64 - 1], np.uint64)
    arrays['float8'] = np.array([1, 2, 0.5], ml_dtypes.float8_e4m3fn)
  return arrays


@pytest.mark.parametrize('legacy', [False, True])
def test_round_trip_is_bit_identical(tmp_path, legacy):
  arrays = _tricky_arrays(legacy)
  path = tmp_path / 'sd.pth'
  (pth_write.save_pth_legacy if legacy else pth_write.save_pth)(arrays, path)
  got = pth.load_pth(path)
  assert isinstance(got, collections.OrderedDict)
  _assert_state_dict(got, arrays)
  assert all(v.flags.c_contiguous and v.flags.writeable for v in got.values())


@pytest.mark.parametrize('legacy', [False, True])
def test_round_trip_of_a_training_checkpoint(tmp_path, legacy):
  sd = {'backbone.w': np.arange(6, dtype=np.float32).reshape(2, 3)}
  ckpt = {
      'state_dict': sd, 'epoch': 3, 'best_mIoU': 0.75,
      'meta': {'text': 'naïve ✓', 'none': None, 'flags': [True, False],
               'ints': (0, 255, 256, 65536, -1, -2**31, 2**31, 2**70, -2**70),
               'nested': {'empty_list': [], 'empty_tuple': (), 'empty': {}}},
  }
  path = tmp_path / 'ckpt.pth'
  (pth_write.save_pth_legacy if legacy else pth_write.save_pth)(ckpt, path)
  got = pth.load_pth(path)
  assert {k: v for k, v in got.items() if k != 'state_dict'} == {
      k: v for k, v in ckpt.items() if k != 'state_dict'}
  _assert_state_dict(pth.state_dict_from_checkpoint(got), sd)


def test_saved_zip_layout(tmp_path):
  path = tmp_path / 'my_model.pth'
  pth_write.save_pth({'a': np.ones(3, np.float32), 'b': np.zeros(1, np.int64)}, path)
  with open(path, 'rb') as f, zipfile.ZipFile(f) as zf:
    assert zf.namelist() == ['my_model/data.pkl', 'my_model/byteorder',
                             'my_model/data/0', 'my_model/data/1',
                             'my_model/version']
    assert zf.read('my_model/byteorder') == b'little'
    for info in zf.infolist():
      assert info.compress_type == zipfile.ZIP_STORED
      f.seek(info.header_offset)
      name_len, extra_len = struct.unpack('<26xHH', f.read(30))
      assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0


def test_save_overwrites_and_leaves_no_temporary_files(tmp_path):
  path = tmp_path / 'x.pth'
  pth_write.save_pth({'a': np.zeros(2)}, path)
  pth_write.save_pth({'b': np.ones(3)}, path)
  assert list(pth.load_pth(path)) == ['b']
  assert os.listdir(tmp_path) == ['x.pth']


@pytest.mark.parametrize('bad', [
    {'a': object()}, {'a': {1, 2}}, {'a': np.array(['s'])},
    {'a': np.array([None], dtype=object)}, {'a': b'bytes'},
])
def test_save_refuses_unsupported_values_and_writes_nothing(tmp_path, bad):
  path = tmp_path / 'x.pth'
  with pytest.raises(TypeError):
    pth_write.save_pth(bad, path)
  with pytest.raises(TypeError):
    pth_write.save_pth_legacy(bad, path)
  assert not os.listdir(tmp_path)


def test_legacy_save_refuses_dtypes_without_a_storage_class(tmp_path):
  with pytest.raises(TypeError, match='legacy'):
    pth_write.save_pth_legacy({'a': np.zeros(2, np.uint16)}, tmp_path / 'x.pth')
  assert not os.listdir(tmp_path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / 'x.pth'
  pth_write.save_pth({'old': np.zeros(2)}, path)
  old = path.read_bytes()

  def disk_full(arr):
    raise OSError('disk full')

  monkeypatch.setattr(pth_write, '_array_bytes', disk_full)
  with pytest.raises(OSError, match='disk full'):
    pth_write.save_pth({'new': np.ones(2)}, path)
  with pytest.raises(OSError, match='disk full'):
    pth_write.save_pth({'new': np.ones(2)}, tmp_path / 'y.pth')
  assert path.read_bytes() == old
  assert os.listdir(tmp_path) == ['x.pth']


# ---------------------------------------------------------------------------
# state_dict_from_checkpoint.


def test_state_dict_from_checkpoint_layouts():
  sd = collections.OrderedDict(w=np.zeros(2), b=np.ones(1))
  for ckpt in (sd, {'state_dict': sd, 'meta': {'x': 1}},
               {'model': sd, 'epoch': 1}, {'epoch': 3, 'state_dict': sd,
                                           'optimizer': {'state': {}}}):
    got = pth.state_dict_from_checkpoint(ckpt)
    assert isinstance(got, dict) and list(got) == ['w', 'b']
    assert not isinstance(got, collections.OrderedDict)
    assert got['w'] is sd['w']


@pytest.mark.parametrize('bad', [
    [np.zeros(1)], {'w': np.zeros(1), 'epoch': 3}, {'state_dict': [1]},
    {1: np.zeros(1)},
])
def test_state_dict_from_checkpoint_rejects_other_layouts(bad):
  with pytest.raises(ValueError):
    pth.state_dict_from_checkpoint(bad)


# ---------------------------------------------------------------------------
# Untrusted pickles.

_CALLS = []


def _record_call(*args):
  _CALLS.append(args)


class _RunsCode:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


class _CallsBack:

  def __reduce__(self):
    return (_record_call, ('executed',))


class _ConfigDict(dict):
  pass


def _zip_with_pickle(path, data_pkl, extra=()):
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', data_pkl)
    zf.writestr('archive/version', '3\n')
    for name, data in extra:
      zf.writestr(name, data)


def test_untrusted_globals_are_not_executed(tmp_path):
  marker = tmp_path / 'pwned'
  cfg = _ConfigDict(lr=0.01)
  cfg.frozen = True
  meta = {'exploit': _RunsCode(marker), 'callback': _CallsBack(), 'cfg': cfg,
          'best': np.float64(0.5), 'arr': np.arange(3), 'dtype': np.dtype('f4'),
          'set': {1, 2}, 'raw': b'\x00\xff', 'slice': slice(1, 5, 2)}
  path = tmp_path / 'ckpt.pth'
  _zip_with_pickle(path, pickle.dumps({'meta': meta}, protocol=2))
  got = pth.load_pth(path)['meta']
  assert not marker.exists() and not _CALLS
  exploit = got['exploit']
  assert isinstance(exploit, pth.Placeholder)
  assert (exploit.module, exploit.qualname) == (os.system.__module__, 'system')
  assert isinstance(got['callback'], pth.Placeholder)
  assert isinstance(got['cfg'], pth.Placeholder)
  assert got['cfg'].dict_items == {'lr': 0.01}
  assert got['cfg'].state == {'frozen': True}
  assert isinstance(got['best'], np.float64) and got['best'] == 0.5
  np.testing.assert_array_equal(got['arr'], np.arange(3))
  assert got['dtype'] == np.float32
  assert got['set'] == {1, 2} and got['raw'] == b'\x00\xff'
  assert got['slice'] == slice(1, 5, 2)


# ---------------------------------------------------------------------------
# Damaged and foreign files.


def _assert_pth_error(path, match=None):
  with pytest.raises(pth.PthError, match=match) as info:
    pth.load_pth(path)
  message = str(info.value)
  assert str(path) in message and '\n' not in message
  assert isinstance(info.value, ValueError)
  return message


def _rezip(src, dst, transform):
  """Copies a zip, mapping each (name, data) through ``transform``."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
    for name in zin.namelist():
      data = transform(name, zin.read(name))
      if data is not None:
        zout.writestr(name, data)


@pytest.fixture(name='zip_file')
def fixture_zip_file(tmp_path):
  path = tmp_path / 'good.pth'
  pth_write.save_pth({'w': np.arange(40, dtype=np.float32), 'n': np.array(3)}, path)
  return path


@pytest.fixture(name='legacy_file')
def fixture_legacy_file(tmp_path):
  path = tmp_path / 'good_legacy.pth'
  pth_write.save_pth_legacy({'w': np.arange(40, dtype=np.float32),
                             'n': np.array(3)}, path)
  return path


def _truncate(src, tmp_path, cut):
  data = src.read_bytes()
  cut = cut if cut >= 0 else len(data) + cut
  path = tmp_path / f'cut_{cut}.pth'
  path.write_bytes(data[:cut])
  return path


@pytest.mark.parametrize('cut', [1, 3, 30, 100, 300, -200, -50, -22, -1])
def test_truncated_zip(zip_file, tmp_path, cut):
  _assert_pth_error(_truncate(zip_file, tmp_path, cut))


@pytest.mark.parametrize('cut', [1, 2, 12, 40, 200, 400, -170, -161, -9, -1])
def test_truncated_legacy(legacy_file, tmp_path, cut):
  _assert_pth_error(_truncate(legacy_file, tmp_path, cut))


def test_truncated_real_torch_files(tmp_path):
  for name in ('legacy_state_dict.pth', 'zip_checkpoint.pth'):
    size = (FIXTURES / name).stat().st_size
    for cut in range(1, size, 97):
      _assert_pth_error(_truncate(FIXTURES / name, tmp_path, cut))


def test_foreign_files(tmp_path):
  cases = {
      'empty.pth': b'',
      'random.pth': np.random.default_rng(0).bytes(4096),
      'text.pth': b'this is not a checkpoint\n' * 20,
      'plain_pickle.pth': pickle.dumps({'a': 1}, protocol=2),
      'npz.pth': _npz_bytes(),
  }
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    _assert_pth_error(tmp_path / name)
  assert 'empty' in _assert_pth_error(tmp_path / 'empty.pth')
  assert 'magic' in _assert_pth_error(tmp_path / 'plain_pickle.pth')


def _npz_bytes():
  buf = io.BytesIO()
  np.savez(buf, a=np.zeros(3))
  return buf.getvalue()


def test_zip_without_data_pkl(tmp_path):
  path = tmp_path / 'nodata.pth'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/readme.txt', 'hello')
  _assert_pth_error(path, 'data.pkl')
  with zipfile.ZipFile(path, 'w'):
    pass  # An empty archive.
  _assert_pth_error(path, 'data.pkl')


def test_legacy_tar_format_is_refused_clearly(tmp_path):
  path = tmp_path / 'old.pth'
  with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as tar:
    info = tarfile.TarInfo('storages')
    info.size = 4
    tar.addfile(info, io.BytesIO(b'\0\0\0\0'))
  _assert_pth_error(path, 'tar')


def test_missing_storage_record(zip_file, tmp_path):
  path = tmp_path / 'missing.pth'
  _rezip(zip_file, path, lambda n, d: None if n.endswith('/data/0') else d)
  _assert_pth_error(path, 'missing storage record')


def test_missing_legacy_storage(legacy_file, tmp_path):
  data = legacy_file.read_bytes()
  keys = pickle.dumps(['0', '1'], protocol=2)
  assert data.count(keys) == 1
  head, tail = data.split(keys)
  path = tmp_path / 'missing.pth'
  path.write_bytes(head + pickle.dumps(['0'], protocol=2) + tail[:8 + 160])
  _assert_pth_error(path, 'missing storage record')


def test_short_storage_record(zip_file, tmp_path):
  path = tmp_path / 'short.pth'
  _rezip(zip_file, path, lambda n, d: d[:-4] if n.endswith('/data/0') else d)
  _assert_pth_error(path, 'expected 160')


def test_corrupt_storage_record(zip_file, tmp_path):
  data = bytearray(zip_file.read_bytes())
  with zipfile.ZipFile(zip_file) as zf:
    offset = zf.getinfo('good/data/0').header_offset
  name_len, extra_len = struct.unpack_from('<26xHH', data, offset)
  start = offset + 30 + name_len + extra_len
  data[start + 5] ^= 0xFF
  path = tmp_path / 'flipped.pth'
  path.write_bytes(bytes(data))
  _assert_pth_error(path, 'CRC')


@pytest.mark.parametrize('storage', [b'QInt8Storage', b'ComplexHalfStorage'])
def test_unsupported_storage_type(zip_file, tmp_path, storage):
  path = tmp_path / 'quantized.pth'
  _rezip(zip_file, path,
         lambda n, d: d.replace(b'FloatStorage', storage) if n.endswith('.pkl')
         else d)
  _assert_pth_error(path, f'unsupported storage type torch.{storage.decode()}')


def test_tensor_overrunning_its_storage(zip_file, tmp_path):
  path = tmp_path / 'overrun.pth'
  # The first tensor's size tuple is (40,) -- BININT1 40, TUPLE1.
  _rezip(zip_file, path,
         lambda n, d: d.replace(b'K(\x85', b'K)\x85', 1) if n.endswith('.pkl')
         else d)
  _assert_pth_error(path, 'overruns')


# ---------------------------------------------------------------------------
# Opt-in: round trips through real PyTorch in another interpreter.

TORCH_PYTHON = os.environ.get('HRSEG_TORCH_PYTHON')

_TORCH_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import torch
    ours, ref, out_zip, out_legacy, out_ref = sys.argv[1:]

    def raw(t):
      t = t.contiguous()
      if t.dtype in (torch.bfloat16, torch.float8_e4m3fn):
        t = t.view(torch.uint8)
      return t.numpy()

    want = np.load(ref)
    obj = torch.load(ours)  # weights_only=True is the default.
    assert type(obj).__name__ == 'OrderedDict', type(obj)
    for mmap in (False, True):
      sd = torch.load(ours, mmap=mmap)['state_dict']
      assert set(sd) == set(want.files), (set(sd), want.files)
      for key in want.files:
        assert type(sd[key]) is torch.Tensor
        got = raw(sd[key])
        assert got.shape == want[key].shape and got.tobytes() == \\
            want[key].tobytes(), key

    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    src = {'perm': base.permute(2, 0, 1), 'slice': base[1:, ::2, 3],
           'expanded': torch.arange(3.).expand(4, 3), 'scalar': torch.tensor(5),
           'element': base[2, 3], 'bf16': base.to(torch.bfloat16)[0],
           'empty': base[:, :0], 'param': torch.nn.Parameter(base[0, 0])}
    torch.save(src, out_zip)
    torch.save(src, out_legacy, _use_new_zipfile_serialization=False)
    np.savez(out_ref, **{k: raw(v.detach()) for k, v in src.items()})
''')


@pytest.mark.skipif(not TORCH_PYTHON,
                    reason='set HRSEG_TORCH_PYTHON to a python with torch')
def test_round_trip_through_real_torch(tmp_path):
  arrays = _tricky_arrays()
  ours = tmp_path / 'ours.pth'
  pth_write.save_pth({'state_dict': arrays, 'epoch': 1}, ours)
  ref = {k: np.asarray(v).astype(_native(np.asarray(v).dtype))
         for k, v in arrays.items()}
  ref = {k: v.view(np.uint8) if v.dtype.type in (ml_dtypes.bfloat16,
                                                  ml_dtypes.float8_e4m3fn)
         else v for k, v in ref.items()}
  np.savez(tmp_path / 'ref.npz', **ref)
  paths = [tmp_path / n for n in ('t.pth', 'tl.pth', 'tref.npz')]
  subprocess.run([TORCH_PYTHON, '-c', _TORCH_SCRIPT, str(ours),
                  str(tmp_path / 'ref.npz'), *map(str, paths)],
                 check=True, timeout=300)
  with np.load(paths[2]) as want:
    for path in paths[:2]:
      got = pth.load_pth(path)
      assert set(got) == set(want.files)
      for key in want.files:
        value = got[key]
        if value.dtype == ml_dtypes.bfloat16:
          value = value.view(np.uint8)
        _assert_bits_equal(value, want[key])
