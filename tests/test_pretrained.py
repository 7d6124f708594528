"""train.init_from: recipes name the original's ImageNet backbones; a .pth
is converted in memory; a missing file stops the run with one line."""
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from hrseg_jax import recipes
from hrseg_jax.config_utils import load_config_file
from hrseg_jax.convert import convert, mapping, pth_write
from hrseg_jax.models import registry
from hrseg_jax.train import optim, pretrained, sharding
from hrseg_jax.train.state import init_state
from train_util import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_recipes_name_the_original_backbones_demo_trains_from_scratch():
  want = {
      'hrnet_w48_cityscapes.py': 'pretrained_models/hrnetv2_w48_imagenet_pretrained.pth',
      'hrnet_ocr_w48_lip.py': 'pretrained_models/hrnetv2_w48_imagenet_pretrained.pth',
      'hrnet_w18_small_v1_cityscapes.py': 'pretrained_models/hrnet_w18_small_model_v1.pth',
      'hrnet_w18_small_v2_cityscapes.py': 'pretrained_models/hrnet_w18_small_model_v2.pth',
      'hrnet_w32_hanet_cityscapes.py': 'pretrained_models/hrnetv2_w32_imagenet_pretrained.pth',
      'lite_hrnet_18_cityscapes.py': '',
      'demo.py': '',
      'synthetic_hanet_ablation.py': '',
  }
  for name, path in want.items():
    assert load_config_file(str(REPO / 'configs' / name)).train.init_from == path, name
  assert recipes.recipe('synthetic', 'w48').train.init_from == ''


def test_missing_pretrained_file_is_one_line_before_any_work(tmp_path):
  """The README's W48 command without the ImageNet file: one line, exit 2,
  nothing created in the workdir (the dataset is not even looked at)."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--config',
                      str(REPO / 'configs/hrnet_w48_cityscapes.py'),
                      '--workdir', 'runs/w48_cs'],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert 'Traceback' not in r.stderr
  last = lines[-1]
  assert last.startswith('error: train.init_from=pretrained_models/'
                         'hrnetv2_w48_imagenet_pretrained.pth: file not found. Put the '
                         'ImageNet-pretrained HRNet-W48 backbone')
  assert 'python -m hrseg_jax.convert hrnetv2_w48_imagenet_pretrained.pth' in last
  assert "--config.train.init_from='' trains from scratch" in last
  assert not (tmp_path / 'runs').exists()


def test_missing_converted_init_from_names_the_pth_to_convert(tmp_path):
  """The README's third training command (init_from a converted folder) with
  no such folder: one line that says which .pth to convert into that folder,
  not to put a file named like the folder there."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--config',
                      str(REPO / 'configs/hrnet_w48_cityscapes.py'),
                      '--workdir', 'runs/w48_cs', '--config.train.batch_size=16',
                      '--config.train.init_from=converted/hrnetv2_w48_imagenet'],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  last = r.stderr.strip().splitlines()[-1]
  where = 'converted/hrnetv2_w48_imagenet'   # as typed
  assert last == (f'error: train.init_from={where}: no checkpoint there. Convert the '
                  'weights to start from into it once (`python -m hrseg_jax.convert '
                  f'hrnetv2_w48_imagenet_pretrained.pth {where} --num-classes 19`), or '
                  'pass the .pth file itself (converted in memory). '
                  "--config.train.init_from='' trains from scratch.")
  assert not (tmp_path / 'runs').exists()


def _write_imagenet_style_pth(model_cfg, path):
  """Writes an ImageNet-style .pth of ``model_cfg``'s backbone to ``path``: no
  head (last_layer), classification keys (classifier, incre_modules) it does
  not use; returns the random variables it holds."""
  rng = np.random.default_rng(0)
  src = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                               registry.abstract_variables(model_cfg))
  state_dict = {k: v for k, v in mapping.variables_to_torch(src).items()
                if not k.startswith('last_layer')}
  state_dict['classifier.weight'] = np.zeros((1000, 32), np.float32)
  state_dict['incre_modules.0.0.conv1.weight'] = np.zeros((8, 4, 1, 1), np.float32)
  pth_write.save_pth(state_dict, path)
  return src


