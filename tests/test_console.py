"""The training console's pieces: log line, start-up block, quiet logging,
class names, evaluation pictures (the command lines: tests/test_paths.py)."""
import importlib.util
import logging
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

import console_checks
from hrseg_jax import console
from hrseg_jax.eval import classes, palettes, visuals
from hrseg_jax.train import pretrained, progress

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('seconds, text', [
    (0, '0s'), (41.4, '41s'), (725, '12m05s'), (4 * 3600 + 7 * 60 + 3, '4h07m'),
    (2 * 86400 + 3 * 3600, '2d03h'), (float('inf'), '?'), (-1, '?')])
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text


def test_format_lr_and_bytes():
  assert progress.format_lr(9.87e-3) == '9.9e-3'
  assert progress.format_lr(0.05) == '5.0e-2'
  assert progress.format_lr(0.0) == '0'
  assert progress.format_bytes(14.1 * 2 ** 30) == '14.1 GiB'
  assert progress.format_bytes(300 * 2 ** 20) == '300.0 MiB'


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_counts_say_one_key_and_two_keys():
  assert [console.counted(n, 'key') for n in (0, 1, 2, 1200)] == [
      '0 keys', '1 key', '2 keys', '1200 keys']
  assert console.counted(1200, 'step', thousands=True) == '1,200 steps'
  assert console.counted(1, 'process', 'processes') == '1 process'
  assert console.counted(3, 'process', 'processes') == '3 processes'
  assert pretrained.start_note({'backbone_only': True, 'initialised': ['last_layer.0.weight'],
                                'skipped': ['classifier.weight']}, 'imagenet.pth') == (
      ', a backbone: last_layer (1 tensor) freshly initialised, 1 key of the .pth not used '
      '(classifier)')


def test_progress_line_speeds_exclude_pauses():
  clock = _Clock()
  p = progress.Progress(num_steps=1000, steps_per_epoch=100, global_batch=8,
                        start_step=0, clock=clock)
  clock.now += 50.0                        # 10 steps, compilation included
  first = p.line(10, {'loss': 0.5, 'lr': 1e-2, 'grad_norm': 2.0})
  assert 'incl. compilation' in first
  assert first.startswith('step 10/1000 (epoch 0.1) loss 0.500 lr 1.0e-2 grad 2.00 | ')
  p.add_data_time(0.5)
  p.add_paused_time(30.0)                  # an evaluation: not training time
  clock.now += 40.0                        # 10 s of training for 20 steps
  line = p.line(30, {'loss': 0.25, 'lr': 5e-3, 'grad_norm': 1.5}, memory=3 * 2 ** 30)
  assert line == ('step 30/1000 (epoch 0.3) loss 0.250 lr 5.0e-3 grad 1.50 | '
                  '16.0 img/s, 0.500 s/step, data 5% | ETA 8m05s | mem 3.0 GiB')
  assert console_checks.STEP_LINE.match(line)['eta'] == '8m05s'


def test_first_eta_leaves_out_compilation():
  """A resumed run's first line: 2 steps after a 40 s compilation.  Its
  speeds say they include compilation; its ETA is the steps' own speed
  (was 38 steps x 20.5 s/step = 13 min for 38 s of training)."""
  clock = _Clock()
  p = progress.Progress(num_steps=40, steps_per_epoch=32, global_batch=8,
                        start_step=0, clock=clock)
  p.add_compile_time(40.0)
  clock.now += 41.0
  first = p.line(2, {'loss': 0.5, 'lr': 1e-2, 'grad_norm': 2.0})
  assert first.endswith('20.500 s/step incl. compilation, data 0% | ETA 19s'), first
  clock.now += 2.0                          # the next window has no compilation
  assert p.line(4, {'loss': 0.5, 'lr': 1e-2, 'grad_norm': 2.0}).endswith('| ETA 36s')
  # A repeated run that read the compiled step from the persistent cache.
  p = progress.Progress(num_steps=40, steps_per_epoch=32, global_batch=8,
                        start_step=0, clock=clock)
  p.add_compile_time(3.0, from_cache=True)
  clock.now += 5.0
  first = p.line(2, {'loss': 0.5, 'lr': 1e-2, 'grad_norm': 2.0})
  assert '2.500 s/step incl. compilation (read from the cache), data 0%' in first, first
  assert console_checks.STEP_LINE.match(first)['cached']


