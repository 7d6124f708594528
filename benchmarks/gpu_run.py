"""The GPU benchmark in one command, most important workloads first.

Runs ``benchmarks/benchmark.py`` once per entry of :data:`PLAN`, each in its
own process (so each has its own peak-memory figure and a crash loses one
entry), under one overall time budget:

1. HRNetV2-W48, bfloat16: train + infer (with a profile of a few steps);
2. Lite-HRNet-30 + HANet, bfloat16: train + infer (with a profile);
3. HRNetV2-W48 + OCR, bfloat16: train;
4. HRNet-W32 + HANet, bfloat16: train;
5. HRNetV2-W48, float32: train;
6. Lite-HRNet-30 + HANet, bfloat16: train with XLA's own depthwise kernel
   gradient (``--depthwise-grad xla``), against entry 2's shifted products.

Every entry writes its JSON after every workload (``OUT/<name>.json``), and
after every entry the merged document ``OUT/gpu_run.json`` and the table
``OUT/table.txt`` are rewritten.  At the end the profiles are packed into
``OUT/profile.tgz`` and summarised in ``OUT/profile_summary.txt``
(``benchmarks/profile_summary.py``: time per source operation).  An entry
gets the time left as its ``--time-budget`` (workloads not yet started
when it is spent are skipped and recorded so) and is stopped when the
overall budget is spent (SIGTERM, then SIGKILL); its unfinished workloads
and the entries not started are recorded as skipped, and the workloads of an
entry that fails without writing them as errors.  The timing is short
(3 warm-up steps, 3 rounds of 5 steps) so that the whole plan, compilation
included, fits in about 8 minutes on one H200.

Needs only JAX, Flax, Optax and Orbax (and NumPy): nothing else is imported.

Usage:
  python benchmarks/gpu_run.py --out bench_out            # on the GPU
  python benchmarks/gpu_run.py --tiny --out /tmp/rehearsal  # CPU rehearsal
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import time

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from benchmarks.harness import cli  # pylint: disable=wrong-import-position  (no JAX)

BENCHMARK = _REPO / 'benchmarks' / 'benchmark.py'

# (name, model, dtype, modes, profile, depthwise kernel gradient): most
# important first.  The last is an A/B of the depthwise kernel gradient.
PLAN = (
    ('w48_bf16', 'w48', 'bfloat16', 'train,infer', True, 'shifted'),
    ('lite30_hanet_bf16', 'lite30_hanet', 'bfloat16', 'train,infer', True, 'shifted'),
    ('ocr_w48_bf16', 'ocr_w48', 'bfloat16', 'train', False, 'shifted'),
    ('w32_hanet_bf16', 'w32_hanet', 'bfloat16', 'train', False, 'shifted'),
    ('w48_f32', 'w48', 'float32', 'train', False, 'shifted'),
    ('lite30_hanet_bf16_dwxla', 'lite30_hanet', 'bfloat16', 'train', False, 'xla'),
)
# --tiny: the same plan on tiny stand-ins (XLA:CPU compiles them in seconds).
TINY_STAND_INS = dict(w48='tiny', lite30_hanet='tiny_hanet', ocr_w48='tiny_ocr',
                      w32_hanet='tiny_hanet')
SHORT_TIMING = ('--warmup', '3', '--repeats', '3', '--steps', '5',
                '--latency-runs', '10')
_GRACE_S = 10.0
# benchmark.py options each entry's command sets (argparse dest -> flag).
_SET_PER_ENTRY = {'models': '--models', 'dtypes': '--dtypes', 'modes': '--modes',
                  'time_budget_s': '--time-budget', 'out': '--out',
                  'profile': '--profile', 'report': '--report', 'tiny': '--tiny',
                  'isolate': '--isolate', 'child': '--child'}
_SMI_QUERY = 'name,driver_version,memory.total,clocks.sm,clocks.max.sm'


def _parser() -> argparse.ArgumentParser:
  p = cli.Parser(
      prog='benchmarks/gpu_run.py',
      description=__doc__.split('\n', 1)[0])
  p.add_argument('--out', required=True, help='folder for the JSON, logs, table')
  p.add_argument('--budget', type=float, default=450.0,
                 help='overall seconds, compilation included (450)')
  p.add_argument('--tiny', action='store_true',
                 help='tiny stand-in models and shapes: a CPU rehearsal')
  p.add_argument('--no-profile', action='store_true',
                 help='no jax.profiler trace for the first two entries')
  p.add_argument('--only', default='',
                 help='comma-separated entry names to run (default: all)')
  p.add_argument('extra', nargs='*',
                 help='more benchmark.py arguments (after --), e.g. --xla-flags=...')
  return p


def _model(entry, args) -> str:
  """The benchmark model an entry runs (its tiny stand-in with ``--tiny``)."""
  return TINY_STAND_INS.get(entry[1], entry[1]) if args.tiny else entry[1]


def _command(entry, out_dir: pathlib.Path, left: float, args) -> list[str]:
  name, _, dtype, modes, profile, depthwise_grad = entry
  model = _model(entry, args)
  cmd = [sys.executable, str(BENCHMARK), '--models', model, '--dtypes', dtype,
         '--modes', modes, '--time-budget', f'{max(left, 1.0):.0f}',
         '--out', str(out_dir / f'{name}.json'), *SHORT_TIMING]
  if depthwise_grad != 'shifted':
    cmd += ['--depthwise-grad', depthwise_grad]
  if args.tiny:
    cmd.append('--tiny')
  if profile and not args.no_profile:
    cmd += ['--profile', str(out_dir / 'profile' / name), '--profile-steps', '3']
  return cmd + list(args.extra)


class _Stopped(Exception):
  """SIGTERM reached gpu_run (Ctrl-C arrives as KeyboardInterrupt)."""


def _raise_stopped(signum, frame):  # pylint: disable=unused-argument
  raise _Stopped()


def _stop(proc: subprocess.Popen) -> None:
  """SIGTERM to the entry's process group, SIGKILL after a grace period.

  Ctrl-C and SIGTERM are ignored meanwhile: a second one must not leave the
  entry running on the accelerator without its parent.
  """
  previous = {s: signal.signal(s, signal.SIG_IGN)
              for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    try:
      os.killpg(proc.pid, signal.SIGTERM)
      proc.wait(timeout=_GRACE_S)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    except ProcessLookupError:   # it had just ended
      proc.wait()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def _run(cmd: list[str], log: pathlib.Path, deadline: float) -> str:
  """Runs ``cmd`` until it ends or ``deadline``; returns how it ended.

  Raises:
    KeyboardInterrupt, _Stopped: after stopping the entry (Ctrl-C, SIGTERM).
  """
  with open(log, 'w') as f:
    # The caller's folder: relative paths (OUT, arguments after --) as typed.
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
      return f'exit {code}'
    except subprocess.TimeoutExpired:
      _stop(proc)
      return 'stopped at the time budget'
    except (KeyboardInterrupt, _Stopped):
      _stop(proc)
      raise


def _unfinished(entry, args, status: str, text: str,
                finished: frozenset = frozenset()) -> list[dict]:
  """Records for the entry's workloads not in ``finished`` (modes)."""
  _, _, dtype, modes, _, depthwise_grad = entry
  field = 'error' if status == 'error' else 'reason'
  return [{'model': _model(entry, args), 'dtype': dtype, 'mode': m,
           'status': status, field: f'{text} (entry {entry[0]})',
           'impl': cli.impl_label(depthwise_grad)}
          for m in modes.split(',') if m not in finished]


