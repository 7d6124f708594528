"""The README's commands, run as a user types them, from a fresh folder.

Every ``python -m hrseg_jax.…`` line of the README's bash blocks (and its
Python example) runs for real in a temporary working directory with the
README's relative paths: the released-checkpoint file names hold tiny
random HRNets (same file format and layout), the Cityscapes tree is the
synthetic scenes at a small size, and only ``--config.x=y`` / size flags
are appended to keep the runs small.  The tests read the console as a
person would: no traceback, class names, progress with ETA.
"""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import console_checks
from hrseg_jax.convert import convert, pth, pth_write
from hrseg_jax.data import synthetic
from hrseg_jax.eval import classes
from hrseg_jax.models import registry
from test_convert_released import standin_cfg
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

REPO = pathlib.Path(__file__).resolve().parents[1]
W48_PTH = 'hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth'
OCR_PTH = 'hrnet_ocr_cs_8162_torch11.pth'
PHOTO = 'photos/frankfurt_000000_000294_leftImg8bit.png'
IMAGE_SIZE = (64, 128)   # the photos' and the dataset's own (full) size here
# Appended to the README's commands: small sizes, few steps (flags only).
SMALL_EVAL = ['--config.eval.base_size=128', '--config.eval.num_examples=2']
SMALL_WINDOWS = ['--crop_size=64,128']
SMALL_DEMO = ['--config.train.num_steps=4', '--config.train.checkpoint_every_steps=2',
              '--config.train.async_checkpoints=False', '--config.train.log_every_steps=1',
              '--config.eval.every_steps=4', '--config.train.batch_size=2',
              '--config.eval.batch_size=2', '--config.data.num_train=8',
              '--config.data.num_val=2', '--config.data.image_size=(64, 128)',
              '--config.data.crop_size=(64, 128)', '--config.data.eval_size=(64, 128)',
              '--config.data.base_size=128', '--config.data.eval_base_size=128',
              '--config.data.eval_crop_size=(64, 128)', '--config.eval.crop_size=(64, 128)',
              '--config.eval.base_size=128']


def readme_blocks(lang: str) -> list[str]:
  text = (REPO / 'README.md').read_text()
  return re.findall(rf'```{lang}\n(.*?)```', text, flags=re.S)


def readme_commands() -> list[str]:
  """The README's ``python -m hrseg_jax.…`` command lines, continuations joined."""
  out = []
  for block in readme_blocks('bash'):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split('&&')[-1].split('#')[0].strip()
      if line.startswith('python -m hrseg_jax.'):
        out.append(' '.join(line.split()))
  return out


def command(*must_contain: str) -> list[str]:
  """The README command containing every string, as an argv."""
  found = [c for c in readme_commands() if all(m in c for m in must_contain)]
  assert found, f'README has no command with {must_contain}: {readme_commands()}'
  return shlex.split(found[0])


def run(cwd, argv, *extra, env=None, expect=0, quiet=True):
  """Runs a command; returns the CompletedProcess.  ``quiet``: no traceback
  and no library log lines on the console (console_checks.assert_quiet)."""
  argv = [sys.executable if a == 'python' else a for a in argv]
  # XLA's fast-compile mode, as in the tests' own process (tests/conftest.py).
  full_env = dict(os.environ, PYTHONPATH=str(REPO), JAX_DISABLE_MOST_OPTIMIZATIONS='1',
                  **(env or {}))
  r = subprocess.run(argv + list(extra), cwd=cwd, env=full_env, capture_output=True,
                     text=True, timeout=900)
  console = r.stdout + r.stderr
  assert r.returncode == expect, console[-4000:]
  assert 'Traceback' not in console, console[-4000:]
  if quiet:
    console_checks.assert_quiet(r)
  return r


def write_tiny_pth(path, cfg, seed):
  variables = tiny_hrnet_variables(registry.resolve(cfg), seed=seed)
  pth_write.save_pth(convert.to_state_dict(variables), path)  # as PyTorch saves it


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """A user's fresh folder: the configs, the released file names, photos and
  a Cityscapes tree in the original's layout (data/cityscapes, data/list)."""
  cwd = tmp_path_factory.mktemp('user')
  shutil.copytree(REPO / 'configs', cwd / 'configs')
  write_tiny_pth(cwd / W48_PTH, dict(TINY_HRNET, num_classes=19), seed=1)
  # What the released file shows: W48's branch widths, OCR, 19 classes.
  write_tiny_pth(cwd / OCR_PTH, standin_cfg(19, ocr=True), seed=2)
  synthetic.write_cityscapes_layout(
      str(cwd / 'data/cityscapes'), num_train=0, num_val=2, num_test=2,
      image_size=IMAGE_SIZE, list_dir=str(cwd / 'data/list/cityscapes'))
  (cwd / 'photos').mkdir()
  val = sorted((cwd / 'data/cityscapes/leftImg8bit/val').rglob('*.png'))
  shutil.copy(val[0], cwd / PHOTO)
  return cwd


