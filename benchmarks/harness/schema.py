"""The benchmark JSON's layout and its validator (no JAX here).

Top level: ``schema`` (:data:`SCHEMA`), ``meta`` (date, command, versions,
device, flags; :data:`META_FIELDS`), ``settings`` (the resolved command line),
``results`` (one record per workload, :data:`RESULT_FIELDS`), ``peer``
(:func:`benchmarks.harness.peer.load`) and ``input_pipeline``.

A result record with ``status`` ``'ok'`` has every field of
:data:`RESULT_FIELDS`: kind ``'pos'`` is a positive finite number, ``'opt'``
such a number or None (not every backend reports it: device memory statistics
and XLA's cost analysis), ``'str'`` a non-empty string, ``'list'`` a list of
positive finite numbers, ``'dict'`` a dict.  Records with status
``'error'`` or ``'skipped'`` carry ``model``, ``dtype``, ``mode`` and
``error`` / ``reason`` only.
"""
from __future__ import annotations

import math
from typing import Any

SCHEMA = 'hrseg_jax.bench/1'

META_FIELDS = ('date', 'command', 'python', 'versions', 'cuda', 'nvidia_smi',
               'device', 'xla_flags', 'xla_flags_extra', 'env',
               'matmul_precision', 'compilation_cache_dir', 'git_commit',
               'cpu_count')

COMMON = {
    'model': 'str', 'label': 'str', 'dtype': 'str', 'mode': 'str',
    'status': 'str', 'impl': 'str', 'batch': 'pos', 'height': 'pos', 'width': 'pos',
    'params': 'pos', 'init_s': 'pos', 'lower_s': 'pos', 'compile_s': 'pos',
    'ms': 'pos',
    'ms_min': 'pos', 'ms_max': 'pos', 'timings_ms': 'list',
    'images_per_s': 'pos', 'model_flops': 'pos', 'model_tflops_per_s': 'pos',
    'mfu': 'pos', 'xla_flops': 'opt', 'xla_bytes': 'opt',
    'xla_tflops_per_s': 'opt', 'hbm_util': 'opt', 'xla_memory_bytes': 'opt',
    'peak_bytes_in_use': 'opt', 'checks': 'dict',
}
INFER_EXTRA = {'ms_pipelined': 'pos', 'pipelined_ms': 'list'}
SLIDING_EXTRA = {**INFER_EXTRA, 'windows': 'pos', 'window': 'list',
                 'canvas': 'list', 'sliding_rule': 'str'}
RESULT_FIELDS = {'train': COMMON, 'infer': {**COMMON, **INFER_EXTRA},
                 'sliding': {**COMMON, **SLIDING_EXTRA}}
# Sanity checks each mode records, all of which must hold.
CHECKS = {'train': ('donated', 'bn_stats_updated', 'loss_finite'),
          'infer': ('shape_ok', 'classes_in_range'),
          'sliding': ('shape_ok', 'classes_in_range')}

PEER_FIELDS = {'source': 'str', 'model': 'str', 'precision': 'str',
               'mode': 'str', 'train_img_s': 'pos', 'infer_ms': 'pos',
               'train_peak_gib': 'opt', 'train_compile_s': 'opt',
               'infer_compile_s': 'opt', 'software': 'str', 'date': 'str',
               'gpu': 'str'}


def _is_pos(x) -> bool:
  return (isinstance(x, (int, float)) and not isinstance(x, bool)
          and math.isfinite(x) and x > 0)


def _field_ok(kind: str, value) -> bool:
  if kind == 'pos':
    return _is_pos(value)
  if kind == 'opt':
    return value is None or _is_pos(value)
  if kind == 'str':
    return isinstance(value, str) and bool(value)
  if kind == 'list':
    return isinstance(value, list) and bool(value) and all(map(_is_pos, value))
  if kind == 'dict':
    return isinstance(value, dict)
  raise ValueError(f'unknown field kind {kind!r}')


def check_fields(record: dict[str, Any], fields: dict[str, str],
                 where: str) -> list[str]:
  """Problems of ``record`` against ``fields`` (empty list = valid)."""
  errors = []
  for name, kind in fields.items():
    if name not in record:
      errors.append(f'{where}: missing {name!r}')
    elif not _field_ok(kind, record[name]):
      errors.append(f'{where}: {name}={record[name]!r} is not {kind}')
  return errors


def check_result(record: dict[str, Any], index: int) -> list[str]:
  """Problems of one result record."""
  where = f'results[{index}]'
  status = record.get('status')
  if status in ('error', 'skipped'):
    return check_fields(record, {'model': 'str', 'dtype': 'str', 'mode': 'str'},
                        where)
  mode = record.get('mode')
  if status != 'ok' or mode not in RESULT_FIELDS:
    return [f'{where}: bad status/mode {status!r}/{mode!r}']
  errors = check_fields(record, RESULT_FIELDS[mode], where)
  checks = record.get('checks') or {}
  errors += [f'{where}: check {c!r} failed or missing ({checks.get(c)!r})'
             for c in CHECKS[mode] if checks.get(c) is not True]
  return errors


def validate(doc: dict[str, Any], *, require_ok: bool = False) -> list[str]:
  """Every problem of a benchmark JSON document (empty list = valid).

  Args:
    doc: the parsed JSON.
    require_ok: also report workloads whose status is not ``'ok'``.
  """
  errors = [] if doc.get('schema') == SCHEMA else [f'schema is {doc.get("schema")!r}']
  meta = doc.get('meta') or {}
  errors += [f'meta: missing {k!r}' for k in META_FIELDS if k not in meta]
  for key in ('date', 'command'):
    if not (isinstance(meta.get(key), str) and meta.get(key)):
      errors.append(f'meta: {key} must be a non-empty string')
  if not isinstance(doc.get('settings'), dict):
    errors.append('settings missing')
  results = doc.get('results')
  if not isinstance(results, list) or not results:
    errors.append('results missing or empty')
    results = []
  for i, rec in enumerate(results):
    errors += check_result(rec, i)
    if require_ok and rec.get('status') != 'ok':
      errors.append(f'results[{i}]: status {rec.get("status")!r}: '
                    f'{rec.get("error") or rec.get("reason")}')
  peer_rows = (doc.get('peer') or {}).get('rows') or []
  if not peer_rows:
    errors.append('peer rows missing')
  for i, row in enumerate(peer_rows):
    errors += check_fields(row, PEER_FIELDS, f'peer.rows[{i}]')
  if not isinstance(doc.get('input_pipeline'), dict):
    errors.append('input_pipeline missing')
  return errors