def _read_entry(out_dir: pathlib.Path, name: str, since: float) -> dict | None:
  """An entry's JSON if this run wrote it (not one left in OUT by an earlier run)."""
  path = out_dir / f'{name}.json'
  try:
    if path.stat().st_mtime < since - 2.0:   # 2 s for coarse file times
      return None
    return json.loads(path.read_text())
  except (OSError, ValueError):   # never written, or cut off by a kill
    return None


def _merge(out_dir: pathlib.Path, done: dict[str, float], skipped: list[dict],
           budget: float) -> None:
  """Rewrites ``gpu_run.json`` and ``table.txt`` from the entries so far.

  ``done``: the entries run, with the wall-clock time each started.
  """
  from benchmarks.harness import peer as peer_lib, report, runner, schema  # pylint: disable=g-import-not-at-top
  docs = []
  for name, since in done.items():
    doc = _read_entry(out_dir, name, since)
    if doc is not None:
      # An entry's own --time-budget is the time that was left to it; its
      # skipped workloads ran out of the overall budget.
      for r in doc.get('results', []):
        if r.get('status') == 'skipped':
          r['reason'] = f'overall budget of {budget:.0f} s spent (entry {name})'
      docs.append(doc)
  if docs:
    merged = report.merge(docs)
  else:
    merged = dict(schema=schema.SCHEMA, meta={}, settings={}, results=[],
                  peer=peer_lib.load(None))
  merged['results'] = list(merged['results']) + skipped
  runner.write(merged, str(out_dir / 'gpu_run.json'))
  tmp = out_dir / 'table.txt.tmp'
  tmp.write_text(report.table(merged) + '\n')
  os.replace(tmp, out_dir / 'table.txt')


