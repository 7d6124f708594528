"""Training: cross-replica BN on 8 devices, loss goes down, exact resume,
multi-process, and eval through main."""
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hrseg_jax.train import loop
from hrseg_jax.train.stop_signal import StopSignal
from train_util import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_python(code, env_extra=None, timeout=600):
  env = dict(os.environ, PYTHONPATH=f'{REPO}:{REPO / "tests"}', **(env_extra or {}))
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_eight_devices_equal_one_device():
  """One train step on 8 devices == the same step on 1 device, same global
  batch: loss, parameters and BN statistics (so BN is cross-replica)."""
  code = '''
  import functools, jax, jax.numpy as jnp, numpy as np
  jax.config.update('jax_disable_most_optimizations', True)
  from hrseg_jax.models import registry
  from hrseg_jax.train import optim, sharding, step as step_lib
  from hrseg_jax.train.state import init_state
  from train_util import tiny_config
  c = tiny_config(batch_size=8)
  model = registry.build_model(c.model)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 64, 128, 3)).astype(np.float32),
           'label': rng.integers(0, 6, size=(8, 64, 128)).astype(np.int32)}
  batch['label'][:, :5] = 255
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(1, devices)
    tx, _ = optim.make_optimizer(c.train, 10)
    state, sh = init_state(model, tx, jax.random.PRNGKey(0), (64, 128, 3), mesh)
    bsh = sharding.batch_sharding(mesh)
    fn = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx,
                                   loss_cfg=c.loss, align_corners=False),
                 in_shardings=(sh, bsh), out_shardings=(sh, None))
    new, m = fn(state, sharding.global_batch(batch, bsh))
    out.append((float(m['loss']), jax.device_get(new.params),
                jax.device_get(new.model_state['batch_stats'])))
  assert len(jax.devices()) == 8
  (l1, p1, s1), (l8, p8, s8) = out
  assert abs(l1 - l8) <= 1e-5 * abs(l1), (l1, l8)
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Per-device statistics would differ: the images are not identical.
  print('OK', l1, l8)
  '''
  r = _run_python(code, {'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
                         'JAX_PLATFORMS': 'cpu'})
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'OK' in r.stdout


def test_loss_decreases_and_resume_is_exact(tmp_path):
  c = tiny_config(num_steps=8)
  full = loop.train_and_evaluate(c, str(tmp_path / 'full'))
  assert full['final_step'] == 8 and len(full['losses']) == 8
  assert np.mean(full['losses'][-3:]) < np.mean(full['losses'][:3])
  # Interrupted at step 3 (as a preemption would), then resumed.
  c.train.stop_at_step = 3
  first = loop.train_and_evaluate(c, str(tmp_path / 'split'))
  assert first['preempted'] and first['final_step'] == 3
  c.train.stop_at_step = -1
  second = loop.train_and_evaluate(c, str(tmp_path / 'split'))
  assert second['start_step'] == 3 and second['final_step'] == 8
  assert first['losses'] + second['losses'] == full['losses']
  # A longer run in the same workdir: the start-up line says the schedule changed.
  c.train.num_steps = 10
  third = loop.train_and_evaluate(c, str(tmp_path / 'split'))
  assert third['start_step'] == 8 and third['final_step'] == 10
  log = (tmp_path / 'split' / 'log.txt').read_text()
  assert 'stopped by train.stop_at_step at step 3 of 8, checkpoint saved' in log
  assert 'trained 5 steps (steps 4-8 of 8, resumed from step 3)' in log
  assert ('resumed from step 8 (' in log and 'the run length changed (train.num_steps '
          '8 -> 10): the learning-rate schedule now ends at step 10' in log), log


