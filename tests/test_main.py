"""The main entry point: converted checkpoint evaluated through --mode eval,
configs, and one-line errors."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hrseg_jax import Segmenter, modes, recipes
from hrseg_jax.config_utils import load_config_file
from hrseg_jax.convert import convert
from hrseg_jax.data import synthetic
from ctrl_c_util import WITH_CTRL_C

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_config_loads_and_resolves():
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  names = sorted(p.name for p in (REPO / 'configs').glob('*.py'))
  assert 'demo.py' in names and 'hrnet_w48_cityscapes.py' in names
  for name in names:
    c = load_config_file(str(REPO / 'configs' / name))
    cfg = registry.resolve(c.model)
    assert cfg['num_classes'] == c.data.num_classes, name
    assert len(c.loss.balance_weights) == registry.num_outputs(cfg), name


def test_cityscapes_trainval_configs_name_the_readme_test_settings():
  """The README's trainval numbers are multi-scale + flip on the test set;
  the train -> val numbers single scale, no flip."""
  ms = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  for name in ('hrnet_w48_cityscapes_trainval.py',
               'hrnet_ocr_w48_cityscapes_trainval.py'):
    c = load_config_file(str(REPO / 'configs' / name))
    assert tuple(c.data.readme_eval_scales) == ms, name
    assert c.data.readme_eval_flip is True, name
    assert c.eval.every_steps == 10 * (3475 // 12), name   # 10 epochs
  for name in ('hrnet_w48_cityscapes.py', 'hrnet_ocr_w48_cityscapes.py'):
    c = load_config_file(str(REPO / 'configs' / name))
    assert tuple(c.data.readme_eval_scales) == (1.0,), name
    assert c.data.readme_eval_flip is False, name
    assert c.eval.every_steps == 10 * (2975 // 12), name


def test_eval_mode_matches_segmenter_predict(golden, tmp_path):
  """The converted golden model through `--mode eval` predicts exactly what
  Segmenter.predict does on the same images."""
  ckpt = tmp_path / 'ckpt'
  convert.convert(golden / 'hrnet_w18_small_v2_cityscapes.pth', ckpt, log=lambda *_: None)
  root = tmp_path / 'cityscapes'
  lists = synthetic.write_cityscapes_layout(str(root), num_train=0, num_val=3,
                                            image_size=(128, 256))
  c = recipes.recipe('cityscapes', 'w18_small_v2')
  c.data.root = str(root)
  c.data.val_list = lists['val']
  c.data.eval_size = (128, 256)
  c.data.eval_base_size = 256
  c.data.eval_crop_size = (128, 256)
  c.eval.mode = 'whole'
  c.eval.crop_size = (128, 256)
  c.eval.base_size = 256
  c.eval.save_predictions = True
  result = modes.run(c, str(tmp_path / 'work'), 'eval', checkpoint=str(ckpt))
  assert 0.0 <= result['miou'] <= 1.0
  preds = sorted((tmp_path / 'work' / 'eval' / 'predictions').rglob('*.png'))
  assert len(preds) == 3
  seg = Segmenter.from_checkpoint(ckpt)
  lines = pathlib.Path(lists['val']).read_text().split('\n')
  images = [l.split()[0] for l in lines if l.strip()]
  for img_rel, pred_path in zip(sorted(images), preds):
    rgb = np.asarray(Image.open(root / img_rel).convert('RGB'))
    expected = seg.predict(rgb)
    got = np.asarray(Image.open(pred_path))
    assert got.shape == expected.shape
    assert np.mean(got == expected) >= 0.999, pred_path.name


def test_missing_dataset_is_one_line_error(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--config',
                      'configs/hrnet_w48_cityscapes.py', '--workdir', str(tmp_path / 'w'),
                      '--config.train.init_from='],
                     cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'train.lst' in last
  assert 'Traceback' not in r.stderr
  assert not (tmp_path / 'w').exists()   # data is checked before the workdir is made
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--config',
                      'configs/demo.py', '--config.train.no_such_field=1',
                      '--workdir', str(tmp_path / 'w')],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  assert "no_such_field" in r.stderr.strip().splitlines()[-1]
  assert 'Traceback' not in r.stderr


def _train(cwd, *flags, devices=1, **environ):
  """``python -m hrseg_jax.main`` in ``cwd`` on ``devices`` CPU devices."""
  env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{REPO / "tests"}',
             JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', **environ)
  return subprocess.run([sys.executable, '-m', 'hrseg_jax.main', *flags], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=300)


def test_batch_size_mistakes_are_one_line_before_the_workdir(tmp_path):
  """A training set smaller than one global batch, and a training batch that
  does not split over the devices: exit 2, one
  ``error:`` line, and no workdir made (run from a user's folder)."""
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  demo = ['--config', 'configs/demo.py', '--workdir', 'runs/demo']
  cases = (
      (1, ['--config.data.num_train=2', '--config.train.batch_size=4'],
       'error: 2 training examples are fewer than one global batch (train.batch_size=4): '
       'pass --config.train.batch_size=2 or use more training data'),
      (3, ['--config.train.batch_size=8', '--config.eval.batch_size=8'],
       'error: train.batch_size=8 is not a multiple of the 3 devices (the batch is split '
       'evenly over them): pass --config.train.batch_size=9 or another multiple of 3'),
  )
  for devices, flags, expected in cases:
    r = _train(tmp_path, *demo, *flags, devices=devices)
    assert r.returncode == 2, (flags, r.stderr)
    assert not (tmp_path / 'runs').exists(), (flags, r.stderr)
    assert r.stderr.strip().splitlines() == [expected], flags


def test_a_bad_depthwise_kernel_grad_variable_is_one_line_before_the_workdir(tmp_path):
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  r = _train(tmp_path, '--config', 'configs/demo.py', '--workdir', 'runs/demo',
             HRSEG_DEPTHWISE_KERNEL_GRAD='cudnn')
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines() == [
      "error: $HRSEG_DEPTHWISE_KERNEL_GRAD='cudnn': expected one of shifted, xla"]
  assert not (tmp_path / 'runs').exists()


def test_epoch_after_resuming_with_another_batch_counts_the_images_seen(tmp_path):
  """Steps 1-2 trained with batches of 8 (of 32 images), then resumed with
  batches of 4: a step line's epoch counts the images seen, not the step
  times the current batch (which said epoch 1.0 at step 8 after 40 images),
  and the checkpoint saves the count for the next resume."""
  (tmp_path / 'config.py').write_text(
      'from train_util import tiny_config\n\n\ndef get_config():\n'
      '  return tiny_config(num_steps=8)\n')
  run = ['--config', 'config.py', '--workdir', 'runs/e']
  first = _train(tmp_path, *run, '--config.train.stop_at_step=2')
  assert first.returncode == 0, first.stderr[-3000:]
  r = _train(tmp_path, *run, '--config.train.batch_size=4')
  assert r.returncode == 0, r.stderr[-3000:]
  epochs = {int(m[1]): m[2] for m in re.finditer(r'^step (\d+)/8 \(epoch ([\d.]+)\)',
                                                 r.stdout, re.M)}
  # 16 images in steps 1-2, then 4 a step, of 32 (8 steps per epoch of 4):
  # step 3 has seen 20 (0.6 epochs; 3 steps of 4 said 0.4), step 8 40 (1.2; was 1.0).
  assert epochs == {3: '0.6', 4: '0.8', 5: '0.9', 6: '1.0', 7: '1.1', 8: '1.2'}, r.stdout
  # The steps line's '(1.0 epochs of 8 steps)' counts steps of this batch:
  # the start line says where the run is and ends.
  start = [l for l in r.stdout.splitlines() if l.startswith('start ')]
  assert start and ('; at epoch 0.5, ending at epoch 1.2 (earlier steps had another '
                    'train.batch_size)') in start[0], r.stdout
  order = json.loads((tmp_path / 'runs/e/checkpoints/8/data_order/metadata').read_text())
  assert order['images_seen'] == 40 and order['global_batch'] == 4, order


def test_resume_with_another_example_order_warns_in_plain_words(tmp_path):
  """Resuming with another seed (or global batch) changes which examples the
  rest of the run reads: one ``warning:`` line on the console after the
  start-up block, the same line in log.txt; no raw log record."""
  (tmp_path / 'config.py').write_text(
      'from train_util import tiny_config\n\n\ndef get_config():\n'
      '  return tiny_config(num_steps=1)\n')
  first = _train(tmp_path, '--config', 'config.py', '--workdir', 'runs/t')
  assert first.returncode == 0, first.stderr[-3000:]
  # The same length: nothing left to train, nothing to compile.
  r = _train(tmp_path, '--config', 'config.py', '--workdir', 'runs/t', '--config.seed=305')
  assert r.returncode == 0, r.stderr[-3000:]
  expected = ('warning: checkpoint runs/t/checkpoints/1 was trained with '
              'another example order (seed 304 -> 305): from here on the run reads other '
              'examples than the uninterrupted run would have')
  lines = r.stdout.splitlines()
  assert expected in lines, r.stdout
  # Paths as typed (relative), like the block's workdir and checkpoints lines.
  assert lines[lines.index(expected) - 1] == (
      'start       resumed from step 1 (runs/t/checkpoints/1); nothing left to train')
  assert 'example order' not in r.stderr, r.stderr
  log = (tmp_path / 'runs' / 't' / 'log.txt').read_text().splitlines()
  assert [l.split('  ', 1)[1] for l in log if 'example order' in l] == [expected]
  # Another model: refused in one line, and config.json still describes the
  # run the checkpoints belong to.
  saved = (tmp_path / 'runs' / 't' / 'config.json').read_text()
  events = sorted((tmp_path / 'runs' / 't').glob('events.out.tfevents.*'))
  r = _train(tmp_path, '--config', 'config.py', '--workdir', 'runs/t',
             '--config.model.final_conv_kernel=3')
  assert r.returncode == 2, r.stderr[-3000:]
  assert r.stderr.strip().splitlines()[-1] == (
      'error: runs/t/checkpoints/1 is a checkpoint of another model '
      '(model.final_conv_kernel: 1 in the checkpoint, 3 in the config); use a new '
      '--workdir for this config'), r.stderr[-3000:]
  assert (tmp_path / 'runs' / 't' / 'config.json').read_text() == saved
  # No empty TensorBoard event file per refused attempt.
  assert sorted((tmp_path / 'runs' / 't').glob('events.out.tfevents.*')) == events


def test_config_override_without_a_config_file_is_one_line(tmp_path):
  """``--config.X=...`` in a folder without ``configs/`` (the default
  ``--config``), or with a ``--config`` that does not exist."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for flags, named in ((['--mode', 'predict', '--checkpoint', 'c', '--input', 'x.png'],
                        "'configs/demo.py' (the default --config)"),
                       (['--config', 'nope.py'], "'nope.py' (given)")):
    r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', *flags, '--workdir', 'w',
                        '--config.eval.batch_size=2'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f'error: --config.eval.batch_size needs a config file, and {named} is not found: '
        "pass --config with the path of one of the repository's configs/*.py files"]
    assert list(tmp_path.iterdir()) == []


def test_usage_mistakes_are_one_line_errors(tmp_path):
  """No --workdir, a stray argument, a config field under the wrong section,
  and eval/predict without --checkpoint in a workdir that has none: one
  ``error:`` line each, exit 2, nothing written (run from a user's folder
  with relative paths)."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'a.png')
  cases = (
      (['--config', 'configs/demo.py'], 'error: --workdir is required'),
      (['--config', 'configs/demo.py', '--workdir', 'w', 'stray'],
       "error: unexpected arguments ['stray']"),
      # A shell glob: the files after the first are not --input values.
      (['--mode', 'predict', '--checkpoint', 'c', '--workdir', 'w', '--input', 'a.png',
        'a.png'],
       "error: unexpected arguments ['a.png'] (flags are --name=value; see --help); "
       '--input takes one path: repeat it (--input a.png --input b.png) or give the folder'),
      (['--config', 'configs/demo.py', '--workdir', 'w',
        '--config.train.eval_every_steps=10'],
       "error: unknown config field 'config.train.eval_every_steps' (no field "
       "'eval_every_steps'; did you mean --config.eval.every_steps?)"),
      (['--config', 'configs/demo.py', '--workdir', 'runs/demo', '--mode', 'eval'],
       '--mode eval without --checkpoint uses the checkpoints of --workdir, and '
       'runs/demo has none'),
      (['--mode', 'predict', '--input', 'a.png', '--workdir', 'runs/out'],
       '--mode predict without --checkpoint uses the checkpoints of --workdir, and '
       'runs/out has none'),
      # best / latest name the workdir's checkpoints too (it said 'checkpoint not
      # found: <workdir>', as if the workdir were meant to be a checkpoint).
      (['--config', 'configs/demo.py', '--workdir', 'runs/demo', '--mode', 'eval',
        '--checkpoint', 'best'],
       '--mode eval --checkpoint best uses the checkpoints of --workdir, and '
       'runs/demo has none: pass --checkpoint PATH'),
      (['--config', 'configs/demo.py', '--workdir', 'runs/demo', '--mode', 'eval',
        '--checkpoint', 'latest'],
       '--mode eval --checkpoint latest uses the checkpoints of --workdir, and '
       'runs/demo has none'),
  )
  for flags, expected in cases:
    r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', *flags], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (flags, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), (flags, r.stderr)
    assert expected in lines[0], (flags, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.png', 'configs'], flags


def test_too_little_data_suggests_a_batch_that_passes_every_check():
  """The suggested train.batch_size also splits into the loss's chunks."""
  from hrseg_jax.train import config_checks  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r'pass --config.train.batch_size=8 or use more'):
    config_checks.check_num_train(10, 12, num_chunks=4)
  with pytest.raises(ValueError, match=r'fewer than one global batch \(train.batch_size=12\): '
                     r'use more training data$'):
    config_checks.check_num_train(3, 12, num_chunks=4)
  config_checks.check_num_train(12, 12, num_chunks=4)


def test_ctrl_c_outside_the_training_loop_is_one_line(tmp_path):
  """Ctrl-C where the training loop's handler is not installed (here: predict
  reading its --input list from a pipe that never delivers) exits 130 with
  one line, no traceback."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  fifo = tmp_path / 'images.lst'
  os.mkfifo(fifo)
  p = subprocess.Popen(
      [*WITH_CTRL_C, sys.executable, '-m', 'hrseg_jax.main', '--mode', 'predict',
       '--input', 'images.lst', '--workdir', 'runs/p', '--checkpoint', 'converted/x'],
      cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  while True:   # opening the pipe for writing succeeds once predict opened it
    try:
      writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
      break
    except OSError:
      assert p.poll() is None, p.communicate()
      time.sleep(0.05)
  try:
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
  finally:
    os.close(writer)
  assert p.returncode == 130, out + err
  assert err == 'stopped by Ctrl-C\n' and out == '', out + err
  assert not (tmp_path / 'runs').exists()


def test_ctrl_c_while_predict_compiles_exits_130_every_time(tmp_path):
  """Ctrl-C while XLA compiles the network (predict of images of sizes not
  compiled yet) crashed the interpreter's shutdown in about half the tries
  (a segmentation fault after 'stopped by Ctrl-C', exit 139): the one line
  and 130, each try."""
  import time  # pylint: disable=g-import-not-at-top
  from test_predict_console import _convert_tiny_hrnet  # pylint: disable=g-import-not-at-top
  _convert_tiny_hrnet(tmp_path)
  (tmp_path / 'photos').mkdir()
  rng = np.random.default_rng(0)
  for i in range(8):   # a new size each: each image compiles the network
    Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48 + 8 * i, 3), dtype=np.uint8)
                    ).save(tmp_path / 'photos' / f'{i}.png')
  # Compiled, not read from the tests' compilation cache (which the
  # environment variable names even with --nocompilation_cache).
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  for attempt in range(3):
    p = subprocess.Popen(
        [*WITH_CTRL_C, sys.executable, '-m', 'hrseg_jax.main', '--mode', 'predict',
         '--checkpoint', 'converted', '--input', 'photos', '--workdir', f'runs/p{attempt}',
         '--nocompilation_cache'],
        cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shown = []
    for line in p.stdout:
      shown.append(line)
      if line.startswith('predict 2/8 '):
        break
    # Where the signal lands, not a limit: the 3rd image's network compiles
    # for seconds (the crash needs a compilation under way, not a given time).
    time.sleep(1)
    assert p.poll() is None, ''.join(shown) + p.communicate()[1]
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    # The images done are written, complete: said (it was only 'stopped by Ctrl-C').
    assert p.returncode == 130 and re.fullmatch(
        rf'stopped by Ctrl-C after [23] images of 8, written under runs/p{attempt}/'
        r'predictions\n', err), (attempt, out, err)
    assert 'predicted' not in out


def test_sigterm_and_ctrl_c_notices_reach_log_txt(tmp_path):
  """SIGTERM's and Ctrl-C's notices went to the console only: log.txt (all a
  cluster user may have) now says why the run stopped, and at which step;
  a second Ctrl-C (exit 130 at once) says so, on the console too, and which
  checkpoint is the latest."""
  (tmp_path / 'config.py').write_text(
      'from train_util import tiny_config\n\n\ndef get_config():\n'
      '  return tiny_config(num_steps=6)\n')
  log_file = tmp_path / 'runs' / 's' / 'log.txt'

  def notices(lines):
    return [l for l in lines if l.startswith(('SIGTERM: ', 'Ctrl-C: '))]

  for fault, returncode in (('sigterm:2', 0), ('sigint2:4', 130)):
    before = log_file.read_text().splitlines() if log_file.exists() else []
    r = _train(tmp_path, '--config', 'config.py', '--workdir', 'runs/s',
               HRSEG_FAULT=fault)
    assert r.returncode == returncode, r.stderr[-3000:]
    log = [l.split('  ', 1)[1] for l in log_file.read_text().splitlines()[len(before):]
           if '  ' in l]
    shown = notices(r.stderr.splitlines())
    assert len(shown) == 1 and notices(log) == shown, (r.stderr, log)
    if returncode == 0:
      stopped = [l for l in r.stdout.splitlines() if l.startswith('stopped by SIGTERM')]
      assert stopped and stopped[0].startswith('stopped by SIGTERM at step 2 of 6')
      assert log[-1] == stopped[0], log
    else:   # the second Ctrl-C: one line, here and in log.txt (it exited silently)
      assert 'press Ctrl-C again to exit at once' in shown[0]
      last = r.stderr.splitlines()[-1]
      assert re.fullmatch(r'second Ctrl-C: exiting without saving; the latest checkpoint '
                          r'is step \d+', last), r.stderr
      assert log[-2:] == [shown[0], last], log


def test_a_stop_at_step_the_run_never_reaches_is_one_line(tmp_path):
  """train.stop_at_step at or before the step the run starts at stopped
  nothing (stop_at_step=0 trained every step): one ``error:`` line, exit 2,
  nothing trained."""
  (tmp_path / 'config.py').write_text(
      'from train_util import tiny_config\n\n\ndef get_config():\n'
      '  return tiny_config(num_steps=2)\n')
  r = _train(tmp_path, '--config', 'config.py', '--workdir', 'runs/t',
             '--config.train.stop_at_step=0')
  assert r.returncode == 2, r.stderr[-3000:]
  assert r.stderr.strip().splitlines() == [
      'error: train.stop_at_step=0 is not after step 0, where this run starts '
      '(train.num_steps 2), so it would never stop there: give a step in 1..1, or -1 '
      '(the default) to train to the end'], r.stderr[-3000:]
  assert 'trained' not in r.stdout
  assert not list((tmp_path / 'runs' / 't').glob('checkpoints/[0-9]*'))


def test_best_without_an_evaluation_and_latest_in_training(tmp_path):
  """A run without evaluation: `--mode eval --checkpoint best` said the
  workdir had no checkpoints at all ('runs/t has none'); training with
  `--checkpoint latest`, what training resumes from anyway, was refused."""
  (tmp_path / 'config.py').write_text(
      'from train_util import tiny_config\n\n\ndef get_config():\n'
      '  return tiny_config(num_steps=1)\n')
  run = ['--config', 'config.py', '--workdir', 'runs/t']
  first = _train(tmp_path, *run)
  assert first.returncode == 0, first.stderr[-3000:]
  r = _train(tmp_path, *run, '--mode', 'eval', '--checkpoint', 'best')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == ('error: --checkpoint best: no checkpoint in runs/t/checkpoints was '
                      'saved after an evaluation (use latest, or a path)\n'), r.stderr
  r = _train(tmp_path, *run, '--checkpoint', 'latest')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'nothing left to train' in r.stdout, r.stdout
