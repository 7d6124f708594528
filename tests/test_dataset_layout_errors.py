"""Dataset mistakes a user makes with the original ``data/`` tree, through the
training command from the user's folder with relative paths: one ``error:``
line naming the field or file, exit 2, before the workdir is made (nothing
compiled, nothing written)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from hrseg_jax import modes
from hrseg_jax import recipes
from hrseg_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
  """data/cityscapes (labelIds) + data/list/cityscapes as the README makes them."""
  monkeypatch.chdir(tmp_path)
  synthetic.write_cityscapes_layout('data/cityscapes', num_train=2, num_val=1,
                                    image_size=(16, 32),
                                    list_dir='data/list/cityscapes')
  return tmp_path


def _config(**data):
  config = recipes.recipe('cityscapes', 'w18_small_v1')
  config.train.init_from = ''
  config.train.batch_size = 2
  config.loss.num_chunks = 1
  config.data.update(crop_size=(8, 16), base_size=32, num_workers=0, **data)
  return config


def _train_error(config) -> str:
  with pytest.raises((ValueError, OSError)) as info:
    modes.run(config, 'runs/cs', 'train')
  assert not os.path.exists('runs')
  return str(info.value)


def test_wrong_data_root_is_one_line_before_the_workdir(user_folder):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  (user_folder / 'configs').symlink_to(REPO / 'configs')
  r = subprocess.run(
      [sys.executable, '-m', 'hrseg_jax.main', '--config', 'configs/hrnet_w48_cityscapes.py',
       '--workdir', 'runs/cs', '--config.train.init_from=', '--config.data.root=data/cityscape'],
      cwd=user_folder, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  assert r.stderr.splitlines() == [
      'error: data/cityscape: data.root folder not found '
      '(the paths in data/list/cityscapes/train.lst are '
      'relative to it)'], r.stderr
  assert not (user_folder / 'runs').exists()


def test_lists_that_do_not_match_the_tree(user_folder):
  # LIP-style prefix on a tree whose list paths already start at the root.
  err = _train_error(_config(image_prefix='leftImg8bit'))
  assert err.startswith('data/cityscapes/leftImg8bit/leftImg8bit/train/')
  assert err.endswith("file not found: the first image of "
                      "data/list/cityscapes/train.lst, joined to data.root + "
                      "data.image_prefix='leftImg8bit'")
  # The test list (images only) as the training or validation list.
  test_list = pathlib.Path('data/list/cityscapes/test.lst')
  first_image = pathlib.Path('data/list/cityscapes/train.lst').read_text().split()[0]
  test_list.write_text(first_image + '\n')
  for field in ('train_list', 'val_list'):
    split = field.split('_')[0]
    err = _train_error(_config(**{field: str(test_list)}))
    assert err.startswith(f'data/list/cityscapes/test.lst: no labels (one column: '
                          f'image paths only), but the {split} split needs "image label" '
                          'lines; a test list is for --mode predict'), err
  # trainId labels (mmsegmentation's *_labelTrainIds.png) read with the labelId map.
  lst = pathlib.Path('data/list/cityscapes/train.lst')
  lst.write_text(lst.read_text().replace('_labelIds.png', '_labelTrainIds.png'))
  err = _train_error(_config())
  assert err.endswith("_gtFine_labelTrainIds.png: a trainId label (listed in "
                      "data/list/cityscapes/train.lst), but data.label_map="
                      "'cityscapes' maps the labelIds of *_gtFine_labelIds.png: list "
                      "those (scripts/make_lists.py does) or pass "
                      "--config.data.label_map=identity")


def test_a_missing_validation_list_fails_at_start_up(user_folder):
  """Not at the first evaluation, hours into training."""
  config = _config(val_list='data/list/cityscape/val.lst')
  assert _train_error(config) == (
      'data/list/cityscape/val.lst: list file not found (generate it with '
      'scripts/make_lists.py; for PASCAL-Context with scripts/prepare_pascal_ctx.py); '
      'validation every 2470 steps (eval.every_steps) reads it, '
      '--config.eval.every_steps=-1 trains without')
  config.data.val_list = ''
  assert _train_error(config).startswith("data.val_list is not set for 'cityscapes'; "
                                         'validation every 2470 steps')


def test_model_and_data_class_counts_must_agree(user_folder):
  """--config.data.num_classes alone (e.g. PASCAL-Context 60 through the
  59-class config) leaves the model at the recipe's count."""
  config = _config(num_classes=18, label_map='identity')
  assert _train_error(config) == (
      "model.num_classes=19 but data.num_classes=18 (cityscapes, label map 'identity'): "
      'the model must predict the classes the labels are mapped to; set both, or use the '
      'config of the dataset you mean')


