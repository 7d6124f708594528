"""Self-describing Orbax model checkpoints.

Every checkpoint this package writes (converted PyTorch weights or training
checkpoints) is an ``orbax.checkpoint.CheckpointManager`` directory whose
steps hold at least two items:

* ``variables``: ``{'params': …, 'batch_stats': …}`` (float32),
* ``model``: JSON ``{'model': <model config>, 'meta': {...}}``,

so :func:`load_model` rebuilds the network without any other file.  Training
checkpoints add ``train_state`` and ``data`` items (see
:mod:`hrseg_jax.train.checkpointing`).
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from hrseg_jax import paths

VARIABLES = 'variables'
MODEL = 'model'

def _quiet_orbax():
  # Orbax logs several INFO/WARNING lines per save; keep CLI output readable.
  for name in ('orbax', 'orbax.checkpoint'):
    logging.getLogger(name).setLevel(logging.ERROR)


def find_checkpoint(path) -> tuple[epath.Path, int]:
  """Resolves a user path to (manager root, step).

  Accepts a converted checkpoint directory, a training workdir (its
  ``checkpoints/`` subdirectory is used, latest step), a manager root, or a
  single step directory inside one.
  """
  path = epath.Path(paths.resolve(os.fspath(path)))
  if not path.exists():
    raise FileNotFoundError(f'checkpoint not found: {path}')
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  if (path / MODEL).is_dir() and path.name.isdigit():
    return path.parent, int(path.name)
  steps = sorted(int(p.name) for p in path.iterdir()
                 if p.name.isdigit() and (p / MODEL).is_dir())
  if not steps:
    raise FileNotFoundError(
        f'{path}: no hrseg_jax checkpoint (expected step directories with '
        f'"{VARIABLES}" and "{MODEL}" items)')
  return path, steps[-1]


def _numpy_tree(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def save_model(directory, variables: Mapping, model_cfg: Mapping,
               meta: Mapping[str, Any] | None = None, *, step: int = 0,
               overwrite: bool = False) -> epath.Path:
  """Writes ``variables`` and ``model_cfg`` atomically to ``directory``.

  The checkpoint is written to a hidden sibling directory and renamed into
  place only when complete, so a failure leaves nothing at ``directory``.
  """
  _quiet_orbax()
  directory = epath.Path(paths.resolve(os.fspath(directory)))
  if directory.exists():
    if not directory.is_dir():
      raise FileExistsError(f'output path exists and is not a directory: {directory}')
    if any(directory.iterdir()) and not overwrite:
      raise FileExistsError(f'output directory is not empty: {directory} '
                            '(pass --overwrite to replace it)')
  parent = directory.parent
  if not parent.exists():
    parent.mkdir(parents=True, exist_ok=True)
  if not parent.is_dir():
    raise NotADirectoryError(f'cannot create {directory}: {parent} is not a directory')
  tmp = parent / f'.{directory.name}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    with ocp.CheckpointManager(tmp, options=options) as mngr:
      mngr.save(step, args=ocp.args.Composite(**{
          VARIABLES: ocp.args.StandardSave(_numpy_tree(dict(variables))),
          MODEL: ocp.args.JsonSave({'model': dict(model_cfg), 'meta': dict(meta or {})}),
      }))
      mngr.wait_until_finished()
    if directory.exists():
      shutil.rmtree(os.fspath(directory))
    tmp.rename(directory)
  except BaseException:
    if tmp.exists():
      shutil.rmtree(os.fspath(tmp), ignore_errors=True)
    raise
  return directory


def load_model_config(path) -> tuple[dict, dict]:
  """Reads only the JSON item: (model config, meta)."""
  _quiet_orbax()
  root, step = find_checkpoint(path)
  with ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(
      read_only=True)) as mngr:
    item = mngr.restore(step, args=ocp.args.Composite(**{MODEL: ocp.args.JsonRestore()}))
  return item[MODEL]['model'], item[MODEL].get('meta', {})


def load_model(path, *, step: int | None = None):
  """Returns (model config, variables as NumPy, meta) from a checkpoint."""
  _quiet_orbax()
  root, latest = find_checkpoint(path)
  step = latest if step is None else step
  # Restore onto this host's first device whatever topology saved it (a
  # checkpoint written by 8 devices loads for eval on 1).
  meta = ocp.StandardCheckpointer().metadata(root / str(step) / VARIABLES)
  meta = getattr(meta, 'item_metadata', meta)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta,
      is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
  with ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(
      read_only=True)) as mngr:
    item = mngr.restore(step, args=ocp.args.Composite(**{
        VARIABLES: ocp.args.StandardRestore(target),
        MODEL: ocp.args.JsonRestore(),
    }))
  return (item[MODEL]['model'], _numpy_tree(item[VARIABLES]),
          item[MODEL].get('meta', {}))
