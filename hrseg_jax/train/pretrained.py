"""``train.init_from``: the weights a new run starts from.

The recipes name the ImageNet-pretrained backbone the original starts from
(``hrseg_jax.recipes.PRETRAINED``, e.g.
``pretrained_models/hrnetv2_w48_imagenet_pretrained.pth``).  ``init_from``
is either such a PyTorch ``.pth`` (converted in memory like
``python -m hrseg_jax.convert``; nothing is written) or a converted
hrseg_jax checkpoint (full model or backbone).  ``''`` trains from scratch.

:func:`check_init_from` runs before any other start-up work, so a missing
file stops the run at once with one line saying what to do;
:func:`read_init_weights` then reads the weights and checks them against the
model before the workdir is made, and :func:`load_init_weights` puts them
into the run's initial state.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath
from flax import traverse_util

from hrseg_jax import checkpoints, console, paths, recipes
from hrseg_jax.convert import convert, mapping
from hrseg_jax.models import registry
from hrseg_jax.train.state import TrainState

PTH_SUFFIXES = ('.pth', '.pt', '.pth.tar')


def is_pth(path: str) -> bool:
  """True for a PyTorch file name (converted in memory)."""
  return str(path).lower().endswith(PTH_SUFFIXES)


def has_checkpoints(workdir) -> bool:
  """Whether ``workdir/checkpoints`` holds a step (a run there resumes)."""
  directory = epath.Path(workdir) / 'checkpoints'
  try:
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())
  except OSError:
    return False


def missing_message(path: str, model_cfg: Mapping[str, Any] | None = None) -> str:
  """The one-line explanation for an ``init_from`` path that is not there.

  A ``.pth`` path: put the file there (converted in memory) or convert it
  once.  Any other path names a converted checkpoint folder: say which
  ``.pth`` to convert into it (the recipe's backbone for this variant).
  """
  path = paths.shown(path)
  name = os.path.basename(str(path).rstrip('/')) or str(path)
  stem = os.path.splitext(name)[0]
  variant = (model_cfg or {}).get('variant', '')
  classes = (model_cfg or {}).get('num_classes')
  num_classes = f' --num-classes {classes}' if classes else ''
  scratch = "--config.train.init_from='' trains from scratch."
  if not is_pth(path):
    backbone = os.path.basename(recipes.PRETRAINED.get(variant, 'BACKBONE.pth'))
    return (f'train.init_from={path}: no checkpoint there. Convert the '
            f'weights to start from into it once (`python -m hrseg_jax.convert '
            f'{backbone} {path}{num_classes}`), or pass the .pth file itself '
            f'(converted in memory). {scratch}')
  # Only the variants of recipes.PRETRAINED have a released ImageNet backbone.
  what = (f'the ImageNet-pretrained HRNet-{variant.upper()} backbone ({name}, from '
          'the HRNet-Image-Classification release)' if variant in recipes.PRETRAINED
          else f'the weights to start from ({name})')
  convert = f'python -m hrseg_jax.convert {name} converted/{stem}{num_classes}'
  return (f'train.init_from={path}: file not found. '
          f'Put {what} '
          'there; it is converted in memory, or convert it once with '
          f'`{convert}` and pass --config.train.init_from=converted/'
          f'{stem}. {scratch}')


def check_init_from(config, workdir) -> None:
  """Raises ValueError (one line) if ``train.init_from`` names a missing path.

  Skipped when ``workdir`` already has checkpoints: a resumed run restores
  its own weights and never reads ``init_from``.
  """
  path = str(config.train.get('init_from', '') or '')
  if not path or path.startswith('gs://') or has_checkpoints(workdir):
    return
  if not os.path.exists(os.path.expanduser(path)):
    model = config.model.to_dict() if hasattr(config.model, 'to_dict') else dict(config.model)
    raise ValueError(missing_message(path, model))


def start_note(meta: Mapping[str, Any], path: str) -> str:
  """What the start-up line adds after ``initialised from PATH``, from the
  ``meta`` of :func:`load_init_variables`: for a backbone (an ImageNet file),
  the head it lacked, freshly initialised, and the keys of the ``.pth`` that
  were not used, by module; '' for a full model.  ``path`` (``init_from``)
  names which file that was: the ``.pth`` itself, or for a converted
  checkpoint folder the ``.pth`` it was converted from."""
  def modules(keys):
    return ', '.join(sorted({k.split('.')[0] for k in keys}))
  fresh = list(meta.get('initialised') or [])
  unused = list(meta.get('skipped') or [])
  notes = []
  if fresh:
    notes.append(f'{modules(fresh)} ({console.counted(len(fresh), "tensor")}) freshly initialised')
  if unused:
    source = 'the .pth' if is_pth(path) else 'the .pth it was converted from'
    notes.append(f'{console.counted(len(unused), "key")} of {source} not used '
                 f'({modules(unused)})')
  if not notes:
    return ''
  return (', a backbone: ' if meta.get('backbone_only') else ': ') + ', '.join(notes)


def load_init_variables(path, model_cfg: Mapping[str, Any], *,
                        inplace_abn: bool | None = None, log=print) -> tuple[dict, dict]:
  """(variables, meta) to start ``model_cfg`` from; a ``.pth`` in memory.

  A ``.pth`` converts as ``python -m hrseg_jax.convert`` converts it:
  ``inplace_abn`` (``train.init_from_inplace_abn``) None gives a file saved
  by InPlaceABN (no ``num_batches_tracked`` buffers) its BN scale, with a
  line to ``log``; True or False forces it (True for a file saved by standard
  BatchNorm with a ``warning:`` line to ``log``, as convert warns).

  ``meta['initialised']`` lists the PyTorch keys the file lacked (a
  backbone's head); the caller keeps its own initialisation for those.

  Raises:
    ValueError: not a checkpoint, or weights that do not fit the model (one
      line naming ``train.init_from``).
  """
  local = os.path.expanduser(os.fspath(path))
  path = paths.shown(path)   # for messages
  if is_pth(path) and os.path.isfile(local):
    try:
      _, variables, meta, _ = convert.convert_variables(
          local, model_cfg=dict(model_cfg), inplace_abn=inplace_abn, log=log,
          inplace_abn_override='--config.train.init_from_inplace_abn=False')
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f'train.init_from={path}: cannot use it for model '
                       f'{model_cfg.get("variant", "")}: '
                       + ' '.join(str(e).split())) from e
    return variables, meta
  try:
    _, variables, meta = checkpoints.load_model(local)
  except (OSError, ValueError) as e:
    raise ValueError(
        f'train.init_from={path}: not an hrseg_jax checkpoint or .pth file ({e}); '
        'pass a PyTorch .pth (converted in memory) or convert it first: '
        'python -m hrseg_jax.convert CHECKPOINT.pth OUTPUT_DIR') from e
  return variables, meta


def init_weight_problems(loaded: tuple[dict, dict], variables) -> list[str]:
  """What keeps ``loaded`` (:func:`load_init_variables`) from initialising a
  model with ``variables`` (arrays or their shapes): its missing leaves and
  those of another shape, freshly converted ones apart."""
  src = traverse_util.flatten_dict(loaded[0])
  fresh = set(loaded[1].get('initialised', []))
  problems = []
  for k, v in traverse_util.flatten_dict(variables).items():
    if mapping.flax_path_to_torch(k) in fresh:
      continue
    if k not in src:
      problems.append(f'missing {"/".join(k)}')
    elif tuple(src[k].shape) != tuple(v.shape):
      problems.append(f'{"/".join(k)}: {tuple(src[k].shape)} vs {tuple(v.shape)}')
  return problems


def check_init_weights(loaded: tuple[dict, dict], path, model_cfg, variables) -> None:
  """ValueError (one line naming ``train.init_from``) unless ``loaded`` fits."""
  problems = init_weight_problems(loaded, variables)
  if problems:
    raise ValueError(f'train.init_from={paths.shown(path)}: does not fit model '
                     f'{model_cfg.get("variant", "")}: '
                     + '; '.join(problems[:8]) + (' …' if len(problems) > 8 else ''))


def load_init_weights(state: TrainState, path, model_cfg,
                      loaded: tuple[dict, dict] | None = None) -> TrainState:
  """Initialises from a ``.pth`` (converted in memory) or a converted
  checkpoint (full model or ImageNet backbone); ``loaded``: what
  :func:`load_init_variables` returned for it, if read already.

  Leaves the conversion freshly initialised (a backbone file's head) keep
  this run's initialisation; every other leaf must exist with the same shape.
  """
  if loaded is None:
    loaded = load_init_variables(path, model_cfg)
  check_init_weights(loaded, path, model_cfg, state.variables)
  fresh = set(loaded[1].get('initialised', []))
  src = traverse_util.flatten_dict(loaded[0])
  out = {}
  for k, v in traverse_util.flatten_dict(state.variables).items():
    out[k] = (v if mapping.flax_path_to_torch(k) in fresh
              else jax.device_put(np.asarray(src[k], v.dtype), v.sharding))
  v = traverse_util.unflatten_dict(out)
  return state.replace(params=v['params'],
                       model_state={k: x for k, x in v.items() if k != 'params'})


def read_init_weights(config, workdir) -> tuple[dict, dict] | None:
  """``train.init_from``'s weights, checked against the model before the
  workdir is made (a file that does not fit leaves nothing behind); None
  without ``init_from`` or when ``workdir`` has checkpoints to resume."""
  path = config.train.init_from
  if not path or has_checkpoints(workdir):
    return None
  model_cfg = registry.resolve(config.model)
  lines = []   # printed now (no workdir yet); log.txt gets them once it exists

  def log(line):
    if jax.process_index() == 0:
      print(line, flush=True)
      lines.append(line)
  variables, meta = load_init_variables(
      path, model_cfg, inplace_abn=config.train.get('init_from_inplace_abn'), log=log)
  loaded = (variables, dict(meta, console_lines=lines))
  check_init_weights(loaded, path, model_cfg, registry.abstract_variables(
      model_cfg, tuple(config.data.crop_size)))
  return loaded
