"""Multi-process training on local CPU processes, launched like a cluster job.

``scripts/launch_local.py`` starts ``python -m hrseg_jax.main`` as 1 process
x 8 devices (the uninterrupted reference), as 2 processes x 4 CPU devices
(``jax.distributed`` on localhost through the ``HRSEG_*`` variables) stopped
by SIGTERM to one process and resumed as 1 x 8 and as 4 x 2, as 1 process x 2
devices resuming the 8-device run's checkpoint with FSDP-sharded
parameters, and evaluates on 2 processes x 4 devices.  Checkpoints are read
back here with the current process's shardings (one CPU device), whatever
topology wrote them.
"""
import json
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
STEPS = 4

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
  # A ReLU input that float32 rounding puts within ~1e-7 of zero is gated
  # differently by other reduction orders (in-process vs cross-process sums),
  # a jump of the gradient, not a rounding of it.  With seed 304, step 1 had
  # one such input among the 131072 of layer1's output ReLU: -0.19453423 +
  # 0.19453408 = -1.5e-7, gated on by 2 processes x 4 devices; that moved
  # the stem's and layer1's parameters by up to 1% of their step; at step 2
  # the ReLUs those changes put across zero moved stage 4's fuse_layers_3_0
  # by up to 40% of its step.  With this seed no ReLU input of steps 1-4 of
  # the 1 x 8 run is within 5e-7 of zero (inputs are O(1)), and the 2 x 4 run
  # ends step 2 within 0.6% of the 1 x 8 run's step; resumed as 1 x 8, two
  # inputs of step 3 still cross zero (-6.2e-7 and -5.0e-7 become positive),
  # which leaves step 4's parameters 3.7% of that step off (margin: 1/20).
  c.seed = 12
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


def launch(tmp_path, workdir, *launcher_args, overrides=(), env_extra=None):
  """Runs the launcher to completion; returns its combined output."""
  config = tmp_path / 'multihost_config.py'
  config.write_text(CONFIG)
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'HRSEG_FAULT')}
  env.update(PYTHONPATH=f'{REPO}:{REPO / "tests"}',
             JAX_DISABLE_MOST_OPTIMIZATIONS='1', **(env_extra or {}))
  logs = tmp_path / f'logs_{pathlib.Path(workdir).name}'
  cmd = [sys.executable, str(LAUNCH), *launcher_args, '--log_dir', str(logs),
         '--', '--config', str(config), '--workdir', str(workdir), *overrides]
  fresh = not pathlib.Path(workdir).exists()
  for attempt in range(2):
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=1800)
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


def assert_same_variables(got, want, atol, previous=None, margin=20):
  """``got`` equals ``want`` to ``atol`` (rtol 0).  With ``previous`` (the
  variables one step before ``want``): every parameter tensor that the last
  step moved differs from ``want`` by less than 1/``margin`` of that move, so
  a skipped or repeated update cannot pass."""
  assert got.keys() == want.keys()
  for k, w in want.items():
    np.testing.assert_allclose(got[k], w, rtol=0, atol=atol, err_msg=k)
    if previous is not None and 'params' in k:
      moved = np.max(np.abs(w - previous[k]))
      off = np.max(np.abs(got[k] - w))
      assert off * margin <= moved or off == moved == 0, (k, off, moved)


def max_change(a, b):
  return max(np.max(np.abs(a[k] - b[k])) for k in a if 'params' in k)


@pytest.fixture(scope='module')
def eight_devices(tmp_path_factory):
  """1 process x 8 devices, STEPS steps, a checkpoint after every step."""
  tmp = tmp_path_factory.mktemp('one_by_eight')
  launch(tmp, tmp / 'work', '--cpu_devices', '8')
  return tmp / 'work'


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
  assert (f'trained {STEPS - 1} steps (steps 2-{STEPS} of {STEPS}, resumed from '
          'step 1)') in out, out[-3000:]
  resumed = load_variables(work, STEPS)
  assert_same_variables(resumed, load_variables(eight_devices, STEPS), atol=2e-5,
                        previous=load_variables(eight_devices, STEPS - 1))
  assert max_change(resumed, load_variables(eight_devices, 1)) > 1e-3


