"""Runs ``hrseg_jax.main`` on one machine as one or several JAX processes.

Everything after ``--`` is passed to ``python -m hrseg_jax.main`` unchanged.

Examples:
  # One process driving every GPU of this host (the recommended set-up on a
  # single multi-GPU machine: no launcher is needed, this just runs it):
  python scripts/launch_local.py -- \\
      --config configs/hrnet_w48_cityscapes.py --workdir runs/w48_cs

  # One process per GPU, like torch.distributed.launch --nproc_per_node=8:
  python scripts/launch_local.py --num_processes 8 --gpus_per_process 1 -- \\
      --config configs/hrnet_w48_cityscapes.py --workdir runs/w48_cs

  # 4 processes x 2 simulated CPU devices: exercises the multi-host code
  # paths (per-process input shards, cross-process collectives, Orbax
  # multi-process checkpoints) on a laptop:
  python scripts/launch_local.py --num_processes 4 --cpu_devices 2 -- \\
      --config configs/demo.py --workdir /tmp/hrseg_4x2

With several processes each one gets ``HRSEG_COORDINATOR=localhost:PORT``,
``HRSEG_NUM_PROCESSES`` and ``HRSEG_PROCESS_ID`` (read by
``hrseg_jax.main``, which calls ``jax.distributed.initialize``), and with
``--gpus_per_process`` also ``JAX_LOCAL_DEVICE_IDS`` (read by
``jax.distributed.initialize``: the GPUs this process drives).  ``--dry-run``
prints one shell line per process and starts nothing.  The processes'
output reaches this terminal without the ``[Gloo] Rank N is connected to M
peer ranks`` lines of XLA's CPU collectives; with ``--log_dir`` each process
writes all of its output to ``process_<i>.log`` there (Gloo lines included)
and only process 0's reaches the terminal too.  A missing or repeated
``--workdir`` is refused in one line before any process starts.
When any process fails the others are stopped, each with one line
(``process 1: stopped because process 0 failed``, in place of JAX's
fatal-error block when the coordination service it hosted went with
process 0); SIGTERM and Ctrl-C are forwarded to every process as SIGTERM
(the training loop then saves a checkpoint once the steps already queued,
two at most, have run and exits; a second Ctrl-C stops them at once,
without saving).
"""
from __future__ import annotations

import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path[:1]:
  sys.path.insert(0, str(REPO))   # this checkout's hrseg_jax, installed or not
from hrseg_jax import arguments, console, launch_args, launch_relay  # pylint: disable=g-import-not-at-top,wrong-import-position

ENTRY = ('-m', 'hrseg_jax.main')


