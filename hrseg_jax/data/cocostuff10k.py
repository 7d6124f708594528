"""COCO-Stuff-10k as downloaded -> the ``{train,val}/{image,label}`` layout.

The 10k download (cocostuff-10k-v1.1) has ``images/<name>.jpg``,
``annotations/<name>.mat`` (MATLAB files whose ``S`` array holds the COCO ids,
1..182, 0 = unlabeled) and ``imageLists/{train,test}.txt``.  The original
trains on the same data as label PNGs in ``{train,val}/{image,label}``
(train = train.txt, val = test.txt, 9,000 and 1,000 images); this writes that
layout and its lists, the PNGs holding the values of ``S`` unchanged (read
with the 'cocostuff' label map).
"""
from __future__ import annotations

import os

import numpy as np

from hrseg_jax.data import lists
from hrseg_jax.data.errors import DataError
from hrseg_jax.data.pascal_ctx import _place, _write_png

SPLITS = (('train', 'train.txt'), ('val', 'test.txt'))


def read_mat_labels(path: str) -> np.ndarray:
  """The ``S`` array of one annotation file, as uint8 (values 0..182)."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  try:
    mat = scipy.io.loadmat(path, variable_names=['S'])
  except FileNotFoundError:
    raise DataError(path, 'annotation file not found') from None
  except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError,
          NotImplementedError) as e:
    raise DataError(path, f'not a COCO-Stuff-10k annotation file ({e})') from None
  labels = mat.get('S')
  if labels is None or np.ndim(labels) != 2:
    raise DataError(path, "no 2-D 'S' label array (COCO-Stuff-10k annotations)")
  labels = np.asarray(labels)
  if labels.dtype.kind not in 'uif' or (
      labels.dtype.kind == 'f' and not np.array_equal(labels, np.round(labels))):
    raise DataError(path, f"'S' holds {labels.dtype} values, not the integer COCO ids 0..182")
  if labels.size and (labels.min() < 0 or labels.max() > 182):
    raise DataError(path, f"'S' values {int(labels.min())}..{int(labels.max())} outside "
                    'the COCO ids 0..182')
  return labels.astype(np.uint8)


def _plan(root: str) -> list[tuple[str, str, str, str]]:
  """(split, name, image path, annotation path) of every listed image."""
  list_dir = os.path.join(root, 'imageLists')
  plan = []
  for split, list_name in SPLITS:
    names_file = os.path.join(list_dir, list_name)
    if not os.path.isfile(names_file):
      raise DataError(names_file, 'image list not found (COCO-Stuff-10k has '
                      'imageLists/train.txt and imageLists/test.txt)')
    with open(names_file) as f:
      names = [line.strip() for line in f if line.strip()]
    for name in names:
      image = os.path.join(root, 'images', f'{name}.jpg')
      mat = os.path.join(root, 'annotations', f'{name}.mat')
      for path, kind in ((image, 'image'), (mat, 'annotation')):
        if not os.path.isfile(path):
          raise DataError(path, f'{kind} of {name} (listed in {names_file}) not found')
      plan.append((split, name, image, mat))
  return plan


def convert(root: str, out_root: str,
            list_dir: str | None = None) -> tuple[int, dict[str, str]]:
  """Writes ``out_root/{train,val}/{image,label}`` and the list files.

  Every file is checked (and every annotation read, then read again to be
  written, so that memory holds one at a time) before anything is written;
  label PNGs are written through temporary names and images are hard-linked
  (copied where links fail).

  Returns:
    (number of images, {split: list file path}).

  Raises:
    DataError: a missing list, image or annotation, or an unreadable one.
  """
  plan = _plan(root)
  for _, _, _, mat in plan:   # all readable before anything is written
    read_mat_labels(mat)
  for split, name, image, mat in plan:
    _place(image, os.path.join(out_root, split, 'image', f'{name}.jpg'))
    _write_png(os.path.join(out_root, split, 'label', f'{name}.png'), read_mat_labels(mat))
  return len(plan), lists.make_lists('cocostuff', out_root, list_dir or out_root)