def test_steps_between_log_steps_never_wait_for_the_device(tmp_path, monkeypatch):
  """train.transfer_guard='disallow': steps other than log/checkpoint steps
  run under host_sync.no_host_waits.  The loop passes; the stop check that
  gathered the SIGTERM flag every step (the old multi-host StopSignal) fails
  at step 1."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from hrseg_jax.train import host_sync  # pylint: disable=g-import-not-at-top
  c = tiny_config(num_steps=4)
  c.train.log_every_steps = 4
  c.train.transfer_guard = 'disallow'
  r = loop.train_and_evaluate(c, str(tmp_path / 'guarded'))
  assert r['final_step'] == 4 and len(r['losses']) == 4

  def per_step_gather(self, step, sync=True):  # pylint: disable=unused-argument
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

  monkeypatch.setattr(StopSignal, 'should_stop', per_step_gather)
  with pytest.raises(host_sync.HostWaitError, match='process_allgather .* step 1'):
    loop.train_and_evaluate(c, str(tmp_path / 'stalling'))


def test_no_host_waits_catches_value_reads_and_collectives():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from hrseg_jax.train import host_sync  # pylint: disable=g-import-not-at-top
  x = jax.jit(lambda a: a * 2)(jnp.arange(3.0))
  reads = {'float': lambda: float(x[0]), 'device_get': lambda: jax.device_get(x),
           'block_until_ready': lambda: x.block_until_ready(), 'tolist': lambda: x.tolist(),
           'allgather': lambda: multihost_utils.process_allgather(np.int32(1))}
  for name, read in reads.items():
    with pytest.raises(host_sync.HostWaitError, match='in step 9'):
      with host_sync.no_host_waits('step 9'):
        y = x + 1     # dispatching work is fine
        read()
    read()            # outside the block: allowed
    with host_sync.no_host_waits('off', enabled=False):
      read()
  assert float(y[0]) == 1.0


def test_two_processes(tmp_path):
  """jax.distributed on localhost: 2 CPU processes train and checkpoint."""
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  code = f'''
  import os, jax
  jax.config.update('jax_disable_most_optimizations', True)
  jax.distributed.initialize(coordinator_address='localhost:{port}',
                             num_processes=2, process_id=int(os.environ['PID']))
  from hrseg_jax import compile_cache
  compile_cache.share_between_processes(True)   # as python -m hrseg_jax.main does
  from hrseg_jax.train import loop
  from train_util import tiny_config
  c = tiny_config(num_steps=3, batch_size=4)
  r = loop.train_and_evaluate(c, {str(tmp_path / "w")!r})
  print('RESULT', jax.process_index(), r['final_step'], r['losses'])
  '''
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=f'{REPO}:{REPO / "tests"}')
  procs = [subprocess.Popen([sys.executable, '-c', textwrap.dedent(code)],
                            env=dict(env, PID=str(i)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  lines = sorted(l for out, _ in outs for l in out.splitlines() if l.startswith('RESULT'))
  assert len(lines) == 2
  # Both processes see the same global loss.
  assert lines[0].split(' ', 3)[3] == lines[1].split(' ', 3)[3]
  assert (tmp_path / 'w' / 'checkpoints' / '3' / 'variables').is_dir()
  # The input state is one process-count independent item, not one per process.
  assert (tmp_path / 'w' / 'checkpoints' / '3' / 'data_order').is_dir()
  assert not (tmp_path / 'w' / 'checkpoints' / '3' / 'data').exists()


def test_init_from_converted_checkpoint(tmp_path):
  """train.init_from: a converted full model is loaded leaf by leaf; an
  ImageNet-style backbone keeps this run's freshly initialised head."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from hrseg_jax.convert import convert, pth_write  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  from hrseg_jax.train import optim, pretrained, sharding  # pylint: disable=g-import-not-at-top
  from hrseg_jax.train.state import init_state  # pylint: disable=g-import-not-at-top
  c = tiny_config()
  cfg = registry.resolve(c.model)
  rng = np.random.default_rng(0)
  src = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                               registry.abstract_variables(cfg))
  state_dict = convert.to_state_dict(src)   # as PyTorch saves it (BN counters)
  pth_write.save_pth(state_dict, tmp_path / 'full.pth')
  pth_write.save_pth({k: v for k, v in state_dict.items()
                      if not k.startswith('model.last_layer')}, tmp_path / 'backbone.pth')
  convert.convert(tmp_path / 'full.pth', tmp_path / 'full', log=lambda *_: None)
  convert.convert(tmp_path / 'backbone.pth', tmp_path / 'backbone', num_classes=6,
                  log=lambda *_: None)
  model = registry.build_model(cfg)
  tx, _ = optim.make_optimizer(c.train, 10)
  mesh = sharding.make_mesh(1)
  state, _ = init_state(model, tx, jax.random.PRNGKey(1), (64, 128, 3), mesh)
  fresh = traverse_util.flatten_dict(jax.device_get(state.variables))
  want = traverse_util.flatten_dict(src)
  full = traverse_util.flatten_dict(jax.device_get(
      pretrained.load_init_weights(state, tmp_path / 'full', cfg).variables))
  for k, v in want.items():
    np.testing.assert_array_equal(full[k], v)
  bb = traverse_util.flatten_dict(jax.device_get(
      pretrained.load_init_weights(state, tmp_path / 'backbone', cfg).variables))
  for k, v in want.items():
    expected = fresh[k] if k[1].startswith('last_layer') else v
    np.testing.assert_array_equal(bb[k], expected, err_msg=str(k))
  other = dict(cfg, num_classes=7)
  with pytest.raises(ValueError, match='last_layer_3'):
    pretrained.load_init_weights(
        init_state(registry.build_model(other), tx, jax.random.PRNGKey(1),
                   (64, 128, 3), mesh)[0], tmp_path / 'full', other)


