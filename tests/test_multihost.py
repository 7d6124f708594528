"""Multi-process training on local CPU processes, launched like a cluster job.

``scripts/launch_local.py`` starts ``python -m hrseg_jax.main`` as 4
processes x 2 CPU devices (``jax.distributed`` on localhost through the
``HRSEG_*`` variables), as 1 process x 8 devices, and as 1 process x 2
devices resuming the 8-device run's checkpoint with FSDP-sharded parameters.
Checkpoints are read back here with the current process's shardings (one
CPU device), whatever topology wrote them.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing

from hrseg_jax import checkpoints
from hrseg_jax.data import pipeline, synthetic
from hrseg_jax.data.config import default_data_config
from hrseg_jax.data.errors import DataError
from train_util import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'scripts' / 'launch_local.py'
STEPS = 3

CONFIG = f'''
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from train_util import tiny_config


def get_config():
  c = tiny_config(num_steps={STEPS}, batch_size=8)
  # No random down-scaling, hence no constant padding: with it, this tiny
  # model has all-zero (dead) channels whose BatchNorm output sits exactly on
  # the ReLU kink, and the summation order of 1 vs 8 devices flips it (a
  # ~3e-4 jump of the gradient norm that has nothing to do with sharding).
  c.data.multi_scale = False
  # Float32 summation-order differences (1 vs 8 devices in one process too)
  # grow ~10x per step in this tiny model: ~3e-9 after step 1, ~1e-6 after
  # step 3 at this learning rate, while a step moves parameters by ~1e-3.
  c.train.base_lr = 0.01
  c.train.checkpoint_every_steps = 1
  c.train.keep_checkpoints = 10
  c.train.keep_best = False
  return c
'''


# XLA's CPU collectives (Gloo) give up when a peer process reaches a
# collective more than ~30 s after the others (a fixed rendezvous timeout).
# On an overloaded 2-core machine, 4 processes compiling at once can drift
# that far apart; such a run is started again once, from scratch.
GLOO_TIMEOUT = 'Gloo context initialization failed'


def launch(tmp_path, workdir, *launcher_args, overrides=()):
  """Runs the launcher to completion; returns its combined output."""
  config = tmp_path / 'multihost_config.py'
  config.write_text(CONFIG)
  env = dict(os.environ, PYTHONPATH=f'{REPO}:{REPO / "tests"}',
             JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  env.pop('XLA_FLAGS', None)
  logs = tmp_path / f'logs_{pathlib.Path(workdir).name}'
  cmd = [sys.executable, str(LAUNCH), *launcher_args, '--log_dir', str(logs),
         '--', '--config', str(config), '--workdir', str(workdir), *overrides]
  fresh = not pathlib.Path(workdir).exists()
  for attempt in range(2):
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=900)
    text = r.stdout + r.stderr + ''.join(
        f'\n--- {p.name}\n{p.read_text()[-3000:]}' for p in sorted(logs.glob('*.log')))
    if r.returncode == 0 or not (fresh and attempt == 0 and GLOO_TIMEOUT in text):
      break
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
  assert r.returncode == 0, text[-6000:]
  return text


def load_variables(workdir, step):
  """Variables of a training checkpoint, restored onto this process's device."""
  path = epath.Path(workdir) / 'checkpoints' / str(step) / 'variables'
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckpt:
    tree = ckpt.metadata(path).item_metadata
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = ckpt.restore(path, target)
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(restored)}


def assert_same_variables(got, want, atol):
  assert got.keys() == want.keys()
  for k, w in want.items():
    np.testing.assert_allclose(got[k], w, rtol=atol * 100, atol=atol, err_msg=k)


def max_change(a, b):
  return max(np.max(np.abs(a[k] - b[k])) for k in a if 'params' in k)


@pytest.fixture(scope='module')
def eight_devices(tmp_path_factory):
  """1 process x 8 devices, STEPS steps, a checkpoint after every step."""
  tmp = tmp_path_factory.mktemp('one_by_eight')
  launch(tmp, tmp / 'work', '--cpu_devices', '8')
  return tmp / 'work'


def test_four_processes_by_two_devices_equal_one_process_by_eight(
    eight_devices, tmp_path):
  work = tmp_path / 'work'
  out = launch(tmp_path, work, '--num_processes', '4', '--cpu_devices', '2')
  assert out.count(f'trained {STEPS} steps') == 1  # printed by process 0 only
  ckpt = work / 'checkpoints' / str(STEPS)
  assert sorted(p.name for p in (ckpt / 'data').glob('*.json')) == [
      f'process_{i}-of-4.json' for i in range(4)]
  # Metrics files: written by process 0 only.
  assert len(list(work.glob('events.out.tfevents.*'))) == 1
  first = load_variables(work, 1)
  assert_same_variables(first, load_variables(eight_devices, 1), atol=1e-7)
  last = load_variables(work, STEPS)
  assert_same_variables(last, load_variables(eight_devices, STEPS), atol=2e-5)
  assert max_change(last, first) > 1e-3  # 50x the tolerance