def test_init_from_pth_is_converted_in_memory(tmp_path):
  """An ImageNet-style .pth (classification keys, no head) loads like its
  converted checkpoint would; the head keeps this run's initialisation and
  nothing is written."""
  c = tiny_config()
  cfg = registry.resolve(c.model)
  src = _write_imagenet_style_pth(cfg, tmp_path / 'imagenet.pth')
  before = sorted(os.listdir(tmp_path))
  model = registry.build_model(cfg)
  tx, _ = optim.make_optimizer(c.train, 10)
  state, _ = init_state(model, tx, jax.random.PRNGKey(1), (64, 128, 3),
                        sharding.make_mesh(1))
  fresh = traverse_util.flatten_dict(jax.device_get(state.variables))
  got = traverse_util.flatten_dict(jax.device_get(
      pretrained.load_init_weights(state, tmp_path / 'imagenet.pth', cfg).variables))
  for k, v in traverse_util.flatten_dict(src).items():
    expected = fresh[k] if k[1].startswith('last_layer') else v
    np.testing.assert_array_equal(got[k], expected, err_msg=str(k))
  assert sorted(os.listdir(tmp_path)) == before
  with pytest.raises(ValueError, match='train.init_from=.*imagenet.pth: cannot use it'):
    wide = dict(cfg, stage1=[1, 16, 'BOTTLENECK'])
    pretrained.load_init_weights(
        init_state(registry.build_model(wide), tx, jax.random.PRNGKey(1),
                   (64, 128, 3), sharding.make_mesh(1))[0],
        tmp_path / 'imagenet.pth', wide)


def test_check_init_from_skips_resumed_runs_and_empty(tmp_path):
  c = tiny_config()
  pretrained.check_init_from(c, tmp_path)  # '' = from scratch
  c.train.init_from = 'pretrained_models/x.pth'
  with pytest.raises(ValueError, match='file not found'):
    pretrained.check_init_from(c, tmp_path)
  (tmp_path / 'checkpoints' / '10').mkdir(parents=True)
  pretrained.check_init_from(c, tmp_path)  # resuming: init_from is not read


def test_missing_init_from_of_a_model_without_released_backbone(tmp_path):
  """The demo's custom HRNet (no ImageNet release) with a missing .pth: one
  line that does not send the user to a release that has no such backbone."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--config',
                      str(REPO / 'configs/demo.py'), '--workdir', 'runs/demo',
                      '--config.train.init_from=weights/mine.pth'],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith('error: train.init_from=weights/mine.pth: file not found. Put the '
                             'weights to start from (mine.pth) there'), lines[0]
  assert 'HRNet-Image-Classification' not in lines[0] and 'CUSTOM' not in lines[0]
  assert not (tmp_path / 'runs').exists()


def test_init_from_that_does_not_fit_is_one_line_before_the_workdir(golden, tmp_path):
  """The demo config started from a W18-Small-v2 checkpoint (a .pth, then
  the same converted): one line naming train.init_from, exit 2, and no
  workdir (it used to be made, with log.txt, events and checkpoints/,
  before the weights were compared with the model)."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  shutil.copy(golden / 'hrnet_w18_small_v2_cityscapes.pth', tmp_path / 'w18s.pth')
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.convert', 'w18s.pth',
                      'converted/w18s'], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  for init_from, says in (('w18s.pth', 'cannot use it for model custom'),
                          ('converted/w18s', 'does not fit model custom')):
    r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--config',
                        'configs/demo.py', '--workdir', 'runs/demo',
                        f'--config.train.init_from={init_from}'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith(f'error: train.init_from={init_from}: {says}'), lines[0]
    assert '(270,) vs (120,)' in lines[0] or '(270,) vs model (120,)' in lines[0], lines[0]
    assert not (tmp_path / 'runs').exists(), init_from
    # What is known comes at once, before the weights are read (and converted):
    # a W18-Small-v2 fine-tune printed nothing for 82 s.
    out = r.stdout.splitlines()
    assert [l.split()[0] for l in out] == ['devices', 'batch', 'steps', 'data',
                                           'reading'], r.stdout
    assert out[4] == f'reading train.init_from {init_from}', r.stdout


def _pth_saved_by_inplace_abn(c, path, inplace_abn=True):
  """A random full model of ``c`` as a .pth without num_batches_tracked (as
  InPlaceABN saves it), or with them (``inplace_abn=False``: as BatchNorm)."""
  rng = np.random.default_rng(0)
  src = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                               registry.abstract_variables(registry.resolve(c.model)))
  state_dict = {k: v for k, v in convert.to_state_dict(src).items()
                if not (inplace_abn and k.endswith('num_batches_tracked'))}
  pth_write.save_pth(state_dict, path)
  return state_dict['model.bn1.weight']


