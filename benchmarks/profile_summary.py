"""Where a profiled workload's time goes: per source operation, per call.

``benchmark.py --profile DIR`` (and ``gpu_run.sh``, for its first two
entries) traces a few calls of every workload into a run folder of its own,
``DIR/<workload>/plugins/profile/<time>/``, beside the compiled program
(``program.hlo.txt``); ``DIR/<workload>/profile.json`` names the newest run
(earlier runs' traces stay beside it).  This reads such a folder, or every
workload below a parent folder, and prints for each:

* where the op events come from: the device's ``XLA Ops`` line on a GPU or
  TPU (one event per HLO operation, its kernels merged), the device's
  streams if that line is missing, or the host threads that run XLA:CPU's
  operations;
* per traced call: time in operations (summed; several CPU threads may run
  at once), busy time (their union), the span from the first operation to
  the last, and how many operations ran; ``idle`` is the share of the span
  with nothing running (launch gaps, host waits);
* a table of the operations grouped by the Flax module and JAX primitive
  they come from (the ``op_name`` of the HLO instruction, as
  ``flop_breakdown.py`` groups FLOPs; ``--by hlo`` groups by HLO
  instruction name instead), largest first.

Usage:
  python benchmarks/profile_summary.py OUT/profile            # every workload
  python benchmarks/profile_summary.py OUT/profile/lite30_hanet_bf16 --top 30
"""
from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import sys
from typing import Any

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from benchmarks.harness import hlo_costs  # pylint: disable=wrong-import-position

_SUFFIX = re.compile(r'\.\d+$')


def workloads(path: pathlib.Path) -> list[pathlib.Path]:
  """``path`` itself if it is a workload's profile folder, else those below."""
  if (path / 'profile.json').is_file():
    return [path]
  return sorted(p.parent for p in path.rglob('profile.json'))


def trace_folder(folder: pathlib.Path, meta: dict[str, Any]) -> pathlib.Path:
  """The run folder of the trace ``profile.json`` names (else the newest).

  ``benchmark.py --profile`` records the run it traced: a folder profiled
  again holds every earlier run's trace too.
  """
  if meta.get('trace'):
    return folder / meta['trace']
  runs = sorted(p.parent for p in folder.glob('plugins/profile/*/*.trace.json.gz'))
  if not runs:
    raise ValueError(f'{folder}: no plugins/profile/*/*.trace.json.gz')
  return runs[-1]


def load_events(run: pathlib.Path) -> list[dict[str, Any]]:
  """The trace events of the trace in the run folder ``run``."""
  traces = sorted(run.glob('*.trace.json.gz'))
  if not traces:
    raise ValueError(f'{run}: no *.trace.json.gz')
  with gzip.open(traces[-1], 'rt') as f:
    return json.load(f).get('traceEvents', [])


