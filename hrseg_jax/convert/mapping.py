"""Mechanical mapping between Flax variables and PyTorch state-dict keys.

A Flax leaf ``(collection, m1, ..., mk, leaf)`` corresponds to the PyTorch key
``t(m1).….t(mk).LEAF`` where ``t`` turns every ``_<digits>`` segment of a
module name into ``.<digits>`` and ``LEAF`` is given by :data:`LEAF_NAMES`.
Array layouts: Conv2d OIHW <-> HWIO, Conv1d OIK <-> KIO, Linear OI <-> IO.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import numpy as np

from hrseg_jax.console import counted

LEAF_NAMES = {
    'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight',
    'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var',
}
_DIGITS = re.compile(r'_(\d+)(?=_|$)')

# Top-level wrappers seen in the wild: FullModel ('model.'), DataParallel /
# DDP ('module.'), mmpose ('backbone.').
WRAPPER_PREFIXES = ('module.', 'model.')
# Keys of a checkpoint that are not model state.
NON_MODEL_PREFIXES = ('loss.',)


def module_to_torch(name: str) -> str:
  return _DIGITS.sub(r'.\1', name)


def flax_path_to_torch(path: tuple[str, ...]) -> str:
  """``('params', 'stage2_0', 'fuse_layers_0_1_0', 'kernel')`` -> torch key."""
  *modules, leaf = path[1:]
  if leaf not in LEAF_NAMES:
    raise KeyError(f'no PyTorch name for Flax leaf {"/".join(path)}')
  return '.'.join([module_to_torch(m) for m in modules] + [LEAF_NAMES[leaf]])


def torch_to_flax_array(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == 'kernel':
    if value.ndim == 4:
      return value.transpose(2, 3, 1, 0)
    if value.ndim == 3:
      return value.transpose(2, 1, 0)
    if value.ndim == 2:
      return value.T
  return value


def flax_to_torch_array(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == 'kernel':
    if value.ndim == 4:
      return value.transpose(3, 2, 0, 1)
    if value.ndim == 3:
      return value.transpose(2, 1, 0)
    if value.ndim == 2:
      return value.T
  return value


def flax_to_torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape :func:`flax_to_torch_array` gives, without an array."""
  order = {4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}.get(len(shape))
  if leaf != 'kernel' or order is None:
    return tuple(shape)
  return tuple(shape[i] for i in order)


def strip_prefixes(state: Mapping[str, Any]) -> tuple[dict, str]:
  """Removes the wrapper prefixes of the model keys.

  A prefix is removed when more than half of the model keys carry it; keys
  without it (a stray ``aux.weight`` next to ``model.*``) are kept as they
  are, to be named as unexpected keys rather than hide the prefix.

  Returns the stripped state and the removed prefix (``''``, ``'model.'``,
  ``'module.model.'``...) so that an export can restore the same layout.

  Raises:
    ValueError: a key with the prefix and one without it would be the same
      key once stripped (``model.foo.weight`` and ``foo.weight``).
  """
  removed = ''
  state = dict(state)
  while True:
    model_keys = [k for k in state if not k.startswith(NON_MODEL_PREFIXES)]
    for p in WRAPPER_PREFIXES:
      if 2 * sum(k.startswith(p) for k in model_keys) > len(model_keys):
        stripped = {}
        for k, v in state.items():
          short = k[len(p):] if k.startswith(p) else k
          if short in stripped:   # never keep one of two silently
            raise ValueError(f'the state dict holds both {removed}{p}{short} and '
                             f'{removed}{short}')
          stripped[short] = v
        state = stripped
        removed += p
        break
    else:
      return state, removed


class ConversionError(ValueError):
  """Mismatch between a checkpoint and the model it is loaded into."""


def _fmt(items: Iterable[str], limit: int = 12) -> str:
  items = sorted(items)
  more = f' … (+{len(items) - limit} more)' if len(items) > limit else ''
  return ', '.join(items[:limit]) + more


def torch_to_variables(state: Mapping[str, np.ndarray], abstract: Mapping,
                       *, inplace_abn: bool = False,
                       allow_missing: tuple[str, ...] = (),
                       allow_unexpected: bool = False):
  """Fills a Flax variables tree (given by ``abstract`` shapes) from ``state``.

  Args:
    state: torch key -> array, wrapper prefixes already removed.
    abstract: pytree of ``jax.ShapeDtypeStruct`` (``{'params':…, 'batch_stats':…}``).
    inplace_abn: map BN weights ``w`` to ``|w| + 1e-5`` (InPlaceABN checkpoints).
    allow_missing: first-level module-name prefixes that may be absent from
      ``state`` (they keep ``None`` and are reported).
    allow_unexpected: skip (and report) keys the model does not have.

  Returns:
    (flat dict path -> array or None, report dict with 'missing', 'skipped').

  Raises:
    ConversionError listing missing/unexpected keys, shape mismatches and
    tensors holding NaN or infinite values (after the cast to the model's dtype).
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(dict(abstract))
  out, missing, bad_shape, used, not_finite = {}, [], [], set(), []
  for path, spec in flat.items():
    key = flax_path_to_torch(path)
    leaf = path[-1]
    if key not in state:
      missing.append(key)
      out[path] = None
      continue
    used.add(key)
    value = np.asarray(state[key])
    value = torch_to_flax_array(leaf, value)
    if tuple(value.shape) != tuple(spec.shape):
      bad_shape.append(f'{key}: checkpoint {tuple(state[key].shape)}'
                       f' vs model {flax_to_torch_shape(leaf, tuple(spec.shape))}')
      continue
    if inplace_abn and leaf == 'scale':
      value = np.abs(value) + 1e-5
    with np.errstate(over='ignore', invalid='ignore'):
      value = value.astype(spec.dtype)
    if value.dtype.kind == 'f' and not np.isfinite(value).all():
      # NaN/inf in the file, or values beyond the model's dtype (float64 1e300).
      not_finite.append(key)
    out[path] = value
  def ignorable(k):  # A used BN's counter, or what the metadata keeps (loss.*).
    bn, dot, leaf = k.rpartition('.')
    return ((leaf == 'num_batches_tracked' and f'{bn}{dot}running_var' in used)
            or k.startswith(NON_MODEL_PREFIXES))
  unexpected = sorted(k for k in state if k not in used and not ignorable(k))
  really_missing = [k for k in missing if not k.startswith(allow_missing)]
  problems = []
  if not_finite:
    problems.append(f'{counted(len(not_finite), "tensor")} with NaN or infinite values (or values '
                    f"beyond float32's range): {_fmt(not_finite)}")
  if bad_shape:
    mismatches = counted(len(bad_shape), 'shape mismatch', 'shape mismatches')
    problems.append(f'{mismatches}: {_fmt(bad_shape, 8)}')
  if really_missing:
    problems.append(f'{counted(len(really_missing), "missing key")}: {_fmt(really_missing)}')
  if unexpected and not allow_unexpected:
    problems.append(f'{counted(len(unexpected), "unexpected key")}: {_fmt(unexpected)}')
  if problems:
    raise ConversionError('; '.join(problems))
  report = {'initialised': sorted(missing), 'skipped': unexpected if allow_unexpected else []}
  return out, report


def variables_to_torch(variables: Mapping) -> dict[str, np.ndarray]:
  """Flax variables -> ordered torch state dict (no num_batches_tracked)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(dict(variables))
  out = {}
  for path, value in flat.items():
    out[flax_path_to_torch(path)] = flax_to_torch_array(path[-1], np.asarray(value))
  return out
