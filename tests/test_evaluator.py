"""config.eval.protocol: the training loop and --mode eval run either evaluator.

The command lines run as a user types them, from a fresh folder with
relative paths, on the demo config at tiny sizes (test_readme_commands'
SMALL_DEMO flags).
"""
from __future__ import annotations

import json
import re
import shutil

import jax
import numpy as np
import pytest

import console_checks
from hrseg_jax.eval import classes, evaluator
from hrseg_jax.models import registry
from hrseg_jax.train import sharding
from test_readme_commands import REPO, SMALL_DEMO, run
from train_util import tiny_config

DEMO = ['python', '-m', 'hrseg_jax.main', '--config', 'configs/demo.py',
        '--workdir', 'runs/demo']
METRIC_KEYS = {'miou', 'pixel_acc', 'mean_acc', 'iou', 'confusion_matrix',
               'class_names', 'settings'}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A user's folder after training the demo with the test protocol."""
  cwd = tmp_path_factory.mktemp('user')
  shutil.copytree(REPO / 'configs', cwd / 'configs')
  r = run(cwd, DEMO, *SMALL_DEMO, '--config.eval.every_steps=2',
          '--config.eval.protocol=test')
  return cwd, r


def test_training_with_the_test_protocol(trained):
  cwd, r = trained
  names = classes.class_names('synthetic', 19)
  console_checks.assert_training_console(r, steps=[1, 2, 3, 4], num_steps=4,
                                         start='from scratch')
  # Until an evaluation is timed, the ETA says how many it leaves out (those
  # of steps 2 and 4; step 2's runs after its line); then it counts them.
  evals = {s: m['evals'] for s, m in console_checks.step_lines(r.stdout).items()}
  assert evals == {1: '2', 2: '2', 3: None, 4: None}, r.stdout
  assert re.search(r'^eval 2/2 \(100%\) \| [\d.]+ img/s \| done in', r.stdout, re.M), r.stdout
  assert r.stdout.count('evaluation at step ') == 2
  console_checks.assert_eval_table(r.stdout, names)
  assert re.search(r'final mIoU [\d.]+%', r.stdout)
  workdir = cwd / 'runs/demo'
  mious = {}
  for step in (2, 4):
    metrics = json.loads((workdir / f'eval/step_{step}/metrics.json').read_text())
    assert set(metrics) == METRIC_KEYS
    assert metrics['settings']['protocol'] == 'test'
    assert metrics['settings']['num_examples'] == 2
    assert np.sum(metrics['confusion_matrix']) > 0
    mious[step] = metrics['miou']
  # After each table, the best evaluation so far (the original's Best_mIoU).
  best = [max((s for s in mious if s <= step), key=lambda s: (mious[s], s))
          for step in (2, 4)]
  assert re.findall(r'^best mIoU ([\d.]+)% at step (\d+)$', r.stdout, re.M) == [
      (f'{100 * mious[s]:.2f}', str(s)) for s in best], r.stdout
  tags = console_checks._tensorboard_tags(sorted(workdir.glob('events.out.tfevents.*')))  # pylint: disable=protected-access
  if tags is not None:
    assert {'eval/miou', 'eval/pixel_acc', 'eval/confusion_matrix',
            *(f'eval/iou/{c}' for c in names if ' ' not in c)} <= tags


def test_a_training_evaluation_says_it_started_then_its_progress(tmp_path):
  """The header line comes when the evaluation starts, then its progress
  lines (here one per batch: eval.progress_seconds=0), then the table; the
  header came only with the finished table (76 s of silence on a real
  model).  log.txt has them in the same order."""
  shutil.copytree(REPO / 'configs', tmp_path / 'configs')
  r = run(tmp_path, DEMO, *SMALL_DEMO, '--config.eval.batch_size=1',
          '--config.eval.progress_seconds=0')
  for lines in (r.stdout.splitlines(),
                [l.split('  ', 1)[1] for l in
                 (tmp_path / 'runs/demo/log.txt').read_text().splitlines()]):
    at = lines.index('evaluation at step 4:')
    assert re.match(r'eval 1/2 \(50%\) \| [\d.]+ img/s', lines[at + 1]), lines[at:]
    assert re.match(r'eval 2/2 \(100%\) \| [\d.]+ img/s \| done in', lines[at + 2]), lines[at:]
    assert lines[at + 3].split() == ['id', 'class', 'IoU', '%'], lines[at:]
  bad = run(tmp_path, DEMO, *SMALL_DEMO, '--config.eval.progress_seconds=-1',
            '--workdir', 'runs/bad', expect=2)
  assert bad.stderr.strip().splitlines() == [
      'error: eval.progress_seconds=-1.0: expected seconds >= 0 (10 by default; 0: a '
      'progress line per batch)'], bad.stderr
  assert not (tmp_path / 'runs/bad').exists()