def test_a_slow_first_step_shows_its_images_per_second():
  """One image in a 47 s first step (a big model compiling): 0.021 img/s,
  not '0.0 img/s'; the eval lines' rates read the same."""
  clock = _Clock()
  p = progress.Progress(num_steps=100, steps_per_epoch=100, global_batch=1,
                        start_step=0, clock=clock)
  clock.now += 47.241
  line = p.line(1, {'loss': 0.5, 'lr': 1e-2, 'grad_norm': 2.0})
  assert '| 0.021 img/s, 47.241 s/step incl. compilation,' in line, line
  assert console_checks.STEP_LINE.match(line)['ips'] == '0.021'
  assert [progress.format_rate(r) for r in (0.0041, 0.17, 5.333, 13.21)] == [
      '0.0041', '0.17', '5.33', '13.2']


def test_a_training_evaluations_progress_lines_come_only_when_due():
  """ends=False (an evaluation during training): no line for the first
  batches, the first 10 s after the start, the last one only after an
  earlier line; a 3 s evaluation prints none (the table says it all)."""
  from hrseg_jax.progress import Progress  # pylint: disable=g-import-not-at-top
  clock = _Clock()
  short = Progress(8, 'eval', clock=clock)
  clock.now += 3.0
  assert [short.due(n, 10.0, ends=False) for n in (4, 8)] == [False, False]
  long = Progress(500, 'eval', clock=clock)
  due = []
  for n in range(1, 501):
    clock.now += 0.25
    if long.due(n, 10.0, ends=False):
      due.append(n)
  assert due == [40, 80, 120, 160, 200, 240, 280, 320, 360, 400, 440, 480, 500]
  assert Progress(8, 'eval', clock=clock).due(4, 10.0)   # --mode eval: the first one


def test_eta_counts_the_evaluations_still_to_come():
  """Evaluations every 100 steps of 300, and after the last: the ETA left them
  out (a run with periodic evaluation ended long after it).  Until one is
  timed the line says how many it leaves out; then each takes the latest time."""
  clock = _Clock()
  p = progress.Progress(num_steps=300, steps_per_epoch=100, global_batch=8,
                        start_step=0, eval_every=100, clock=clock)
  metrics = {'loss': 0.5, 'lr': 1e-2, 'grad_norm': 2.0}
  clock.now += 50.0                          # 1 s per step
  assert p.line(50, metrics).endswith('| ETA 4m10s + 3 evals')
  clock.now += 50.0
  assert p.line(100, metrics).endswith('| ETA 3m20s + 3 evals')   # 100's is next
  p.add_eval_time(30.0)
  p.add_paused_time(30.0)
  clock.now += 80.0
  assert p.line(150, metrics).endswith('| ETA 3m30s')   # 150 s + 2 x 30 s
  p.add_eval_time(20.0)                      # the latest evaluation's time
  clock.now += 50.0
  assert p.line(200, metrics).endswith('| ETA 2m20s')   # 100 s + 2 x 20 s
  clock.now += 100.0
  assert p.line(300, metrics).endswith('| ETA 20s')     # the last one is to come
  assert progress.Progress(299, 100, 8, 0, eval_every=100).evals_left(200) == 2
  no_eval = progress.Progress(300, 100, 8, 0, clock=clock)   # eval.every_steps=-1
  clock.now += 1.0
  assert no_eval.line(1, metrics).endswith(' | ETA 4m59s')


def test_eta_leaves_out_the_evaluators_compilation():
  """The first evaluation compiles the evaluator (25 s of its 30 s); the
  evaluations after it reuse that code: the ETA counts 5 s for each of the
  two still to come (it counted 30 s each: 2m50s, and with many evaluations
  of a real model, tens of minutes too many)."""
  clock = _Clock()
  p = progress.Progress(num_steps=300, steps_per_epoch=100, global_batch=8,
                        start_step=0, eval_every=100, clock=clock)
  metrics = {'loss': 0.5, 'lr': 1e-2, 'grad_norm': 2.0}
  clock.now += 100.0                         # 1 s per step
  assert p.line(100, metrics).endswith('| ETA 3m20s + 3 evals')
  p.add_eval_time(30.0, compile_s=25.0)
  p.add_paused_time(30.0)
  clock.now += 80.0
  assert p.line(150, metrics).endswith('| ETA 2m40s')   # 150 s + 2 x 5 s
  p.add_eval_time(6.0)                       # a later one: no compilation
  clock.now += 50.0
  assert p.line(200, metrics).endswith('| ETA 1m52s')   # 100 s + 2 x 6 s