def _pack_profiles(out_dir: pathlib.Path) -> None:
  """One ``profile.tgz``: traces sit deep below ``profile/``."""
  prof = out_dir / 'profile'
  if prof.is_dir():
    with tarfile.open(out_dir / 'profile.tgz', 'w:gz') as tar:
      tar.add(prof, arcname='profile')


def _check(args) -> set[str]:
  """The ``--only`` entries; ValueError (one line) for any bad argument."""
  only = {n for n in args.only.split(',') if n}
  unknown = only - {e[0] for e in PLAN}
  if unknown:
    raise ValueError(f'--only: unknown {"entry" if len(unknown) == 1 else "entries"} '
                     f'{", ".join(sorted(unknown))}; known: '
                     f'{", ".join(e[0] for e in PLAN)}')
  if args.budget <= 0:
    raise ValueError(f'--budget must be > 0 seconds; got {args.budget:g}')
  cli.check_writable(args.out, 'OUT', folder=True)
  # A second run in the same folder mixed its files with the first's.
  if os.path.isdir(args.out) and any(not n.startswith('.') for n in os.listdir(args.out)):
    raise ValueError(f'OUT {args.out} is not empty (an earlier run?): give a new folder, '
                     'so that the runs stay apart')
  # The arguments after -- as benchmark.py will read them (it exits 2 itself
  # with one line on a malformed one).
  extra = cli.build_parser().parse_args(list(args.extra))
  default = cli.build_parser().parse_args([])
  for dest, flag in _SET_PER_ENTRY.items():
    if getattr(extra, dest) != getattr(default, dest):
      raise ValueError(f'{flag} after --: gpu_run sets it for each entry'
                       + (' (use gpu_run.sh OUT --tiny)' if flag == '--tiny' else ''))
  cli.settings(cli.build_parser().parse_args(
      list(args.extra) + (['--tiny'] if args.tiny else [])))
  return only


