"""The launchers' --dry-run output, their argument checks, and how
``python -m hrseg_jax.main`` decides to call ``jax.distributed.initialize``
(``hrseg_jax.distributed``).

(``tests/test_multihost.py`` runs scripts/launch_local.py for real.)
"""
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from ctrl_c_util import WITH_CTRL_C
from hrseg_jax.distributed import distributed_mode

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ['--config', 'configs/hrnet_w48_cityscapes.py', '--workdir',
         'gs://my-bucket/runs/w48 cs', '--config.train.batch_size=16']


def run(script, *args, ok=True, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  r = subprocess.run([sys.executable, str(REPO / 'scripts' / script), *args],
                     capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
  assert (r.returncode == 0) == ok, r.stdout + r.stderr
  return r.stdout if ok else r.stderr


def split_env(line):
  """``K=V ... argv`` -> (env dict, argv list)."""
  words = shlex.split(line)
  env = {}
  while words and '=' in words[0] and not words[0].startswith('-'):
    k, v = words.pop(0).split('=', 1)
    env[k] = v
  return env, words


# ---- launch_local.py ---------------------------------------------------------

def test_local_four_processes_on_cpu():
  out = run('launch_local.py', '--num_processes', '4', '--cpu_devices', '2',
            '--port', '4321', '--log_dir', 'logs', '--dry-run', '--', *TRAIN)
  lines = out.splitlines()
  assert len(lines) == 4
  for i, line in enumerate(lines):
    env, argv = split_env(line)
    assert env == {'HRSEG_COORDINATOR': 'localhost:4321',
                   'HRSEG_NUM_PROCESSES': '4', 'HRSEG_PROCESS_ID': str(i),
                   'JAX_PLATFORMS': 'cpu',
                   'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
    assert argv[:3] == [sys.executable, '-m', 'hrseg_jax.main']
    assert argv[3:] == [*TRAIN, '>', f'logs/process_{i}.log', '2>&1']
    assert distributed_mode(env) == 'explicit'


def test_local_checks_the_batch_for_training_only():
  train = ['--config', 'configs/hrnet_w48_cityscapes.py', '--workdir', 'w']
  run('launch_local.py', '--num_processes', '2', '--gpus_per_process', '4',
      '--dry-run', '--', *train, ok=False)   # 12 over 8 GPUs
  out = run('launch_local.py', '--num_processes', '2', '--gpus_per_process', '4',
            '--dry-run', '--', *train, '--mode', 'eval')
  assert len(out.splitlines()) == 2


@pytest.mark.parametrize('script', ['launch_local.py', 'launch_slurm.py', 'launch_tpu_vm.py'])
def test_help_describes_every_option(script):
  """--num_processes and --python (launch_local), --nodes, --partition ...
  (launch_slurm), --zone, --spot ... (launch_tpu_vm) had no help text."""
  r = subprocess.run([sys.executable, str(REPO / 'scripts' / script), '--help'],
                     capture_output=True, text=True, timeout=60, check=False)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.split('options:', 1)[1].splitlines()
  for i, line in enumerate(lines):
    if line.startswith('  -'):   # its text on the same line or the next one
      described = '  ' in line.strip() or (i + 1 < len(lines)
                                             and lines[i + 1].startswith(' ' * 8))
      assert described, line
  assert '--python' in r.stdout or '--zone' in r.stdout


def test_local_one_process_per_gpu_and_one_process_for_all():
  out = run('launch_local.py', '--num_processes', '2', '--gpus_per_process',
            '4', '--port', '99', '--dry-run', '--', *TRAIN)
  envs = [split_env(line)[0] for line in out.splitlines()]
  assert [e['JAX_LOCAL_DEVICE_IDS'] for e in envs] == ['0,1,2,3', '4,5,6,7']
  assert all('JAX_PLATFORMS' not in e for e in envs)
  # One process: no jax.distributed at all, the command as given.
  out = run('launch_local.py', '--dry-run', '--', *TRAIN)
  env, argv = split_env(out.strip())
  assert env == {} and argv == [sys.executable, '-m', 'hrseg_jax.main', *TRAIN]
  assert distributed_mode(env) is None


@pytest.mark.parametrize('args,message', [
    (['--num_processes', '2', '--', '--workdir', 'w'], 'must split its devices'),
    (['--dry-run'], 'training flags go after "--"'),
    (['--gpus_per_process', '1', '--cpu_devices', '2', '--', 'x'], 'not allowed'),
    # Checked once here, not printed by every process.
    (['--num_processes', '2', '--cpu_devices', '1', '--', '--config', 'configs/demo.py',
      '--workdir', 'w', '--config.train.batch_size=3'],
     'train.batch_size=3 is not a multiple of the 2 devices of 2 processes x 1 device'),
    (['--num_processes', '2', '--gpus_per_process', '4', '--', '--config',
      'configs/hrnet_w48_cityscapes.py', '--workdir', 'w'],
     'batch_size=12 is not a multiple of the 8 devices'),
    (['--num_processes', '2', '--cpu_devices', '1', '--', '--config', 'configs/nope.py',
      '--workdir', 'w'], '--config configs/nope.py: no such file'),
    (['--num_processes', '2', '--cpu_devices', '1', '--', '--mode', 'eval', '--config',
      'configs/nope.py', '--workdir', 'w'], '--config configs/nope.py: no such file'),
])
def test_local_rejects(args, message):
  err = run('launch_local.py', *args, ok=False)
  assert message in err and len(err.strip().splitlines()) == 1, err   # no usage block


BAD_OVERRIDES = [
    (['--config.train.num_step=3'],
     "unknown config field 'config.train.num_step' (no field 'num_step'; "
     'did you mean --config.train.num_steps or --config.train.num_epochs?)'),
    (['--config.trian.num_steps', '3'],
     "unknown config field 'config.trian.num_steps' (no field 'trian'; "
     'did you mean --config.train.num_steps?)'),
    (['--config.train.num_steps=abc'],
     "--config.train.num_steps=abc: train.num_steps takes an integer, not 'abc'"),
]


@pytest.mark.parametrize('override, message', BAD_OVERRIDES)
def test_local_bad_config_override_is_one_line_before_any_process(tmp_path, override,
                                                                  message):
  """A misspelt field or a bad value after "--" is the line hrseg_jax.main
  prints, once, exit 2, before any process starts (not once per process,
  then 'a process exited'); run for real from a user's folder."""
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  err = run('launch_local.py', '--num_processes', '2', '--cpu_devices', '2', '--',
            '--config', 'configs/demo.py', '--workdir', 'runs/x', *override,
            ok=False, cwd=tmp_path)
  assert err.strip().splitlines() == [f'launch_local.py: error: {message}'], err
  assert [p.name for p in tmp_path.iterdir()] == ['configs']
  run('launch_local.py', '--num_processes', '2', '--cpu_devices', '2', '--dry-run', '--',
      '--config', 'configs/demo.py', '--workdir', 'runs/x', '--config.train.num_steps',
      '3', cwd=tmp_path)   # a good override in its two-word form passes


@pytest.mark.parametrize('launcher', [
    ['launch_local.py', '--num_processes', '2', '--cpu_devices', '2', '--dry-run'],
    ['launch_slurm.py', '--dry-run']])
def test_launchers_check_overrides_of_the_default_config(tmp_path, launcher):
  """Without --config (configs/demo.py by default) a bad override went to
  launch_local's processes unchecked (each printed it, then 'a process
  exited'), and launch_slurm ended in a traceback."""
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  message = BAD_OVERRIDES[0][1]
  err = run(*launcher, '--', '--workdir', 'runs/x', '--config.train.num_step=3', ok=False,
            cwd=tmp_path)
  assert err.strip().splitlines() == [f'{launcher[0]}: error: {message}'], err
  assert [p.name for p in tmp_path.iterdir()] == ['configs']


@pytest.mark.parametrize('launcher', [
    ['launch_slurm.py', '--dry-run'],
    ['launch_tpu_vm.py', 'train', '--name', 'n', '--zone', 'us-central2-b',
     '--accelerator', 'v4-8', '--dry-run']])
def test_cluster_launchers_check_config_overrides(tmp_path, launcher):
  """Slurm and TPU: a bad override is refused before the job is queued."""
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  override, message = BAD_OVERRIDES[0]
  err = run(*launcher, '--', '--config', 'configs/demo.py', '--workdir', 'gs://b/r',
            *override, ok=False, cwd=tmp_path)
  assert err.strip().splitlines() == [f'{launcher[0]}: error: {message}'], err
  assert [p.name for p in tmp_path.iterdir()] == ['configs']


# ---- launch_slurm.py ---------------------------------------------------------

def slurm_dry_run(*args):
  out = run('launch_slurm.py', *args, '--dry-run', '--', *TRAIN)
  lines = out.splitlines()
  assert lines[0] == '# slurm_logs/hrseg.sbatch'
  assert lines[-1] == 'sbatch slurm_logs/hrseg.sbatch'
  script = '\n'.join(lines[1:-1]) + '\n'
  syntax = subprocess.run(['bash', '-n'], input=script, text=True,
                          capture_output=True)
  assert syntax.returncode == 0, syntax.stderr
  srun = [line for line in lines if line.startswith('srun ')]
  assert len(srun) == 1
  assert shlex.split(srun[0]) == ['srun', '--kill-on-bad-exit=1', 'python', '-m',
                                  'hrseg_jax.main', *TRAIN]
  sbatch = {}
  for line in lines:
    if line.startswith('#SBATCH --'):
      key, _, value = line[len('#SBATCH --'):].partition('=')
      sbatch[key] = value
  return script, sbatch


def test_slurm_one_process_per_node(tmp_path):
  script, sbatch = slurm_dry_run('--nodes', '2', '--gpus_per_node', '8',
                                 '--partition', 'gpu', '--time', '2-00:00:00',
                                 '--setup', 'source ~/venv/bin/activate')
  assert sbatch == {'job-name': 'hrseg', 'nodes': '2', 'ntasks-per-node': '1',
                    'gpus-per-node': '8', 'partition': 'gpu',
                    'time': '2-00:00:00', 'output': 'slurm_logs/%x-%j.out',
                    'signal': 'TERM@300'}
  assert 'export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7\n' in script
  assert 'export HRSEG_DISTRIBUTED=1\n' in script
  assert script.index('source ~/venv/bin/activate') < script.index('srun ')
  assert not (REPO / 'slurm_logs').exists()  # a dry run writes nothing


def test_slurm_one_process_per_gpu():
  script, sbatch = slurm_dry_run('--nodes', '2', '--gpus_per_node', '4',
                                 '--per', 'gpu', '--account', 'lab',
                                 '--requeue', '--cpus_per_task', '12')
  assert (sbatch['ntasks-per-node'], sbatch['gpus-per-node']) == ('4', '4')
  assert (sbatch['account'], sbatch['cpus-per-task']) == ('lab', '12')
  assert (sbatch['requeue'], sbatch['open-mode']) == ('', 'append')
  assert 'JAX_LOCAL_DEVICE_IDS' not in script  # JAX: GPU SLURM_LOCALID per task


def test_slurm_checks_config_and_batch_before_submitting(tmp_path):
  """The job runs in the submitting directory: a config not there, or a
  global batch the job's GPUs do not divide, is one line and exit 2 before
  anything is queued, and nothing is written."""
  flags = ['--workdir', '/shared/r', '--config', 'configs/hrnet_w48_cityscapes.py']
  err = run('launch_slurm.py', '--dry-run', '--', *flags, ok=False, cwd=tmp_path)
  assert '--config configs/hrnet_w48_cityscapes.py: no such file (in ' in err, err
  err = run('launch_slurm.py', '--nodes', '6', '--gpus_per_node', '8', '--', *flags,
            '--config.train.batch_size=32', ok=False)
  assert ('train.batch_size=32 is not a multiple of the 48 devices of 6 nodes x 8 GPUs: '
          'add --config.train.batch_size=48') in err
  err = run('launch_slurm.py', '--nodes', '2', '--', *flags, ok=False)   # the config's 12
  assert 'train.batch_size=12 is not a multiple of the 16 devices' in err
  assert len(err.strip().splitlines()) == 1, err
  assert not (REPO / 'slurm_logs').exists() and not os.listdir(tmp_path)
  # Evaluation splits no training batch; a checkpoint alone needs no config.
  run('launch_slurm.py', '--nodes', '2', '--dry-run', '--', *flags, '--mode', 'eval')
  run('launch_slurm.py', '--dry-run', '--', '--mode', 'predict', '--checkpoint', 'c',
      '--workdir', 'w', '--input', 'x.png', cwd=tmp_path)


def test_launchers_without_sbatch_or_gcloud(tmp_path):
  """Not a traceback after writing the script: one line, exit 2, nothing written."""
  (tmp_path / 'bin').mkdir()
  env = {**os.environ, 'PATH': str(tmp_path / 'bin')}
  for script, args in [
      ('launch_slurm.py', ['--', '--mode', 'predict', '--checkpoint', 'c', '--workdir', 'w']),
      ('launch_tpu_vm.py', ['delete', '--name', 's', '--zone', 'us-central2-b'])]:
    r = subprocess.run([sys.executable, str(REPO / 'scripts' / script), *args],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stdout == '', r.stdout + r.stderr
    assert r.stderr.count('\n') == 1 and 'is not on PATH' in r.stderr, r.stderr
  assert os.listdir(tmp_path) == ['bin']


def test_slurm_environment_as_jax_sees_it(monkeypatch):
  """What the sbatch script relies on: inside an srun step hrseg_jax.main
  initialises jax.distributed, and JAX's Slurm detection gives one GPU per
  process unless JAX_LOCAL_DEVICE_IDS says otherwise."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  step = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'gpu[017-018]',
          'SLURM_NTASKS': '16', 'SLURM_PROCID': '11', 'SLURM_LOCALID': '3',
          'TPU_SKIP_MDS_QUERY': '1'}
  for k, v in step.items():
    monkeypatch.setenv(k, v)
  assert distributed_mode(os.environ) == 'auto'
  coordinator, n, pid, local = (
      clusters.ClusterEnv.auto_detect_unset_distributed_params(
          None, None, None, None, None, 300))
  assert (coordinator.split(':')[0], n, pid, local) == ('gpu017', 16, 11, [3])
  assert clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, list(range(8)), None, 300)[3] == list(range(8))


# ---- launch_tpu_vm.py --------------------------------------------------------

def tpu(*args, train=()):
  out = run('launch_tpu_vm.py', *args, '--name', 'seg', '--zone',
            'us-central2-b', '--project', 'p1', '--dry-run',
            *(['--', *train] if train else []))
  return [shlex.split(line) for line in out.splitlines()]


def remote_command(argv):
  (command,) = [a for a in argv if a.startswith('--command=')]
  return command[len('--command='):]


def test_tpu_create_and_delete():
  (create,) = tpu('create', '--accelerator', 'v5litepod-8', '--spot')
  assert create == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'seg',
                    '--accelerator-type=v5litepod-8',
                    '--version=v2-alpha-tpuv5-lite', '--zone=us-central2-b',
                    '--project=p1', '--spot']
  (create,) = tpu('create', '--accelerator', 'v4-8')
  assert '--version=tpu-ubuntu2204-base' in create
  (delete,) = tpu('delete')
  assert delete[4:6] == ['delete', 'seg'] and '--quiet' in delete


def test_tpu_setup_installs_this_checkout_on_every_worker():
  pack, copy, install = tpu('setup')
  assert pack[:3] == ['tar', '-czf', '/tmp/hrseg_jax_src.tgz']
  packed = pack[pack.index('-C') + 2:]
  assert pack[pack.index('-C') + 1] == str(REPO)
  assert {'pyproject.toml', 'hrseg_jax', 'configs'} <= set(packed)
  assert all((REPO / p).exists() for p in packed)
  assert copy[4:7] == ['scp', '/tmp/hrseg_jax_src.tgz', 'seg:hrseg_jax_src.tgz']
  assert '--worker=all' in copy and '--worker=all' in install
  remote = remote_command(install)
  import jax  # pylint: disable=g-import-not-at-top
  assert f"'jax[tpu]=={jax.__version__}' -e ~/hrseg_jax" in remote
  assert 'uv venv --python 3.11 ~/hrseg-venv' in remote


def test_tpu_train_runs_the_same_command_on_every_worker():
  (ssh,) = tpu('train', '--accelerator', 'v4-32', train=TRAIN)
  assert ssh[4:6] == ['ssh', 'seg'] and '--worker=all' in ssh
  remote = shlex.split(remote_command(ssh))
  start = remote.index('HRSEG_DISTRIBUTED=1')
  assert remote[:start] == ['cd', '~/hrseg_jax', '&&', 'mkdir', '-p',
                            '~/hrseg_logs', '&&', '{']
  end = remote.index('>')
  assert remote[start + 1:end] == ['nohup', '~/hrseg-venv/bin/python', '-m',
                                   'hrseg_jax.main', *TRAIN]
  assert remote[end:end + 2] == ['>', '~/hrseg_logs/train.log']
  assert distributed_mode({'HRSEG_DISTRIBUTED': '1'}) == 'auto'
  (stop,) = tpu('stop')
  assert remote_command(stop) == 'kill -TERM $(cat ~/hrseg_logs/train.pid)'
  (logs,) = tpu('logs', '--worker', '3')
  assert '--worker=3' in logs and 'train.log' in remote_command(logs)


FAKE_PYTHON = """#!{python}
import os, pathlib, signal, time
home = pathlib.Path(os.environ['HOME'])
signal.signal(signal.SIGTERM, lambda *_: (home.joinpath('got_sigterm').write_text('1'),
                                          os._exit(0)))
home.joinpath('started').write_text(str(os.getpid()))
time.sleep(300)
"""


def _wait_for(path, seconds=60):
  for _ in range(seconds * 10):
    if path.exists():
      return True
    time.sleep(0.1)
  return False


def test_tpu_stop_reaches_the_training_process(tmp_path):
  """``train``'s and ``stop``'s remote commands, run by bash on a worker (here
  with HOME=tmp_path and a stand-in for the venv's python): the SIGTERM of
  ``stop`` reaches the training process itself, which saves and exits."""
  (tmp_path / 'hrseg_jax').mkdir()
  fake = tmp_path / 'hrseg-venv/bin/python'
  fake.parent.mkdir(parents=True)
  fake.write_text(FAKE_PYTHON.format(python=sys.executable))
  fake.chmod(0o755)
  env = dict(os.environ, HOME=str(tmp_path))
  (train,) = tpu('train', '--accelerator', 'v4-8', train=TRAIN)
  (stop,) = tpu('stop')
  try:
    subprocess.run(['bash', '-c', remote_command(train)], env=env, check=True, timeout=60)
    assert _wait_for(tmp_path / 'started')
    subprocess.run(['bash', '-c', remote_command(stop)], env=env, check=True, timeout=60)
    assert _wait_for(tmp_path / 'got_sigterm'), 'SIGTERM did not reach the training process'
  finally:
    if _wait_for(tmp_path / 'started', seconds=10):
      try:
        os.kill(int((tmp_path / 'started').read_text()), signal.SIGKILL)
      except ProcessLookupError:
        pass


def test_tpu_multi_host_needs_a_shared_workdir():
  local = ['--config', 'configs/demo.py', '--workdir', '/tmp/run']
  err = run('launch_tpu_vm.py', 'train', '--name', 's', '--zone', 'us-central2-b',
            '--accelerator', 'v4-32', '--dry-run', '--', *local, ok=False)
  assert 'v4-32 has 4 hosts' in err and 'gs://' in err
  # One host (v4-8: 4 chips) may keep it local; a shared mount can be forced.
  assert tpu('train', '--accelerator', 'v4-8', train=local)
  assert tpu('train', '--accelerator', 'v4-32', '--allow_local_workdir',
             train=local + ['--config.train.batch_size=16'])


def test_tpu_train_checks_the_batch_and_misplaced_flags():
  """Before anything starts on the slice: a global batch the slice's devices
  do not divide (the config's own, or the override), and a launcher flag
  after "--" (it would reach hrseg_jax.main and the real gcloud would run)."""
  flags = ['--config', 'configs/hrnet_w48_cityscapes.py', '--workdir', 'gs://b/r']
  err = run('launch_tpu_vm.py', 'train', '--name', 's', '--zone', 'us-central2-b',
            '--accelerator', 'v4-32', '--dry-run', '--', *flags, ok=False)
  assert ('train.batch_size=12 is not a multiple of the 16 devices of v4-32: add '
          '--config.train.batch_size=16') in err
  assert len(err.strip().splitlines()) == 1, err   # the error line alone, no usage block
  err = run('launch_tpu_vm.py', 'train', '--name', 's', '--zone', 'us-central2-b',
            '--accelerator', 'v4-16', '--dry-run', '--', *flags,
            '--config.train.batch_size=12', ok=False)
  assert 'train.batch_size=12 is not a multiple of the 8 devices of v4-16' in err
  err = run('launch_tpu_vm.py', 'train', '--name', 's', '--zone', 'us-central2-b',
            '--accelerator', 'v4-8', '--', *flags, '--dry-run', ok=False)
  assert '--dry-run is a flag of this launcher: put it before "--"' in err


def test_tpu_batch_check_reads_this_checkouts_config_when_not_installed(tmp_path):
  """From a checkout where hrseg_jax is not importable (a laptop that only
  drives the slice), the config's batch is still checked, not skipped."""
  fake = tmp_path / 'site' / 'hrseg_jax'
  fake.mkdir(parents=True)
  (fake / '__init__.py').write_text("raise ImportError('hrseg_jax is not installed')\n")
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = str(tmp_path / 'site')
  r = subprocess.run([sys.executable, str(REPO / 'scripts' / 'launch_tpu_vm.py'), 'train',
                      '--name', 's', '--zone', 'us-central2-b', '--accelerator', 'v4-32',
                      '--dry-run', '--', '--config', 'configs/hrnet_w48_cityscapes.py', '--workdir',
                      'gs://b/r'], capture_output=True, text=True, env=env, cwd=REPO,
                     timeout=120)
  assert r.returncode == 2, r.stdout + r.stderr
  assert 'train.batch_size=12 is not a multiple of the 16 devices of v4-32' in r.stderr


def test_tpu_config_is_read_as_the_workers_see_it(tmp_path):
  """The workers run in their copy of this checkout: from any directory a
  relative --config names a file of the checkout (its batch is checked, not
  skipped); a missing one, or one outside what setup copies, is refused."""
  flags = ['--workdir', 'gs://b/r', '--config']
  err = run('launch_tpu_vm.py', 'train', '--name', 's', '--zone', 'us-central2-b',
            '--accelerator', 'v5litepod-8', '--dry-run', '--', *flags,
            'configs/hrnet_w48_cityscapes.py', ok=False, cwd=tmp_path)
  assert 'train.batch_size=12 is not a multiple of the 8 devices of v5litepod-8' in err
  (ssh,) = [shlex.split(line) for line in run(
      'launch_tpu_vm.py', 'train', '--name', 's', '--zone', 'us-central2-b',
      '--accelerator', 'v5litepod-8', '--dry-run', '--', *flags,
      'configs/hrnet_w48_cityscapes.py', '--config.train.batch_size=16',
      cwd=tmp_path).splitlines()]
  assert '--config configs/hrnet_w48_cityscapes.py' in remote_command(ssh)
  (tmp_path / 'mine.py').write_text('raise SystemExit("never imported")\n')
  for config, message in [
      ('configs/hrnet_w48_cityscape.py', 'no such file'),
      (str(tmp_path / 'mine.py'), 'the workers only have the copy of'),
      (str(REPO / 'configs' / 'demo.py'), 'give a path relative to it')]:
    err = run('launch_tpu_vm.py', 'train', '--name', 's', '--zone', 'us-central2-b',
              '--accelerator', 'v4-8', '--dry-run', '--', *flags, config, ok=False,
              cwd=tmp_path)
    assert f'error: --config {config}: ' in err and message in err, err
    assert len(err.strip().splitlines()) == 1, err
  assert os.listdir(tmp_path) == ['mine.py']


@pytest.mark.parametrize('flags,message', [
    # Not a silent v4-8: train checks the workdir and batch against the type.
    (['--zone', 'us-central2-b'], 'create: pass --accelerator, the slice type'),
    (['--zone', 'us-central2'], "--zone 'us-central2' is not a zone"),
    (['--zone', ''], "--zone '' is not a zone"),
    (['--zone', 'us-central2-b', '--accelerator', 'v4-12'], "unknown accelerator type 'v4-12'"),
    (['--zone', 'us-central2-b', '--accelerator', 'v5litepod-2'], "'v5litepod-2'"),
    (['--zone', 'us-central2-b', '--accelerator', 'tpu-v4-8'], "'tpu-v4-8'"),
])
def test_tpu_rejects_bad_zone_and_accelerator(flags, message):
  err = run('launch_tpu_vm.py', 'create', '--name', 's', *flags, '--dry-run', ok=False)
  assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize('accelerator,devices,hosts', [
    ('v4-8', 4, 1), ('v4-32', 16, 4), ('v5p-16', 8, 2), ('v5litepod-8', 8, 1),
    ('v5litepod-16', 16, 4), ('v6e-8', 8, 1), ('v3-8', 8, 1), ('v5litepod-4', 4, 1),
    ('v6e-1', 1, 1)])
def test_tpu_topology(accelerator, devices, hosts):
  import runpy  # pylint: disable=g-import-not-at-top
  mod = runpy.run_path(str(REPO / 'scripts' / 'launch_tpu_vm.py'))
  assert mod['slice_topology'](accelerator) == (devices, hosts)


# ---- hrseg_jax.main ----------------------------------------------------------

@pytest.mark.parametrize('env,mode', [
    ({}, None),
    ({'HRSEG_COORDINATOR': 'h:1', 'HRSEG_NUM_PROCESSES': '2',
      'HRSEG_PROCESS_ID': '0'}, 'explicit'),
    ({'HRSEG_DISTRIBUTED': '1'}, 'auto'),
    # An salloc shell or a single-task job: one process, no coordinator.
    ({'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '4'}, None),
    ({'SLURM_JOB_ID': '1', 'SLURM_STEP_NODELIST': 'n1', 'SLURM_NTASKS': '1'}, None),
    ({'SLURM_JOB_ID': '1', 'SLURM_STEP_NODELIST': 'n1', 'SLURM_NTASKS': '2'}, 'auto'),
    ({'SLURM_STEP_NODELIST': 'n1', 'SLURM_NTASKS': '2', 'HRSEG_DISTRIBUTED': '0'}, None),
    ({'OMPI_COMM_WORLD_SIZE': '1'}, None),
    ({'OMPI_COMM_WORLD_SIZE': '8'}, 'auto'),
    ({'TPU_WORKER_HOSTNAMES': 'a,b'}, 'auto'),
])
def test_distributed_mode(env, mode):
  assert distributed_mode(env) == mode


BAD_ENV = {
    'HRSEG_NUM_PROCESSES=two': (
        {'HRSEG_COORDINATOR': 'localhost:1', 'HRSEG_NUM_PROCESSES': 'two',
         'HRSEG_PROCESS_ID': '0'},
        "HRSEG_NUM_PROCESSES='two': expected a whole number of processes, 1 or more"),
    'HRSEG_NUM_PROCESSES missing': (
        {'HRSEG_COORDINATOR': 'localhost:1', 'HRSEG_PROCESS_ID': '0'},
        'HRSEG_NUM_PROCESSES is not set: HRSEG_COORDINATOR needs'),
    'HRSEG_PROCESS_ID missing': (
        {'HRSEG_COORDINATOR': 'localhost:1', 'HRSEG_NUM_PROCESSES': '2'},
        'HRSEG_PROCESS_ID is not set'),
    'HRSEG_PROCESS_ID=first': (
        {'HRSEG_COORDINATOR': 'localhost:1', 'HRSEG_NUM_PROCESSES': '2',
         'HRSEG_PROCESS_ID': 'first'},
        "HRSEG_PROCESS_ID='first': expected a process index from 0 to 1"),
    'HRSEG_PROCESS_ID=2 of 2': (
        {'HRSEG_COORDINATOR': 'localhost:1', 'HRSEG_NUM_PROCESSES': '2',
         'HRSEG_PROCESS_ID': '2'},
        "HRSEG_PROCESS_ID='2': expected a process index from 0 to 1"),
    'SLURM_NTASKS=x': (
        {'SLURM_STEP_NODELIST': 'n1', 'SLURM_NTASKS': 'x'},
        "SLURM_NTASKS='x': expected a whole number"),
    'OMPI_COMM_WORLD_SIZE=0': (
        {'OMPI_COMM_WORLD_SIZE': '0'}, "OMPI_COMM_WORLD_SIZE='0': expected a whole number"),
    'HRSEG_DISTRIBUTED=maybe': (
        {'HRSEG_DISTRIBUTED': 'maybe'}, "HRSEG_DISTRIBUTED='maybe': expected 1"),
}


@pytest.mark.parametrize('case', BAD_ENV)
def test_bad_launcher_variables_are_named(case, tmp_path):
  """One line naming the variable, exit 2, before any work (no workdir)."""
  bad, expected = BAD_ENV[case]
  (tmp_path / 'tiny.py').write_text(
      'from train_util import tiny_config\n\n\ndef get_config():\n'
      '  return tiny_config()\n')
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('HRSEG_', 'SLURM_', 'OMPI_'))}
  env.update(bad, PYTHONPATH=f'{REPO}{os.pathsep}{REPO / "tests"}', JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--config', 'tiny.py',
                      '--workdir', 'w'], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=300, check=False)
  assert r.returncode == 2, r.stdout + r.stderr
  assert r.stderr.startswith('error: environment variable '), r.stderr
  assert expected in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
  assert not r.stdout and sorted(os.listdir(tmp_path)) == ['tiny.py']


FAKE_MAIN = '''#!{python}
"""Stands in for `python -m hrseg_jax.main`: ready, then on Ctrl-C or
SIGTERM it records the first signal, 'saves' for a moment (further signals
only ask again) and exits 0, like the training loop."""
import os, signal, sys, time
out = os.path.join({folder!r}, 'process_' + os.environ['HRSEG_PROCESS_ID'])
got = []
def stop(signum, frame):
  got.append(signal.Signals(signum).name)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
open(out + '.ready', 'w').close()
while not got:
  time.sleep(0.05)
time.sleep(0.5)
with open(out, 'w') as f:
  f.write(' '.join(got))
'''


@pytest.mark.parametrize('to_group', [True, False], ids=['terminal', 'launcher_only'])
def test_local_ctrl_c_saves_and_exits_0(tmp_path, to_group):
  """Ctrl-C in a terminal (SIGINT to the launcher and its processes) or to
  the launcher alone: every process is stopped the saving way, and the
  launcher reports no failure when they exit 0."""
  import signal
  import time
  fake = tmp_path / 'python'
  fake.write_text(FAKE_MAIN.format(python=sys.executable, folder=str(tmp_path)))
  fake.chmod(0o755)
  launcher = subprocess.Popen(
      [*WITH_CTRL_C, sys.executable, str(REPO / 'scripts' / 'launch_local.py'),
       '--num_processes', '2', '--cpu_devices', '1', '--python', str(fake), '--',
       '--workdir', 'w'],
      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      start_new_session=True)   # its own process group, as a terminal job has
  deadline = time.monotonic() + 60
  while not all((tmp_path / f'process_{i}.ready').exists() for i in range(2)):
    assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
    time.sleep(0.05)
  time.sleep(0.3)   # the launcher is waiting for them
  if to_group:
    os.killpg(launcher.pid, signal.SIGINT)
  else:
    launcher.send_signal(signal.SIGINT)
  out, err = launcher.communicate(timeout=60)
  assert launcher.returncode == 0, out + err
  assert 'error' not in err and 'Traceback' not in err, err
  for i in range(2):
    got = (tmp_path / f'process_{i}').read_text().split()
    # A terminal's SIGINT reaches each process itself, beside the launcher's
    # SIGTERM (which comes first is the scheduler's choice; the training loop
    # saves once either way); Ctrl-C to the launcher alone reaches them as
    # SIGTERM only.
    if to_group:
      assert 'SIGINT' in got and set(got) <= {'SIGINT', 'SIGTERM'}, got
    else:
      assert set(got) == {'SIGTERM'}, got


LOG_DIR_LINES = '''#!{python}
import os, sys
i = os.environ['HRSEG_PROCESS_ID']
print('[Gloo] Rank', i, 'is connected to 1 peer ranks. Expected number of connected peer '
      'ranks is : 1', flush=True)
print('step 1/2 on process', i, flush=True)
print('warning: on process', i, file=sys.stderr, flush=True)
'''


def test_local_log_dir_says_where_the_output_goes(tmp_path):
  """With --log_dir one line says where the output is, each file holds all
  of its process's output, and process 0's lines (stdout and stderr, without
  Gloo's connection lines) reach the terminal too: the run's lines were not
  shown at all."""
  fake = tmp_path / 'python'
  fake.write_text(LOG_DIR_LINES.format(python=sys.executable))
  fake.chmod(0o755)
  r = subprocess.run(
      [sys.executable, str(REPO / 'scripts' / 'launch_local.py'), '--num_processes', '2',
       '--cpu_devices', '1', '--log_dir', 'logs', '--python', str(fake), '--',
       '--workdir', 'w'],
      cwd=tmp_path, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stdout + r.stderr
  assert r.stdout.splitlines() == [
      "2 processes: output in logs/process_0.log and logs/process_1.log (process 0's "
      'shown here too)', 'step 1/2 on process 0'], r.stdout
  assert r.stderr == 'warning: on process 0\n'
  for i in range(2):
    assert sorted((tmp_path / f'logs/process_{i}.log').read_text().splitlines()) == sorted([
        f'[Gloo] Rank {i} is connected to 1 peer ranks. Expected number of connected peer '
        'ranks is : 1', f'step 1/2 on process {i}', f'warning: on process {i}'])


@pytest.mark.parametrize('launcher', [
    ['launch_local.py', '--num_processes', '2', '--cpu_devices', '1'],
    ['launch_local.py', '--num_processes', '2', '--cpu_devices', '1', '--dry-run'],
    ['launch_slurm.py', '--dry-run'],
    ['launch_tpu_vm.py', 'train', '--name', 'n', '--zone', 'us-central2-b',
     '--accelerator', 'v4-8', '--dry-run']])
@pytest.mark.parametrize('workdir, message', [
    ([], '--workdir is required after "--"'),
    (['--workdir', 'runs/a', '--workdir=runs/b'],
     "--workdir is given 2 times ('runs/a', 'runs/b'): pass it once")])
def test_launchers_check_the_workdir_before_any_process(tmp_path, launcher, workdir,
                                                         message):
  """A missing --workdir was printed by every process, without 'process 1:'
  ('error: --workdir is required…' twice, then 'a process exited with status
  2'), and --dry-run printed the commands with exit 0; a repeated one went to
  the processes, which take the last.  Now one line, exit 2, nothing started."""
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  err = run(*launcher, '--', '--config', 'configs/demo.py', *workdir, ok=False,
            cwd=tmp_path)
  if launcher[0] == 'launch_tpu_vm.py' and not workdir:
    message = 'including --workdir'
  (line,) = err.strip().splitlines()
  assert line.startswith(f'{launcher[0]}: error: ') and message in line, err
  assert [p.name for p in tmp_path.iterdir()] == ['configs']


STUCK_PEER = '''#!{python}
"""Process 0 runs the real `python -m hrseg_jax.main ...`; process 1 joins
the run and then waits, as a peer blocked in a collective that waits for
process 0 does (a Gloo rendezvous that timed out on process 0 only)."""
import os, signal, sys, time
if os.environ['HRSEG_PROCESS_ID'] == '0':
  os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
sys.path.insert(0, {repo!r})
from hrseg_jax import distributed
distributed.maybe_initialize()
time.sleep(600)
'''


def test_local_process_failing_alone_ends_the_run(tmp_path):
  """A process that fails alone prints its error and exits at once, not
  after jax.distributed's exit barrier has waited (up to 5 minutes) for a
  peer that waits for it; the launcher then stops the peer and exits 2."""
  fake = tmp_path / 'python'
  fake.write_text(STUCK_PEER.format(python=sys.executable, repo=str(REPO)))
  fake.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  # An error the training command finds after joining the run (the launcher
  # checks only the batch against the devices).
  launcher = subprocess.Popen(
      [sys.executable, str(REPO / 'scripts' / 'launch_local.py'), '--num_processes', '2',
       '--cpu_devices', '1', '--python', str(fake), '--', '--config', 'configs/demo.py',
       '--workdir', str(tmp_path / 'w'), '--config.loss.num_chunks=3'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
      start_new_session=True)
  try:
    _, err = launcher.communicate(timeout=150)   # held by the barrier: 300 s
  except subprocess.TimeoutExpired:
    os.killpg(launcher.pid, 9)
    raise
  assert launcher.returncode == 2, err
  errors = [l for l in err.splitlines() if l.startswith('error: ')]
  assert errors[0].startswith('error: loss.num_chunks=3 does not divide train.batch_size=8'), err
  assert errors[1:] == ['error: a process exited with status 2'], err
  assert 'Traceback' not in err, err


def test_local_same_error_on_every_process_names_the_others(tmp_path):
  """An error every process meets: process 0 prints it, the others after
  'process N: ', and the launcher exits 2.  Process 0 may exit first and
  take down the coordination service it hosts, ending process 1 before its
  line: the launcher then says so in one line, in place of JAX's
  fatal-error block.  Either way each process has one line."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  r = subprocess.run(
      [sys.executable, str(REPO / 'scripts' / 'launch_local.py'), '--num_processes', '2',
       '--cpu_devices', '1', '--', '--config', 'configs/demo.py',
       '--workdir', str(tmp_path / 'w'), '--config.loss.num_chunks=3'],
      capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert r.returncode == 2, r.stdout + r.stderr
  lines = r.stderr.splitlines()
  error = [l for l in lines if l.startswith('error: loss.num_chunks=3 does not divide')]
  assert len(error) == 1, r.stderr
  ones = [l for l in lines if l.startswith('process 1: ')]
  assert ones in ([f'process 1: {error[0]}'],
                  ['process 1: stopped because process 0 failed']), r.stderr
  assert lines[-1] == 'error: a process exited with status 2', r.stderr
  assert 'JAX distributed service' not in r.stderr and 'Check failure' not in r.stderr, r.stderr
  assert 'Fatal Python error' not in r.stderr and 'Traceback' not in r.stderr, r.stderr
  assert not (tmp_path / 'w').exists(), r.stderr


ENDED_BY_JAX = r'''#!{python}
"""Process 0 fails; process 1 then ends the way JAX's distributed client
ends a process whose coordination service went away (JAX's own lines)."""
import os, pathlib, signal, sys, time
done = pathlib.Path({folder!r}) / 'process_0_failed'
ready = pathlib.Path({folder!r}) / 'process_1_ready'
if os.environ['HRSEG_PROCESS_ID'] == '0':
  while not ready.exists():
    time.sleep(0.05)
  print('error: the failure', file=sys.stderr, flush=True)
  done.touch()
  os._exit(2)   # as hrseg_jax.distributed.exit_after_error
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # as JAX's preemption handler
print('process 1 is training', flush=True)
ready.touch()
while not done.exists():
  time.sleep(0.05)
sys.stderr.write(
    'E1202 01:17:45.118196    4171 coordination_service_agent.cc:289] Polled an error '
    'from coordination service (this can be an error from this or another task).\n'
    'F1202 01:17:45.118251    4171 client.h:80] Terminating process because the JAX '
    'distributed service detected fatal errors. This most likely indicates that another '
    'task died; see the other task logs for more details.\n'
    '*** Check failure stack trace: ***\n'
    '    @     0x7fee6b140634  absl::log_internal::LogMessage::SendToLog()\n'
    'Fatal Python error: Aborted\n\n'
    'Thread 0x00007fee7a7c5b80 (most recent call first):\n'
    '  File "threading.py", line 1139 in _wait_for_tstate_lock\n')
sys.stderr.flush()
os.abort()
'''


def test_local_process_ended_by_jax_after_another_failed_is_one_line(tmp_path):
  """JAX's fatal-error block of a process ended because another failed (its
  check failure, C++ and Python stacks) never reaches the terminal: the
  launcher prints one line naming the process that failed."""
  fake = tmp_path / 'python'
  fake.write_text(ENDED_BY_JAX.format(python=sys.executable, folder=str(tmp_path)))
  fake.chmod(0o755)
  r = subprocess.run(
      [sys.executable, str(REPO / 'scripts' / 'launch_local.py'), '--num_processes', '2',
       '--cpu_devices', '1', '--python', str(fake), '--', '--workdir', 'w'],
      cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stdout + r.stderr
  assert r.stdout == 'process 1 is training\n', r.stdout
  assert r.stderr.splitlines() == [
      'error: the failure', 'process 1: stopped because process 0 failed',
      'error: a process exited with status 2'], r.stderr


GLOO_LINES = r'''#!{python}
"""Prints what a process of a multi-process CPU run prints on stdout: the
run's lines and, between them, Gloo's connection lines (XLA's CPU
collectives), whole and as two devices of one process write their pieces at
once where the C stdout is unbuffered."""
import os, sys
i = int(os.environ['HRSEG_PROCESS_ID'])
gloo = ('[Gloo] Rank {{}} is connected to 3 peer ranks. Expected number of connected peer '
        'ranks is : 3\n')
sys.stdout.write(f'process {{i}} starts\n' + gloo.format(2 * i) + gloo.format(2 * i + 1))
sys.stdout.write('[Gloo] Rank [Gloo] Rank 3 is connected to 23 is connected to  peer ranks. '
                 '3Expected number of connected peer ranks is :  peer ranks. 3Expected '
                 'number of connected peer ranks is : \n3\n')
sys.stdout.write(f'7\n[Gloo] Rank {{i}} is slow\nstep 1/2 on process {{i}}\n')
sys.stdout.write(gloo.format(i).rstrip() + ' (retried)\n')
'''


def test_local_drops_the_gloo_connection_lines(tmp_path):
  """'[Gloo] Rank N is connected to M peer ranks...' lines (whole, or mixed
  by two devices of one process) never reach the terminal; every other line
  does, those that only look like them included."""
  fake = tmp_path / 'python'
  fake.write_text(GLOO_LINES.format(python=sys.executable))
  fake.chmod(0o755)
  r = subprocess.run(
      [sys.executable, str(REPO / 'scripts' / 'launch_local.py'), '--num_processes', '2',
       '--cpu_devices', '2', '--python', str(fake), '--', '--workdir', 'w'],
      cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and r.stderr == '', r.stdout + r.stderr
  kept = [[f'process {i} starts', '7', f'[Gloo] Rank {i} is slow', f'step 1/2 on process {i}',
           f'[Gloo] Rank {i} is connected to 3 peer ranks. Expected number of connected peer '
           'ranks is : 3 (retried)'] for i in range(2)]
  assert sorted(r.stdout.splitlines()) == sorted(kept[0] + kept[1]), r.stdout