def test_speeds_go_to_tensorboard_after_the_compiling_window():
  from hrseg_jax.train import hooks  # pylint: disable=g-import-not-at-top
  clock, written, printed = _Clock(), {}, []
  writer = types.SimpleNamespace(
      write_scalars=lambda step, scalars: written.__setitem__(step, dict(scalars)))
  hook = hooks.ProgressHook(
      log_every_steps=10, nonfinite='stop', loss_log=hooks.LossLog('unused', enabled=False),
      writer=writer, console=types.SimpleNamespace(print=printed.append),
      progress=progress.Progress(num_steps=40, steps_per_epoch=10, global_batch=4,
                                 start_step=0, clock=clock),
      lr_fn=lambda step: 0.01, checkpointer=None)
  state = types.SimpleNamespace(skipped=0)
  for step, seconds in ((10, 60.0), (20, 5.0)):
    clock.now += seconds
    for s in range(step - 9, step + 1):
      hook.add(s, {'loss': np.float32(1.0), 'grad_norm': np.float32(2.0),
                   'finite': np.bool_(True)})
    hook.fetch()
    hook.write(step, state)
  assert 'train/images_per_sec' not in written[10]       # compilation inside
  assert written[20]['train/images_per_sec'] == pytest.approx(8.0)
  assert written[20]['train/seconds_per_step'] == pytest.approx(0.5)
  assert written[20]['train/eta_seconds'] == pytest.approx(10.0)
  assert written[20]['train/data_wait_share'] == 0.0
  assert printed[1].endswith('8.00 img/s, 0.500 s/step, data 0% | ETA 10s'), printed


def test_device_memory():
  def dev(stats):
    return types.SimpleNamespace(memory_stats=lambda: stats)
  assert progress.device_memory([dev(None)]) is None
  assert progress.device_memory([dev({'peak_bytes_in_use': 5}),
                                 dev({'peak_bytes_in_use': 7})]) == 7


def test_startup_block():
  cpu = types.SimpleNamespace(platform='cpu', device_kind='cpu')
  text = progress.startup_block(
      devices=[cpu, cpu], mesh_shape={'data': 2, 'fsdp': 1}, process_count=1,
      global_batch=16, local_batch=16, num_steps=1000, steps_per_epoch=185,
      num_train=2975, num_val=500, model='hrnet w48, 19 classes', num_params=65859379,
      workdir='/runs/w48', checkpoints='/runs/w48/checkpoints', start='from scratch')
  lines = text.splitlines()
  assert [l.split(' ', 1)[0] for l in lines] == list(console_checks.STARTUP_KEYS)
  assert 'mesh data 2 x fsdp 1' in lines[0]
  assert '2,975 train, 500 val' in text and '65,859,379 parameters' in text
  # Evaluation turned off (a negative eval.every_steps) is said, not silent.
  plan = dict(devices=[cpu], mesh_shape={'data': 1, 'fsdp': 1}, process_count=1,
              global_batch=8, local_batch=8, num_steps=64, steps_per_epoch=32,
              num_train=256, num_val=None)
  steps = progress.plan_block(**plan, eval_every=-5).splitlines()[2]
  assert steps == ('steps       64 (2.0 epochs of 32 steps); no evaluation during '
                   'training (eval.every_steps=-5)'), steps
  assert 'evaluation' not in progress.plan_block(**plan, eval_every=4)


def test_data_line_names_where_tfds_data_comes_from(tmp_path, monkeypatch):
  """The data line names a TFDS dataset's splits and data_dir, as it names
  the lists and data.root of files (it gave only the TFDS name)."""
  from hrseg_jax.data.config import default_data_config  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  cfg = default_data_config('cityscapes')
  cfg.update(source='tfds', tfds_name='hrseg_cityscapes', tfds_data_dir='data/tfds',
             tfds_val_split='val')
  assert progress.data_origin(cfg, True) == (
      '(TFDS hrseg_cityscapes train, val; data_dir data/tfds)')
  assert progress.data_origin(cfg, False) == '(TFDS hrseg_cityscapes train; data_dir data/tfds)'
  cfg.tfds_data_dir = ''
  assert progress.data_origin(cfg, False) == (
      "(TFDS hrseg_cityscapes train; data_dir TFDS's default)")


