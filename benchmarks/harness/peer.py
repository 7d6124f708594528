"""The rows to beat: the PyTorch peer and the functional-JAX floor.

By default the figures come from :data:`RAW`, a verbatim copy of the JSON
files of the reference measurements as of 2026-11-24; ``--peer-dir`` or
``$HRSEG_PEER`` names a folder of newer files to read instead.  No JAX here.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

TORCH_HRNET = 'torch_hrnet_h200_2026-11-24.json'
TORCH_OTHERS = 'torch_ocr_hanet_lite_h200_2026-11-24.json'
JAX_FLOOR = 'jax_functional_probe_h200_2026-11-24.json'

MEASURED = dict(date='2026-11-24', gpu='NVIDIA H200')
TORCH_SOFTWARE = 'PyTorch 2.11, CUDA 13, cuDNN benchmark mode'
FLOOR_SOFTWARE = 'JAX 0.11.2, CUDA 13'

RAW: dict[str, Any] = {
    TORCH_HRNET: [
        {'width': 48, 'mode': 'fp32', 'compile': False, 'batch': 12,
         'train_step_s': 0.6565358970000048, 'train_img_s': 18.277751536257448,
         'infer_1024x2048_ms': 68.21993699999496, 'peak_gib': 36.07083749771118},
        {'width': 48, 'mode': 'tf32', 'compile': False, 'batch': 12,
         'train_step_s': 0.1891494110000025, 'train_img_s': 63.4419104799636,
         'infer_1024x2048_ms': 40.94197499999552, 'peak_gib': 37.183905601501465},
        {'width': 48, 'mode': 'bf16', 'compile': False, 'batch': 12,
         'train_step_s': 0.14861034199999779, 'train_img_s': 80.7480814491375,
         'infer_1024x2048_ms': 29.999236000008977, 'peak_gib': 21.143319606781006},
        {'width': 18, 'mode': 'bf16', 'compile': False, 'batch': 12,
         'train_step_s': 0.1171409600000004, 'train_img_s': 102.44068342960446,
         'infer_1024x2048_ms': 32.1277809999998, 'peak_gib': 10.708185195922852},
        {'width': 48, 'mode': 'bf16', 'compile': True, 'batch': 12,
         'train_step_s': 0.13502349299994876, 'train_img_s': 88.87342293836639,
         'infer_1024x2048_ms': 22.118366999961836, 'peak_gib': 16.245649337768555},
    ],
    TORCH_OTHERS: [
        {'model': 'ocr_w48', 'mode': 'bf16', 'batch': 12,
         'train_img_s': 64.27813577872386, 'infer_1024x2048_ms': 46.44567300000091,
         'peak_gib': 25.92565679550171, 'params_m': 70.372678},
        {'model': 'fork_w32_hanet', 'mode': 'bf16', 'batch': 12,
         'train_img_s': 107.84444495690734, 'infer_1024x2048_ms': 34.82637000000466,
         'peak_gib': 15.16919755935669, 'params_m': 29.546802},
        {'model': 'fork_lite30_hanet', 'mode': 'bf16', 'batch': 12,
         'train_img_s': 41.591603065711354, 'infer_1024x2048_ms': 68.87685200000249,
         'peak_gib': 13.37401819229126, 'params_m': 1.779207},
        {'model': 'fork_lite30_hanet', 'mode': 'tf32', 'batch': 12,
         'train_img_s': 65.33021765539567, 'infer_1024x2048_ms': 56.63158200002272,
         'peak_gib': 19.565897941589355, 'params_m': 1.779207},
    ],
    JAX_FLOOR: {
        'infer_bfloat16_ms': 14.79991699999772,
        'infer_bfloat16_compile_s': 16.752314238000004,
        'train_bfloat16_compile_s': 80.532217139,
        'train_bfloat16_img_s': 118.50257070586943,
        'infer_float32_ms': 20.84557899999595,
        'infer_float32_compile_s': 15.730555268999979,
        'train_float32_compile_s': 67.69441314099998,
        'train_float32_img_s': 67.05702273278261,
    },
}

# Peer model names -> benchmark model keys (benchmarks.harness.models).
_OTHER_MODELS = {'ocr_w48': 'ocr_w48', 'fork_w32_hanet': 'w32_hanet',
                 'fork_lite30_hanet': 'lite30_hanet'}
_TORCH_PRECISION = {'fp32': 'fp32 (no TF32)', 'tf32': 'TF32',
                    'bf16': 'bf16 autocast, channels_last'}
_FLOOR_PRECISION = {'bfloat16': 'bf16',
                    'float32': 'fp32 (JAX default: TF32 convolutions)'}


def load_raw(directory: pathlib.Path | None) -> tuple[dict[str, Any], str]:
  """The three peer files' contents and where they came from.

  Args:
    directory: the folder of the peer JSON files, or None for :data:`RAW`.

  Returns:
    ({file name: parsed JSON}, source), source being the folder as given or
    ``'constants'``.

  Raises:
    ValueError: one line naming a file of ``directory`` missing or not JSON.
  """
  if directory is None:
    return dict(RAW), 'constants'
  raw = {}
  for name in RAW:
    path = directory / name
    try:
      raw[name] = json.loads(path.read_text())
    except OSError as e:
      raise ValueError(f'peer folder {directory}: {name}: '
                       f'{e.strerror or e}') from None
    except ValueError:
      raise ValueError(f'peer folder {directory}: {name}: not JSON') from None
  return raw, str(directory)


def _row(source: str, model: str, precision: str, mode: str, *,
         train_img_s: float, infer_ms: float, train_peak_gib=None,
         train_compile_s=None, infer_compile_s=None) -> dict[str, Any]:
  software = TORCH_SOFTWARE if source == 'pytorch' else FLOOR_SOFTWARE
  return dict(source=source, model=model, precision=precision, mode=mode,
              train_img_s=float(train_img_s), infer_ms=float(infer_ms),
              train_peak_gib=None if train_peak_gib is None else float(train_peak_gib),
              train_compile_s=None if train_compile_s is None else float(train_compile_s),
              infer_compile_s=None if infer_compile_s is None else float(infer_compile_s),
              software=software, **MEASURED)


def _torch_hrnet_rows(entries) -> list[dict[str, Any]]:
  rows = []
  for e in entries:
    rows.append(_row('pytorch', f'w{e["width"]}', _TORCH_PRECISION[e['mode']],
                     'torch.compile' if e['compile'] else 'eager',
                     train_img_s=e['train_img_s'],
                     infer_ms=e['infer_1024x2048_ms'],
                     train_peak_gib=e['peak_gib']))
  return rows


def _torch_other_rows(entries) -> list[dict[str, Any]]:
  return [_row('pytorch', _OTHER_MODELS[e['model']],
               _TORCH_PRECISION[e['mode']], 'eager',
               train_img_s=e['train_img_s'], infer_ms=e['infer_1024x2048_ms'],
               train_peak_gib=e['peak_gib']) for e in entries]


def _floor_rows(entry) -> list[dict[str, Any]]:
  return [_row('jax_floor', 'w48', _FLOOR_PRECISION[dt], 'jit',
               train_img_s=entry[f'train_{dt}_img_s'],
               infer_ms=entry[f'infer_{dt}_ms'],
               train_compile_s=entry[f'train_{dt}_compile_s'],
               infer_compile_s=entry[f'infer_{dt}_compile_s'])
          for dt in ('bfloat16', 'float32')]


def rows(raw: dict[str, Any]) -> list[dict[str, Any]]:
  """Normalised peer and floor rows (one schema) from :func:`load_raw`'s dict."""
  return (_torch_hrnet_rows(raw[TORCH_HRNET]) + _torch_other_rows(raw[TORCH_OTHERS])
          + _floor_rows(raw[JAX_FLOOR]))


def load(directory: pathlib.Path | None) -> dict[str, Any]:
  """The ``peer`` section of the benchmark JSON.

  Returns:
    ``{'source': folder or 'constants', 'note': str, 'rows': [...]}``.
  """
  raw, source = load_raw(directory)
  try:
    table = rows(raw)
  except (KeyError, TypeError, IndexError) as e:
    raise ValueError(f'peer folder {directory}: not the reference files\' '
                     f'layout ({type(e).__name__}: {e})') from None
  note = (f'reference rows read from {source}' if source != 'constants' else
          'reference rows measured 2026-11-24, built into '
          'benchmarks/harness/peer.py (--peer-dir or $HRSEG_PEER: newer JSON files)')
  return dict(source=source, note=note, rows=table)
