"""The datasets as their users have them on disk (original downloads, the
original repository's and mmsegmentation's layouts), prepared with the
documented commands from the user's folder with relative paths, and read
through the pipeline: raw label values end as the right training ids."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from hrseg_jax import recipes
from hrseg_jax.data import sources

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script(cwd, *args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, str(REPO / 'scripts' / args[0]), *args[1:]],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=120, check=False)


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _pixels(source, index=0):
  """{(raw value, training id)} of one example, read as the pipeline reads it."""
  raw = np.asarray(Image.open(source._labels[index]))  # pylint: disable=protected-access
  return sorted({(int(a), int(b)) for a, b in zip(raw.ravel(), source[index]['label'].ravel())})


@pytest.mark.parametrize('folder', ['data/ade20k', 'data/ade20k/ADEChallengeData2016'])
def test_ade20k_as_downloaded(tmp_path, monkeypatch, folder):
  """ADEChallengeData2016's images/{training,validation} and annotations/...
  (also mmsegmentation's layout) were refused by make_lists.py."""
  label = np.zeros((6, 8), np.uint8)
  label[:2], label[2:4], label[4:] = 1, 150, 0   # wall, flag, "other"
  for split, name in (('training', 'ADE_train_00000001'), ('training', 'ADE_train_00000002'),
                      ('validation', 'ADE_val_00000001')):
    _write(tmp_path / folder / 'images' / split / f'{name}.jpg', np.full((6, 8, 3), 90, np.uint8))
    _write(tmp_path / folder / 'annotations' / split / f'{name}.png', label)
  r = _script(tmp_path, 'make_lists.py', 'ade20k', '--root', 'data/ade20k',
              '--out', 'data/list/ade20k')
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines() == [
      'testval        1 lines  data/list/ade20k/testval.lst',
      'train          2 lines  data/list/ade20k/train.lst',
      'trainval       3 lines  data/list/ade20k/trainval.lst',
      'val            1 lines  data/list/ade20k/val.lst']
  sub = folder[len('data/ade20k/'):] + '/' if folder != 'data/ade20k' else ''
  assert (tmp_path / 'data/list/ade20k/val.lst').read_text() == (
      f'{sub}images/validation/ADE_val_00000001.jpg '
      f'{sub}annotations/validation/ADE_val_00000001.png\n')
  monkeypatch.chdir(tmp_path)
  data = recipes.recipe('ade20k', 'w18_small_v1').data   # its default paths
  for split in ('train', 'val'):
    source = sources.make_source(data, split)
    assert _pixels(source) == [(0, 255), (1, 0), (150, 149)]