def test_a_size_given_twice_is_one_line_before_the_workdir(user_folder):
  """absl concatenates a tuple override given twice ((32,64) then (16,16) became
  (32, 64, 16, 16)); that ended in 'too many values to unpack' at the first
  validation, and three numbers in a JAX traceback after the workdir was made."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  (user_folder / 'configs').symlink_to(REPO / 'configs')
  base = [sys.executable, '-m', 'hrseg_jax.main', '--config', 'configs/hrnet_w48_cityscapes.py',
          '--workdir', 'runs/cs', '--config.train.init_from=']
  twice = ['--config.data.crop_size=(32,64)', '--config.data.crop_size=(16,16)']
  r = subprocess.run(base + twice, cwd=user_folder, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2 and r.stdout == '', r.stderr
  assert r.stderr == ('error: --config.data.crop_size is given 2 times, and absl joins the '
                      'values into (32, 64, 16, 16): give the tuple once, or one element '
                      'per flag\n')
  r = subprocess.run(base + ['--config.data.eval_size=(64,128,3)'], cwd=user_folder,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stdout == '', r.stderr
  assert r.stderr == ('error: --config.data.eval_size=(64,128,3): data.eval_size takes '
                      '(height,width), two integers > 0, e.g. (512,1024)\n')
  assert not (user_folder / 'runs').exists()
  r = subprocess.run(base + ['--config.data.crop_size', '(32,64)', '--config.data.crop_size',
                             '(16,16)'], cwd=user_folder, env=env, capture_output=True,
                     text=True, timeout=300)   # the two-word form
  assert r.returncode == 2 and 'is given 2 times' in r.stderr, r.stderr
  # One element per flag is ml_collections' repeated-flag tuple (browse: same parser).
  r = subprocess.run(
      [sys.executable, '-m', 'hrseg_jax.browse', '--config', 'configs/hrnet_w48_cityscapes.py',
       '--out', 'grid.png', '--num', '1', '--split', 'train', '--config.data.num_workers=0',
       '--config.data.crop_size=8', '--config.data.crop_size=16', '--config.data.base_size=32'],
      cwd=user_folder, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stderr == '', r.stderr
  r = subprocess.run(
      [sys.executable, '-m', 'hrseg_jax.browse', '--config', 'configs/hrnet_w48_cityscapes.py',
       '--out', 'grid.png', *twice], cwd=user_folder, env=env, capture_output=True, text=True,
      timeout=300)
  assert r.returncode == 2 and 'is given 2 times' in r.stderr, r.stderr


def test_a_tuple_given_twice_to_the_default_config_is_one_line(user_folder):
  """Without --config (configs/demo.py by default), a tuple override given
  twice was joined silently: eval.scales=(0.5,1.0) then (1.5,2.0) trained and
  evaluated at four scales."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  (user_folder / 'configs').symlink_to(REPO / 'configs')
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--workdir', 'runs/demo',
                      '--config.eval.scales=(0.5,1.0)', '--config.eval.scales=(1.5,2.0)'],
                     cwd=user_folder, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stdout == '', r.stderr
  assert r.stderr == ('error: --config.eval.scales is given 2 times, and absl joins the '
                      'values into (0.5, 1.0, 1.5, 2.0): give the tuple once, or one element '
                      'per flag\n')
  assert not (user_folder / 'runs').exists()