def op_events(events: list[dict[str, Any]], module: str | None
              ) -> tuple[list[dict[str, Any]], str]:
  """The events of one HLO operation each, and where they come from."""
  procs, threads = {}, {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'process_name':
      procs[e.get('pid')] = e.get('args', {}).get('name', '')
    elif e.get('ph') == 'M' and e.get('name') == 'thread_name':
      threads[(e.get('pid'), e.get('tid'))] = e.get('args', {}).get('name', '')
  ops = [e for e in events if e.get('ph') == 'X' and 'hlo_op' in e.get('args', {})
         and (module is None or e['args'].get('hlo_module') in (None, module))]
  device = [e for e in ops if procs.get(e.get('pid'), '').startswith('/device:')]
  if device:
    xla_ops = [e for e in device if threads.get((e['pid'], e['tid'])) == 'XLA Ops']
    chosen = xla_ops or device
    pids = sorted({procs[e['pid']] for e in chosen})
    line = '"XLA Ops"' if xla_ops else 'streams'
    return chosen, f'{", ".join(pids)} {line}'
  return ops, f'host threads ({len({(e["pid"], e["tid"]) for e in ops})})'


def source_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the ``op_name`` of the JAX operation it runs.

  A fusion without its own ``op_name`` takes that of its root instruction
  (or of any fused instruction that has one).
  """
  comps = hlo_costs.parse(hlo_text)
  calls = re.compile(r'calls=%?([\w.\-]+)')
  names = {}
  for instrs in comps.values():
    for ins in instrs:
      op = ins.op_name
      if not op:
        m = calls.search(ins.text)
        inner = comps.get(m.group(1), []) if m else []
        op = next((i.op_name for i in reversed(inner) if i.op_name), '')
      names[ins.name] = op
  return names


def _union(intervals: list[tuple[float, float]]) -> float:
  total, end = 0.0, float('-inf')
  for a, b in sorted(intervals):
    if b > end:
      total += b - max(a, end)
      end = b
  return total


def summarise(folder: pathlib.Path, top: int = 25, by: str = 'source',
              depth: int = 2) -> str:
  """The text printed for one workload's profile folder."""
  meta = json.loads((folder / 'profile.json').read_text())
  calls = max(int(meta.get('calls') or 1), 1)
  module = meta.get('hlo_module')
  run = trace_folder(folder, meta)
  ops, where = op_events(load_events(run), module)
  if not ops:
    return f'{folder.name}: no operation events of {module} in the trace {run}'
  hlo = run / 'program.hlo.txt'
  if not hlo.is_file():   # written before traces had their own HLO
    hlo = folder / 'program.hlo.txt'
  names = source_names(hlo.read_text()) if hlo.is_file() else {}
  groups: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
  for e in ops:
    op = e['args']['hlo_op']
    if by == 'source' and names.get(op):
      key = hlo_costs.source_key(names[op], depth)
    else:
      key = _SUFFIX.sub('', op) if by == 'hlo' or not names else '? ' + _SUFFIX.sub('', op)
    groups[key][0] += float(e.get('dur', 0.0))
    groups[key][1] += 1
  total = sum(g[0] for g in groups.values())
  spans = [(float(e['ts']), float(e['ts']) + float(e.get('dur', 0.0))) for e in ops]
  busy = _union(spans)
  span = max(b for _, b in spans) - min(a for a, _ in spans)
  ms = lambda us: us / 1e3 / calls
  lines = [
      f'{folder.name} ({module}, {calls} call{"s" if calls > 1 else ""} traced; '
      f'operations from {where}; trace {run.name})',
      f'per call: {ms(total):.2f} ms in operations, busy {ms(busy):.2f} ms of a '
      f'{ms(span):.2f} ms span (idle {100 * (1 - busy / span) if span else 0:.0f}%), '
      f'{len(ops) / calls:,.0f} operations',
      '',
      f'| {"operation":<70} | ms/call | share | ops/call |',
      f'|{"-" * 72}|--------:|------:|---------:|']
  rows = sorted(groups.items(), key=lambda kv: -kv[1][0])
  for key, (us, n) in rows[:top]:
    lines.append(f'| {key:<70} | {ms(us):7.3f} | {100 * us / total:4.1f}% | '
                 f'{n / calls:8.1f} |')
  if len(rows) > top:
    rest = sum(us for _, (us, _) in rows[top:])
    lines.append(f'| {f"({len(rows) - top} more)":<70} | {ms(rest):7.3f} | '
                 f'{100 * rest / total:4.1f}% |          |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  from benchmarks.harness import cli  # pylint: disable=g-import-not-at-top  (no JAX)
  p = cli.Parser(description=__doc__.split('\n', 1)[0])
  p.add_argument('path', help="a workload's profile folder, or a folder above several")
  p.add_argument('--top', type=int, default=25)
  p.add_argument('--by', choices=('source', 'hlo'), default='source')
  p.add_argument('--depth', type=int, default=2, help='module names kept per key')
  args = p.parse_args(argv)
  path = pathlib.Path(args.path)
  found = workloads(path) if path.is_dir() else []
  if not found:
    print(f'error: {args.path}: no profile.json below it (write profiles with '
          'benchmark.py --profile DIR)', file=sys.stderr)
    return 2
  try:
    print('\n\n'.join(summarise(f, args.top, args.by, args.depth) for f in found))
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
