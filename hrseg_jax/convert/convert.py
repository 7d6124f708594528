"""PyTorch ``.pth`` -> self-describing Orbax checkpoint (and back)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hrseg_jax import checkpoints, console, paths
from hrseg_jax import overwrite as overwrite_lib
from hrseg_jax.checkpoints import info as checkpoint_info
from hrseg_jax.convert import mapping, released
from hrseg_jax.convert.source import load_state
from hrseg_jax.models import from_state_dict, registry

# Class count of a released checkpoint -> its dataset (hrseg_jax.recipes
# names); 60 = PASCAL-Context with background.
DATASET_BY_NUM_CLASSES = {k: d for d, k in checkpoint_info.NUM_CLASSES.items()}


def dataset_for_num_classes(num_classes: int) -> str | None:
  """The dataset a released checkpoint with ``num_classes`` was trained on."""
  return DATASET_BY_NUM_CLASSES.get(int(num_classes))


# Keys of classification / pose checkpoints that a segmentation model skips.
NON_SEG_PREFIXES = ('incre_modules.', 'downsamp_modules.', 'final_layer.',
                    'classifier.', 'keypoint_head.', 'fc.')
# PyTorch module names that the mechanical Flax-name rule cannot express:
# the seed fork's HRNet attribute ``hanet3_0`` (the Flax module ``hanet3_0``
# reads as ``hanet3.0``).  Rule key prefix -> PyTorch key prefix.
TORCH_NAMES = {'hanet3.0.': 'hanet3_0.'}


def rename_keys(state: Mapping[str, Any], table: Mapping[str, str]) -> dict:
  """Replaces the key prefixes ``table`` maps (first match wins).

  Raises:
    ValueError: two keys get the same name (``hanet3_0.x`` and ``hanet3.0.x``).
  """
  def fix(key):
    for old, new in table.items():
      if key.startswith(old):
        return new + key[len(old):]
    return key
  out = {}
  for key, value in state.items():
    new = fix(key)
    if new in out:
      raise ValueError(f'the state dict holds {new} under two names')
    out[new] = value
  return out


def resolve_inplace_abn(src, loaded: tuple[dict, dict], inplace_abn: bool | None,
                        backbone_only: bool | None, *, log=print,
                        override: str = 'inplace_abn=False', warn=None) -> bool:
  """Whether ``src`` converts with InPlaceABN's BN scale ``|w| + 1e-5``.

  ``inplace_abn`` given: that.  Else a released file (named as released,
  :mod:`.released`) is converted as it was trained unless its contents
  differ (then ``warn`` gets :func:`released.mismatch_warning`'s line and
  the file's own evidence decides), and a segmentation model
  whose file has BN statistics but no ``num_batches_tracked`` buffers was
  saved by InPlaceABN (PyTorch 0.4: the master branch's and the ``*_torch04``
  checkpoints); ``log`` gets a line saying so, naming ``override``, the
  option that converts it with standard BatchNorm instead (the command
  line's ``--no-inplace-abn``, training's
  ``--config.train.init_from_inplace_abn=False``).  InPlaceABN asked for
  (``inplace_abn`` True) for a file with ``num_batches_tracked`` buffers,
  saved by standard BatchNorm, gets :func:`released.inplace_abn_warning`'s
  line, to ``warn`` (default ``log``).
  """
  # The option that asks for InPlaceABN: --inplace-abn, ...=True.
  forced = override.replace('--no-', '--').replace('=False', '=True')
  if inplace_abn is not None:
    # Asked for against the file (saved by standard BatchNorm): say so.
    warning = released.inplace_abn_warning(src, loaded[1], inplace_abn, forced)
    if warning:
      (warn or log)(warning)
    return bool(inplace_abn)
  name = os.path.basename(paths.shown(src))   # a symlink by its own name
  state, layout = loaded
  if name in released.RELEASED:
    found = released.differences(name, state, layout)
    if found:   # Not the released file: what it shows wins.
      abn = released.shows_inplace_abn(state, layout, backbone_only)
      hint = (f'pass {forced} if it was trained with InPlaceABN'
              if released.RELEASED[name][1] and not abn else '')
      (warn or log)(released.mismatch_warning(
          name, found, released.bn_done(abn, False, layout), hint))
      return abn
    if released.RELEASED[name][1]:
      log(f'{name}: a released checkpoint: converting with InPlaceABN, as it was trained')
    return released.RELEASED[name][1]
  if not released.shows_inplace_abn(state, layout, backbone_only):
    return False
  log(f'{name}: no num_batches_tracked buffers, as saved by InPlaceABN '
      '(PyTorch 0.4: master-branch and *_torch04 checkpoints): converting with its BN '
      f'scale |w| + 1e-5 ({override} if it was trained with standard BatchNorm)')
  return True


def init_leaves(model_cfg: Mapping[str, Any], paths, seed: int = 0) -> dict:
  """Fresh values of the variables at ``paths`` (flat tuples) only.

  The same values as ``registry.init_variables(model_cfg, PRNGKey(seed))``,
  but XLA compiles just the initialisers of ``paths``: a whole-model init
  compiles one RNG kernel per parameter shape, which takes minutes on CPU for
  Lite-HRNet's ~500 differently shaped tensors.
  """
  model = registry.build_model(model_cfg)
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)

  def init(rng):
    flat = traverse_util.flatten_dict(model.init(rng, x))
    return {p: flat[p] for p in paths}
  return jax.device_get(jax.jit(init)(jax.random.PRNGKey(seed)))


def convert_variables(src, *, model_cfg: Mapping[str, Any] | None = None,
                      num_classes: int | None = None,
                      align_corners: bool | None = None,
                      inplace_abn: bool | None = None,
                      backbone_only: bool | None = None, seed: int = 0,
                      dataset: str | None = None,
                      loaded: tuple[dict, dict] | None = None, log=print,
                      inplace_abn_override: str = 'inplace_abn=False', warn=None
                      ) -> tuple[dict, dict, dict, dict]:
  """Reads and converts ``src`` (.pth) in memory; writes nothing.

  Args:
    inplace_abn: BN scale ``|w| + 1e-5`` (True), the file's BN weights
      (False), or, None, as ``python -m hrseg_jax.convert`` chooses
      (:func:`resolve_inplace_abn`: a released file's own, else InPlaceABN's
      for a file saved without ``num_batches_tracked`` buffers, with a line
      to ``log`` naming ``inplace_abn_override``); True for a file saved by
      standard BatchNorm is done with a ``warning:`` line to ``warn``
      (default ``log``).
    loaded: what :func:`load_state` returned for ``src``, if the caller has
      read it already.

  Returns:
    (resolved model config, variables as NumPy, meta, mapping report).

  Raises:
    ValueError: one line naming ``src`` (and the key at fault).
  """
  checkpoint_info.check_dataset(dataset)
  if num_classes is not None and (isinstance(num_classes, bool) or
                                  not isinstance(num_classes, int) or num_classes < 1):
    raise ValueError(f'--num-classes must be a positive integer, got {num_classes!r}')
  state, layout = load_state(src) if loaded is None else loaded
  try:
    if backbone_only is None:
      backbone_only = not from_state_dict.has_head(state)
    inplace_abn = resolve_inplace_abn(src, (state, layout), inplace_abn, backbone_only,
                                      log=log, override=inplace_abn_override, warn=warn)
    if model_cfg is None:
      try:
        cfg = from_state_dict.infer_model_config(state, num_classes)
      except (KeyError, IndexError, TypeError) as e:  # Its own checks raise ValueError.
        raise ValueError(f'cannot infer the architecture from its keys and shapes '
                         f'({type(e).__name__}: {console.first_line(e)})') from None
    else:
      cfg = dict(model_cfg)
      if num_classes is not None:
        cfg['num_classes'] = num_classes
    if align_corners is not None:
      cfg['align_corners'] = bool(align_corners)
    checkpoint_info.check_dataset(dataset, cfg['num_classes'])
    try:
      cfg = registry.resolve(cfg)
      abstract = registry.abstract_variables(cfg)
    except (ValueError, KeyError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Flax/JAX errors of an impossible configuration: one line, no traceback.
      raise ValueError(f'cannot build the model {cfg.get("arch")} '
                       f'{cfg.get("variant", "")}: {console.first_line(e)}') from None
    skip = {k: v for k, v in state.items() if k.startswith(NON_SEG_PREFIXES)}
    if backbone_only:
      state = {k: v for k, v in state.items() if k not in skip}
    # The metadata keeps the counters of the BNs converted (others are skipped
    # or refused as unexpected keys below).
    layout = dict(layout, num_batches_tracked={
        k: v for k, v in layout['num_batches_tracked'].items() if k in state})
    state = rename_keys(state, {v: k for k, v in TORCH_NAMES.items()})
    filled, report = mapping.torch_to_variables(
        state, abstract, inplace_abn=inplace_abn,
        allow_missing=registry.HEAD_PREFIXES if backbone_only else (),
        allow_unexpected=False)
  except ValueError as e:  # Name the file, as every error of the command line does.
    if str(e).startswith(paths.shown(src)):
      raise
    raise type(e)(f'{paths.shown(src)}: {e}') from None
  if backbone_only:
    report['skipped'] = sorted(skip)
  missing = [k for k, v in filled.items() if v is None]
  if missing:
    fresh = init_leaves(cfg, missing, seed)
    filled = {k: (np.asarray(fresh[k]) if v is None else v) for k, v in filled.items()}
  variables = traverse_util.unflatten_dict(filled)
  if dataset is None and not backbone_only:
    dataset = dataset_for_num_classes(cfg['num_classes'])
  meta = {
      'source': os.path.abspath(os.fspath(src)),
      'inplace_abn': bool(inplace_abn),
      'backbone_only': bool(backbone_only),
      'initialised': report['initialised'],
      'skipped': report['skipped'],
      'torch_layout': layout,
  }
  if dataset:
    meta['dataset'] = dataset
  return cfg, variables, meta, report


def convert(src, dst, *, model_cfg: Mapping[str, Any] | None = None,
            num_classes: int | None = None, align_corners: bool | None = None,
            inplace_abn: bool | None = None, backbone_only: bool | None = None,
            overwrite: bool = False, seed: int = 0, dataset: str | None = None,
            log=print, loaded: tuple[dict, dict] | None = None,
            inplace_abn_override: str = 'inplace_abn=False', warn=None) -> dict:
  """Converts ``src`` (.pth) to an Orbax checkpoint in ``dst``; returns meta.

  The checkpoint's ``meta['dataset']`` (palette and class names for
  prediction) is ``dataset``, else inferred from the class count of a
  trained head (:func:`dataset_for_num_classes`).
  Validation happens before anything is written; on any error ``dst`` is not
  created (or, with ``overwrite``, left as it was). ``overwrite`` replaces
  only a checkpoint written by this package, never a folder holding ``src``
  (see :func:`overwrite.check_replaceable`). ``loaded``: what
  :func:`load_state` returned for ``src``, if the caller has read it already.
  ``inplace_abn``: see :func:`convert_variables`.
  """
  src, dst = paths.resolve(os.fspath(src)), paths.resolve(os.fspath(dst))
  overwrite_lib.check_replaceable(dst, overwrite=overwrite, keep=[src])
  cfg, variables, meta, report = convert_variables(
      src, model_cfg=model_cfg, num_classes=num_classes,
      align_corners=align_corners, inplace_abn=inplace_abn,
      backbone_only=backbone_only, seed=seed, dataset=dataset, loaded=loaded,
      log=log, inplace_abn_override=inplace_abn_override, warn=warn)
  if align_corners is None and model_cfg is None and not meta['backbone_only']:
    note = released.align_corners_note(src, cfg, meta.get('dataset'))
    if note:
      log(note)
  checkpoints.save_model(dst, variables, cfg, meta, overwrite=overwrite, keep=[src])
  n = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables['params']))
  log(f'converted {paths.shown(src)} -> {paths.shown(dst)}: {registry.model_name(cfg)}, '
      f'{cfg["num_classes"]} classes, {n:,} parameters'
      + (', align_corners=True' if cfg.get('align_corners') else '')
      + (', InPlaceABN scales' if meta['inplace_abn'] else '')
      + (f' ({meta["dataset"]})' if meta.get('dataset') else '')
      + ('; freshly initialised: ' + console.counted(len(report['initialised']), 'tensor')
         if report['initialised'] else '')
      + ('; skipped: ' + console.counted(len(report['skipped']), 'key')
         if report['skipped'] else ''))
  if report['skipped']:
    log('skipped keys: ' + mapping._fmt(report['skipped'], 20))  # pylint: disable=protected-access
  return meta


def to_state_dict(variables: Mapping, meta: Mapping | None = None,
                  *, prefix: str | None = None, steps_trained: int = 0) -> dict:
  """Flax variables -> the PyTorch checkpoint object the official code loads.

  The original layout (wrapper dict, ``model.`` prefix, ``num_batches_tracked``
  buffers and extra entries such as ``loss.criterion.weight``) is restored
  from ``meta`` when the weights came from a ``.pth``; otherwise the released
  checkpoints' layout (``model.`` prefix, which ``tools/test.py`` strips) is
  used.  Each BN's ``num_batches_tracked`` is the official counter: its value
  in the source ``.pth`` (0 if none) plus ``steps_trained``, the number of
  train-mode forward passes (training steps) since.
  """
  layout = dict((meta or {}).get('torch_layout') or {})
  if prefix is None:
    prefix = layout.get('prefix', 'model.')
  tensors = rename_keys(mapping.variables_to_torch(variables), TORCH_NAMES)
  nbt = layout.get('num_batches_tracked', {})
  out = {}
  for key, value in tensors.items():
    out[prefix + key] = np.ascontiguousarray(value)
    if key.endswith('.running_var'):
      bn = key[:-len('running_var')] + 'num_batches_tracked'
      out[prefix + bn] = np.asarray(nbt.get(bn, 0) + int(steps_trained), np.int64)
  for key, value in layout.get('extras', {}).items():
    out[key] = np.asarray(value, np.float32)
  if layout.get('wrapper'):
    return {layout['wrapper']: out}
  return out