def test_sigterm_after_ctrl_c_keeps_the_ctrl_c(capfd):
  """A terminal's Ctrl-C reaches a process that scripts/launch_local.py then
  also sends SIGTERM: one notice, and the run's last line says Ctrl-C."""
  import signal  # pylint: disable=g-import-not-at-top
  with StopSignal() as stop:
    assert not stop.should_stop(0)   # the first step runs
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.should_stop(1)
  assert stop.reason == 'Ctrl-C'
  assert capfd.readouterr().err.count('saving a checkpoint') == 1


@pytest.mark.parametrize('name', ['SIGINT', 'SIGTERM'])
def test_a_stop_before_the_first_step_does_not_promise_a_checkpoint(capfd, name):
  """Ctrl-C while the model initialised said 'saving a checkpoint after the
  steps already queued', then 'no step trained, nothing saved'."""
  import signal  # pylint: disable=g-import-not-at-top
  with StopSignal() as stop:
    os.kill(os.getpid(), getattr(signal, name))
    assert stop.should_stop(0)
  err = capfd.readouterr().err
  why = 'Ctrl-C' if name == 'SIGINT' else 'SIGTERM'
  assert err.startswith(f'{why}: stopping before the first step'), err
  assert 'saving' not in err, err


def test_start_up_lines_keep_the_time_they_were_printed_in_log_txt(tmp_path, monkeypatch):
  """The devices/batch/steps/data lines are printed before the workdir (and
  log.txt) exists; log.txt stamped them with the time it was opened, after a
  train.init_from conversion that can take minutes."""
  import time  # pylint: disable=g-import-not-at-top
  read, started = loop.pretrained.read_init_weights, []

  def slow_read(*args):   # a conversion of two seconds
    started.append(time.strftime('%Y-%m-%d %H:%M:%S'))
    time.sleep(2)
    return read(*args)

  monkeypatch.setattr(loop.pretrained, 'read_init_weights', slow_read)
  loop.train_and_evaluate(tiny_config(num_steps=1), str(tmp_path / 'w'))
  lines = (tmp_path / 'w' / 'log.txt').read_text().splitlines()
  stamp = {line[21:].split()[0]: line[:19] for line in lines if len(line) > 21}
  assert stamp['devices'] <= started[0] < stamp['model'], (started, lines[:10])


def test_loss_log_keeps_the_steps_up_to_the_checkpoint(tmp_path):
  """Resuming from step 3: the lines of steps 4.. (an earlier run's, killed
  after them) and a torn last line go, in one rewrite; nothing to drop, no
  rewrite."""
  from hrseg_jax.train.hooks import LossLog  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'losses.txt'
  path.write_text('1 2.5\n2 2.25\n3 2.0\n4 1.75\n5 1.5\n6')
  log = LossLog(path)
  assert log.keep_up_to(3) == 3
  assert path.read_text() == '1 2.5\n2 2.25\n3 2.0\n'
  before = path.stat().st_mtime_ns, path.stat().st_ino
  assert log.keep_up_to(3) == 0 and (path.stat().st_mtime_ns, path.stat().st_ino) == before
  log.append([(4, 1.25)])
  assert path.read_text().splitlines()[-1] == '4 1.25'