def test_init_from_pth_saved_by_inplace_abn_converts_as_convert_does(tmp_path, capsys):
  """A .pth without num_batches_tracked: InPlaceABN's scale |w| + 1e-5 and
  convert's line; train.init_from_inplace_abn=False keeps the file's weights."""
  c = tiny_config()
  w = _pth_saved_by_inplace_abn(c, tmp_path / 'master.pth')
  c.train.init_from = str(tmp_path / 'master.pth')
  variables, meta = pretrained.read_init_weights(c, tmp_path / 'run')
  assert capsys.readouterr().out == (
      'master.pth: no num_batches_tracked buffers, as saved by InPlaceABN (PyTorch 0.4: '
      'master-branch and *_torch04 checkpoints): converting with its BN scale |w| + 1e-5 '
      '(--config.train.init_from_inplace_abn=False if it was trained with standard '
      'BatchNorm)\n')
  assert meta['inplace_abn'] is True
  np.testing.assert_allclose(variables['params']['bn1']['scale'], np.abs(w) + 1e-5,
                             rtol=0, atol=1e-7)
  c.train.init_from_inplace_abn = False
  variables, meta = pretrained.read_init_weights(c, tmp_path / 'run')
  assert capsys.readouterr().out == '' and meta['inplace_abn'] is False
  np.testing.assert_array_equal(variables['params']['bn1']['scale'], w)


def test_init_from_inplace_abn_forced_on_a_batchnorm_file_warns(tmp_path, capsys):
  """train.init_from_inplace_abn=True for a .pth with num_batches_tracked
  buffers (saved by standard BatchNorm): converted as asked, with the
  warning convert --inplace-abn gives (it gave none)."""
  c = tiny_config()
  w = _pth_saved_by_inplace_abn(c, tmp_path / 'bn.pth', inplace_abn=False)
  c.train.init_from = str(tmp_path / 'bn.pth')
  c.train.init_from_inplace_abn = True
  variables, meta = pretrained.read_init_weights(c, tmp_path / 'run')
  assert capsys.readouterr().out == (
      'warning: bn.pth has num_batches_tracked buffers, as saved by standard BatchNorm '
      '(InPlaceABN saves none): converted with --config.train.init_from_inplace_abn=True '
      'as asked, its BN scales |w| + 1e-5 are off if it was trained with BatchNorm (drop '
      'the option to use its BN weights as they are)\n')
  assert meta['inplace_abn'] is True and meta['console_lines'][0].startswith('warning: ')
  np.testing.assert_allclose(variables['params']['bn1']['scale'], np.abs(w) + 1e-5,
                             rtol=0, atol=1e-7)
  c.train.init_from_inplace_abn = None   # as convert chooses: BatchNorm, no line
  assert pretrained.read_init_weights(c, tmp_path / 'run')[1]['inplace_abn'] is False
  assert capsys.readouterr().out == ''


