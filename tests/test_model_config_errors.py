"""A model or mesh config the run cannot use stops training in one line,
exit 2, before the workdir is made; a named variant is its own layout."""
import os
import pathlib
import subprocess
import sys

import pytest

from hrseg_jax.models import hrnet, registry

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('override, message', [
    # The demo config has an explicit layout (variant='custom'): naming W18
    # used to train that tiny layout under W18's name.
    ('--config.model.variant=w18',
     "error: model.variant='w18' names another layout than the config's "
     "model.stage1/model.stages: start from a config of w18, or keep "
     "model.variant='custom' for this layout"),
    ('--config.model.variant=w99',
     "error: model config: unknown HRNet variant 'w99'; known: ['w18', 'w18_small_v1', "
     "'w18_small_v2', 'w30', 'w32', 'w40', 'w44', 'w48', 'w64'], or 'custom' with "
     'model.stage1 and model.stages'),
    # Used to be found after the workdir (log.txt, events, checkpoints/) was made.
    ('--config.mesh.fsdp=3', 'error: mesh.fsdp=3 does not divide the number of devices (1)'),
])
def test_bad_model_or_mesh_is_one_line_before_the_workdir(tmp_path, override, message):
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--config', 'configs/demo.py',
                      '--workdir', 'runs/demo', override],
                     cwd=tmp_path, env=dict(env, PYTHONPATH=str(REPO)),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines() == [message], r.stderr[-2000:]
  assert [p.name for p in tmp_path.iterdir()] == ['configs']


def test_a_named_variant_with_its_own_layout_spelt_out_resolves():
  """What checkpoints store: the resolved config, variant and layout both."""
  for name, spec in hrnet.VARIANTS.items():
    cfg = registry.resolve(dict(variant=name, num_classes=19, stage1=list(spec['stage1']),
                                stages=[list(s) for s in spec['stages']]))
    assert registry.resolve(cfg) == cfg
    assert registry.resolve(dict(variant=name, num_classes=19)) == cfg


@pytest.mark.parametrize('override, message', [
    # All three used to train (momentum 1.5 diverges; 0 accumulation steps ran as 1).
    ('--config.train.momentum=1.5', 'error: train.momentum=1.5: expected a number >= 0 and < 1'),
    ('--config.train.base_lr=-0.01', 'error: train.base_lr=-0.01: expected a number >= 0'),
    ('--config.train.grad_accum_steps=0',
     'error: train.grad_accum_steps=0: expected a positive integer'),
])
def test_bad_optimizer_values_are_one_line_before_the_workdir(tmp_path, override, message):
  test_bad_model_or_mesh_is_one_line_before_the_workdir(tmp_path, override, message)


def test_every_config_passes_the_training_checks():
  from hrseg_jax.config_utils import load_config_file  # pylint: disable=g-import-not-at-top
  from hrseg_jax.train import config_checks  # pylint: disable=g-import-not-at-top
  for path in sorted((REPO / 'configs').glob('*.py')):
    config_checks.check_train_config(load_config_file(str(path)).train)