def test_eight_device_checkpoint_resumes_on_two_devices_with_fsdp(
    eight_devices, tmp_path):
  """Restore onto different shardings (2 devices, parameters split over
  mesh.fsdp=2) and continue: the same parameters as the 8-device run."""
  work = tmp_path / 'work'
  shutil.copytree(eight_devices / 'checkpoints', work / 'checkpoints')
  for step in range(2, STEPS + 1):
    shutil.rmtree(work / 'checkpoints' / str(step))
  out = launch(tmp_path, work, '--cpu_devices', '2',
               overrides=['--config.mesh.fsdp=2'])
  assert f'trained {STEPS} steps' in out
  resumed = load_variables(work, STEPS)
  assert_same_variables(resumed, load_variables(eight_devices, STEPS), atol=2e-5)
  assert max_change(resumed, load_variables(eight_devices, 1)) > 1e-3


@pytest.mark.parametrize('before,after', [(4, 1), (1, 2), (2, 4)])
def test_data_state_does_not_depend_on_the_process_count(before, after):
  """The saved Grain state of any process, restored with another process
  count, continues with the next global batch (what a resume on a different
  number of hosts needs from the input pipeline)."""
  data = tiny_config(batch_size=8).data

  def iterators(count):
    return [pipeline.make_train_iterator(data, batch_size=8 // count, seed=304,
                                         shard_index=i, shard_count=count)
            for i in range(count)]

  def global_batch(its):
    parts = [next(it) for it in its]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  old = iterators(before)
  for _ in range(5):  # crosses the 4-batch epoch boundary
    global_batch(old)
  state = old[-1].get_state()
  new = iterators(after)
  for it in new:
    it.set_state(state)
  reference = iterators(1)
  for _ in range(5):
    global_batch(reference)
  for _ in range(2):
    want, got = global_batch(reference), global_batch(new)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture
def local_bucket(tmp_path, monkeypatch):
  """``gs://`` paths served from ``tmp_path/gcs`` through etils' epath test
  hook: no network and no GCS client, but every read must go through
  ``etils.epath`` (a builtin ``open('gs://…')`` fails)."""
  # epath's own backends (mockable) rather than TensorFlow's gfile; the
  # choice is cached, so reset it here and after the test.
  monkeypatch.setenv('EPATH_USE_TF', 'false')
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  root = tmp_path / 'gcs'
  seen = []

  def local(path):
    path = os.fspath(path)
    if path.startswith('gs://'):
      seen.append(path)
      return str(root / path[len('gs://'):])
    return path

  def redirect(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  with epath_testing.mock_epath(open=redirect, exists=redirect, isdir=redirect,
                                listdir=redirect, makedirs=redirect,
                                mkdir=redirect, stat=redirect):
    yield root, seen
  monkeypatch.undo()
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def test_dataset_on_gs_reads_like_the_local_copy(local_bucket):
  root, seen = local_bucket
  lists = synthetic.write_cityscapes_layout(
      str(root / 'bucket' / 'cs'), num_train=4, num_val=0, image_size=(32, 64))
  local_cfg = default_data_config('cityscapes')
  local_cfg.update(root=str(root / 'bucket' / 'cs'), train_list=lists['train'],
                   crop_size=(16, 32), base_size=64, num_workers=0)
  gs_cfg = default_data_config('cityscapes')
  gs_cfg.update(root='gs://bucket/cs', train_list='gs://bucket/cs/train.lst',
                crop_size=(16, 32), base_size=64, num_workers=0)
  want = next(pipeline.make_train_iterator(local_cfg, batch_size=4, seed=1))
  got = next(pipeline.make_train_iterator(gs_cfg, batch_size=4, seed=1))
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert 'gs://bucket/cs/train.lst' in seen
  assert sum(p.endswith('_leftImg8bit.png') for p in seen) >= 4
  assert sum(p.endswith('_labelIds.png') for p in seen) >= 4
  from hrseg_jax.data import decode  # pylint: disable=g-import-not-at-top
  with pytest.raises(DataError, match='gs://bucket/cs/missing.png'):
    decode.read_image('gs://bucket/cs/missing.png')


def test_checkpoint_in_a_gs_workdir_is_found(local_bucket):
  """Eval/predict resolve ``--checkpoint gs://…/workdir`` through epath
  (reading the arrays is Orbax's TensorStore GCS driver: not run here)."""
  root, _ = local_bucket
  for step in (100, 200):
    (root / 'bucket' / 'run' / 'checkpoints' / str(step) / checkpoints.MODEL
     ).mkdir(parents=True)
  path, step = checkpoints.find_checkpoint('gs://bucket/run')
  assert (os.fspath(path), step) == ('gs://bucket/run/checkpoints', 200)