def test_init_from_inplace_abn_on_the_command_line(tmp_path):
  """The line and the override as a user meets them (a .pth of another width:
  the run then stops with one error, before any training)."""
  c = tiny_config()
  _pth_saved_by_inplace_abn(c, tmp_path / 'master.pth')
  base = [sys.executable, '-m', 'hrseg_jax.main', '--config', str(REPO / 'configs/demo.py'),
          '--workdir', 'run', '--config.train.init_from=master.pth']
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  for extra, line in (([], True), (['--config.train.init_from_inplace_abn=False'], False)):
    r = subprocess.run(base + extra, cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith('error: train.init_from=') and 'master.pth: cannot use it' in (
        r.stderr), r.stderr
    assert ('master.pth: no num_batches_tracked buffers, as saved by InPlaceABN' in
            r.stdout) is line, r.stdout
    assert '(--config.train.init_from_inplace_abn=False if' in r.stdout or not line
    assert sorted(os.listdir(tmp_path)) == ['master.pth']


def _train_demo_one_step(cwd, init_from):
  """The demo config at a tiny size, one step from ``init_from``."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  r = subprocess.run(
      [sys.executable, '-m', 'hrseg_jax.main', '--config', str(REPO / 'configs/demo.py'),
       '--workdir', 'runs/demo', f'--config.train.init_from={init_from}',
       '--config.train.num_steps=1', '--config.eval.every_steps=0',
       '--config.train.batch_size=2', '--config.data.num_train=2',
       '--config.data.image_size=(32, 64)', '--config.data.crop_size=(32, 64)',
       '--config.data.base_size=64'],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  return r


def test_init_from_inplace_abn_line_reaches_log_txt(tmp_path):
  """train.init_from's BN-scale line is printed before the workdir exists;
  log.txt ('the console lines and warnings') has it too, in the start-up
  block after the lines printed before the weights are read, as the console
  does."""
  _pth_saved_by_inplace_abn(load_config_file(str(REPO / 'configs/demo.py')),
                            tmp_path / 'master.pth')
  r = _train_demo_one_step(tmp_path, 'master.pth')
  line = ('master.pth: no num_batches_tracked buffers, as saved by InPlaceABN (PyTorch 0.4: '
          'master-branch and *_torch04 checkpoints): converting with its BN scale |w| + 1e-5 '
          '(--config.train.init_from_inplace_abn=False if it was trained with standard '
          'BatchNorm)')
  out = r.stdout.splitlines()
  assert [l.split()[0] for l in out[:4]] == ['devices', 'batch', 'steps', 'data'], r.stdout
  assert out[4:6] == ['reading train.init_from master.pth', line], r.stdout
  assert out[6].startswith('model '), r.stdout
  logged = [l.split('  ', 1)[1] for l in
            (tmp_path / 'runs/demo/log.txt').read_text().splitlines()]
  assert logged[:7] == out[:7], logged


def test_backbone_init_from_start_line_says_what_is_fresh_and_unused(tmp_path):
  """An ImageNet-style .pth given to train.init_from: the start-up line says
  the head is freshly initialised and which of the file's keys went unused
  (as `convert` does), not only 'initialised from'."""
  model_cfg = registry.resolve(load_config_file(str(REPO / 'configs/demo.py')).model)
  (tmp_path / 'pretrained_models').mkdir()
  _write_imagenet_style_pth(model_cfg, tmp_path / 'pretrained_models/imagenet.pth')
  r = _train_demo_one_step(tmp_path, 'pretrained_models/imagenet.pth')
  start = [l for l in r.stdout.splitlines() if l.startswith('start ')]
  assert start == [
      'start       initialised from pretrained_models/imagenet.pth, a backbone: last_layer '
      '(8 tensors) freshly initialised, 2 keys of the .pth not used (classifier, '
      'incre_modules); compiling the training step (the first step line includes it)'], r.stdout


def test_converted_init_from_start_line_names_the_pth_it_was_converted_from(tmp_path):
  """The README's converted backbone given to train.init_from (a folder, not
  a .pth): the start-up line says the unused keys were those of the .pth it
  was converted from."""
  model_cfg = registry.resolve(load_config_file(str(REPO / 'configs/demo.py')).model)
  _write_imagenet_style_pth(model_cfg, tmp_path / 'imagenet.pth')
  subprocess.run([sys.executable, '-m', 'hrseg_jax.convert', 'imagenet.pth',
                  'converted/imagenet', '--num-classes', '19'], cwd=tmp_path,
                 env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                 timeout=300, check=True)
  r = _train_demo_one_step(tmp_path, 'converted/imagenet')
  start = [l for l in r.stdout.splitlines() if l.startswith('start ')]
  assert start == [
      'start       initialised from converted/imagenet, a backbone: last_layer '
      '(8 tensors) freshly initialised, 2 keys of the .pth it was converted from not used '
      '(classifier, incre_modules); compiling the training step (the first step line '
      'includes it)'], r.stdout


def test_a_resumed_run_says_it_does_not_read_init_from(tmp_path, capsys):
  """A resumed run never reads train.init_from; it said nothing of it, even
  of a path that is not there."""
  from hrseg_jax.train import loop  # pylint: disable=g-import-not-at-top
  from train_util import tiny_config  # pylint: disable=g-import-not-at-top
  loop.train_and_evaluate(tiny_config(num_steps=1), str(tmp_path / 'w'))
  c = tiny_config(num_steps=2)
  c.train.init_from = 'nothere.pth'
  capsys.readouterr()
  loop.train_and_evaluate(c, str(tmp_path / 'w'))
  start = [l for l in capsys.readouterr().out.splitlines() if l.startswith('start ')]
  assert len(start) == 1 and start[0].startswith('start       resumed from step 1 '), start
  assert ('; train.init_from nothere.pth not read (a resumed run restores its own '
          'weights)') in start[0], start
