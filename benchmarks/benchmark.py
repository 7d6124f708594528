"""Training and inference speed of the HRNet family, beside the PyTorch peer.

Measures the workloads of the PyTorch reference runs the same way: the
training step at batch 12, crop 512x1024 (forward, logits upsampled to the
crop, cross-entropy with ignore, backward, SGD with momentum and weight decay,
BN statistics updated) and inference of one 1024x2048 image to a full-size
argmax, plus fixed-shape sliding-window inference; for every model and
compute dtype asked.  Prints images/s, ms, peak device memory, compile time
and model FLOP/s utilisation beside the peer and functional-JAX floor rows,
and writes everything to JSON (``--out``).  See docs/performance.md.

Usage:
  python benchmarks/benchmark.py --out bench.json              # all models, GPU
  python benchmarks/benchmark.py --tiny --out /tmp/tiny.json   # CPU smoke run
  python benchmarks/benchmark.py --report a.json b.json        # table only
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

# Nothing imported here before XLA_FLAGS is final may import JAX.
from benchmarks.harness import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top,wrong-import-position


def _add_xla_flags(flags: str) -> None:
  """Appends ``flags`` to ``$XLA_FLAGS`` (read when JAX starts its backend)."""
  if flags:
    os.environ['XLA_FLAGS'] = ' '.join(
        f for f in (os.environ.get('XLA_FLAGS', ''), flags) if f)


def _read_doc(path: str) -> dict:
  """One earlier ``--out`` document; ValueError (one line) if it is not one."""
  try:
    doc = json.loads(pathlib.Path(path).read_text())
  except OSError as e:
    raise ValueError(f'--report {path}: {e.strerror or e}') from None
  except (UnicodeDecodeError, json.JSONDecodeError):
    raise ValueError(f'--report {path}: not JSON (give the --out file of '
                     'an earlier run)') from None
  if not isinstance(doc, dict) or not isinstance(doc.get('results'), list):
    raise ValueError(f'--report {path}: not a benchmark result (no "results" '
                     'list)')
  return doc


def _report(paths: list[str]) -> int:
  try:
    docs = [_read_doc(p) for p in paths]
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  from benchmarks.harness import report, runner  # pylint: disable=g-import-not-at-top
  runner.print_report(report.merge(docs))
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = cli.build_parser().parse_args(argv)
  pipes.keep_ctrl_c()   # also when it lands in JAX's garbage-collection callback
  if args.child:   # a child of --isolate: XLA_FLAGS already came with the env
    from benchmarks.harness import runner  # pylint: disable=g-import-not-at-top
    try:
      return runner.child_main(args.child)
    except KeyboardInterrupt:   # Ctrl-C reaches the parent too, which says so
      return 130
  if args.report:
    return _report(args.report)
  try:
    settings = cli.settings(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  _add_xla_flags(settings.xla_flags)
  from benchmarks.harness import runner  # pylint: disable=g-import-not-at-top
  command = ['benchmarks/benchmark.py'] + argv
  started = time.time()
  try:
    if settings.isolate:
      doc = runner.run_isolated(settings, command,
                                str(pathlib.Path(__file__).resolve()))
    else:
      doc = runner.run_in_process(settings, command)
  except KeyboardInterrupt:
    out = pathlib.Path(settings.out) if settings.out else None
    kept = ''
    if out is not None:   # rewritten after every workload (--isolate: (model, dtype))
      kept = (f': the workloads finished are in {out}'
              if out.exists() and out.stat().st_mtime >= started
              else f': nothing recorded yet, {out} not written')
    print(f'stopped by Ctrl-C{kept}', file=sys.stderr)
    return 130
  print()
  runner.print_report(doc)
  return 0 if all(r.get('status') == 'ok' for r in doc['results']) else 1


if __name__ == '__main__':
  sys.exit(main())
