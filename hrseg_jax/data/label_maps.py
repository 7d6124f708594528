"""Raw label values -> training ids, per dataset (spec sections 4.5-4.9).

A :class:`LabelMap` is a 256-entry lookup table from the value stored in the
label file to the training id (``0..K-1``, or :data:`IGNORE` = 255).  Raw values
the dataset does not define are *invalid*: applying the map to a label that
contains one raises :class:`DataError` naming the file and the values, so a
wrong dataset/label-map pairing can never produce silently wrong labels.

Convention shared by every map: a raw 255 means "ignore" (the uint8 image of
Cityscapes' labelId -1 and the usual void value) and maps to 255.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from hrseg_jax.data.errors import DataError

IGNORE = 255

# Cityscapes labelId -> trainId (spec 4.5); all other labelIds 0..33 -> ignore.
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_NUM_LABEL_IDS = 34
# trainId -> labelId, for writing predictions in submission format (spec 5.6).
CITYSCAPES_TRAIN_TO_LABEL = np.array(
    sorted(CITYSCAPES_LABEL_TO_TRAIN, key=CITYSCAPES_LABEL_TO_TRAIN.get),
    np.uint8)
CITYSCAPES_CLASSES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
    'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car',
    'truck', 'bus', 'train', 'motorcycle', 'bicycle')

# LIP: 20 classes, flip swaps left/right arm, leg and shoe (spec 4.6).
LIP_FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))

# PASCAL-Context: the 60 raw Detail category ids in sorted order; the index in
# this list is the 60-class label (0 = background) (spec 4.7).
PASCAL_CTX_RAW_IDS = (
    0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80,
    85, 98, 104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232,
    258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366,
    368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458)

# COCO-Stuff: the 172 raw ids in use; index i is the encoded label, and
# reduce_zero_label then maps index 0 (unlabeled) to ignore, i to i-1 (4.8).
COCOSTUFF_MISSING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
COCOSTUFF_RAW_IDS = tuple(
    i for i in range(183) if i not in COCOSTUFF_MISSING_IDS)


@dataclasses.dataclass(frozen=True, eq=False)
class LabelMap:
  """A raw-value -> training-id table.

  Attributes:
    name: the map's name (see :func:`get_label_map`).
    num_classes: K; training ids are ``0..K-1`` plus 255 for ignore.
    lut: uint8[256], training id for each raw value (255 for ignore or
      invalid values).
    valid: bool[256], which raw values may occur in a label file.
    flip_pairs: training-id pairs swapped by a horizontal flip.
  """
  name: str
  num_classes: int
  lut: np.ndarray
  valid: np.ndarray
  flip_pairs: tuple[tuple[int, int], ...] = ()

  def apply(self, raw: np.ndarray, path: str = '<array>') -> np.ndarray:
    """Maps a raw label to training ids.

    Args:
      raw: 2-D uint8 (or uint16 with values < 256) label as stored on disk.
      path: the label file, for error messages.

    Returns:
      uint8 array of the same shape with values in ``0..K-1`` or 255.

    Raises:
      DataError: the label has a value this map does not define.
    """
    if raw.dtype != np.uint8:
      if raw.dtype.kind not in 'ui' or raw.size and (
          raw.min() < 0 or raw.max() > 255):
        bad = np.unique(raw[(raw < 0) | (raw > 255)])[:10].tolist()
        raise DataError(path, f'label values {bad} outside the '
                        f'{self.name!r} label map')
      raw = raw.astype(np.uint8)
    raw = np.ascontiguousarray(raw)
    hist = cv2.calcHist([raw], [0], None, [256], [0, 256]).ravel()
    bad = np.flatnonzero((hist > 0) & ~self.valid)
    if bad.size:
      raise DataError(path, f'label values {bad[:10].tolist()} outside the '
                      f'{self.name!r} label map ({self.num_classes} classes)')
    return cv2.LUT(raw, self.lut)

  @property
  def flip_lut(self) -> np.ndarray:
    """uint8[256] permutation of training ids applied after a flip."""
    perm = np.arange(256, dtype=np.uint8)
    for a, b in self.flip_pairs:
      perm[a], perm[b] = b, a
    return perm


def _from_dict(name, num_classes, table, flip_pairs=()) -> LabelMap:
  lut = np.full(256, IGNORE, np.uint8)
  valid = np.zeros(256, bool)
  for raw, train_id in table.items():
    lut[raw] = train_id
    valid[raw] = True
  valid[IGNORE] = True
  lut[IGNORE] = IGNORE
  return LabelMap(name, num_classes, lut, valid, tuple(flip_pairs))


def cityscapes() -> LabelMap:
  table = {i: CITYSCAPES_LABEL_TO_TRAIN.get(i, IGNORE)
           for i in range(CITYSCAPES_NUM_LABEL_IDS)}
  return _from_dict('cityscapes', 19, table)


def identity(num_classes: int, flip_pairs=(), name: str = 'identity'
             ) -> LabelMap:
  if not 2 <= num_classes <= 255:
    raise ValueError(f'num_classes must be in [2, 255], got {num_classes}')
  return _from_dict(name, num_classes, {i: i for i in range(num_classes)},
                    flip_pairs)


def reduce_zero(num_classes: int, name: str) -> LabelMap:
  """Raw 0 -> ignore, raw c -> c-1 for c in 1..K (ADE20K, PASCAL-Context 59)."""
  table = {0: IGNORE, **{c: c - 1 for c in range(1, num_classes + 1)}}
  return _from_dict(name, num_classes, table)


def cocostuff() -> LabelMap:
  table = {raw: (IGNORE if i == 0 else i - 1)
           for i, raw in enumerate(COCOSTUFF_RAW_IDS)}
  return _from_dict('cocostuff', 171, table)


def cocostuff164k() -> LabelMap:
  """COCO-Stuff-164k's stuffthingmaps PNGs: value = COCO id - 1 (0 = person),
  255 = unlabeled; the same 171 classes in the same order as 'cocostuff'."""
  table = {raw - 1: (IGNORE if i == 0 else i - 1)
           for i, raw in enumerate(COCOSTUFF_RAW_IDS) if raw > 0}
  return _from_dict('cocostuff164k', 171, table)


def get_label_map(name: str, num_classes: int | None = None) -> LabelMap:
  """Returns the label map called ``name``.

  Args:
    name: 'cityscapes', 'lip', 'pascal_ctx' (59 classes, background
      ignored), 'pascal_ctx60' (background is class 0), 'cocostuff' (COCO
      ids 1..182, 0 = unlabeled: COCO-Stuff-10k), 'cocostuff164k' (COCO
      ids - 1, 255 = unlabeled: COCO-Stuff-164k's stuffthingmaps), 'ade20k'
      or 'identity' (raw values are already training ids; synthetic data,
      mmsegmentation's ``*_labelTrainIds.png`` and custom datasets).
    num_classes: required for 'identity'; checked against the others.
  """
  builders = {
      'cityscapes': cityscapes,
      'lip': lambda: identity(20, LIP_FLIP_PAIRS, 'lip'),
      'pascal_ctx': lambda: reduce_zero(59, 'pascal_ctx'),
      'pascal_ctx60': lambda: identity(60, name='pascal_ctx60'),
      'cocostuff': cocostuff,
      'cocostuff164k': cocostuff164k,
      'ade20k': lambda: reduce_zero(150, 'ade20k'),
  }
  if name == 'identity':
    if num_classes is None:
      raise ValueError("label map 'identity' needs num_classes")
    return identity(num_classes)
  if name not in builders:
    raise ValueError(f'unknown label map {name!r}; expected one of '
                     f'{sorted(builders) + ["identity"]}')
  label_map = builders[name]()
  if num_classes is not None and num_classes != label_map.num_classes:
    raise ValueError(f'label map {name!r} has {label_map.num_classes} '
                     f'classes, config says {num_classes}')
  return label_map
