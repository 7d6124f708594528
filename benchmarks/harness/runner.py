"""Runs the workloads, in this process or one process per (model, dtype).

In-process runs order each model's workloads infer, sliding, train, so the
process-wide peak of device memory read after each is that workload's own
peak, or at least no workload's figure includes a *later* one.  With
``--isolate`` every (model, dtype) runs in a fresh child process (and the
parent never touches the accelerator), so the peaks are per workload.  The
JSON is rewritten after every workload: a run stopped by a time limit keeps
what it measured.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np

from benchmarks.harness import input_pipeline
from benchmarks.harness import models as models_lib
from benchmarks.harness import peer as peer_lib
from benchmarks.harness import report, schema
from benchmarks.harness.cli import Settings
from hrseg_jax import pipes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_MAX_ERROR = 2000


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f'not JSON-serialisable: {type(x).__name__}')


def write(doc: dict[str, Any], path: str | None) -> None:
  """Writes ``doc`` to ``path`` atomically (nothing if path is None)."""
  if not path:
    return
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(doc, f, indent=1, default=_json_default)
  os.replace(tmp, path)


def new_doc(settings: Settings, meta: dict[str, Any]) -> dict[str, Any]:
  """An empty benchmark document with meta, settings and the peer rows."""
  peer_dir = pathlib.Path(settings.peer_dir) if settings.peer_dir else None
  return dict(schema=schema.SCHEMA, meta=meta, settings=settings.to_dict(),
              results=[], peer=peer_lib.load(peer_dir),
              input_pipeline=dict(status='not_requested'))


def _stub(key: str, dtype: str, mode: str, status: str, text: str) -> dict:
  field = 'error' if status == 'error' else 'reason'
  return {'model': key, 'dtype': dtype, 'mode': mode, 'status': status,
          field: text[-_MAX_ERROR:]}


def progress_line(rec: dict[str, Any]) -> str:
  """One line per finished workload."""
  impl = rec.get('impl', 'hrseg_jax')
  variant = '' if impl == 'hrseg_jax' else ' ' + impl.replace('hrseg_jax ', '')
  name = f'[{rec["model"]} {rec["dtype"]} {rec["mode"]}{variant}]'
  if rec['status'] != 'ok':
    return f'{name} {rec["status"]}: {rec.get("error") or rec.get("reason")}'
  peak = rec.get('peak_bytes_in_use')
  return (f'{name} {rec["images_per_s"]:.2f} img/s, {rec["ms"]:.2f} ms '
          f'(min {rec["ms_min"]:.2f}), compile {rec["compile_s"]:.1f} s, '
          f'{rec["model_tflops_per_s"]:.2f} model TFLOP/s = MFU '
          f'{100 * rec["mfu"]:.2f}%'
          + (f', peak {peak / 2 ** 30:.2f} GiB' if peak else ''))


# ---- in this process ----------------------------------------------------------

def configure_jax(settings: Settings) -> None:
  """Matmul precision, the depthwise kernel gradient and, for ``--tiny``,
  XLA's fast-compile mode."""
  import jax  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import layers  # pylint: disable=g-import-not-at-top
  os.environ[layers.DEPTHWISE_KERNEL_GRAD_ENV] = settings.depthwise_grad
  if settings.precision != 'default':
    jax.config.update('jax_default_matmul_precision', settings.precision)
  if settings.tiny:
    jax.config.update('jax_disable_most_optimizations', True)


def _over_budget(settings: Settings, start: float) -> bool:
  return (settings.time_budget_s > 0
          and settings.budget_spent_s + time.perf_counter() - start
          > settings.time_budget_s)


