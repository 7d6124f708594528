"""train.grad_accum_steps through the command line: the console's lr is the
LR of each step's update, decaying over the run's updates."""
from __future__ import annotations

import math
import shutil

import console_checks
from hrseg_jax.config_utils import load_config_file
from hrseg_jax.train.progress import format_lr
from test_readme_commands import REPO, SMALL_DEMO, run


def test_demo_with_grad_accumulation_logs_the_applied_lr(tmp_path):
  shutil.copytree(REPO / 'configs', tmp_path / 'configs')
  steps, k = 8, 2
  flags = [f for f in SMALL_DEMO if not f.startswith('--config.train.num_steps=')]
  r = run(tmp_path, ['python', '-m', 'hrseg_jax.main', '--config', 'configs/demo.py',
                     '--workdir', 'runs/accum'], *flags, f'--config.train.num_steps={steps}',
          f'--config.train.grad_accum_steps={k}')
  found = console_checks.step_lines(r.stdout)
  assert sorted(found) == list(range(1, steps + 1)), r.stdout
  train = load_config_file(str(REPO / 'configs/demo.py')).train
  updates = steps // k
  for step, m in found.items():
    update = math.ceil(step / k)   # 1-based update this step contributes to
    want = train.base_lr * (1 - max(update - 2, 0) / updates) ** train.poly_power
    assert m['lr'] == format_lr(want), (step, r.stdout)
