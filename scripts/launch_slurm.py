"""Writes and submits an sbatch script that trains on a Slurm GPU cluster.

Everything after ``--`` is passed to ``python -m hrseg_jax.main`` unchanged.

Examples:
  # 2 nodes x 8 GPUs, one process per node driving its 8 GPUs:
  python scripts/launch_slurm.py --nodes 2 --gpus_per_node 8 \\
      --partition gpu --time 2-00:00:00 \\
      --setup 'source ~/venvs/hrseg/bin/activate' -- \\
      --config configs/hrnet_w48_cityscapes.py --workdir /shared/runs/w48_cs

  # The same with one process per GPU (16 processes):
  python scripts/launch_slurm.py --nodes 2 --gpus_per_node 8 --per gpu ...

  # Print the script and the sbatch command, submit nothing:
  python scripts/launch_slurm.py --nodes 2 --gpus_per_node 8 --dry-run -- ...

``srun`` starts the tasks; ``hrseg_jax.main`` sees the ``srun`` step and
calls ``jax.distributed.initialize()``, which reads the coordinator (first
node, a port derived from the job id), the process count and index from
Slurm's variables.  JAX's Slurm default is one GPU per process (the GPU
numbered ``SLURM_LOCALID``), so ``--per node`` exports
``JAX_LOCAL_DEVICE_IDS=0,...,G-1``; with ``--per gpu`` every task must see
all the node's GPUs (no ``--gpus-per-task``/``--gpu-bind``, which would
renumber them).  Slurm sends SIGTERM ``--signal_s`` seconds before the time
limit: the training loop saves a checkpoint once the steps already queued
(two at most) have run and exits; submitting the same script again resumes
it.  ``--requeue`` lets Slurm requeue the job after a node failure or a
preemption (not at the time limit); the requeued run appends to the same
output file.
"""
from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path[:1]:
  sys.path.insert(0, str(REPO))   # this checkout's hrseg_jax, installed or not
from hrseg_jax import arguments, console, launch_args  # pylint: disable=g-import-not-at-top,wrong-import-position

ENTRY = ('-m', 'hrseg_jax.main')


def sbatch_script(args, train_args: list[str]) -> str:
  """The sbatch script for parsed launcher ``args``."""
  tasks = args.gpus_per_node if args.per == 'gpu' else 1
  lines = ['#!/bin/bash',
           f'#SBATCH --job-name={args.job_name}',
           f'#SBATCH --nodes={args.nodes}',
           f'#SBATCH --ntasks-per-node={tasks}',
           f'#SBATCH --gpus-per-node={args.gpus_per_node}']
  if args.cpus_per_task:
    lines.append(f'#SBATCH --cpus-per-task={args.cpus_per_task}')
  for flag in ('partition', 'account', 'time', 'mem'):
    value = getattr(args, flag)
    if value:
      lines.append(f'#SBATCH --{flag}={value}')
  lines += [f'#SBATCH --output={os.path.join(args.log_dir, "%x-%j.out")}',
            f'#SBATCH --signal=TERM@{args.signal_s}']
  if args.requeue:   # the requeued run keeps the interrupted run's output
    lines += ['#SBATCH --requeue', '#SBATCH --open-mode=append']
  lines += ['', 'set -eo pipefail']
  lines += args.setup
  lines += ['',
            '# hrseg_jax.main calls jax.distributed.initialize(): Slurm '
            'auto-detection.',
            'export HRSEG_DISTRIBUTED=1']
  if args.per == 'node':
    ids = ','.join(str(i) for i in range(args.gpus_per_node))
    lines += ['# One process per node drives all its GPUs (JAX\'s Slurm '
              'default is one GPU per process).',
              f'export JAX_LOCAL_DEVICE_IDS={ids}']
  cmd = ' '.join(shlex.quote(a) for a in (args.python, *ENTRY, *train_args))
  lines += [f'srun --kill-on-bad-exit=1 {cmd}', '']
  return '\n'.join(lines)