def test_orbax_records_are_dropped_unless_verbose():
  def record(path, level):
    return logging.LogRecord('absl', level, path, 1, 'msg', None, None)
  orbax_file = os.path.join('site-packages', 'orbax', 'checkpoint', 'x.py')
  ours = os.path.join('hrseg_jax', 'train', 'loop.py')
  f = console._DropOrbaxChatter()  # pylint: disable=protected-access
  assert not f.filter(record(orbax_file, logging.WARNING))
  assert f.filter(record(orbax_file, logging.ERROR))
  assert f.filter(record(ours, logging.WARNING))
  absl_logger = logging.getLogger('absl')
  try:
    console.configure(verbose=True)
    console.quiet_orbax()
    assert console._FILTER not in absl_logger.filters  # pylint: disable=protected-access
    console.configure(verbose=False)
    assert console._FILTER in absl_logger.filters  # pylint: disable=protected-access
    # The ONNX serialiser's per-value warnings (hundreds for Lite-HRNet).
    assert not logging.getLogger('onnx_ir.serde').isEnabledFor(logging.WARNING)
    assert logging.getLogger('onnx_ir.serde').isEnabledFor(logging.ERROR)
  finally:
    console._verbose = False  # pylint: disable=protected-access


def test_console_writes_the_log_file(tmp_path, capsys):
  with console.Console(tmp_path / 'log.txt') as c:
    c.print('step 1/2\nsecond')
    logging.getLogger('hrseg_test').warning('a warning')
    c.log('only in the file')
  with console.Console(tmp_path / 'other.txt', enabled=False) as c:
    c.print('hidden')
  out = capsys.readouterr().out
  assert out == 'step 1/2\nsecond\n'
  log = (tmp_path / 'log.txt').read_text().splitlines()
  assert log[0].endswith('  step 1/2') and log[1].endswith('  second')
  assert log[2] == 'WARNING a warning' and log[3].endswith('  only in the file')
  assert not (tmp_path / 'other.txt').exists()


def test_synthetic_class_names():
  assert classes.class_names('synthetic', 6) == (
      'road', 'sky', 'building', 'vegetation', 'sidewalk', 'car')
  names = classes.class_names('synthetic', 12)
  assert names[5:] == ('car', 'person', 'pole', 'truck', 'bicycle', 'car-2', 'person-2')
  assert classes.class_names('synthetic', 19) == classes.class_names('cityscapes', 19)
  assert classes.class_names('synthetic', 3) == ('road', 'sky', 'building')


def test_confusion_image_draws_row_shares():
  cm = np.array([[90, 10, 0], [0, 0, 0], [0, 50, 50]])
  img = visuals.confusion_image(cm, ['road', 'sky', 'car'])
  assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
  # Cells shade from white (0 %) to dark blue (100 %); the empty row is grey.
  flat = img.reshape(-1, 3).astype(int)

  def drawn(share):
    colour = np.rint(255 + share * (np.array([8, 48, 107]) - 255))
    return (np.abs(flat - colour) <= 1).all(axis=1).sum()
  cell = drawn(0.9)
  assert cell > 0 and drawn(0.1) == cell and drawn(0.5) == 2 * cell
  assert drawn(0.3) == 0 and drawn(1.0) == 0
  assert (flat == [225, 225, 225]).all(axis=1).sum() >= 3 * cell
  big = visuals.confusion_image(np.eye(150, dtype=int), [f'c{i}' for i in range(150)])
  assert big.shape[0] < 1000 and big.shape[1] < 1000


def test_overlay_strips():
  pal = palettes.get_palette('cityscapes')
  images = np.full((2, 4, 5, 3), 100.0)
  labels = np.zeros((2, 4, 5), np.int32)
  labels[:, 0] = 255
  preds = np.ones((2, 4, 5), np.int32)
  out = visuals.overlay_strips(images, labels, preds, pal, alpha=1.0)
  assert out.shape == (2, 4, 15, 3) and out.dtype == np.uint8
  assert (out[:, :, :5] == 100).all()                       # the image
  assert (out[:, 0, 5:10] == 100).all()                     # ignore: image shows
  assert (out[:, 1:, 5:10] == pal[0]).all()                 # ground truth colours
  assert (out[:, :, 10:] == pal[1]).all()                   # prediction colours


