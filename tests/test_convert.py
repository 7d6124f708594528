"""PyTorch checkpoint conversion: layouts, inference of the architecture,
round trips and bad input."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from hrseg_jax import checkpoints
from hrseg_jax.convert import __main__ as convert_cli, pth_write
from hrseg_jax.convert import convert, mapping, pth
from hrseg_jax import export as export_cli
from hrseg_jax.models import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(arch='hrnet', variant='custom', num_classes=5,
            stage1=[1, 8, 'BOTTLENECK'],
            stages=[[1, [1, 1], [4, 8]], [1, [1, 1, 1], [4, 8, 16]],
                    [2, [1, 1, 1, 1], [4, 8, 16, 32]]])


def torch_state(model_cfg, seed=0):
  """A random state dict in the official key layout, with BN buffers."""
  rng = np.random.default_rng(seed)
  v = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                             registry.abstract_variables(model_cfg))
  v['batch_stats'] = jax.tree_util.tree_map(np.abs, v['batch_stats'])
  state = mapping.variables_to_torch(v)
  for k in list(state):
    if k.endswith('running_var'):
      state[k[:-len('running_var')] + 'num_batches_tracked'] = np.asarray(7, np.int64)
  return state


def _convert(src, dst, **kw):
  return convert.convert(src, dst, log=lambda *_: None, **kw)


def _variables(path):
  return checkpoints.load_model(path)[1]


def assert_same_tensors(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize('variant,ocr,classes,expected', [
    ('w18_small_v1', False, 19, 1_540_819),
    ('w18_small_v2', False, 19, 3_939_579),
    ('w18', False, 19, 9_641_119),
    ('w32', False, 19, 29_546_515),
    ('w48', False, 19, 65_859_379),
    ('w48', True, 19, 70_372_678),
    ('w48', False, 20, 65_860_100),
    ('w48', False, 59, 65_888_219),
    ('w48', False, 60, 65_888_940),
    ('w48', False, 150, 65_953_830),
    ('w48', False, 171, 65_968_971),
    ('w48', True, 60, 70_423_272),
    ('w48', True, 171, 70_560_246),
])
def test_parameter_counts(variant, ocr, classes, expected):
  a = registry.abstract_variables(dict(arch='hrnet', variant=variant,
                                       num_classes=classes, ocr={} if ocr else None))
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(a['params'])) == expected


@pytest.mark.parametrize('layout', ['plain', 'released', 'training', 'dataparallel',
                                    'model_wrapper'])
@pytest.mark.parametrize('ocr', [False, True])
def test_layouts_infer_and_round_trip(tmp_path, capsys, layout, ocr):
  cfg = dict(TINY, ocr={'mid_channels': 12, 'key_channels': 6} if ocr else None)
  state = torch_state(cfg)
  obj = {
      'plain': state,
      'released': {**{'model.' + k: v for k, v in state.items()},
                   'loss.criterion.weight': np.arange(5, dtype=np.float32)},
      'training': {'state_dict': {'model.' + k: v for k, v in state.items()},
                   'epoch': 3, 'best_mIoU': 0.5},
      'dataparallel': {'module.' + k: v for k, v in state.items()},
      'model_wrapper': {'model': state},
  }[layout]
  src = tmp_path / 'in.pth'
  pth_write.save_pth(obj, src)
  _convert(src, tmp_path / 'ckpt', align_corners=True)
  model_cfg, variables, _ = checkpoints.load_model(tmp_path / 'ckpt')
  assert model_cfg['stages'] == TINY['stages'] and model_cfg['stage1'] == TINY['stage1']
  assert model_cfg['num_classes'] == 5 and model_cfg['align_corners'] is True
  assert (model_cfg['ocr'] is not None) == ocr
  if ocr:
    assert model_cfg['ocr']['mid_channels'] == 12 and model_cfg['ocr']['key_channels'] == 6
  back = mapping.variables_to_torch(variables)
  for k, v in back.items():
    np.testing.assert_array_equal(v, state[k], err_msg=k)
  # .pth -> Orbax -> .pth: identical tensors in the identical layout.
  capsys.readouterr()
  assert export_cli.main([str(tmp_path / 'ckpt'), str(tmp_path / 'out.pth')]) == 0
  again = pth.load_pth(tmp_path / 'out.pth')
  wrapper = {'training': 'state_dict', 'model_wrapper': 'model'}.get(layout)
  flat = lambda o: o[wrapper] if wrapper else o  # noqa: E731
  assert_same_tensors(flat(again), flat({k: v for k, v in obj.items()
                                         if k not in ('epoch', 'best_mIoU')}))
  # The summary line counts the tensors, inside the wrapper if any.
  under = f' under {wrapper!r}' if wrapper else ''
  assert capsys.readouterr().out.strip() == (
      f'wrote {tmp_path / "out.pth"}: {len(flat(again)):,} tensors, PyTorch state '
      f'dict{under} of {tmp_path / "ckpt"} (converted)')


def test_golden_round_trip(golden, tmp_path):
  src = golden / 'hrnet_w18_small_v2_cityscapes.pth'
  _convert(src, tmp_path / 'ckpt')
  assert export_cli.main([str(tmp_path / 'ckpt'), str(tmp_path / 'back.pth')]) == 0
  assert_same_tensors(pth.load_pth(tmp_path / 'back.pth'), pth.load_pth(src))


def test_imagenet_backbone(tmp_path):
  state = torch_state(TINY)
  backbone = {k: v for k, v in state.items() if not k.startswith('last_layer')}
  backbone['incre_modules.0.0.conv1.weight'] = np.zeros((2, 4, 1, 1), np.float32)
  backbone['classifier.weight'] = np.zeros((1000, 2048), np.float32)
  pth_write.save_pth(backbone, tmp_path / 'imagenet.pth')
  with pytest.raises(ValueError, match='num-classes'):
    _convert(tmp_path / 'imagenet.pth', tmp_path / 'x')
  assert not (tmp_path / 'x').exists()
  meta = _convert(tmp_path / 'imagenet.pth', tmp_path / 'ckpt', num_classes=7)
  assert meta['backbone_only']
  assert meta['skipped'] == ['classifier.weight', 'incre_modules.0.0.conv1.weight']
  assert all(k.startswith('last_layer') for k in meta['initialised'])
  cfg, v, _ = checkpoints.load_model(tmp_path / 'ckpt')
  assert cfg['num_classes'] == 7
  assert v['params']['last_layer_3']['kernel'].shape == (1, 1, 8 + 16 + 32 + 4, 7)
  np.testing.assert_array_equal(v['params']['conv1']['kernel'],
                                state['conv1.weight'].transpose(2, 3, 1, 0))


def test_convert_line_counts_one_skipped_key_as_one_key(tmp_path):
  """An ImageNet file with one classification key: the command's line says
  '1 key', not '1 keys'."""
  backbone = {k: v for k, v in torch_state(TINY).items() if not k.startswith('last_layer')}
  backbone['classifier.weight'] = np.zeros((1000, 2048), np.float32)
  pth_write.save_pth(backbone, tmp_path / 'imagenet.pth')
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.convert', 'imagenet.pth',
                      'converted/imagenet', '--num-classes', '7'], cwd=tmp_path,
                     env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                     text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert re.search(r'; freshly initialised: \d+ tensors; skipped: 1 key$', lines[0]), lines
  assert lines[1] == 'skipped keys: classifier.weight', lines


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='needs /proc')
def test_output_folder_that_cannot_be_made_is_named(tmp_path):
  """An output below a folder that cannot be created gave the system's
  '[Errno 2] No such file or directory: '/proc/x'': the output, the folder
  that takes no new files and why, before anything is read or written."""
  pth_write.save_pth(torch_state(TINY), tmp_path / 'x.pth')
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.convert', 'x.pth', '/proc/x/y'],
                     cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO),
                     capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 2 and r.stdout == '', r.stdout + r.stderr
  assert r.stderr == ('error: cannot write /proc/x/y: /proc is not writable (no such '
                      'file or directory); choose another output directory\n'), r.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['x.pth']


def test_inplace_abn_scale(tmp_path):
  state = torch_state(TINY)
  state['bn1.weight'] = -np.abs(state['bn1.weight'])
  pth_write.save_pth(state, tmp_path / 'abn.pth')
  _convert(tmp_path / 'abn.pth', tmp_path / 'ckpt', inplace_abn=True)
  scale = _variables(tmp_path / 'ckpt')['params']['bn1']['scale']
  np.testing.assert_allclose(scale, np.abs(state['bn1.weight']) + 1e-5, rtol=0, atol=1e-7)


def test_convert_variables_gives_a_file_saved_by_inplace_abn_its_scale(tmp_path):
  """As the command line does: a segmentation .pth without num_batches_tracked
  (InPlaceABN, PyTorch 0.4) gets |w| + 1e-5 and a line naming the override."""
  state = {k: v for k, v in torch_state(TINY).items()
           if not k.endswith('num_batches_tracked')}
  state['bn1.weight'] = -np.abs(state['bn1.weight'])
  pth_write.save_pth(state, tmp_path / 'master.pth')
  lines = []
  _, v, meta, _ = convert.convert_variables(tmp_path / 'master.pth', log=lines.append)
  assert lines == [
      'master.pth: no num_batches_tracked buffers, as saved by InPlaceABN (PyTorch 0.4: '
      'master-branch and *_torch04 checkpoints): converting with its BN scale |w| + 1e-5 '
      '(inplace_abn=False if it was trained with standard BatchNorm)']
  assert meta['inplace_abn'] is True
  np.testing.assert_allclose(v['params']['bn1']['scale'], np.abs(state['bn1.weight']) + 1e-5,
                             rtol=0, atol=1e-7)
  lines.clear()
  _, v, meta, _ = convert.convert_variables(tmp_path / 'master.pth', inplace_abn=False,
                                            log=lines.append)
  assert lines == [] and meta['inplace_abn'] is False
  np.testing.assert_array_equal(v['params']['bn1']['scale'], state['bn1.weight'])
  pth_write.save_pth(torch_state(TINY), tmp_path / 'bn.pth')   # with its counters
  _, _, meta, _ = convert.convert_variables(tmp_path / 'bn.pth', log=lines.append)
  assert lines == [] and meta['inplace_abn'] is False


def _cli_error(capsys, argv):
  code = convert_cli.main(argv)
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and err.startswith('error: ')
  return err


def test_bad_inputs(tmp_path, capsys):
  state = torch_state(TINY)
  good = tmp_path / 'good.pth'
  pth_write.save_pth(state, good)
  out = tmp_path / 'out'
  # A checkpoint of another width against an explicit config.
  other = tmp_path / 'other.py'
  other.write_text('import ml_collections\n'
                   'def get_config():\n'
                   '  c = ml_collections.ConfigDict()\n'
                   "  c.model = dict(arch='hrnet', variant='w18_small_v1', num_classes=5)\n"
                   '  return c\n')
  err = _cli_error(capsys, [str(good), str(out), '--config', str(other)])
  assert 'shape mismatch' in err and 'conv1.weight' in err
  assert not out.exists()
  # A wrong class count.
  err = _cli_error(capsys, [str(good), str(out), '--num-classes', '19'])
  assert '19' in err and 'last_layer.3.weight' in err
  assert not out.exists()
  # A truncated file.
  data = good.read_bytes()
  (tmp_path / 'trunc.pth').write_bytes(data[: len(data) // 2])
  err = _cli_error(capsys, [str(tmp_path / 'trunc.pth'), str(out)])
  assert 'trunc.pth' in err
  assert not out.exists()
  # No such file, or a folder where the file should be.
  err = _cli_error(capsys, [str(tmp_path / 'nothere.pth'), str(out)])
  assert err == f'error: checkpoint not found: {tmp_path / "nothere.pth"}'
  (tmp_path / 'folder.pth').mkdir()
  err = _cli_error(capsys, [str(tmp_path / 'folder.pth'), str(out)])
  assert 'folder.pth' in err and 'folder' in err
  assert not out.exists()
  # Not a checkpoint at all.
  (tmp_path / 'notes.txt').write_text('hello\n')
  err = _cli_error(capsys, [str(tmp_path / 'notes.txt'), str(out)])
  assert 'notes.txt' in err
  # Missing keys (a pruned checkpoint).
  pruned = dict(state)
  del pruned['stage3.0.branches.1.0.conv2.weight']
  pth_write.save_pth(pruned, tmp_path / 'pruned.pth')
  cfg_file = tmp_path / 'tiny.py'
  cfg_file.write_text('import ml_collections\n'
                      'def get_config():\n'
                      '  c = ml_collections.ConfigDict()\n'
                      f'  c.model = {TINY!r}\n'
                      '  return c\n')
  err = _cli_error(capsys, [str(tmp_path / 'pruned.pth'), str(out), '--config', str(cfg_file)])
  assert 'missing' in err and 'stage3.0.branches.1.0.conv2.weight' in err
  # Unexpected keys.
  extra = dict(state, **{'stage9.0.weight': np.zeros(3, np.float32)})
  pth_write.save_pth(extra, tmp_path / 'extra.pth')
  err = _cli_error(capsys, [str(tmp_path / 'extra.pth'), str(out)])
  assert 'unexpected' in err and 'stage9.0.weight' in err
  assert not out.exists()
  # An unwritable output location (a path below a regular file).
  err = _cli_error(capsys, [str(good), str(tmp_path / 'notes.txt' / 'ckpt')])
  assert 'notes.txt' in err
  # A non-empty output directory is never overwritten silently.
  out.mkdir()
  (out / 'keep.txt').write_text('x')
  err = _cli_error(capsys, [str(good), str(out)])
  assert 'not empty' in err and (out / 'keep.txt').exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.out.tmp')]
