"""Four training steps through the command line against the official loop.

The public fixture ``train_steps/`` holds four SGD steps of the official
HRNet training loop (float64 reference) from a given init on two images:
per-step losses, every parameter's update and the BN running statistics, for
one parameter group (``main``) and for the x10 ``last_layer`` group
(``last_layer_x10``).  Here a user's run does the same: convert the init,
train with the fixture README's config overrides, export, compare at the
fixture's tolerances.  The x10 run also stops after step 2 and resumes, so the
schedule is checked across a resume.
"""
from __future__ import annotations

import json
import lzma
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hrseg_jax.convert import pth

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / 'configs' / 'hrnet_w18_small_v2_cityscapes.py'
STEPS = 4

# The fixture README's mapping of the official settings to config overrides.
OVERRIDES = [
    '--config.model.num_classes=19', '--config.model.align_corners=False',
    '--config.data.multi_scale=False', '--config.data.flip=False',
    '--config.data.crop_size=(256, 512)', '--config.data.num_workers=0',
    '--config.train.batch_size=2', f'--config.train.num_steps={STEPS}',
    '--config.train.dtype=float32', '--config.train.base_lr=0.01',
    '--config.train.momentum=0.9', '--config.train.nesterov=False',
    '--config.train.weight_decay=0.0005', '--config.train.poly_power=0.9',
    '--config.train.warmup_steps=0', '--config.train.grad_accum_steps=1',
    '--config.train.log_every_steps=1',
    f'--config.train.checkpoint_every_steps={STEPS}',
    '--config.loss.num_chunks=1', '--config.loss.ohem=False',
    '--config.loss.ignore_label=255', '--config.eval.every_steps=-1',
]
X10 = ["--config.train.nonbackbone_keywords=('last_layer',)",
       '--config.train.nonbackbone_mult=10.0']


def _run(args, cwd):
  # XLA's fast-compile mode, as in the tests' own process (tests/conftest.py).
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  r = subprocess.run([sys.executable, '-m', *args], cwd=cwd, env=env,
                     capture_output=True, text=True, timeout=1200)
  assert r.returncode == 0, f'{args[:1]} failed:\n{r.stderr[-3000:]}'
  return r.stdout


@pytest.fixture(scope='module')
def fixture_dir(golden) -> pathlib.Path:
  return golden / 'train_steps'


@pytest.fixture(scope='module')
def converted(fixture_dir, tmp_path_factory):
  """The fixture's init weights, decompressed and converted as a user would."""
  cwd = tmp_path_factory.mktemp('train_steps')
  with lzma.open(fixture_dir / 'init.pth.xz') as src, open(cwd / 'init.pth', 'wb') as dst:
    shutil.copyfileobj(src, dst)
  _run(['hrseg_jax.convert', 'init.pth', 'ckpt', '--config', str(CONFIG),
        '--no-align-corners'], cwd)
  return cwd


def _losses(path: pathlib.Path) -> dict[int, float]:
  """losses.txt: ``step loss`` lines (a resumed step may repeat)."""
  out = {}
  for line in path.read_text().splitlines():
    step, loss = line.split()
    out[int(step)] = float(loss)
  return out


def _rel(a, b) -> float:
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(final: dict, init: dict, ref, losses: dict, tol: dict) -> dict:
  """The fixture README's metrics for one run (no assertion)."""
  updates = {k[len('update/'):]: ref[k] for k in ref.files if k.startswith('update/')}
  per_tensor, num, den = {}, 0.0, 0.0
  for name, u_ref in updates.items():
    u_ref = u_ref.astype(np.float64)
    u = final[name].astype(np.float64) - init[name].astype(np.float64)
    per_tensor[name] = _rel(u, u_ref)
    num += float(np.sum((u - u_ref) ** 2))
    den += float(np.sum(u_ref ** 2))
  zero_grad = set(tol['zero_true_gradient_biases'])
  worst = max((v, k) for k, v in per_tensor.items() if k not in zero_grad)
  bn, counters = {}, {}
  for k in ref.files:
    if not k.startswith('final/'):
      continue
    name = k[len('final/'):]
    if name.endswith('num_batches_tracked'):
      counters[name] = (int(np.asarray(final[name])), int(ref[k]))
    else:
      x, x_ref = final[name].astype(np.float64), ref[k].astype(np.float64)
      bn[name] = float(np.max(np.abs(x - x_ref)) / np.mean(np.abs(x_ref)))
  loss_ref = ref['loss_f64']
  return {
      'loss_rel': [abs(losses[t + 1] - loss_ref[t]) / abs(loss_ref[t])
                   for t in range(STEPS)],
      'aggregate_update': (num / den) ** 0.5,
      'worst_tensor': worst,
      'zero_grad_biases': {k: per_tensor[k] for k in zero_grad if k in per_tensor},
      'tensors': len(per_tensor),
      'bn_worst': max((v, k) for k, v in bn.items()),
      'bn_tensors': len(bn),
      'counters': counters,
  }


@pytest.mark.parametrize('variant', ['main', 'last_layer_x10'])
def test_four_steps_match_the_official_training_loop(variant, converted, fixture_dir):
  cwd = converted
  expected = json.loads((fixture_dir / 'expected.json').read_text())
  tol = expected['tolerances']
  data = fixture_dir / 'data'
  work = cwd / f'work_{variant}'
  train = ['hrseg_jax.main', '--config', str(CONFIG), '--workdir', work.name,
           '--config.train.init_from=ckpt', f'--config.data.root={data}',
           f'--config.data.train_list={data / "list" / "cityscapes" / "train.lst"}',
           *OVERRIDES, *(X10 if variant == 'last_layer_x10' else [])]
  if variant == 'last_layer_x10':  # stop after step 2, then resume
    out = _run(train + ['--config.train.stop_at_step=2'], cwd)
    assert _losses(work / 'losses.txt').keys() == {1, 2}, out
  out = _run(train, cwd)
  resumed = variant == 'last_layer_x10'
  assert (f'trained {STEPS - 2} steps (steps 3-{STEPS} of {STEPS}, resumed from step 2)'
          if resumed else f'trained {STEPS} steps in ') in out, out
  final_pth = cwd / f'final_{variant}.pth'
  _run(['hrseg_jax.export', work.name, final_pth.name, '--prefix', ''], cwd)

  final = pth.load_pth(final_pth)
  init = pth.load_pth(cwd / 'init.pth')
  with np.load(fixture_dir / expected['variants'][variant]['npz']) as ref:
    m = compare(final, init, ref, _losses(work / 'losses.txt'), tol)
  print(f'\n{variant}: ' + json.dumps({k: v for k, v in m.items() if k != 'counters'}))

  assert max(m['loss_rel']) <= tol['loss_rel_diff_per_step'], m['loss_rel']
  assert m['tensors'] == {'main': 438, 'last_layer_x10': 302}[variant]
  assert m['aggregate_update'] <= tol['aggregate_update_rel_l2'], m['aggregate_update']
  assert m['worst_tensor'][0] <= tol['per_tensor_update_rel_l2'], m['worst_tensor']
  for name, err in m['zero_grad_biases'].items():
    assert err <= tol['per_tensor_update_rel_l2_zero_true_gradient_biases'], (name, err)
  assert m['bn_worst'][0] <= tol['bn_running_stat_max_abs_diff_over_mean_abs_ref'], m['bn_worst']
  assert len(m['counters']) == m['bn_tensors'] // 2
  assert all(got == want == STEPS for got, want in m['counters'].values()), m['counters']
