"""Self-describing Orbax model checkpoints.

Every checkpoint this package writes (converted PyTorch weights or training
checkpoints) is an ``orbax.checkpoint.CheckpointManager`` directory whose
steps hold at least two items:

* ``variables``: ``{'params': …, 'batch_stats': …}`` (float32),
* ``model``: JSON ``{'model': <model config>, 'meta': {...}}``,

so :func:`load_model` rebuilds the network without any other file.  Training
checkpoints add ``train`` and ``data_order`` items (see
:mod:`hrseg_jax.checkpoints.training`).

Each step also holds an integrity manifest (:mod:`hrseg_jax.checkpoints.manifest`: file
sizes and SHA-256 digests, written last and atomically), which
:func:`load_model` verifies before reading anything: a damaged checkpoint is
reported in one line naming the damaged file.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from hrseg_jax import console, files, paths, pipes
from hrseg_jax.checkpoints import manifest
from hrseg_jax.overwrite import check_replaceable

VARIABLES = 'variables'
MODEL = 'model'

# File names and first bytes of PyTorch checkpoints (zip, or a legacy pickle).
PTH_SUFFIXES = ('.pth', '.pt', '.pth.tar', '.tar', '.ckpt', '.bin')
_PTH_MAGIC = (b'PK\x03\x04', b'\x80')


def _looks_like_pth(path: epath.Path) -> bool:
  if path.name.lower().endswith(PTH_SUFFIXES):
    return True
  try:
    with path.open('rb') as f:
      return f.read(4).startswith(_PTH_MAGIC)
  except OSError:
    return False


def not_a_folder_message(path) -> str:
  """What to do when a file is given where a checkpoint folder is expected."""
  path = epath.Path(path)
  head = f'{paths.shown(path)} is a file, not a checkpoint folder'
  if _looks_like_pth(path):
    stem = path.name.split('.')[0] or 'model'
    return (f'{head}; a PyTorch .pth must be converted first: python -m '
            f'hrseg_jax.convert {paths.shown(path)} converted/{stem}')
  return (f'{head}; pass a folder written by python -m hrseg_jax.convert or '
          'a training --workdir')


def model_steps(root) -> list[int]:
  """The steps under a manager root that hold a ``model`` item, ascending."""
  return sorted(int(p.name) for p in epath.Path(root).iterdir()
                if p.name.isdigit() and (p / MODEL).is_dir())


def find_checkpoint(path) -> tuple[epath.Path, int]:
  """Resolves a user path to (manager root, step).

  Accepts a converted checkpoint directory, a training workdir (its
  ``checkpoints/`` subdirectory is used, latest step), a manager root, or a
  single step directory inside one.

  Raises:
    FileNotFoundError: nothing at ``path`` (naming a file in the way, if
      one is), or no checkpoint steps in the folder.
    NotADirectoryError: ``path`` is a file (a ``.pth`` to convert first).
  """
  path = epath.Path(paths.resolve(os.fspath(path)))
  if not path.exists():
    raise FileNotFoundError(paths.not_found(path))
  if not path.is_dir():
    raise NotADirectoryError(not_a_folder_message(path))
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  if (path / MODEL).is_dir() and path.name.isdigit():
    return path.parent, int(path.name)
  steps = model_steps(path)
  if not steps:
    raise FileNotFoundError(
        f'{paths.shown(path)}: no hrseg_jax checkpoint (expected step directories with '
        f'"{VARIABLES}" and "{MODEL}" items)')
  return path, steps[-1]


def _numpy_tree(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def _check_json(tree: Mapping, what: str) -> None:
  try:
    json.dumps(tree, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{what} cannot be written as JSON: {console.first_line(e)}') from None


def save_model(directory, variables: Mapping, model_cfg: Mapping,
               meta: Mapping[str, Any] | None = None, *, step: int = 0,
               overwrite: bool = False, keep: Iterable = ()) -> epath.Path:
  """Writes ``variables`` and ``model_cfg`` atomically to ``directory``.

  The checkpoint (with its integrity manifest, written last) is written to a
  hidden sibling directory and renamed into place only when complete, so a
  failure leaves nothing at ``directory`` and no hidden directory either.
  An existing ``directory`` is replaced only as :func:`check_replaceable`
  allows (``keep``: input files that must survive).
  """
  pipes.raise_if_ctrl_c()   # one pressed before, that a callback lost
  console.quiet_orbax()
  directory = epath.Path(paths.resolve(os.fspath(directory)))
  check_replaceable(directory, overwrite=overwrite, keep=keep)
  _check_json({'model': dict(model_cfg), 'meta': dict(meta or {})},
              f'the model config or metadata of {paths.shown(directory)}')
  parent = directory.parent
  made = files.missing_folders(os.fspath(parent))   # removed again on failure
  if not parent.exists():
    parent.mkdir(parents=True, exist_ok=True)
  if not parent.is_dir():
    raise NotADirectoryError(f'cannot create {paths.shown(directory)}: '
                             f'{paths.shown(parent)} is not a directory')
  tag = uuid.uuid4().hex[:8]
  tmp = parent / f'.{directory.name}.tmp-{tag}'
  old = parent / f'.{directory.name}.old-{tag}'
  try:
    # Ctrl-C waits for Orbax's writing threads, then the folder is removed.
    with pipes.ctrl_c_deferred():
      options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
      with ocp.CheckpointManager(tmp, options=options) as mngr:
        mngr.save(step, args=ocp.args.Composite(**{
            VARIABLES: ocp.args.StandardSave(_numpy_tree(dict(variables))),
            MODEL: ocp.args.JsonSave({'model': dict(model_cfg), 'meta': dict(meta or {})}),
        }))
        mngr.wait_until_finished()
    if not str(tmp).startswith(('gs://', 's3://')):
      manifest.write(os.fspath(tmp / str(step)), step)
    if directory.exists():
      directory.rename(old)
    tmp.rename(directory)
  except BaseException:
    if tmp.exists():
      shutil.rmtree(os.fspath(tmp), ignore_errors=True)
    if old.exists() and not directory.exists():
      old.rename(directory)
    files.remove_empty_folders(made)
    raise
  if old.exists():
    shutil.rmtree(os.fspath(old), ignore_errors=True)
  return directory


def _verify(step_dir: epath.Path, only: str | None = None) -> bool:
  """manifest.verify for local checkpoints (False where there is none)."""
  if str(step_dir).startswith(('gs://', 's3://')):
    return False
  return manifest.verify(os.fspath(step_dir), only=only)


def load_model_config(path) -> tuple[dict, dict]:
  """Reads only the JSON item: (model config, meta)."""
  console.quiet_orbax()
  root, step = find_checkpoint(path)
  _verify(root / str(step), only=MODEL)
  try:
    with ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(
        read_only=True)) as mngr:
      item = mngr.restore(step, args=ocp.args.Composite(**{MODEL: ocp.args.JsonRestore()}))
  except Exception as e:  # pylint: disable=broad-except
    raise manifest.CorruptCheckpointError(
        f'cannot read the model config of checkpoint {root / str(step)}: '
        f'{console.first_line(e)}') from None
  return item[MODEL]['model'], item[MODEL].get('meta', {})


def _check_against_config(where, model_cfg: Mapping, variables: Mapping) -> None:
  """Weights of another shape than the model config (unverified checkpoints)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  try:
    want = traverse_util.flatten_dict(dict(registry.abstract_variables(dict(model_cfg))))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{where}: its model config cannot be built: '
                     f'{console.first_line(e)}') from None
  got = traverse_util.flatten_dict(dict(variables))
  for key in sorted(set(want) | set(got)):
    name = '/'.join(map(str, key))
    if key not in got or key not in want:
      side = 'the weights lack' if key not in got else 'the model config lacks'
      raise ValueError(f'{where}: its model config does not match its '
                       f'weights ({side} {name})')
    if tuple(want[key].shape) != tuple(got[key].shape):
      raise ValueError(f'{where}: its model config does not match its weights '
                       f'({name} has shape {tuple(got[key].shape)}, the model '
                       f'needs {tuple(want[key].shape)})')
  for key, value in got.items():
    value = np.asarray(value)
    if value.dtype.kind == 'f' and not np.isfinite(value).all():
      raise ValueError(f'{where}: {"/".join(map(str, key))} holds non-finite '
                       'values (damaged checkpoint?)')