def test_eval_mode_with_the_validation_protocol(trained):
  cwd, _ = trained
  r = run(cwd, DEMO, *SMALL_DEMO, '--mode', 'eval', '--config.eval.protocol=validation')
  assert r.stdout.startswith('eval: best checkpoint (step '), r.stdout
  assert 'evaluation at step' not in r.stdout
  assert 'eval: validation protocol (eval.protocol), float32 compute' in r.stdout
  assert re.search(r'^eval: 2 val images \(synthetic\) at data.eval_size 64x128, one scale, '
                   r'no flip$', r.stdout, re.M), r.stdout
  assert re.search(r'^eval 2/2 \(100%\) \| [\d.]+ img/s \| done in', r.stdout, re.M), r.stdout
  assert re.search(r'^eval: wrote runs/demo/eval/metrics.json and confusion.png$',
                   r.stdout, re.M), r.stdout
  console_checks.assert_eval_table(r.stdout, classes.class_names('synthetic', 19))
  metrics = json.loads((cwd / 'runs/demo/eval/metrics.json').read_text())
  assert set(metrics) == METRIC_KEYS
  assert metrics['settings']['protocol'] == 'validation'
  assert metrics['settings']['eval_size'] == [64, 128]
  assert (cwd / 'runs/demo/eval/confusion.png').read_bytes()[:4] == b'\x89PNG'
  # The checkpoint's own evaluation in training (test protocol; here the
  # same images at the same size, one scale, no flip): the same matrix.
  step = re.search(r'best checkpoint \(step (\d+)', r.stdout)[1]
  during = json.loads((cwd / f'runs/demo/eval/step_{step}/metrics.json').read_text())
  assert during['settings']['protocol'] == 'test'
  assert during['confusion_matrix'] == metrics['confusion_matrix']


def test_rerun_of_a_finished_run_says_its_best_miou(trained):
  """The same command again after the run finished: nothing to train, and
  the last line gives the run's best evaluation (it said 'no evaluation')."""
  cwd, r = trained
  best = re.findall(r'^best mIoU ([\d.]+)% at step (\d+)$', r.stdout, re.M)[-1]
  again = run(cwd, DEMO, *SMALL_DEMO, '--config.eval.every_steps=2',
              '--config.eval.protocol=test')
  last = again.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r'trained no step \(the run was at step 4 of 4\) in \d+s; its best '
                      rf'mIoU was {best[0]}% at step {best[1]}', last), again.stdout


def test_checkpoint_path_of_a_training_workdir_says_which_step(trained):
  """--checkpoint runs/demo (a path, not 'best') reads the latest step: the
  first line says so, where it used to say only '(step 4)' as for a step
  folder, leaving a user to guess whether the best step was taken."""
  cwd, _ = trained
  for path, says in (('runs/demo', '(its latest step, 4)'),
                     ('runs/demo/checkpoints', '(its latest step, 4)'),
                     ('runs/demo/checkpoints/2', '(step 2)')):
    r = run(cwd, ['python', '-m', 'hrseg_jax.main', '--config', 'configs/demo.py',
                  '--workdir', 'runs/eval', '--mode', 'eval', '--checkpoint', path],
            *SMALL_DEMO, '--config.eval.protocol=validation')
    first = r.stdout.splitlines()[0]
    assert first == f'eval: checkpoint {path} {says}: hrnet custom, 19 classes', r.stdout


def test_bad_protocol_is_one_line(tmp_path):
  shutil.copytree(REPO / 'configs', tmp_path / 'configs')
  for mode in ('train', 'eval'):
    r = run(tmp_path, DEMO, '--mode', mode, '--config.eval.protocol=testval', expect=2)
    assert r.stderr.strip().splitlines() == [
        "error: eval.protocol='testval': expected one of 'validation', 'test' "
        "(or '' for the default: validation in training, test in --mode eval)"], r.stderr
  assert not (tmp_path / 'runs').exists()