def parse_args(argv: list[str]):
  """Launcher flags before ``--``; training flags after it."""
  own, train_args = launch_args.split(argv)
  # A bad flag is one line, named as the launcher's (--help shows the usage).
  parser = arguments.ArgumentParser(
      description=__doc__.split('\n')[0], prog_in_errors=True,
      usage='%(prog)s [options] -- --config CONFIG --workdir DIR [...]')
  parser.add_argument('--nodes', type=int, default=1, help='nodes (hosts) of the job')
  parser.add_argument('--gpus_per_node', type=int, default=8,
                      help='GPUs used on each node')
  parser.add_argument('--per', choices=('node', 'gpu'), default='node',
                      help='one process per node (default) or per GPU')
  parser.add_argument('--job_name', default='hrseg', help='Slurm job name')
  parser.add_argument('--partition', default='',
                      help="Slurm partition (default: the cluster's)")
  parser.add_argument('--account', default='',
                      help="Slurm account (default: the user's)")
  parser.add_argument('--time', default='', help='e.g. 2-00:00:00')
  parser.add_argument('--mem', default='', help="e.g. 0 (all of the node's)")
  parser.add_argument('--cpus_per_task', type=int, default=0,
                      help="CPUs per process, for the data pipeline's workers "
                      "(0: the cluster's default)")
  parser.add_argument('--signal_s', type=int, default=300,
                      help='SIGTERM this long before the time limit')
  parser.add_argument('--requeue', action='store_true',
                      help='requeue after a node failure or preemption (not '
                      'at the time limit: resubmit then)')
  parser.add_argument('--setup', action='append', default=[],
                      help='shell line run first on the batch node, e.g. '
                      '"module load cuda" (repeatable)')
  parser.add_argument('--python', default='python',
                      help='the Python that runs training on the nodes')
  parser.add_argument('--log_dir', default='slurm_logs',
                      help='sbatch script and job output go here')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run',
                      action='store_true', help='print, submit nothing')
  args = parser.parse_args(own)
  if not train_args:
    parser.error('training flags go after "--", e.g. -- --config '
                 'configs/hrnet_w48_cityscapes.py --workdir /shared/runs/x')
  if args.nodes < 1 or args.gpus_per_node < 1:
    parser.error('--nodes and --gpus_per_node must be >= 1')
  # The job runs in this directory (sbatch's default): the config is read from here.
  try:
    launch_args.workdir(train_args)
    if launch_args.reads_config(train_args):
      config = launch_args.config_file(train_args, '.', f'in {os.getcwd()}, where the job runs')
      launch_args.check_overrides(train_args, config)
      if launch_args.mode(train_args) == 'train':
        launch_args.check_batch(launch_args.batch_size(train_args, config),
                                args.nodes * args.gpus_per_node,
                                f'{console.counted(args.nodes, "node")} x '
                                f'{console.counted(args.gpus_per_node, "GPU")}')
  except ValueError as e:
    parser.error(str(e))
  return args, train_args


def main(argv=None) -> int:
  args, train_args = parse_args(sys.argv[1:] if argv is None else list(argv))
  script = sbatch_script(args, train_args)
  path = os.path.join(args.log_dir, f'{args.job_name}.sbatch')
  submit = ['sbatch', path]
  if args.dry_run:
    print(f'# {path}')
    print(script)
    print(' '.join(shlex.quote(a) for a in submit))
    return 0
  if not shutil.which('sbatch'):
    print('launch_slurm.py: error: sbatch is not on PATH: run this on the cluster '
          '(a login node), or add --dry-run to print the script', file=sys.stderr)
    return 2
  os.makedirs(args.log_dir, exist_ok=True)
  with open(path, 'w') as f:
    f.write(script)
  print(f'wrote {path}')
  return subprocess.call(submit)


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
