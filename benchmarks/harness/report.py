"""The printed table: our rows beside the peer and floor rows (no JAX here).

One Markdown row per (implementation, model, precision); the columns merge
the train, whole-image and sliding-window workloads.  The header lines give
what the README's performance table needs: date, GPU, software, command.
"""
from __future__ import annotations

from typing import Any, Iterable

from benchmarks.harness import models as models_lib

COLUMNS = ('model', 'impl', 'precision', 'train img/s', 'train ms',
           'train peak GiB', 'train MFU', 'infer ms', 'infer img/s',
           'infer MFU', 'sliding ms', 'compile s train/infer')
_GIB = 2.0 ** 30


def _f(value, digits: int = 1, scale: float = 1.0) -> str:
  return '–' if value is None else f'{value * scale:.{digits}f}'


def _seconds(value) -> str:
  """Compile seconds: whole seconds from 10 on, one decimal below ('0.5', not '0')."""
  return '–' if value is None else f'{value:.0f}' if value >= 10 else f'{value:.1f}'


def _pct(value) -> str:
  return '–' if value is None else f'{100 * value:.1f}%'


def _model_label(key: str) -> str:
  try:
    return models_lib.get(key).label
  except ValueError:
    return key


def _ours(results: list[dict[str, Any]], label_runs: bool = False
          ) -> list[list[str]]:
  groups: dict[tuple[int, str, str, str], dict[str, dict]] = {}
  for r in results:
    if r.get('status') == 'ok':
      key = (r.get('run', 0), r['model'], r.get('impl', 'hrseg_jax'), r['dtype'])
      groups.setdefault(key, {})[r['mode']] = r
  rows = []
  for (run, model, impl, dtype), by_mode in groups.items():
    t, i, s = (by_mode.get(m, {}) for m in ('train', 'infer', 'sliding'))
    peak = t.get('peak_bytes_in_use')
    compile_s = f'{_seconds(t.get("compile_s"))}/{_seconds(i.get("compile_s"))}'
    if label_runs:
      impl = f'{impl} (run {run + 1})'
    rows.append([_model_label(model), impl, dtype,
                 _f(t.get('images_per_s')), _f(t.get('ms')),
                 _f(peak, 1, 1 / _GIB) if peak else '–', _pct(t.get('mfu')),
                 _f(i.get('ms')), _f(i.get('images_per_s')), _pct(i.get('mfu')),
                 _f(s.get('ms')), compile_s])
  return rows


def _peer(rows: Iterable[dict[str, Any]], keys: set[str]) -> list[list[str]]:
  out = []
  for p in rows:
    if keys and p['model'] not in keys:
      continue
    impl = ('PyTorch ' + p['mode']) if p['source'] == 'pytorch' else 'JAX floor'
    compile_s = (f'{_seconds(p["train_compile_s"])}/{_seconds(p["infer_compile_s"])}'
                 if p['train_compile_s'] else '–')
    ms = 1e3 * 12 / p['train_img_s']
    out.append([_model_label(p['model']), impl, p['precision'],
                _f(p['train_img_s']), _f(ms), _f(p['train_peak_gib']), '–',
                # Timed for latency only: no pipelined inference rate.
                _f(p['infer_ms']), '–', '–', '–', compile_s])
  return out


def markdown(rows: list[list[str]]) -> str:
  """A Markdown table of :data:`COLUMNS`."""
  lines = ['| ' + ' | '.join(COLUMNS) + ' |',
           '|' + '|'.join('---' for _ in COLUMNS) + '|']
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines)


def _flags_line(meta: dict[str, Any]) -> str:
  precision = meta.get('matmul_precision')
  if precision in (None, 'None'):   # jax_default_matmul_precision unset
    precision = 'default (float32 rows: TF32 on NVIDIA GPUs)'
  return (f'XLA_FLAGS: {meta.get("xla_flags") or "(none)"}; matmul precision: '
          f'{precision}')


def _settings_line(s: dict[str, Any]) -> str:
  # Sizes print as their JSON does ([512, 1024]), live or from --report.
  s = {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}
  return (f'train: batch {s.get("batch")}, crop {s.get("crop")}; inference: '
          f'{s.get("infer_batch")} x {s.get("infer_size")}, sliding window '
          f'{s.get("window")} ({s.get("sliding_rule")}); median of '
          f'{s.get("repeats")} rounds x {s.get("steps")} steps, '
          f'{s.get("latency_runs")} synchronised inference calls; MFU vs '
          f'{s.get("peak_tflops")} TFLOP/s')


