"""Hostile and unusual ``.pth`` files: the guarantees of ``convert/pth.py``.

Every payload is built by hand (``tests/pth_payloads.py``), without PyTorch.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import pickle
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import pth_payloads as P
from hrseg_jax.convert import pth, pth_write, safe_pickle

REPO = pathlib.Path(__file__).resolve().parents[1]


def _refused(path, phrase):
  with pytest.raises(pth.PthError) as info:
    pth.load_pth(path)
  message = str(info.value)
  assert message.startswith(str(path)) and '\n' not in message
  assert phrase in message, message
  assert len(message) < 500
  return message


@pytest.mark.parametrize('name', sorted(P.REFUSED))
def test_hostile_payload_is_refused_in_one_line(name, tmp_path, monkeypatch):
  # A smaller budget than the default keeps the object-count case fast.
  monkeypatch.setattr(pth, '_BUDGET_SLACK', 16 << 20)
  build, phrase = P.REFUSED[name]
  _refused(build(tmp_path), phrase)


def test_refused_files_stay_far_below_600_mb(tmp_path):
  # Full default budget, in a fresh interpreter; VmHWM is its peak RSS.
  names = ['storage_type_build', 'subarray_dtype', 'stride_zero',
           'legacy_stride_zero', 'deflated_record', 'bytearray_size',
           'aliased_records', 'repeated_views', 'huge_numpy_array',
           'deep_tuple_200k', 'object_array']
  paths = [str(P.REFUSED[n][0](tmp_path)) for n in names]
  script = (
      'import sys\n'
      'import pth_fuzz\n'
      'from hrseg_jax.convert import pth\n'
      'for p in sys.argv[1:]:\n'
      '  try:\n'
      '    pth.load_pth(p)\n'
      '    print("LOADED", p)\n'
      '  except pth.PthError as e:\n'
      '    print("refused", p)\n'
      'print(pth_fuzz.peak_rss_mb())\n')
  out = subprocess.run([sys.executable, '-c', script, *paths], cwd=REPO / 'tests',
                       env={**os.environ, 'PYTHONPATH': str(REPO)},
                       capture_output=True, text=True, timeout=120, check=True)
  lines = out.stdout.split('\n')
  assert sum(l.startswith('refused') for l in lines) == len(paths), out.stdout
  peak_mb = int(lines[-2])
  assert peak_mb < 600, peak_mb


def test_the_budget_scales_with_the_file_size(tmp_path):
  # 300 views of one 1 MiB storage (300 MiB) exceed 2 x 1 MiB + 96 MiB ...
  _refused(P.repeated_views(tmp_path), 'bytes of memory')
  # ... 20 views (20 MiB) do not.
  pkl = P.state_dict({f'w{k}': P.tensor('0', 2**18, [2**18], [1])
                      for k in range(20)})
  path = P.zip_pth(tmp_path / 'views.pth', pkl, [('data/0', bytes(2**20))])
  got = pth.load_pth(path)
  assert len(got) == 20 and got['w3'].shape == (2**18,)


def test_small_legitimate_stride_zero_and_overlapping_views_load(tmp_path):
  data = np.arange(3, dtype=np.float32).tobytes()
  pkl = P.state_dict({'expanded': P.tensor('0', 3, [4, 3], [0, 1]),
                      'overlap': P.tensor('0', 3, [2, 2], [1, 1]),
                      'scalar': P.tensor('0', 3, [], [], offset=2)})
  got = pth.load_pth(P.zip_pth(tmp_path / 'views.pth', pkl, [('data/0', data)]))
  np.testing.assert_array_equal(got['expanded'], np.tile([0, 1, 2], (4, 1)))
  np.testing.assert_array_equal(got['overlap'], [[0, 1], [1, 2]])
  assert got['scalar'].shape == () and got['scalar'] == 2


def test_views_are_checked_in_bytes_not_elements(tmp_path):
  # 12 bytes: three float32 fit, two float64 do not (the last one overruns).
  for size, ok in (([1], True), ([2], False)):
    pkl = P.state_dict({'w': b'ctorch._utils\n_rebuild_tensor_v3\n(' + P.storage_pid(
        '0', 12, 'UntypedStorage') + P.i(0) + P.ints(size) + P.ints([1])
                        + b'\x89Nctorch\nfloat64\ntR'})
    path = P.zip_pth(tmp_path / f'v{size[0]}.pth', pkl, [('data/0', bytes(12))])
    if ok:
      assert pth.load_pth(path)['w'].dtype == np.float64
    else:
      _refused(path, 'overruns its storage')


def test_ordered_dict_metadata_is_kept_but_methods_cannot_be_replaced(tmp_path):
  pkl = (b'\x80\x02ccollections\nOrderedDict\n)R}' + P.s('_metadata')
         + b'}sb.')
  got = pth.load_pth(P.zip_pth(tmp_path / 'meta.pth', pkl))
  assert isinstance(got, collections.OrderedDict) and got._metadata == {}  # pylint: disable=protected-access
  for attr in ('get', 'items', '__class__', 'keys'):
    pkl = (b'\x80\x02ccollections\nOrderedDict\n)R}' + P.s(attr)
           + b'cbuiltins\nrange\nsb.')
    _refused(P.zip_pth(tmp_path / 'bad.pth', pkl), 'refusing to set attribute')


@pytest.mark.parametrize('target', [
    b'ctorch\nFloatStorage\n', b'ctorch\nfloat32\n', b'ctorch._utils\n_rebuild_tensor_v2\n',
    b'cnumpy\nndarray\n', b'cbuiltins\nrange\n', b'}',
])
def test_build_on_loader_objects_is_refused(tmp_path, target):
  pkl = b'\x80\x02' + target + b'}' + P.s('dtype') + P.s('x') + b'sb.'
  _refused(P.zip_pth(tmp_path / 'build.pth', pkl), 'refusing to set the state')


def test_nesting_up_to_the_limit_loads(tmp_path):
  depth = safe_pickle.MAX_DEPTH - 2
  pkl = b'\x80\x02}' + b')' + b'\x85' * (depth - 1) + b'K\x01s.'
  got = pth.load_pth(P.zip_pth(tmp_path / 'ok.pth', pkl))
  key = next(iter(got))
  for _ in range(depth - 1):
    key = key[0]
  assert key == ()
  lists = b'\x80\x02' + b']' * depth + b'a' * (depth - 1) + b'.'
  assert isinstance(pth.load_pth(P.zip_pth(tmp_path / 'l.pth', lists)), list)


def test_shared_subtrees_count_their_full_depth(tmp_path):
  # A 60-deep list memoised, then referenced 60 levels down: 120 levels.
  inner = b']' * 60 + b'a' * 59 + b'q\x00'
  outer = b']' * 60 + b'h\x00a' + b'a' * 59
  pkl = b'\x80\x02' + inner + b'0' + outer + b'.'
  _refused(P.zip_pth(tmp_path / 'dag.pth', pkl), 'nested more than')


def test_code_execution_opcodes_stay_inert(tmp_path):
  marker = tmp_path / 'pwned'
  cases = {
      'inst': b'(S"touch ' + str(marker).encode() + b'"\nios\nsystem\n.',
      'obj': b'(cos\nsystem\nS"touch x"\no.',
      'newobj_on_stand_in': b'\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00@\x85\x81.',
      'reduce_on_string': b'\x80\x02X\x02\x00\x00\x00os)R.',
      'ext': b'\x80\x02\x82\x01.',
      'out_of_band': b'\x80\x05\x97.',
  }
  for name, pkl in cases.items():
    path = P.zip_pth(tmp_path / f'{name}.pth', pkl)
    try:
      got = pth.load_pth(path)
    except pth.PthError as e:
      assert '\n' not in str(e)
    else:
      assert isinstance(got, pth.Placeholder), name
  assert not marker.exists()


def test_legacy_storage_list_and_counts_are_checked(tmp_path):
  pkl_head = b''.join(pickle.dumps(v, protocol=2) for v in (
      0x1950A86A20F9469CFC6C, 1001, {'little_endian': True}))
  main = P.state_dict({'w': b'ctorch._utils\n_rebuild_tensor_v2\n((' + P.s('storage')
                       + b'ctorch\nFloatStorage\n' + P.s('0') + P.s('cpu') + P.i(2)
                       + b'NtQ' + P.i(0) + P.ints([2]) + P.ints([1]) + b'\x89NtR'})
  good = pkl_head + main + pickle.dumps(['0'], protocol=2) + (
      np.int64(2).tobytes() + np.float32([1, 2]).tobytes())
  path = tmp_path / 'legacy.pth'
  path.write_bytes(good)
  np.testing.assert_array_equal(pth.load_pth(path)['w'], [1, 2])
  cases = {
      'count': (np.int64(2).tobytes(), np.int64(2**40).tobytes(), 'elements'),
      'duplicate': (pickle.dumps(['0'], protocol=2),
                    pickle.dumps(['0', '0'], protocol=2), 'bad storage key list'),
      'truncated': (np.float32([1, 2]).tobytes(), b'\0\0', 'truncated'),
  }
  for name, (old, new, phrase) in cases.items():
    bad = tmp_path / f'{name}.pth'
    bad.write_bytes(good.replace(old, new, 1) if name != 'truncated'
                    else good[:-6])
    _refused(bad, phrase)


@pytest.mark.parametrize('dtype', [
    ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
    ml_dtypes.float8_e5m2fnuz, ml_dtypes.bfloat16, np.float16, np.float64])
def test_every_float_dtype_round_trips(tmp_path, dtype):
  value = np.array([[1, 2, 0.5], [-3, 4, 0.25]], dtype)
  path = tmp_path / 'f.pth'
  pth_write.save_pth({'w': value, 't': value.T}, path)
  got = pth.load_pth(path)
  for key, want in (('w', value), ('t', value.T)):
    assert got[key].dtype == np.dtype(dtype)
    assert got[key].tobytes() == np.ascontiguousarray(want).tobytes()
  pth.check_state_dict_dtypes(got)


@pytest.mark.parametrize('key, value, phrase', [
    ('conv.weight', np.ones(2, np.complex64), 'complex'),
    ('conv.weight', np.ones(2, np.int32), 'integer'),
    ('bn.running_mean', np.ones(2, np.int64), 'integer'),
    ('mask', np.ones(2, bool), 'bool'),
    ('bn.num_batches_tracked', np.array(3 + 0j, np.complex64), 'integer scalar'),
    ('bn.num_batches_tracked', np.array(3.0, np.float32), 'integer scalar'),
    ('bn.num_batches_tracked', np.arange(3), 'integer scalar'),
])
def test_dtype_policy_names_the_key(key, value, phrase):
  state = {'ok.weight': np.ones(2, np.float32), key: value}
  with pytest.raises(ValueError) as info:
    pth.check_state_dict_dtypes(state, 'x.pth')
  message = str(info.value)
  assert message.startswith('x.pth: ' + key) and phrase in message
  pth.check_state_dict_dtypes({'bn.num_batches_tracked': np.array(7, np.int64),
                               'w': np.ones(1, ml_dtypes.float8_e5m2)})


def test_zip64_archives_load(tmp_path):
  import zipfile  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'z64.pth'
  with zipfile.ZipFile(path, 'w') as zf:
    with zf.open('archive/data.pkl', 'w', force_zip64=True) as w:
      w.write(P.state_dict({'w': P.tensor('0', 2, [2], [1])}))
    with zf.open('archive/data/0', 'w', force_zip64=True) as w:
      w.write(np.float32([5, 6]).tobytes())
  np.testing.assert_array_equal(pth.load_pth(path)['w'], [5, 6])


def test_numpy_metadata_still_loads(tmp_path):
  meta = {'best': np.float64(0.5), 'arr': np.arange(6).reshape(2, 3),
          'name': np.str_('abc'), 'f': np.asfortranarray(np.ones((2, 2)))}
  path = P.zip_pth(tmp_path / 'np.pth', pickle.dumps(meta, protocol=2))
  got = pth.load_pth(path)
  assert got['best'] == 0.5 and got['name'] == 'abc'
  np.testing.assert_array_equal(got['arr'], meta['arr'])
  np.testing.assert_array_equal(got['f'], meta['f'])
  path = P.zip_pth(tmp_path / 'np5.pth', pickle.dumps(meta, protocol=5))
  np.testing.assert_array_equal(pth.load_pth(path)['arr'], meta['arr'])
  json.dumps(str(got))