def _record_gpu(out_dir: pathlib.Path) -> None:
  """The GPUs and their clocks (``nvidia_smi.csv``), where nvidia-smi exists."""
  if shutil.which('nvidia-smi') is None:
    return
  done = subprocess.run(['nvidia-smi', f'--query-gpu={_SMI_QUERY}', '--format=csv'],
                        capture_output=True, text=True, check=False)
  if done.returncode == 0:
    print(done.stdout, end='', flush=True)
    (out_dir / 'nvidia_smi.csv').write_text(done.stdout)


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    only = _check(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  _record_gpu(out_dir)
  start = time.monotonic()
  deadline = start + args.budget
  done, skipped = {}, []
  signal.signal(signal.SIGTERM, _raise_stopped)
  stopped_by = None
  for entry in PLAN:
    if only and entry[0] not in only:
      continue
    if stopped_by:
      skipped += _unfinished(entry, args, 'skipped',
                             f'not started: stopped by {stopped_by}')
      continue
    left = deadline - time.monotonic()
    if left < 5:
      skipped += _unfinished(entry, args, 'skipped',
                             f'overall budget of {args.budget:.0f} s spent')
      print(f'[{entry[0]}] skipped: overall budget spent', flush=True)
      _merge(out_dir, done, skipped, args.budget)
      continue
    t0, started = time.monotonic(), time.time()
    try:
      ended = _run(_command(entry, out_dir, left, args),
                   out_dir / f'{entry[0]}.log', deadline)
    except (KeyboardInterrupt, _Stopped) as e:
      stopped_by = 'SIGTERM' if isinstance(e, _Stopped) else 'Ctrl-C'
      ended = f'stopped by {stopped_by}'
    done[entry[0]] = started
    # Workloads a stopped or failed entry never recorded are recorded here.
    doc = _read_entry(out_dir, entry[0], started) or {}
    finished = frozenset(r['mode'] for r in doc.get('results', []))
    if stopped_by:
      skipped += _unfinished(entry, args, 'skipped', ended, finished)
    elif ended.startswith('stopped'):
      skipped += _unfinished(entry, args, 'skipped',
                             f'stopped at the overall budget of {args.budget:.0f} s',
                             finished)
    elif ended != 'exit 0':
      skipped += _unfinished(entry, args, 'error',
                             f'{ended}, see {out_dir / (entry[0] + ".log")}',
                             finished)
    _merge(out_dir, done, skipped, args.budget)
    print(f'[{entry[0]}] {ended} after {time.monotonic() - t0:.0f} s '
          f'(total {time.monotonic() - start:.0f} s of {args.budget:.0f})',
          flush=True)
    _tail(out_dir / f'{entry[0]}.log')
  if stopped_by:
    _merge(out_dir, done, skipped, args.budget)   # with the entries not started
  _pack_profiles(out_dir)
  _summarise_profiles(out_dir)
  table = out_dir / 'table.txt'
  if table.exists():
    print(table.read_text())
  print(f'wrote {out_dir / "gpu_run.json"} in {time.monotonic() - start:.0f} s')
  if stopped_by:
    print(f'stopped by {stopped_by}: what was measured is in '
          f'{out_dir / "gpu_run.json"}', file=sys.stderr)
    return 130 if stopped_by == 'Ctrl-C' else 143
  return 0


def _summarise_profiles(out_dir: pathlib.Path) -> None:
  """``profile_summary.txt``: where each profiled workload's time went."""
  from benchmarks import profile_summary  # pylint: disable=g-import-not-at-top
  prof = out_dir / 'profile'
  parts = []
  for folder in (profile_summary.workloads(prof) if prof.is_dir() else []):
    try:
      parts.append(profile_summary.summarise(folder))
    except (OSError, ValueError) as e:
      parts.append(f'{folder.name}: not summarised ({e})')
  if parts:
    path = out_dir / 'profile_summary.txt'
    path.write_text('\n\n'.join(parts) + '\n')
    print(f'wrote {path} (benchmarks/profile_summary.py)')


def _tail(log: pathlib.Path) -> None:
  """The workload lines of an entry's log (one per finished workload)."""
  for line in log.read_text(errors='replace').splitlines():
    if line.startswith('['):
      print('  ' + line, flush=True)


def entry(argv: list[str] | None = None) -> int:
  """:func:`main`, and one line for Ctrl-C or SIGTERM between entries.

  An entry stopped while it runs is handled in :func:`main`; a signal while
  gpu_run itself merges, tails a log or summarises (no entry running) ends
  here, exit 130 (Ctrl-C) or 143 (SIGTERM), without a traceback.
  """
  try:
    return main(argv)
  except KeyboardInterrupt:
    print('stopped by Ctrl-C', file=sys.stderr)
    return 130
  except _Stopped:
    print('stopped by SIGTERM', file=sys.stderr)
    return 143


if __name__ == '__main__':
  sys.exit(entry())