def test_readme_shows_every_user_command():
  cmds = readme_commands()
  for needed in (('hrseg_jax.convert', W48_PTH), ('hrseg_jax.convert', '--align-corners'),
                 ('--mode eval', '--checkpoint'), ('--mode predict', '--input'),
                 ('--cityscapes_test_format', '--sliding', '--flip'),
                 ('hrseg_jax.export', '--prefix'), ('hrseg_jax.summary', '--variant w48'),
                 ('configs/demo.py', '--workdir runs/demo')):
    assert any(all(n in c for n in needed) for c in cmds), (needed, cmds)


def test_released_checkpoint_commands_as_written(folder, monkeypatch):
  """convert -> eval -> predict (defaults; test-server format) -> Python API
  -> convert --align-corners -> export --prefix, with the README's paths."""
  out = run(folder, command('hrseg_jax.convert', W48_PTH)).stdout
  assert 'converted' in out and '19 classes' in out and '(cityscapes)' in out
  assert (folder / 'converted/w48_cs').is_dir()

  out = run(folder, command('--mode eval', 'converted/w48_cs'), *SMALL_EVAL).stdout
  assert 'eval: checkpoint converted/w48_cs (converted weights, step 0)' in out
  assert 'eval: test protocol (eval.protocol), float32 compute' in out
  assert re.search(r'^eval: 2 val images \(data/list/cityscapes/val.lst\); .*, scales 1, '
                   r'no flip$', out, re.M), out
  assert re.search(r'^eval: wrote runs/w48_eval/eval/metrics.json and confusion.png$', out,
                   re.M), out
  assert re.search(r'eval 2/2 \(100%\) \| [\d.]+ img/s \| done in', out), out
  console_checks.assert_eval_table(out, classes.class_names('cityscapes', 19))
  assert (folder / 'runs/w48_eval/eval/metrics.json').exists()

  out = run(folder, command('--mode predict', '--input photos/')).stdout
  assert 'palette cityscapes' in out and "whole image at each image's own size" in out
  assert re.search(rf'predict 1/1 \(100%\) {PHOTO} \(64x128\) \| .* done in', out), out
  assert re.search(r'predicted 1 image in \d+s -> runs/w48_predict/predictions '
                   r'\(color/, labels/, overlay/\)$', out, re.M), out
  labels = folder / 'runs/w48_predict/predictions/labels' / pathlib.Path(PHOTO).name
  with Image.open(labels) as im:
    cli_classes = np.asarray(im)
  assert cli_classes.shape == IMAGE_SIZE    # the image keeps its own resolution
  assert (folder / 'runs/w48_predict/predictions/overlay' / pathlib.Path(PHOTO).name).exists()

  out = run(folder, command('--cityscapes_test_format'), *SMALL_WINDOWS).stdout
  assert 'sliding 64x128 windows (cityscapes rule: whole image at scales <= 1)' in out
  assert 'flip' in out
  # Compiled, or read from the persistent compilation cache (a repeated run).
  assert re.search(r'predict 1/2 .* \| [\d.]+ s incl\. (compiling|reading the compiled '
                   r'model) for \d+x\d+( from the cache)?( \| ETA (at most )?\d+s)?$', out,
                   re.M), out
  assert re.search(r'predict 2/2 .* done in', out), out
  results = sorted((folder / 'runs/w48_test/predictions/test_results').glob('*.png'))
  assert len(results) == 2
  with Image.open(results[0]) as im:
    assert im.mode == 'P' and set(np.unique(np.asarray(im))) <= {
        7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}

  # The Python example, literally, in the same folder.
  code = readme_blocks('python')[0]
  r = subprocess.run([sys.executable, '-c', code], cwd=folder, capture_output=True,
                     text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
  assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  assert r.stdout.startswith('cityscapes [') and (folder / 'overlay.png').exists()

  # Segmenter.predict at full resolution == --mode predict with its defaults.
  monkeypatch.chdir(folder)
  from hrseg_jax import Segmenter  # pylint: disable=g-import-not-at-top
  seg = Segmenter.from_checkpoint('converted/w48_cs')
  np.testing.assert_array_equal(seg.predict(PHOTO), cli_classes)
  assert seg.dataset == 'cityscapes' and seg.class_names[0] == 'road'
  blended = seg.overlay(PHOTO)
  assert blended.shape == (*IMAGE_SIZE, 3) and blended.dtype == np.uint8

  out = run(folder, command('hrseg_jax.convert', '--align-corners')).stdout
  assert 'converted' in out and (folder / 'converted/ocr_cs').is_dir()
  from hrseg_jax import checkpoints  # pylint: disable=g-import-not-at-top
  cfg, _ = checkpoints.load_model_config('converted/ocr_cs')
  assert cfg['align_corners'] is True and cfg['ocr']

  out = run(folder, command('hrseg_jax.export', '--prefix')).stdout
  assert 'wrote w48_cs.pth' in out
  state = pth.load_pth(folder / 'w48_cs.pth')
  assert all(k.startswith('model.') for k in state)
  original = pth.load_pth(folder / W48_PTH)
  np.testing.assert_array_equal(state['model.last_layer.3.weight'],
                                original['model.last_layer.3.weight'])


def test_summary_w48_as_written(tmp_path):
  """Counted from the traced program (nothing compiled)."""
  out = run(tmp_path, command('hrseg_jax.summary', '--variant w48')).stdout
  row = [l for l in out.splitlines() if l.startswith('w48 ')]
  assert len(row) == 1 and '65,859,379' in row[0] and ' 747.5 ' in row[0], out
  assert out.startswith('one 1024x2048 image, eval-mode forward')
  # The original's convention is a named column, explained under the table.
  assert row[0].rstrip().endswith(' 696.2') and 'GFLOPs (orig.)' in out, out
  assert out.splitlines()[-1].startswith('GFLOP: 2 x (conv + matmul)'), out


def test_demo_training_killed_resumed_then_eval(folder):
  """The README's demo: trains with a relative --workdir, is killed (SIGKILL
  after its step-2 checkpoint), resumes with the same command, finishes, and
  `--mode eval` picks the best checkpoint."""
  train = command('configs/demo.py', '--workdir runs/demo')
  assert '--mode' not in train
  killed = run(folder, train, *SMALL_DEMO, env={'HRSEG_FAULT': 'kill:3'}, expect=-9,
               quiet=False)
  assert console_checks.step_lines(killed.stdout).keys() >= {1, 2}, killed.stdout
  console_checks.assert_eta_leaves_out_compilation(killed.stdout)
  # The README's quoted step lines read as the run's: the first one (its
  # speed says it includes compilation) and a later one.
  quoted = {console_checks.step_line_shape(l) for l in
            (REPO / 'README.md').read_text().splitlines() if console_checks.STEP_LINE.match(l)}
  printed = [console_checks.step_line_shape(l) for l in killed.stdout.splitlines()
             if console_checks.STEP_LINE.match(l)]
  assert printed[0] in quoted and quoted <= set(printed), (quoted, printed)
  assert (folder / 'runs/demo/checkpoints/2').is_dir()
  assert not (folder / 'runs/demo/checkpoints/4').exists()
  resumed = run(folder, train, *SMALL_DEMO)
  console_checks.assert_training_console(resumed, steps=[3, 4], num_steps=4,
                                         start='resumed from step 2')
  console_checks.assert_eta_leaves_out_compilation(resumed.stdout)
  # The killed run compiled the step into the persistent cache: the resumed
  # run's first line says it read it (it said 'incl. compilation' alone).
  assert console_checks.step_lines(resumed.stdout)[3]['cached'], resumed.stdout
  names = classes.class_names('synthetic', 19)
  console_checks.assert_eval_table(resumed.stdout, names)
  assert 'trained 2 steps (steps 3-4 of 4, resumed from step 2) in ' in resumed.stdout
  assert 'final mIoU' in resumed.stdout
  assert sorted(p.name for p in (folder / 'runs/demo/checkpoints').iterdir()
                if p.name.isdigit()) == ['2', '4']
  out = run(folder, command('configs/demo.py', '--mode eval'), *SMALL_DEMO).stdout
  assert re.search(r'eval: best checkpoint \(step 4, mIoU [\d.]+%\)', out), out
  assert re.search(r'eval 2/2 \(100%\)', out)
  console_checks.assert_eval_table(out, names)