def read_losses(workdir):
  """{step: loss} of losses.txt; each step exactly once."""
  lines = (workdir / 'losses.txt').read_text().split('\n')
  pairs = [(int(a), float(b)) for a, b in (l.split() for l in lines if l.strip())]
  assert len({s for s, _ in pairs}) == len(pairs), pairs
  return dict(pairs)


# Saves and logs only at the last step (and a stop); the other steps run with
# the check that they never wait for the device.
GUARDED = ['--config.train.checkpoint_every_steps=100',
           '--config.train.transfer_guard=disallow']


def test_preempted_on_two_hosts_resumes_on_one_and_on_four(eight_devices, tmp_path):
  """2 processes x 4 devices; SIGTERM to process 1 after step 1.  Both agree
  on a step (JAX's preemption service), save it and exit 0; the steps
  between log/checkpoint steps never wait for the device
  (train.transfer_guard='disallow').  Resumed as 1 x 8 and as 4 x 2, the
  runs log the uninterrupted 1 x 8 run's losses and end with its
  parameters."""
  work = tmp_path / 'two_by_four'
  out = launch(tmp_path, work, '--num_processes', '2', '--cpu_devices', '4',
               env_extra={'HRSEG_FAULT': 'sigterm@1:1'},
               overrides=GUARDED + ['--config.train.log_every_steps=2'])  # sync at 2
  saved = sorted(int(p.name) for p in (work / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert len(saved) == 1 and 1 <= saved[0] < STEPS, (saved, out[-3000:])
  stop = saved[0]
  # Every process stopped after the same step (one log file per process, and
  # process 0's line on the terminal too: launch_local --log_dir shows it).
  assert out.count(f'at step {stop} of {STEPS}, checkpoint saved') == 3, out[-3000:]
  # One input state for all processes; metrics files from process 0 only.
  order = json.loads((work / 'checkpoints' / str(stop) / 'data_order' / 'metadata').read_text())
  assert order['step'] == stop and not (work / 'checkpoints' / str(stop) / 'data').exists()
  # TensorBoard events from process 0 only; the file is made at the first
  # write, so a run stopped before its first log step (step 2) has none.
  assert len(list(work.glob('events.out.tfevents.*'))) <= 1
  want = read_losses(eight_devices)
  for name, args, now in (
      ('one_by_eight', ['--cpu_devices', '8'], '1 process, 8 devices'),
      ('four_by_two', ['--num_processes', '4', '--cpu_devices', '2'], '4 processes, 8 devices')):
    resumed = tmp_path / name
    shutil.copytree(work, resumed)
    out = launch(tmp_path, resumed, *args,
                 overrides=GUARDED + ['--config.train.log_every_steps=100'])
    # Printed by process 0 only.
    # Process 0's lines twice: its log file, and the terminal (--log_dir shows it).
    assert out.count(f'of {STEPS}, resumed from step {stop}) in ') == 2, out[-3000:]
    # The start-up block says the topology changed.
    assert out.count(f'resumed from step {stop} (') == 2, out[-3000:]
    assert out.count(f'; saved on 2 processes, 8 devices, now {now}') == 2, out[-3000:]
    # The resumed run adds at most one events file (process 0's).
    assert len(list(resumed.glob('events.out.tfevents.*'))) <= 2, name
    got = read_losses(resumed)
    assert sorted(got) == list(range(1, STEPS + 1)), (name, got)
    np.testing.assert_allclose([got[s] for s in sorted(got)],
                               [want[s] for s in sorted(got)], rtol=1e-5, atol=0,
                               err_msg=name)
    assert_same_variables(load_variables(resumed, STEPS),
                          load_variables(eight_devices, STEPS), atol=2e-5,
                          previous=load_variables(eight_devices, STEPS - 1))


def test_eval_on_two_hosts_equals_eval_on_one(eight_devices, tmp_path):
  """--mode eval as 2 processes x 4 devices (each process evaluates its
  examples, the confusion matrices are summed) gives exactly the confusion
  matrix of a single-process evaluation."""
  from hrseg_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  launch(tmp_path, eight_devices, '--num_processes', '2', '--cpu_devices', '4',
         overrides=['--mode', 'eval'])
  got = json.loads((eight_devices / 'eval' / 'metrics.json').read_text())
  assert got['settings']['process_count'] == 2
  c = tiny_config(num_steps=STEPS, batch_size=8)
  model_cfg, variables, _ = checkpoints.load_model(eight_devices)
  want = evaluate.evaluate(model_cfg, variables, c.data, c.eval, log=lambda _: None)
  assert np.sum(want['confusion_matrix']) > 0
  assert got['confusion_matrix'] == want['confusion_matrix']
  assert got['miou'] == want['miou']
  # The batched validation on the 2 x 4 mesh (the checkpoint's variables
  # replicated onto it): here (eval_size = the images' size, one scale, no
  # flip, whole image) it must count the same matrix.
  launch(tmp_path, eight_devices, '--num_processes', '2', '--cpu_devices', '4',
         overrides=['--mode', 'eval', '--config.eval.protocol=validation'])
  got = json.loads((eight_devices / 'eval' / 'metrics.json').read_text())
  assert got['settings']['protocol'] == 'validation'
  assert got['settings']['process_count'] == 2
  assert got['confusion_matrix'] == want['confusion_matrix']


@pytest.mark.parametrize('before,after', [(4, 1), (1, 2), (2, 4)])
def test_data_order_is_a_function_of_the_global_step(before, after):
  """Global batch t is the same whatever the process count that reads it,
  and the processes of any count started at step t (what a resume does)
  continue with the batches of an uninterrupted single-process run."""
  data = tiny_config(batch_size=8).data

  def iterators(count, start_step=0):
    return [pipeline.make_train_iterator(data, batch_size=8 // count, seed=304,
                                         shard_index=i, shard_count=count,
                                         start_step=start_step)
            for i in range(count)]

  def global_batch(its):
    parts = [next(it) for it in its]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  reference = iterators(1)
  want = [global_batch(reference) for _ in range(7)]
  old = iterators(before)
  for t in range(5):  # crosses the 4-batch epoch boundary
    got = global_batch(old)
    for k in got:
      np.testing.assert_array_equal(got[k], want[t][k], err_msg=k)
  new = iterators(after, start_step=5)
  for t in (5, 6):
    got = global_batch(new)
    for k in got:
      np.testing.assert_array_equal(got[k], want[t][k], err_msg=k)


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


def test_predict_splits_inputs_over_processes_into_a_gs_folder(local_bucket, tmp_path):
  """Each process predicts every P-th image and writes only its files;
  together they write exactly the single-process output, here into a
  ``gs://`` folder (through etils.epath)."""
  import cv2  # pylint: disable=g-import-not-at-top
  from hrseg_jax import predict as predict_lib  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  from test_eval_inference import TINY_HRNET, tiny_hrnet_variables  # pylint: disable=g-import-not-at-top
  root, seen = local_bucket
  cfg = registry.resolve(dict(TINY_HRNET, num_classes=19))
  variables = tiny_hrnet_variables(cfg, seed=1)
  images = tmp_path / 'images'
  images.mkdir()
  for i in range(5):
    rgb = np.random.default_rng(i).integers(0, 256, (24, 40, 3), np.uint8)
    cv2.imwrite(str(images / f'im{i}.png'), rgb)
  single = tmp_path / 'single'
  predict_lib.predict(cfg, variables, str(images), str(single), shard=(0, 1))
  want = {os.fspath(p.relative_to(single)): p.read_bytes()
          for p in single.rglob('*.png')}
  assert len(want) == 15   # labels, color, overlay for 5 images
  written = []
  for index in range(2):
    results = predict_lib.predict(cfg, variables, str(images), 'gs://bucket/pred',
                                  shard=(index, 2))
    assert [r['input'] for r in results] == [
        str(images / f'im{i}.png') for i in range(index, 5, 2)]
    written.append({f for r in results for f in r['files']})
  assert not written[0] & written[1]
  assert all(f.startswith('gs://bucket/pred/') for f in written[0] | written[1])
  out = root / 'bucket' / 'pred'
  got = {os.fspath(p.relative_to(out)): p.read_bytes() for p in out.rglob('*.png')}
  assert got == want
  assert any(p.startswith('gs://bucket/pred/') for p in seen)