def _run_model(key: str, settings: Settings, doc: dict[str, Any],
               rng: np.random.Generator, start: float) -> None:
  """All dtypes and modes of one model, appended to ``doc['results']``."""
  from benchmarks.harness import workloads  # pylint: disable=g-import-not-at-top
  bench_model = models_lib.get(key)
  todo = [(d, m) for d in settings.dtypes for m in settings.modes]
  try:
    t0 = time.perf_counter()
    variables = workloads.init_variables(bench_model, settings.seed)
    init_s = time.perf_counter() - t0
  except Exception:  # pylint: disable=broad-except
    text = traceback.format_exc()
    print(text, file=sys.stderr)
    doc['results'] += [_stub(key, d, m, 'error', text) for d, m in todo]
    return
  for dtype, mode in todo:
    pipes.raise_if_ctrl_c()
    if _over_budget(settings, start):
      rec = _stub(key, dtype, mode, 'skipped',
                  f'time budget of {settings.time_budget_s:g} s spent')
    else:
      try:
        rec = workloads.RUNNERS[mode](bench_model, dtype, variables, settings, rng)
        rec['init_s'] = init_s
        pipes.raise_if_ctrl_c()   # one pressed during it: not recorded
      except Exception:  # pylint: disable=broad-except
        text = traceback.format_exc()
        print(text, file=sys.stderr)
        rec = _stub(key, dtype, mode, 'error', text)
    doc['results'].append(rec)
    print(progress_line(rec), flush=True)
    write(doc, settings.out)


def run_in_process(settings: Settings, argv: list[str]) -> dict[str, Any]:
  """Every workload in this process; returns the document (also written)."""
  configure_jax(settings)
  from benchmarks.harness import env  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  doc = new_doc(settings, env.collect(str(REPO_ROOT), argv, settings.xla_flags))
  rng = np.random.default_rng(settings.seed)
  for key in settings.models:
    _run_model(key, settings, doc, rng, start)
  _finish(doc, settings)
  return doc


def _finish(doc: dict[str, Any], settings: Settings) -> None:
  if settings.input_pipeline:
    section = input_pipeline.measure(settings)
    doc['input_pipeline'] = input_pipeline.with_headroom(section, doc['results'])
  write(doc, settings.out)


# ---- one child process per (model, dtype) ---------------------------------------

def _child(settings: Settings, argv: list[str], script: str
           ) -> dict[str, Any] | str:
  """Runs ``settings`` in a child process; its document or an error text."""
  with tempfile.TemporaryDirectory(prefix='hrseg_bench_') as tmp:
    out = os.path.join(tmp, 'out.json')
    spec = os.path.join(tmp, 'settings.json')
    child = dataclasses.replace(settings, isolate=False, input_pipeline=False,
                                out=out, report=[])
    with open(spec, 'w') as f:
      json.dump(dict(settings=child.to_dict(), argv=argv), f)
    code = subprocess.run([sys.executable, script, '--child', spec],
                          check=False).returncode
    if os.path.exists(out):
      with open(out) as f:
        return json.load(f)
    return f'child process for {settings.models} {settings.dtypes} exited ({code})'


def run_isolated(settings: Settings, argv: list[str], script: str) -> dict[str, Any]:
  """One child per (model, dtype); merges their documents.

  The parent never initialises a JAX backend (it would take the GPU's
  memory); meta comes from the first child that ran.
  """
  start = time.perf_counter()
  doc = new_doc(settings, dict(command=None))
  first_meta = None
  for key in settings.models:
    for dtype in settings.dtypes:
      left = (settings.time_budget_s - (time.perf_counter() - start)
              if settings.time_budget_s > 0 else None)
      if left is not None and left <= 0:
        got = f'time budget of {settings.time_budget_s:g} s spent'
        doc['results'] += [_stub(key, dtype, m, 'skipped', got)
                           for m in settings.modes]
      else:
        sub = dataclasses.replace(settings, models=[key], dtypes=[dtype],
                                  budget_spent_s=time.perf_counter() - start)
        got = _child(sub, argv, script)
        pipes.raise_if_ctrl_c()
        if isinstance(got, str):
          doc['results'] += [_stub(key, dtype, m, 'error', got)
                             for m in settings.modes]
        else:
          first_meta = first_meta or got['meta']
          doc['results'] += got['results']
      doc['meta'] = dict(first_meta or {}, isolated=True)
      write(doc, settings.out)
  _finish(doc, settings)
  return doc


def child_main(spec_path: str) -> int:
  """Entry point of a child process (``--child SPEC``)."""
  with open(spec_path) as f:
    spec = json.load(f)
  run_in_process(Settings.from_dict(spec['settings']), spec['argv'])
  return 0


def print_report(doc: dict[str, Any]) -> None:
  """The table and any schema problems."""
  print(report.table(doc))
  problems = schema.validate(doc)
  if problems:
    print('schema problems:\n  ' + '\n  '.join(problems))
