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
from hrseg_jax.convert import convert, pth_write
from hrseg_jax.data import synthetic
from hrseg_jax.models import registry
from test_convert_released import standin_cfg
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

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


def _error(cwd, home, *args) -> str:
  """The one ``error:`` line (exit 2) of ``python -m ARGS``."""
  r = subprocess.run([sys.executable, '-m', *args], cwd=cwd, env=_env(home),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (args, r.stderr[-3000:])
  return r.stderr.strip()


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
  # Messages name them as typed, with what is below them.
  assert paths.shown(os.path.join(paths.resolve('link/w/'), 'checkpoints', '5')) == (
      'link/w/checkpoints/5')
  assert paths.shown(paths.resolve('~/w')) == '~/w'
  assert paths.shown(paths.resolve('../out/x.pth')) == '../out/x.pth'
  assert paths.shown(os.path.join(real, 'other')) == 'other'   # never typed: relative
  assert paths.shown('/nowhere/typed') == '/nowhere/typed'


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
  # Paths are named as typed (runs, not the storage it links to; ~).
  assert re.search(r'^workdir     runs/x \(config.json', r.stdout, re.M), r.stdout
  assert re.search(r'^checkpoints runs/x/checkpoints$', r.stdout, re.M), r.stdout
  # How many examples, and from which lists and folder.
  assert re.search(r'^data        8 train, 4 val examples \(data/cityscapes/train.lst, '
                   r'~/lists/val.lst; data.root data/cityscapes\)$', r.stdout, re.M), r.stdout
  config = json.loads((workdir / 'config.json').read_text())
  assert config['data']['root'] == os.path.realpath(tmp_path / 'data' / 'cityscapes')
  assert config['data']['val_list'] == os.path.realpath(home / 'lists' / 'val.lst')


  r = _run(tmp_path, home, 'hrseg_jax.main', '--config', 'tiny.py', '--mode', 'eval',
           '--workdir', 'runs/eval', '--checkpoint', 'runs/x')
  console_checks.assert_quiet(r)
  console_checks.assert_eval_table(r.stdout, ['road', 'sidewalk', 'bicycle'])
  assert (tmp_path / 'storage' / 'eval' / 'eval' / 'confusion.png').is_file()


def test_messages_name_paths_as_typed(tmp_path):
  """Error and info lines of the command lines name a path as the user typed
  it (joined with what is below it), not its absolute, symlink-free form:
  relative paths, a symlinked folder and .pth, ~ and ../ (outside the
  working folder)."""
  cwd, home = tmp_path / 'user', tmp_path / 'home'
  for folder in (cwd / 'weights', cwd / 'storage', home / 'photos', tmp_path / 'blobs'):
    folder.mkdir(parents=True)
  (cwd / 'runs').symlink_to(cwd / 'storage')
  (cwd / 'configs').symlink_to(REPO / 'configs')
  (cwd / 'notes.txt').write_text('hello\n')
  (home / 'photos' / 'bad.png').write_text('not an image\n')
  # A .pth kept under its digest, linked by name (as download caches do).
  variables = tiny_hrnet_variables(registry.resolve(TINY_HRNET))
  pth_write.save_pth(convert.to_state_dict(variables), tmp_path / 'blobs' / '5f3c9e')
  (cwd / 'weights' / 'w.pth').symlink_to(tmp_path / 'blobs' / '5f3c9e')
  # What the released file shows (W48's widths, OCR, 19 classes), another blob.
  variables = tiny_hrnet_variables(registry.resolve(standin_cfg(19, ocr=True)))
  pth_write.save_pth(convert.to_state_dict(variables), tmp_path / 'blobs' / '8a41d0')
  (cwd / 'weights' / 'hrnet_ocr_cs_8162_torch11.pth').symlink_to(tmp_path / 'blobs' / '8a41d0')

  out = _run(cwd, home, 'hrseg_jax.convert', 'weights/w.pth', 'converted/w').stdout
  assert out.startswith('converted weights/w.pth -> converted/w: hrnet custom'), out
  out = _run(cwd, home, 'hrseg_jax.convert', 'weights/hrnet_ocr_cs_8162_torch11.pth',
             'converted/ocr').stdout.splitlines()
  assert out[0] == ('hrnet_ocr_cs_8162_torch11.pth: a released checkpoint: converting '
                    'with align_corners=True, as it was trained'), out
  assert out[1].startswith('converted weights/hrnet_ocr_cs_8162_torch11.pth -> '
                           'converted/ocr: '), out
  assert _error(cwd, home, 'hrseg_jax.convert', '../outside/w.pth', 'converted/x') == (
      'error: checkpoint not found: ../outside/w.pth')
  assert _error(cwd, home, 'hrseg_jax.convert', 'weights/w.pth', 'notes.txt/w') == (
      'error: cannot create notes.txt/w: notes.txt is a file, not a folder; choose '
      'another output directory')
  assert _error(cwd, home, 'hrseg_jax.export', 'notes.txt', 'w.pth').startswith(
      'error: notes.txt is a file, not a checkpoint folder; ')
  assert _error(cwd, home, 'hrseg_jax.browse', '--config', 'configs/demo.py',
                '--out', 'notes.txt/b.png') == (
      'error: cannot create notes.txt/b.png: notes.txt is a file, not a folder; choose '
      'another --out')
  main = ('hrseg_jax.main', '--config', 'configs/demo.py')
  assert _error(cwd, home, *main, '--workdir', 'notes.txt/run') == (
      'error: cannot write to --workdir notes.txt/run: notes.txt is a file, not a '
      'folder; choose another --workdir')
  assert _error(cwd, home, *main, '--workdir', 'runs/demo',
                '--config.train.init_from=../outside/w.pth').startswith(
      'error: train.init_from=../outside/w.pth: file not found. ')
  assert _error(cwd, home, *main, '--workdir', 'runs/demo', '--mode', 'eval') == (
      'error: --mode eval without --checkpoint uses the checkpoints of --workdir, and '
      'runs/demo has none: pass --checkpoint PATH (a converted checkpoint folder or a '
      'training workdir)')
  assert _error(cwd, home, *main, '--workdir', 'runs/demo', '--mode', 'eval',
                '--checkpoint', 'runs/demo/checkpoints') == (
      'error: checkpoint not found: runs/demo/checkpoints')
  assert _error(cwd, home, 'hrseg_jax.main', '--mode', 'eval', '--workdir', 'runs/e',
                '--config', 'configs/hrnet_w18_small_v2_cityscapes.py',
                '--checkpoint', 'converted/w', '--config.data.val_list=~/val.lst'
                ).startswith('error: ~/val.lst: list file not found (generate it ')
  assert _error(cwd, home, 'hrseg_jax.main', '--mode', 'predict', '--workdir', 'runs/p',
                '--checkpoint', 'converted/w', '--input', '~/photos') == (
      'error: ~/photos/bad.png: not an image (OpenCV finds no image format in it)')
  assert sorted(os.listdir(cwd)) == ['configs', 'converted', 'notes.txt', 'runs',
                                     'storage', 'weights']
  assert sorted(os.listdir(cwd / 'converted')) == ['ocr', 'w']
  assert os.listdir(cwd / 'storage') == []


# A read-only file system under every folder named 'locked' (the tests may
# run as root, whom no folder mode stops): paths.check_writable's probe fails.
READ_ONLY = ('import errno, os, runpy, tempfile; real = tempfile.mkstemp\n'
             'def mkstemp(*a, dir=None, **k):\n'
             "  if dir and 'locked' in os.fspath(dir).split(os.sep):\n"
             '    raise OSError(errno.EROFS, os.strerror(errno.EROFS))\n'
             '  return real(*a, dir=dir, **k)\n'
             'tempfile.mkstemp = mkstemp\n'
             "runpy.run_module('hrseg_jax.main', run_name='__main__', alter_sys=True)")


def test_read_only_workdir_is_the_first_and_only_line(tmp_path):
  """A --workdir on a read-only file system failed after the four start-up
  lines (devices, batch, steps, data), in other words than the other
  commands' ('cannot write to --workdir rom/train: Read-only file system')."""
  cwd, home = tmp_path / 'u', tmp_path / 'home'
  (cwd / 'locked').mkdir(parents=True)
  (cwd / 'configs').symlink_to(REPO / 'configs')
  r = subprocess.run([sys.executable, '-c', READ_ONLY, '--config', 'configs/demo.py',
                      '--workdir', 'locked/run'], cwd=cwd, env=_env(home),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr[-3000:])
  assert r.stderr.strip() == ('error: cannot write locked/run/log.txt: locked is not '
                              'writable (read-only file system); choose another '
                              '--workdir'), r.stderr
  assert os.listdir(cwd / 'locked') == []