def resolve_step(path, step: int | None = None) -> int:
  """The step :func:`load_model` reads for ``step`` (None: the latest; 0 for
  converted weights)."""
  return find_checkpoint(path)[1] if step is None else step


def load_model(path, *, step: int | None = None):
  """Returns (model config, variables as NumPy, meta) from a checkpoint.

  The step's integrity manifest is verified first (sizes always, SHA-256
  digests unless ``HRSEG_VERIFY_CHECKSUMS=0``). A checkpoint without one
  (older versions) is checked after reading instead: its weights must have
  the shapes its model config needs and be finite.

  Raises:
    FileNotFoundError: no checkpoint (or no such step) at ``path``.
    ValueError: the checkpoint is damaged or inconsistent (one line naming
      the step directory and the file or variable).
  """
  console.quiet_orbax()
  root, latest = find_checkpoint(path)
  step = latest if step is None else step
  step_dir = root / str(step)
  if not (step_dir / MODEL).is_dir():
    kept = model_steps(root)
    raise FileNotFoundError(f'{paths.shown(root)}: no checkpoint step {step} (steps kept: '
                            f'{", ".join(map(str, kept)) or "none"})')
  verified = _verify(step_dir)
  try:
    # Restore onto this host's first device whatever topology saved it (a
    # checkpoint written by 8 devices loads for eval on 1).
    meta = ocp.StandardCheckpointer().metadata(step_dir / VARIABLES)
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
  except Exception as e:  # pylint: disable=broad-except
    raise manifest.CorruptCheckpointError(
        f'cannot read checkpoint {paths.shown(step_dir)}: {console.first_line(e)}') from None
  model_cfg, variables = item[MODEL]['model'], _numpy_tree(item[VARIABLES])
  if not verified:
    _check_against_config(step_dir, model_cfg, variables)
  return model_cfg, variables, item[MODEL].get('meta', {})
