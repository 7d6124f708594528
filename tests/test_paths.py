"""Paths as users type them: relative to the working directory, ``~`` and
symlinks, through the real command lines run from a temporary folder."""
import json
import os
import re
import pathlib
import subprocess
import sys

from etils import epath

import console_checks

from hrseg_jax import Segmenter, paths
from hrseg_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_PTH = 'hrnet_w18_small_v2_cityscapes.pth'

# A tiny model on a Cityscapes-layout folder given by relative paths.
TRAIN_CONFIG = '''"""Tiny model on data/cityscapes (relative root and lists)."""
from train_util import tiny_config


def get_config():
  c = tiny_config(num_steps=4, batch_size=4, num_classes=19)
  c.data.source = 'files'
  c.data.name = 'cityscapes'
  c.data.label_map = 'cityscapes'
  c.data.root = 'data/cityscapes'
  c.data.train_list = 'data/cityscapes/train.lst'
  c.data.val_list = '~/lists/val.lst'
  c.data.num_workers = 0
  c.train.checkpoint_every_steps = 2
  c.train.log_every_steps = 2
  c.eval.every_steps = 4
  c.eval.batch_size = 4
  return c
'''


def _env(home: pathlib.Path) -> dict:
  return dict(os.environ, HOME=str(home), PYTHONPATH=f'{REPO}{os.pathsep}{REPO / "tests"}',
              JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')


def _run(cwd, home, *args) -> subprocess.CompletedProcess:
  r = subprocess.run([sys.executable, '-m', *args], cwd=cwd, env=_env(home),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, f'{args}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
  console_checks.assert_quiet(r)
  return r


def test_resolve(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  (tmp_path / 'real').mkdir()
  (tmp_path / 'link').symlink_to(tmp_path / 'real')
  real = os.path.realpath(tmp_path)
  assert paths.resolve('a/b') == os.path.join(real, 'a', 'b')
  assert paths.resolve('~/w') == os.path.join(real, 'home', 'w')
  assert paths.resolve('link/w') == os.path.join(real, 'real', 'w')
  assert paths.resolve(pathlib.Path('x')) == pathlib.Path(real) / 'x'
  assert paths.resolve(epath.Path('x')) == epath.Path(real) / 'x'
  for unchanged in ('gs://bucket/run', '', None):
    assert paths.resolve(unchanged) == unchanged


def test_convert_export_and_load_with_relative_paths(golden, tmp_path, monkeypatch):
  """convert X.pth converted/NAME (the README form), via a symlink and ~."""
  home = tmp_path / 'home'
  (tmp_path / 'weights').mkdir()
  (tmp_path / 'weights' / 'w18.pth').symlink_to(golden / GOLDEN_PTH)
  _run(tmp_path, home, 'hrseg_jax.convert', 'weights/w18.pth', 'converted/w18')
  _run(tmp_path, home, 'hrseg_jax.convert', 'weights/w18.pth', '~/converted/w18')
  assert (tmp_path / 'converted' / 'w18').is_dir()
  assert (home / 'converted' / 'w18').is_dir()
  r = _run(tmp_path, home, 'hrseg_jax.export', '~/converted/w18', 'exported/w18.pth')
  assert r.stdout.startswith('wrote exported/w18.pth: ')
  assert r.stdout.strip().endswith('PyTorch state dict of ~/converted/w18 (converted)')
  assert (tmp_path / 'exported' / 'w18.pth').is_file()
  monkeypatch.chdir(tmp_path)
  seg = Segmenter.from_checkpoint('converted/w18')
  assert seg.num_classes == 19


def test_train_and_eval_with_relative_workdir_and_data(tmp_path):
  """--workdir runs/x (runs is a symlink), relative data root and lists:
  the run saves its checkpoints and evaluates, and --mode eval reads them
  back; the console shows what a user needs and nothing else (resuming:
  tests/test_readme_commands.py)."""
  home = tmp_path / 'home'
  lists = synthetic.write_cityscapes_layout(
      str(tmp_path / 'data' / 'cityscapes'), num_train=8, num_val=4,
      image_size=(64, 128))
  (home / 'lists').mkdir(parents=True)
  os.replace(lists['val'], home / 'lists' / 'val.lst')
  (tmp_path / 'storage').mkdir()
  (tmp_path / 'runs').symlink_to(tmp_path / 'storage')
  (tmp_path / 'tiny.py').write_text(TRAIN_CONFIG)
  r = _run(tmp_path, home, 'hrseg_jax.main', '--config', 'tiny.py', '--workdir', 'runs/x')
  assert 'trained 4 steps' in r.stdout
  workdir = tmp_path / 'storage' / 'x'
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit()) == ['2', '4']
  console_checks.assert_training_console(r, steps=[2, 4], num_steps=4,
                                         start='from scratch')
  console_checks.assert_eval_table(r.stdout, ['road', 'sidewalk', 'bicycle'])
  console_checks.assert_run_files(workdir, eval_steps=[4], classes=['road', 'bicycle'])
  # Below the working folder, paths are shown relative (runs -> storage).
  assert re.search(r'^workdir     storage/x \(config.json', r.stdout, re.M), r.stdout
  assert re.search(r'^checkpoints storage/x/checkpoints$', r.stdout, re.M), r.stdout
  # How many examples, and from which lists and folder.
  assert re.search(r'^data        8 train, 4 val examples \(data/cityscapes/train.lst, '
                   r'home/lists/val.lst; data.root data/cityscapes\)$', r.stdout, re.M), r.stdout
  config = json.loads((workdir / 'config.json').read_text())
  assert config['data']['root'] == os.path.realpath(tmp_path / 'data' / 'cityscapes')
  assert config['data']['val_list'] == os.path.realpath(home / 'lists' / 'val.lst')


  r = _run(tmp_path, home, 'hrseg_jax.main', '--config', 'tiny.py', '--mode', 'eval',
           '--workdir', 'runs/eval', '--checkpoint', 'runs/x')
  console_checks.assert_quiet(r)
  console_checks.assert_eval_table(r.stdout, ['road', 'sidewalk', 'bicycle'])
  assert (tmp_path / 'storage' / 'eval' / 'eval' / 'confusion.png').is_file()
