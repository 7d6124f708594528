"""What a checkpoint says about itself: its dataset, its best and latest step.

* :func:`dataset_of`: the dataset a model was trained for (its palette, class
  names and test-time presets): ``meta['dataset']`` (recorded by ``convert``),
  else the training config a training checkpoint holds
  (``meta['config']['data']['name']``), else ``None``.
* :func:`select`: ``--checkpoint best|latest|PATH``; :func:`pick_step`:
  ``export --step best|latest|N``.  Training saves the
  evaluation's mIoU with every checkpoint that follows an evaluation
  (``meta['eval']['miou']``); ``best`` is the kept step with the highest one.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from etils import epath

from hrseg_jax import checkpoints, paths

# Dataset names of hrseg_jax.recipes (palettes, class names, eval presets).
DATASETS = ('cityscapes', 'lip', 'pascal_ctx', 'pascal_ctx60', 'cocostuff',
            'ade20k', 'synthetic')
# Their class counts (hrseg_jax.eval.classes); the synthetic scenes take any.
NUM_CLASSES = {'cityscapes': 19, 'lip': 20, 'pascal_ctx': 59, 'pascal_ctx60': 60,
               'cocostuff': 171, 'ade20k': 150}
BEST, LATEST = 'best', 'latest'


def datasets_with(num_classes: int) -> list[str]:
  """The datasets whose names and colours fit a ``num_classes`` model."""
  return [d for d in DATASETS if NUM_CLASSES.get(d, num_classes) == num_classes]


def check_dataset(name: str | None, num_classes: int | None = None) -> str | None:
  """``name`` if it is a known dataset (or empty/None); else ValueError.

  With ``num_classes`` (the model's), a dataset of another class count is an
  error too: its class names and colours would be silently wrong.
  """
  if not name:
    return None
  if name not in DATASETS:
    raise ValueError(f'--dataset {name!r}: unknown dataset; known: '
                     f'{", ".join(DATASETS)}')
  expected = NUM_CLASSES.get(name)
  if num_classes is not None and expected not in (None, int(num_classes)):
    raise ValueError(f'--dataset {name} has {expected} classes, the model has '
                     f'{num_classes} (datasets that fit: '
                     f'{", ".join(datasets_with(int(num_classes)))})')
  return name


def dataset_of(meta: Mapping[str, Any] | None) -> str | None:
  """The dataset recorded in a checkpoint's ``meta`` (module docstring)."""
  meta = meta or {}
  if meta.get('dataset'):
    return str(meta['dataset'])
  data = (meta.get('config') or {}).get('data') or {}
  return str(data['name']) if data.get('name') else None


def _step_meta(root: epath.Path, step: int) -> dict:
  """The ``meta`` of one step's JSON item, read without Orbax (cheap)."""
  path = root / str(step) / checkpoints.MODEL / 'metadata'
  try:
    return json.loads(path.read_text()).get('meta') or {}
  except (OSError, ValueError):
    return {}


def step_mious(path) -> dict[int, float]:
  """{step: mIoU} of the steps under ``path`` saved after an evaluation."""
  root, _ = checkpoints.find_checkpoint(path)
  out = {}
  for step in checkpoints.model_steps(root):
    miou = (_step_meta(root, step).get('eval') or {}).get('miou')
    if miou is not None:
      out[step] = float(miou)
  return out


def select(spec: str | None, workdir: str | os.PathLike | None, *,
           default: str = BEST) -> tuple[str, int | None, str]:
  """Resolves ``--checkpoint`` to (path, step or None = latest, description).

  Args:
    spec: ``'best'``, ``'latest'``, a checkpoint path, or ``None`` for
      ``default``.
    workdir: where ``best``/``latest`` look (its ``checkpoints/``).
    default: what ``None`` means: ``'best'`` falls back to the latest step
      when no kept step has an mIoU (no evaluation, or ``keep_best`` off).

  Raises:
    FileNotFoundError: no checkpoint there (the message names the path, and
      ``best`` or ``latest`` for a missing path spelt like one: ``latests``).
  """
  if spec not in (None, '', BEST, LATEST):
    meant = misspelt_choice(spec)
    if meant:
      raise FileNotFoundError(f'{paths.not_found(spec)}; did you mean {meant}?')
    return os.fspath(spec), None, f'checkpoint {paths.shown(spec)}'
  if workdir is None:
    raise FileNotFoundError(f'--checkpoint {spec or default} needs --workdir')
  explicit = spec or None
  spec = spec or default
  root, latest = checkpoints.find_checkpoint(workdir)
  if spec == BEST:
    mious = step_mious(root)
    if mious:
      step = _best(mious)
      return os.fspath(root), step, (f'best checkpoint (step {step}, mIoU '
                                     f'{100 * mious[step]:.2f}%) in {paths.shown(root)}')
    if explicit:
      raise FileNotFoundError(
          f'--checkpoint best: no checkpoint in {paths.shown(root)} was saved after an '
          'evaluation (use latest, or a path)')
  return os.fspath(root), latest, (f'latest checkpoint (step {latest}) in '
                                   f'{paths.shown(root)}')


def misspelt_choice(spec) -> str | None:
  """``best`` or ``latest`` when ``spec``, a path that does not exist and has
  no folder part, is spelt like it (``latests``, ``Best``, ``last``)."""
  import difflib  # pylint: disable=g-import-not-at-top
  text = os.fspath(spec)
  if os.sep in text or paths.is_url(text) or os.path.lexists(os.path.expanduser(text)):
    return None
  close = difflib.get_close_matches(text.lower(), (BEST, LATEST), n=1, cutoff=0.6)
  return close[0] if close else None


def pick_step(path, spec: int | str | None) -> int | None:
  """The step of the checkpoint at ``path`` that ``spec`` names.

  ``None`` or ``'latest'``: ``None`` (the latest); ``'best'``: the kept step
  with the highest validation mIoU; a number: itself.

  Raises:
    FileNotFoundError: ``best`` where no kept step followed an evaluation.
  """
  if spec is None or spec == LATEST:
    return None
  if spec != BEST:
    return int(spec)
  mious = step_mious(path)
  if not mious:
    raise FileNotFoundError(
        f'--step best: no checkpoint in {paths.shown(path)} was saved after an '
        'evaluation (use --step latest or a step number)')
  return _best(mious)


def load_step(path, spec: int | str | None) -> tuple[dict, dict, dict, int]:
  """``load_model`` of the step ``spec`` names (:func:`pick_step`), and that
  step's number (0: converted weights)."""
  step = pick_step(path, spec)
  cfg, variables, meta = checkpoints.load_model(path, step=step)
  return cfg, variables, meta, checkpoints.resolve_step(path, step)


def _best(mious: Mapping[int, float]) -> int:
  """The step with the highest mIoU (the later one of equals)."""
  return max(mious, key=lambda s: (mious[s], s))