def test_both_protocols_count_the_same_pixels(tmp_path):
  """Single scale, no flip, whole image, eval_size = the images' size: the
  two protocols must give the same confusion matrix."""
  config = tiny_config(num_classes=6)
  config.data.num_val = 4
  config.eval.batch_size = 2
  model_cfg = registry.resolve(config.model)
  model = registry.build_model(model_cfg)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 128, 3), np.float32),
                         train=False)
  # Weights off their initialisation, so the prediction varies per pixel (not
  # so far that the test protocol's exp(logits) overflows).
  leaves, tree = jax.tree_util.tree_flatten(variables['params'])
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  variables = dict(variables, params=jax.tree_util.tree_unflatten(tree, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
  batches = sharding.batch_sharding(sharding.make_mesh())
  cms = {}
  for protocol in evaluator.EVALUATORS:
    config.eval.protocol = protocol
    ev = evaluator.from_config(
        config, default_protocol='validation', model_cfg=model_cfg,
        to_global=lambda local: sharding.global_batch(local, batches),
        out_dir=tmp_path / protocol, log=lambda _: None)
    assert ev.protocol == protocol and ev.num_examples() == 4
    metrics = ev.run(variables)
    ev.report(metrics, step=7)
    saved = json.loads((tmp_path / protocol / 'step_7/metrics.json').read_text())
    assert set(saved) == METRIC_KEYS and saved['miou'] == pytest.approx(metrics['miou'])
    cms[protocol] = metrics['confusion_matrix']
  assert 0 < cms['test'].sum() <= 4 * 64 * 128   # void pixels not counted
  assert np.count_nonzero(cms['test'].sum(0)) >= 2, cms['test']   # not one class
  np.testing.assert_array_equal(cms['validation'], cms['test'])


def test_validation_says_what_its_first_run_spent_compiling():
  """The training ETA leaves out the evaluator's compilation: the first run
  reports the time of its compiling call, the next (same code) none."""
  config = tiny_config(num_classes=6)
  config.data.num_val = 4
  config.eval.batch_size = 2
  model_cfg = registry.resolve(config.model)
  variables = registry.build_model(model_cfg).init(
      jax.random.PRNGKey(0), np.zeros((1, 64, 128, 3), np.float32), train=False)
  batches = sharding.batch_sharding(sharding.make_mesh())
  ev = evaluator.from_config(config, default_protocol='validation', model_cfg=model_cfg,
                             to_global=lambda local: sharding.global_batch(local, batches),
                             log=lambda _: None)
  assert ev.compile_s == 0.0   # nothing run yet
  first = ev.run(variables)
  assert ev.compile_s > 0.0
  again = ev.run(variables)
  assert ev.compile_s == 0.0
  np.testing.assert_array_equal(first['confusion_matrix'], again['confusion_matrix'])


def test_eval_batch_rounds_to_whole_images_per_device(monkeypatch):
  """The validation batch is split over the devices: 1 or 2 on 4 devices is
  4 (one image each, as the original's one per GPU), 6 is 4, 8 stays 8."""
  config = tiny_config(num_classes=6)
  monkeypatch.setattr(jax, 'device_count', lambda: 4)
  for asked, used in ((1, 4), (2, 4), (6, 4), (8, 8)):
    config.eval.batch_size = asked
    ev = evaluator.from_config(config, default_protocol='validation',
                               model_cfg=registry.resolve(config.model),
                               to_global=lambda local: local, log=lambda _: None)
    assert (ev.global_batch, ev.batch_size) == (used, used), asked


def test_test_protocol_names_the_readme_settings_it_does_not_use():
  """--mode eval prints what it evaluates; where the scales or flip are not
  those of the original README's number, the line says how to get them."""
  config = tiny_config(num_classes=6)
  config.data.num_val = 2
  config.data.readme_eval_scales = (0.5, 1.0)
  config.data.readme_eval_flip = True
  config.eval.protocol = 'test'
  assert config.data.name == 'synthetic'

  def line():
    return evaluator.from_config(
        config, default_protocol='test', model_cfg=registry.resolve(config.model),
        to_global=lambda local: local, out_dir='unused', log=lambda _: None).settings_line()

  # The original README has no number for the synthetic scenes: no hint.
  assert line().endswith('scales 1, no flip'), line()
  config.data.name = 'cityscapes'
  assert line().endswith(
      "scales 1, no flip (the original README's cityscapes number uses scales 0.5,1, flip: "
      "--config.eval.scales=0.5,1 --config.eval.flip=True)"), line()
  config.eval.scales, config.eval.flip = (0.5, 1.0), True
  assert line().endswith('scales 0.5,1, flip'), line()
  config.data.readme_eval_scales, config.data.readme_eval_flip = (1.0,), False
  assert line().endswith(
      "(the original README's cityscapes number uses scales 1, no flip: "
      "--config.eval.scales=1, --config.eval.flip=False)"), line()


def test_best_so_far_counts_earlier_runs_and_not_later_steps(tmp_path):
  for step, miou in ((2, 0.30), (4, 0.50), (6, 0.50), (8, 0.40), (10, 0.90)):
    (tmp_path / f'step_{step}').mkdir()
    (tmp_path / f'step_{step}/metrics.json').write_text(json.dumps({'miou': miou}))
  (tmp_path / 'step_12').mkdir()          # no metrics.json: not an evaluation
  (tmp_path / 'metrics.json').write_text('{"miou": 1.0}')   # --mode eval's own
  assert evaluator.best_so_far(tmp_path, 2) == (2, 0.30)
  assert evaluator.best_so_far(tmp_path, 8) == (6, 0.50)   # equal: the later
  assert evaluator.best_so_far(tmp_path, 12) == (10, 0.90)
