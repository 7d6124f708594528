"""Reading a PyTorch checkpoint for conversion, without importing JAX.

:func:`load_state` loads a ``.pth`` file (see :mod:`hrseg_jax.convert.pth`
for what is guaranteed about hostile files), applies the dtype policy of
model weights and validates what will be kept as metadata, so that every
problem of the file is reported, in one line, before anything is written.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from hrseg_jax import console, paths
from hrseg_jax.convert import mapping, pth, safe_pickle

# Entries kept as metadata (``loss.*``: class weights) are small float lists:
# at most this many entries and elements (all entries together).
MAX_EXTRA_ENTRIES = 256
MAX_EXTRA_ELEMENTS = 65536
# State dict keys are module paths (``stage4.2.fuse_layers.3.0.2.1.weight``).
MAX_KEY_LENGTH = 512


def _check_keys(state: Mapping[str, Any], path: str) -> None:
  """Refuses keys no module has: control characters, or absurdly long (they
  would reach the console in messages, and wrapper stripping is quadratic in
  a key's length)."""
  for key in state:
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
      raise ValueError(f'{path}: state dict key {safe_pickle._short(key)} '  # pylint: disable=protected-access
                       f'({len(key):,} characters) is not a parameter name')


def _extras(state: Mapping[str, np.ndarray], path: str) -> dict[str, Any]:
  """``loss.*`` entries as JSON-ready nested lists of finite floats."""
  out, total = {}, 0
  for key, value in state.items():
    if not key.startswith(mapping.NON_MODEL_PREFIXES):
      continue
    if value.size > MAX_EXTRA_ELEMENTS:
      raise ValueError(f'{path}: {key} has {value.size:,} elements; entries '
                       f'that are not model weights may hold at most '
                       f'{MAX_EXTRA_ELEMENTS:,}')
    total += value.size
    if total > MAX_EXTRA_ELEMENTS or len(out) == MAX_EXTRA_ENTRIES:
      raise ValueError(f'{path}: too much that is not model weights ({key} and the '
                       f'{", ".join(mapping.NON_MODEL_PREFIXES)}* entries before it): at '
                       f'most {MAX_EXTRA_ENTRIES} entries of {MAX_EXTRA_ELEMENTS:,} '
                       'elements together are kept')
    as_float = np.asarray(value, np.float64)
    if not np.isfinite(as_float).all():
      raise ValueError(f'{path}: {key} holds non-finite values')
    out[key] = as_float.tolist()
  return out


def load_state(path) -> tuple[dict[str, np.ndarray], dict]:
  """Reads a checkpoint file; returns (state without wrappers, layout meta).

  Raises:
    ValueError: one line naming the file (and the key, where one is at
      fault): the file is unreadable, not a state dict, or holds tensors a
      model cannot take (see :func:`pth.check_state_dict_dtypes`).
  """
  path = os.fspath(path)
  name = paths.shown(path)   # in messages
  if not os.path.isfile(path):
    if os.path.isdir(path):
      raise ValueError(f'checkpoint is a folder, not a file: {name}')
    raise ValueError(paths.not_found(path))
  obj = pth.load_pth(path)
  try:
    state = pth.state_dict_from_checkpoint(obj)
  except ValueError as e:
    raise ValueError(f'{name}: {e}') from None
  if not any(not k.startswith(mapping.NON_MODEL_PREFIXES) for k in state):
    raise ValueError(f'{name}: holds no tensors (an empty state dict)' if not state else
                     f'{name}: holds no model weights, only '
                     f'{console.counted(len(state), "loss.* entry", "loss.* entries")}')
  _check_keys(state, name)
  pth.check_state_dict_dtypes(state, name)
  wrapper = None
  if isinstance(obj, Mapping):
    for w in ('state_dict', 'model'):
      if w in obj and isinstance(obj[w], Mapping):
        wrapper = w
        break
  try:
    state, prefix = mapping.strip_prefixes(state)
  except ValueError as e:
    raise ValueError(f'{name}: {e}') from None
  for p in ('backbone.',):  # mmpose: keep the backbone, skip the pose head
    if any(k.startswith(p) for k in state):
      stripped = {}
      for k, v in state.items():
        short = k[len(p):] if k.startswith(p) else k
        if short in stripped:  # Never keep one of two silently.
          raise ValueError(f'{name}: the state dict holds both {p}{short} and {short}')
        stripped[short] = v
      state = stripped
      prefix += p
  tracked = {}
  for k, v in state.items():
    if k.endswith('num_batches_tracked'):
      n = int(np.asarray(v).reshape(()))
      if not 0 <= n < 2**63:
        raise ValueError(f'{name}: {k} is {n}, not a step count')
      tracked[k] = n
  layout = {
      'wrapper': wrapper, 'prefix': prefix,
      'num_batches_tracked': tracked,
      'extras': _extras(state, name),
  }
  return state, layout


def saved_by_inplace_abn(state: Mapping[str, Any], layout: Mapping) -> bool:
  """Whether the file's BN layers look saved by InPlaceABN: BN statistics
  but not one ``num_batches_tracked`` buffer, which every ``nn.BatchNorm2d``
  since PyTorch 0.4.1 saves and InPlaceABNSync does not (the master branch's
  and the ``*_torch04`` checkpoints, whose BN scale is ``|w| + 1e-5``)."""
  return (not layout.get('num_batches_tracked')
          and any(k.endswith('.running_var') for k in state))
