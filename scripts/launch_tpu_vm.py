"""Creates a Cloud TPU VM slice, installs hrseg_jax on every worker, trains.

Every step runs ``gcloud compute tpus tpu-vm ...`` (``--dry-run`` prints
the commands instead).  Everything after ``--`` is passed to
``python -m hrseg_jax.main`` on every worker unchanged.

Examples:
  python scripts/launch_tpu_vm.py create --name hrseg --zone us-central2-b \\
      --accelerator v4-8
  python scripts/launch_tpu_vm.py setup --name hrseg --zone us-central2-b
  python scripts/launch_tpu_vm.py train --name hrseg --zone us-central2-b \\
      --accelerator v4-8 -- \\
      --config configs/hrnet_w48_cityscapes.py --workdir gs://BUCKET/runs/w48 \\
      --config.data.root=gs://BUCKET/cityscapes
  python scripts/launch_tpu_vm.py logs --name hrseg --zone us-central2-b
  python scripts/launch_tpu_vm.py stop --name hrseg --zone us-central2-b
  python scripts/launch_tpu_vm.py delete --name hrseg --zone us-central2-b

Steps:
  create  the TPU VM (``--spot`` for Spot capacity).
  setup   packs this checkout (pyproject.toml, hrseg_jax/, configs/,
          scripts/), copies it to every worker and installs it with
          ``jax[tpu]`` into a Python 3.11 virtualenv made by ``uv`` (the TPU
          base images ship Python 3.10).
  train   starts the same command on every worker, in the background
          (``nohup``), with ``HRSEG_DISTRIBUTED=1`` so ``hrseg_jax.main``
          calls ``jax.distributed.initialize()`` (workers, coordinator and
          process index come from the TPU metadata).  Each worker's output
          goes to ``~/hrseg_logs/train.log`` on that worker; process 0 writes
          the TensorBoard events and every process its checkpoint shards to
          ``--workdir``, which must be shared by all workers (``gs://``) on a
          multi-host slice.
  logs    follows ``train.log`` of one worker (``--worker``, default 0).
  stop    SIGTERM to the training on every worker: the loop saves a
          checkpoint within two steps and exits; ``train`` again
          resumes it.
  delete  the TPU VM (the bucket is kept).
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKED = ('pyproject.toml', 'README.md', 'hrseg_jax', 'configs', 'scripts')
REMOTE_DIR = '~/hrseg_jax'
VENV = '~/hrseg-venv'
LOG_DIR = '~/hrseg_logs'
if str(REPO) not in sys.path[:1]:
  sys.path.insert(0, str(REPO))   # the checkout this launcher deploys, installed or not
from hrseg_jax import arguments, console, launch_args  # pylint: disable=g-import-not-at-top,wrong-import-position

# Runtime (software) versions by TPU generation, from the Cloud TPU docs
# ("TPU software versions"); check `gcloud compute tpus tpu-vm versions list`.
RUNTIME = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base',
           'v4': 'tpu-ubuntu2204-base', 'v5litepod': 'v2-alpha-tpuv5-lite',
           'v5p': 'v2-alpha-tpuv5', 'v6e': 'v2-alpha-tpuv6e'}


def slice_topology(accelerator: str) -> tuple[int, int]:
  """(JAX devices, hosts) of an accelerator type such as 'v4-32'.

  v2/v3/v4/v5p names count TensorCores (2 per chip; JAX sees one device per
  core on v2/v3 and one per chip on v4/v5p, 4 chips or 8 cores per host);
  v5litepod/v6e names count chips (one device each; up to 8 chips on one
  host, 4 per host beyond).
  """
  m = re.fullmatch(r'(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)', accelerator)
  if not m:
    raise ValueError(f'unknown accelerator type {accelerator!r} (expected e.g. '
                     'v4-8, v5litepod-8, v5p-8, v6e-8)')
  gen, n = m.group(1), int(m.group(2))
  if n % 8 and not (gen in ('v5litepod', 'v6e') and n in (1, 4)):
    raise ValueError(f'unknown accelerator type {accelerator!r}: {gen} slices come in '
                     f'multiples of 8{" (or 1, 4)" if gen in ("v5litepod", "v6e") else ""}'
                     f', e.g. {gen}-8; see gcloud compute tpus accelerator-types list')
  if gen in ('v2', 'v3'):
    return n, max(n // 8, 1)
  if gen in ('v4', 'v5p'):
    return n // 2, max(n // 8, 1)
  return n, 1 if n <= 8 else n // 4


def _gcloud(args, *rest: str) -> list[str]:
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', *rest, f'--zone={args.zone}']
  if args.project:
    cmd.append(f'--project={args.project}')
  return cmd


def _ssh(args, remote: str, worker: str = 'all') -> list[str]:
  return _gcloud(args, 'ssh', args.name, f'--worker={worker}',
                 f'--command={remote}')


def create_commands(args) -> list[list[str]]:
  gen = args.accelerator.split('-')[0]
  version = args.version or RUNTIME[gen]
  cmd = _gcloud(args, 'create', args.name,
                f'--accelerator-type={args.accelerator}', f'--version={version}')
  if args.spot:
    cmd.append('--spot')
  return [cmd]


def setup_commands(args) -> list[list[str]]:
  tarball = os.path.join(args.tmp_dir, 'hrseg_jax_src.tgz')
  pack = ['tar', '-czf', tarball, '--exclude=__pycache__', '-C', str(REPO),
          *PACKED]
  copy = _gcloud(args, 'scp', tarball, f'{args.name}:hrseg_jax_src.tgz',
                 '--worker=all')
  jax_req = f'jax[tpu]=={args.jax_version}' if args.jax_version else 'jax[tpu]'
  remote = ' && '.join([
      'set -e',
      f'mkdir -p {REMOTE_DIR} {LOG_DIR}',
      f'tar -xzf ~/hrseg_jax_src.tgz -C {REMOTE_DIR}',
      '(command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh)',
      'export PATH=$HOME/.local/bin:$PATH',
      f'(test -d {VENV} || uv venv --python {args.python_version} {VENV})',
      f'uv pip install --python {VENV}/bin/python {shlex.quote(jax_req)} '
      f'-e {REMOTE_DIR}',
      f'{VENV}/bin/python -c "import jax; print(jax.process_index(), '
      f'jax.local_device_count(), jax.devices()[0].device_kind)"',
  ])
  return [pack, copy, _ssh(args, remote)]


def train_command(args, train_args: list[str]) -> list[str]:
  run = ' '.join(shlex.quote(a) for a in (f'{VENV}/bin/python', '-m',
                                          'hrseg_jax.main', *train_args))
  # ~ in the venv path must stay unquoted for the remote shell.
  run = run.replace(shlex.quote(f'{VENV}/bin/python'), f'{VENV}/bin/python')
  # The braces keep ``&`` to the training command alone, so that ``$!`` (the
  # pid ``stop`` signals) is the Python process, not a subshell running the
  # whole ``&&`` list, which SIGTERM would end without reaching Python.
  remote = (f'cd {REMOTE_DIR} && mkdir -p {LOG_DIR} && '
            f'{{ HRSEG_DISTRIBUTED=1 nohup {run} > {LOG_DIR}/train.log 2>&1 '
            f'< /dev/null & echo $! > {LOG_DIR}/train.pid; }}')
  return _ssh(args, remote)


def remote_config(train_args: list[str]) -> str:
  """The ``--config`` file as the workers open it: ``train`` runs in their
  copy of this checkout, so a relative path inside what ``setup`` copies
  (ValueError otherwise)."""
  spec = launch_args.config_spec(train_args).partition(':')[0]
  path = launch_args.config_file(
      train_args, str(REPO), f'the workers run in the copy of {REPO} that setup makes')
  rel = os.path.relpath(os.path.realpath(path), os.path.realpath(REPO))
  if os.path.isabs(os.path.expanduser(spec)) or rel.split(os.sep)[0] not in PACKED:
    raise ValueError(f'--config {spec}: the workers only have the copy of {REPO} '
                     f'that setup makes ({", ".join(PACKED)}): give a path relative '
                     'to it, e.g. configs/hrnet_w48_cityscapes.py')
  return path


def parse_args(argv: list[str]):
  """Launcher flags before ``--``; training flags after it (train only)."""
  own, train_args = launch_args.split(argv)
  # A bad flag is one line, named as the launcher's (--help shows the usage).
  parser = arguments.ArgumentParser(description=__doc__.split('\n')[0],
                                    prog_in_errors=True)
  parser.add_argument('step', choices=('create', 'setup', 'train', 'logs',
                                       'stop', 'delete'),
                      help='create the VM, set up (copy this code, install '
                      'JAX), train, show logs, stop training, delete the VM')
  parser.add_argument('--name', required=True, help='TPU VM name')
  parser.add_argument('--zone', required=True, help='e.g. us-central2-b')
  parser.add_argument('--project', default='',
                      help="Google Cloud project (default: gcloud's)")
  parser.add_argument('--accelerator', default='',
                      help='create, train: the slice type, e.g. v4-8, v4-32, '
                      'v5litepod-8, v5p-8, v6e-8 (train checks against it)')
  parser.add_argument('--version', default='',
                      help='TPU runtime version (default: by generation)')
  parser.add_argument('--spot', action='store_true',
                      help='create: on Spot capacity (can be preempted)')
  parser.add_argument('--python_version', default='3.11',
                      help="setup: the workers' virtual environment's Python")
  parser.add_argument('--jax_version',
                      default=importlib.metadata.version('jax'),
                      help='jax[tpu] version installed (default: this one)')
  parser.add_argument('--tmp_dir', default='/tmp',
                      help='setup: where the source tarball is made on this machine')
  parser.add_argument('--worker', default='0', help='logs: which worker')
  parser.add_argument('--allow_local_workdir', action='store_true',
                      help='train: accept a non-gs:// --workdir on a '
                      'multi-host slice (e.g. an NFS mount on every worker)')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run',
                      action='store_true', help='print, run nothing')
  args = parser.parse_args(own)
  if not re.fullmatch(r'[a-z]+-[a-z]+[0-9]+-[a-z]', args.zone):
    parser.error(f'--zone {args.zone!r} is not a zone (e.g. us-central2-b, '
                 'europe-west4-a; a region such as us-central2 is not enough)')
  if args.step in ('create', 'train') and not args.accelerator:
    parser.error(f'{args.step}: pass --accelerator, the slice type (e.g. v4-8, v4-32, '
                 'v5litepod-8): train checks the workdir and batch against it')
  try:
    _, hosts = slice_topology(args.accelerator) if args.accelerator else (0, 1)
  except ValueError as e:
    parser.error(str(e))
  if args.step == 'train':
    launcher_flags = {o for a in parser._actions for o in a.option_strings  # pylint: disable=protected-access
                      if o not in ('-h', '--help')}
    own_flags = [a for a in train_args if a.split('=')[0] in launcher_flags]
    if own_flags:
      parser.error(f'{own_flags[0]} is a flag of this launcher: put it before "--" '
                   '(the flags after it go to hrseg_jax.main)')
    if not launch_args.flag_value(train_args, '--workdir'):
      parser.error('train: pass the training flags after "--", including '
                   '--workdir (gs://BUCKET/... on a multi-host slice)')
    try:
      workdir = launch_args.workdir(train_args)
    except ValueError as e:
      parser.error(str(e))
    if hosts > 1 and not workdir.startswith('gs://') and not args.allow_local_workdir:
      parser.error(f'{args.accelerator} has {hosts} hosts: --workdir must be '
                   f'shared by all of them (gs://...), got {workdir!r} '
                   '(--allow_local_workdir if it is a shared mount)')
    devices, _ = slice_topology(args.accelerator)
    try:
      if launch_args.reads_config(train_args):
        config = remote_config(train_args)
        launch_args.check_overrides(train_args, config)
        if launch_args.mode(train_args) == 'train':
          launch_args.check_batch(launch_args.batch_size(train_args, config), devices,
                                  args.accelerator)
    except ValueError as e:
      parser.error(str(e))
  elif train_args:
    parser.error(f'{args.step}: takes no training flags')
  return args, train_args


def commands(args, train_args: list[str]) -> list[list[str]]:
  if args.step == 'create':
    return create_commands(args)
  if args.step == 'setup':
    return setup_commands(args)
  if args.step == 'train':
    return [train_command(args, train_args)]
  if args.step == 'logs':
    return [_ssh(args, f'tail -n 200 -F {LOG_DIR}/train.log', args.worker)]
  if args.step == 'stop':
    return [_ssh(args, f'kill -TERM $(cat {LOG_DIR}/train.pid)')]
  return [_gcloud(args, 'delete', args.name, '--quiet')]


def main(argv=None) -> int:
  args, train_args = parse_args(sys.argv[1:] if argv is None else list(argv))
  if args.step in ('create', 'train'):
    devices, hosts = slice_topology(args.accelerator)
    print(f'# {args.accelerator}: {devices} JAX devices on '
          f'{console.counted(hosts, "host")}', file=sys.stderr)
  cmds = commands(args, train_args)
  missing = [c[0] for c in cmds if not shutil.which(c[0])]
  if missing and not args.dry_run:
    print(f'launch_tpu_vm.py: error: {missing[0]} is not on PATH (install the Google '
          'Cloud CLI), or add --dry-run to print the commands', file=sys.stderr)
    return 2
  for cmd in cmds:
    print(' '.join(shlex.quote(a) for a in cmd), flush=True)
    if not args.dry_run:
      code = subprocess.call(cmd)
      if code:
        return code
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