def _runs_differ(doc: dict[str, Any]) -> bool:
  """Whether the runs merged into ``doc`` were measured differently."""
  return len(set(doc.get('run_settings') or [])) > 1


def _runs_repeat(doc: dict[str, Any]) -> bool:
  """Whether two merged runs measured the same (model, impl, dtype)."""
  runs: dict[tuple, set] = {}
  for r in doc.get('results', []):
    if r.get('status') == 'ok':
      key = (r['model'], r.get('impl', 'hrseg_jax'), r['dtype'])
      runs.setdefault(key, set()).add(r.get('run', 0))
  return any(len(v) > 1 for v in runs.values())


def header(doc: dict[str, Any]) -> str:
  """Date, device, software and command of a benchmark document."""
  meta, s = doc.get('meta', {}), doc.get('settings', {})
  if not meta.get('date'):   # no run got as far as its first workload
    return 'no workload was measured'
  dev = meta.get('device') or {}
  v = meta.get('versions') or {}
  soft = ', '.join(f'{k} {v[k]}' for k in ('jax', 'jaxlib', 'flax', 'optax')
                   if k in v)
  cuda = meta.get('cuda')
  lines = [f'date: {meta.get("date")}',
           f'device: {dev.get("kind")} x{dev.get("count")} ({dev.get("platform")})'
           + (f'; {meta["nvidia_smi"]}' if meta.get('nvidia_smi') else ''),
           f'software: python {meta.get("python")}, {soft}'
           + (f'; CUDA {cuda}' if cuda else '')]
  if _runs_differ(doc):
    # Rows are marked (run N); each run's command and settings follow.
    for n, (command, line) in enumerate(zip(doc['merged_from'],
                                            doc['run_settings']), 1):
      lines += [f'run {n}: {command}', f'  {line}']
    return '\n'.join(lines)
  lines += [_flags_line(meta), f'command: {meta.get("command")}',
            _settings_line(s)]
  if doc.get('merged_from'):
    commands = list(map(str, doc['merged_from']))
    if _runs_repeat(doc):   # rows are marked (run N)
      commands = [f'(run {n}) {c}' for n, c in enumerate(commands, 1)]
    lines.append('merged from:')   # one command a line (a line of each was too long)
    lines += [f'  {c}' for c in commands]
  return '\n'.join(lines)


def table(doc: dict[str, Any]) -> str:
  """Header, our rows, then the peer/floor rows of the models measured."""
  results = doc.get('results', [])
  keys = {r['model'] for r in results}
  peer = doc.get('peer', {})
  parts = [header(doc), '', markdown(_ours(results, _runs_differ(doc) or _runs_repeat(doc))
                                     + _peer(peer.get('rows', []), keys))]
  measured = sorted({p['model'] for p in peer.get('rows', [])})
  if measured and not keys & set(measured):
    parts.append('(no peer rows for these models; the peer measured '
                 + ', '.join(measured) + ')')
  parts.append(f'peer: {peer.get("note", "")}')
  problems = [r for r in results if r.get('status') != 'ok']
  for r in problems:
    parts.append(f'{r["status"]}: {r["model"]} {r["dtype"]} {r["mode"]}: '
                 f'{r.get("error") or r.get("reason")}')
  ip = doc.get('input_pipeline') or {}
  if ip.get('status', 'not_requested') != 'not_requested':
    parts.append('input pipeline: ' + input_line(ip))
  return '\n'.join(parts)


def input_line(ip: dict[str, Any]) -> str:
  """One line for the input-pipeline section."""
  if ip.get('status') != 'ok':
    return f'{ip.get("status")}: {ip.get("reason", "")}'
  rates = ', '.join(f'{r["workers"]} workers {r["images_per_s"]:.1f} img/s'
                    for r in ip['runs'])
  head = ip.get('headroom')
  extra = (f'; best / fastest train step = {head:.2f}x' if head else '')
  return f'{ip["image_size"]} PNGs -> {ip["crop"]} crops: {rates}{extra}'


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
  """One document from several runs: the first's meta, all results."""
  out = dict(docs[0])
  out['results'] = [dict(r, run=i) for i, d in enumerate(docs)
                    for r in d.get('results', [])]
  out['merged_from'] = [d.get('meta', {}).get('command') for d in docs]
  out['run_settings'] = [
      f'{_flags_line(d.get("meta", {}))}; {_settings_line(d.get("settings", {}))}'
      for d in docs]
  return out