def test_training_summary_line_counts_this_runs_steps():
  from hrseg_jax.train.loop import summary_line  # pylint: disable=g-import-not-at-top
  ev = {'miou': 0.5, 'pixel_acc': 0.9}
  base = dict(steps=300, seconds=12.4, preempted=False, stop_reason=None)
  assert summary_line(dict(base, start_step=0, final_step=300, eval=ev)) == (
      'trained 300 steps in 12s; final mIoU 50.00% (pixel acc 90.00%)')
  # Written as the ETAs are (it said 'in 1022 s').
  assert summary_line(dict(base, start_step=0, final_step=300, seconds=1022.4)) == (
      'trained 300 steps in 17m02s; no evaluation')
  assert summary_line(dict(base, start_step=100, final_step=300)) == (
      'trained 200 steps (steps 101-300 of 300, resumed from step 100) in 12s; '
      'no evaluation')
  # The count is written as the step numbers beside it, which scripts read
  # back (it said 'trained 1,000 steps (steps 1001-2000 of 2000').
  assert summary_line(dict(base, steps=2000, start_step=1000, final_step=2000)) == (
      'trained 1000 steps (steps 1001-2000 of 2000, resumed from step 1000) in 12s; '
      'no evaluation')
  assert summary_line(dict(base, start_step=300, final_step=300)).startswith(
      'trained no step (the run was at step 300 of 300)')
  stopped = dict(base, start_step=8, final_step=9, preempted=True, stop_reason='Ctrl-C',
                 eval=ev, eval_step=4)
  assert summary_line(stopped) == (
      'stopped by Ctrl-C at step 9 of 300, checkpoint saved; rerun the same command '
      'to resume. Trained 1 step (step 9 of 300, resumed from step 8) in 12s; '
      'mIoU 50.00% at step 4')
  # Ctrl-C before the first step: no checkpoint written (none at all when
  # the run had not started), so none is claimed.
  early = dict(base, final_step=0, start_step=0, preempted=True, stop_reason='Ctrl-C')
  assert summary_line(early) == (
      'stopped by Ctrl-C before step 1 of 300: no step trained, nothing saved; '
      'rerun the same command to start')
  assert summary_line(dict(early, start_step=8, final_step=8)) == (
      'stopped by Ctrl-C before step 9 of 300: no step trained, the checkpoint of '
      'step 8 is kept; rerun the same command to resume')


def test_summary_columns_stay_aligned_with_a_long_config_path(tmp_path, capsys):
  from hrseg_jax import summary  # pylint: disable=g-import-not-at-top
  long = tmp_path / 'a_config_file_with_a_rather_long_name_demo.py'
  long.write_text((REPO / 'configs' / 'demo.py').read_text())
  assert summary.main(['--config', str(long), '--variant', 'w18_small_v1',
                       '--size', '64', '128']) == 0
  header, *rows, legend = capsys.readouterr().out.splitlines()[1:]
  assert len(rows) == 2 and legend.startswith('GFLOP: '), legend
  end = header.index('params') + len('params')
  for row in rows:   # the params column ends where its header does
    assert row[end - 1].isdigit() and row[end] == ' ', (header, row)


def test_tensorflow_is_kept_off_the_gpus(monkeypatch):
  """Whatever imports TensorFlow through the console leaves the GPUs to JAX."""
  calls = []
  fake = types.SimpleNamespace(config=types.SimpleNamespace(
      set_visible_devices=lambda devices, kind: calls.append((devices, kind))))
  monkeypatch.setitem(sys.modules, 'tensorflow', fake)
  assert console.import_tensorflow_quietly() is fake
  assert calls == [([], 'GPU')]


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None,
                    reason='TensorFlow is not installed')
@pytest.mark.parametrize('workdir, imported', [('runs/x', False), ('gs://bucket/run', True)])
def test_main_imports_tensorflow_only_when_a_run_may_use_it(workdir, imported):
  """Its import takes seconds: only gs:// paths (etils reads them through its
  gfile) and TFDS sources make python -m hrseg_jax.main import it first."""
  code = ('import sys\n'
          'from hrseg_jax import console\n'
          f'console.import_tensorflow_if_used(None, [{workdir!r}])\n'
          'print("tensorflow" in sys.modules)\n')
  r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                     timeout=300, check=True)
  assert r.stdout.split() == [str(imported)], r.stdout + r.stderr
  assert r.stderr == ''   # imported quietly