def free_port() -> int:
  """A TCP port that is free now on localhost."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def process_envs(num_processes: int, port: int, gpus_per_process: int = 0,
                 cpu_devices: int = 0, base_xla_flags: str = ''
                 ) -> list[dict[str, str]]:
  """The environment variables added for each process (not the inherited ones).

  Args:
    num_processes: number of processes N.
    port: coordinator port on localhost (used when N > 1).
    gpus_per_process: K > 0 gives process i GPUs [i*K, (i+1)*K).
    cpu_devices: K > 0 runs on the CPU with K simulated devices per process.
    base_xla_flags: the inherited ``XLA_FLAGS`` (kept, flags appended).

  Returns:
    One dict per process.
  """
  envs = []
  for i in range(num_processes):
    env = {}
    if num_processes > 1:
      env.update(HRSEG_COORDINATOR=f'localhost:{port}',
                 HRSEG_NUM_PROCESSES=str(num_processes),
                 HRSEG_PROCESS_ID=str(i))
    if gpus_per_process:
      ids = range(i * gpus_per_process, (i + 1) * gpus_per_process)
      if num_processes > 1:
        env['JAX_LOCAL_DEVICE_IDS'] = ','.join(map(str, ids))
      else:
        env['CUDA_VISIBLE_DEVICES'] = ','.join(map(str, ids))
    if cpu_devices:
      flag = f'--xla_force_host_platform_device_count={cpu_devices}'
      env['JAX_PLATFORMS'] = 'cpu'
      env['XLA_FLAGS'] = f'{base_xla_flags} {flag}'.strip()
    envs.append(env)
  return envs


def command(python: str, train_args: list[str]) -> list[str]:
  return [python, *ENTRY, *train_args]


def shell_line(env: dict[str, str], argv: list[str]) -> str:
  """``K=V ... argv`` quoted for a POSIX shell."""
  return ' '.join([f'{k}={shlex.quote(v)}' for k, v in env.items()]
                  + [shlex.quote(a) for a in argv])


def parse_args(argv: list[str]):
  """Launcher flags before ``--``; training flags after it."""
  own, train_args = launch_args.split(argv)
  # A bad flag is one line, named as the launcher's (--help shows the usage).
  parser = arguments.ArgumentParser(
      description=__doc__.split('\n')[0], prog_in_errors=True,
      usage='%(prog)s [options] -- --config CONFIG --workdir DIR [...]')
  parser.add_argument('--num_processes', type=int, default=1,
                      help='training processes on this machine, each with its '
                      'own devices (default: 1)')
  group = parser.add_mutually_exclusive_group()
  group.add_argument('--gpus_per_process', type=int, default=0,
                     help='GPUs per process (default: all GPUs, one process)')
  group.add_argument('--cpu_devices', type=int, default=0,
                     help='run on the CPU with this many devices per process')
  parser.add_argument('--port', type=int, default=0,
                      help='coordinator port (default: a free one)')
  parser.add_argument('--log_dir', default='',
                      help='write process_<i>.log files here; process 0 '
                      'prints to this terminal too (default: every process '
                      'prints to this terminal)')
  parser.add_argument('--python', default=sys.executable,
                      help='Python interpreter that runs the training (default: '
                      'the one running this script)')
  parser.add_argument('--dry-run', '--dry_run', dest='dry_run',
                      action='store_true', help='print, start nothing')
  args = parser.parse_args(own)
  if not train_args:
    parser.error('training flags go after "--", e.g. -- --config '
                 'configs/demo.py --workdir /tmp/run')
  if args.num_processes < 1:
    parser.error('--num_processes must be >= 1')
  if args.gpus_per_process < 0 or args.cpu_devices < 0:
    parser.error('device counts must be >= 0')
  if args.num_processes > 1 and not (args.gpus_per_process or args.cpu_devices):
    parser.error('several processes on one host must split its devices: pass '
                 '--gpus_per_process K (GPUs) or --cpu_devices K (CPU)')
  try:   # here once, else every process prints the same error
    launch_args.workdir(train_args)
  except ValueError as e:
    parser.error(str(e))
  devices = args.num_processes * (args.gpus_per_process or args.cpu_devices)
  # --config.a.b=V overrides apply to the default --config too.
  named = (launch_args.flag_value(train_args, '--config')
           or launch_args.config_overrides(train_args))
  if devices and named and launch_args.reads_config(train_args):
    try:   # here once, else every process prints the same error
      config = launch_args.config_file(train_args, '.', f'in {os.getcwd()}')
      launch_args.check_overrides(train_args, config)
      if launch_args.mode(train_args) == 'train':
        each = console.counted(args.gpus_per_process or args.cpu_devices, 'device')
        launch_args.check_batch(launch_args.batch_size(train_args, config), devices,
                                f'{console.counted(args.num_processes, "process", "processes")}'
                                f' x {each}')
    except ValueError as e:
      parser.error(str(e))
  return args, train_args


def _stop(procs: list[subprocess.Popen], grace_s: float = 30.0) -> list[int]:
  """SIGTERM to the processes still running, SIGKILL after ``grace_s``;
  returns the indices of the processes it stopped."""
  stopped = [i for i, p in enumerate(procs) if p.poll() is None]
  for i in stopped:
    procs[i].terminate()
  deadline = time.monotonic() + grace_s
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()
  return stopped


def first_failure(codes: list[int | None]) -> int | None:
  """The index of the failed process among exit statuses (None: running):
  one that exited with an error status (it met an error) before one killed
  by a signal (JAX ends the others that way when one fails), then the
  lowest index."""
  failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
  return min(failed, key=lambda i: codes[i] < 0) if failed else None


def culprit(codes: list[int], first: int, ended: set[int]) -> int:
  """The process whose failure ended the run, once every process has ended.

  Args:
    codes: the exit statuses.
    first: the first process seen to fail.
    ended: the processes ended because of another's failure (by JAX or the
      launcher); one of them may be seen first (JAX ends a process as soon
      as the process hosting its coordination service goes).
  """
  if first not in ended:
    return first
  found = first_failure([None if i in ended else c for i, c in enumerate(codes)])
  return first if found is None else found


def _wait_all(procs: list[subprocess.Popen]) -> tuple[int | None, list[int]]:
  """Waits for every process; the first failure stops the others (a JAX
  process whose peer died would otherwise wait in a collective).

  Returns:
    The index of the failed process (None if every one exited 0) and the
    indices of the processes stopped because of it.
  """
  while True:
    codes = [p.poll() for p in procs]
    failed = first_failure(codes)
    if failed is not None:
      return failed, _stop(procs)
    if all(c == 0 for c in codes):
      return None, []
    time.sleep(0.2)


def main(argv=None) -> int:
  args, train_args = parse_args(sys.argv[1:] if argv is None else list(argv))
  port = args.port or free_port()
  envs = process_envs(args.num_processes, port, args.gpus_per_process,
                      args.cpu_devices, os.environ.get('XLA_FLAGS', ''))
  argv_ = command(args.python, train_args)
  logs = [os.path.join(args.log_dir, f'process_{i}.log') if args.log_dir else ''
          for i in range(args.num_processes)]
  if args.dry_run:
    for env, log in zip(envs, logs):
      print(shell_line(env, argv_) + (f' > {shlex.quote(log)} 2>&1' if log else ''))
    return 0
  if args.log_dir:
    os.makedirs(args.log_dir, exist_ok=True)
    shown = ' and '.join(logs) if len(logs) <= 2 else f'{logs[0]} … {logs[-1]}'
    also = ' (process 0\'s shown here too)' if len(logs) > 1 else ' (shown here too)'
    print(f'{console.counted(len(logs), "process", "processes")}: output in {shown}{also}',
          flush=True)
  procs, files = [], []
  relays, out_relays = {}, {}   # process index -> Relay of its stderr, stdout
  for i, (env, log) in enumerate(zip(envs, logs)):
    out = open(log, 'wb') if log else None  # pylint: disable=consider-using-with
    files.append(out)
    # Process 0, and every process without --log_dir, writes through Relays
    # (process 0's also into its file, unchanged): no Gloo connection lines,
    # and JAX's fatal-error block of a process stopped by another's failure
    # becomes one line below.  The other processes write only to their files.
    shown_here = not out or i == 0
    procs.append(subprocess.Popen(
        argv_, env={**os.environ, **env},
        stdout=subprocess.PIPE if shown_here else out,
        stderr=subprocess.PIPE if shown_here else subprocess.STDOUT))
    if shown_here:
      lock = threading.Lock()
      relays[i] = launch_relay.Relay(procs[-1].stderr, sys.stderr.buffer, out, lock)
      out_relays[i] = launch_relay.Relay(procs[-1].stdout, sys.stdout.buffer, out, lock)
      relays[i].start()
      out_relays[i].start()

  def forward(signum, frame):  # pylint: disable=unused-argument
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  old = signal.signal(signal.SIGTERM, forward)
  try:
    try:
      failed, stopped = _wait_all(procs)
    except KeyboardInterrupt:
      # Ctrl-C (a terminal sends it to the processes too): like SIGTERM, each
      # saves a checkpoint and exits 0; a second Ctrl-C stops them at once.
      forward(signal.SIGTERM, None)
      failed, stopped = _wait_all(procs)
  except KeyboardInterrupt:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    _join([*relays.values(), *out_relays.values()])
    print('stopped by a second Ctrl-C, without saving a checkpoint', file=sys.stderr)
    return 130
  finally:
    signal.signal(signal.SIGTERM, old)
    _join([*relays.values(), *out_relays.values()])
    for f in files:
      if f:
        f.close()
  if failed is None:
    return 0
  # Ended by JAX's fatal-error block, or by this launcher (not on their own).
  codes = [p.returncode for p in procs]
  ended = {i for i, r in relays.items() if r.cut}
  ended |= {i for i in stopped if codes[i] < 0}
  failed = culprit(codes, failed, ended)
  for i in sorted(ended - {failed}):
    print(f'process {i}: stopped because process {failed} failed', file=sys.stderr)
  code = procs[failed].returncode
  where = f' (see {args.log_dir})' if args.log_dir else ''
  print(f'error: a process exited with status {code}{where}', file=sys.stderr)
  return code


def _join(relays: list[launch_relay.Relay], timeout_s: float = 5.0) -> None:
  """Lets the relays copy what the processes wrote last (bounded: a worker
  process left behind may hold a pipe open)."""
  deadline = time.monotonic() + timeout_s
  for r in relays:
    r.join(timeout=max(deadline - time.monotonic(), 0))


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
