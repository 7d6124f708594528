"""PASCAL-Context: Detail-API annotation JSON -> label PNGs, once.

The original (master / pytorch-v1.1) builds masks at run time with the Detail
API (``detail.getMask(img)``) from ``trainval_merged.json`` and maps the raw
category ids to 0..59 with the sorted id list (spec 4.7).  This module does
the same without the Detail API: for every image of a phase it paints the
RLE masks of its ``annos_segmentation`` entries in file order (later ones on
top, as ``getMask``), maps raw ids to the 60-class index (0 = background) and
writes an 8-bit grayscale PNG.  The result is the openseg-style layout the
HRNet-OCR branch reads, ``{train,val}/{image,label}/``, plus list files; read
it with the 'pascal_ctx' (59 classes, background ignored) or 'pascal_ctx60'
label maps.
"""
from __future__ import annotations

import collections
import json
import os
import shutil

import cv2
import numpy as np

from hrseg_jax.data import lists
from hrseg_jax.data import rle
from hrseg_jax.data.errors import DataError
from hrseg_jax.data.label_maps import PASCAL_CTX_RAW_IDS

_INDEX = np.full(max(PASCAL_CTX_RAW_IDS) + 1, -1, np.int32)
_INDEX[list(PASCAL_CTX_RAW_IDS)] = np.arange(len(PASCAL_CTX_RAW_IDS))


def class_mask(image: dict, annotations: list[dict]) -> np.ndarray:
  """Raw Detail category id per pixel (0 = unannotated), like getMask()."""
  mask = np.zeros((int(image['height']), int(image['width'])), np.int32)
  for ann in annotations:
    m = rle.decode(ann['segmentation'])
    if m.shape != mask.shape:
      raise DataError(f'image_id {image["image_id"]}',
                      f'mask {m.shape} != image {mask.shape}')
    mask[m != 0] = int(ann['category_id'])
  return mask


def to_index(mask: np.ndarray, where: str) -> np.ndarray:
  """Raw ids -> 0..59 (uint8); DataError for an id outside the 60 classes."""
  ids = np.unique(mask)
  bad = [int(i) for i in ids if i >= len(_INDEX) or _INDEX[i] < 0]
  if bad:
    raise DataError(where, f'category ids {bad[:10]} are not among the 60 '
                    'PASCAL-Context classes (is this trainval_merged.json?)')
  return _INDEX[mask].astype(np.uint8)


def _place(src: str, dst: str) -> None:
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  if os.path.exists(dst):
    return
  try:
    os.link(src, dst)
  except OSError:
    shutil.copyfile(src, dst)


def convert(json_path: str, image_dir: str, out_root: str,
            list_dir: str | None = None,
            phases: tuple[str, ...] = ('train', 'val')) -> dict[str, str]:
  """Writes label PNGs, image links and list files for PASCAL-Context.

  Args:
    json_path: ``trainval_merged.json`` (Detail format).
    image_dir: ``VOCdevkit/VOC2010/JPEGImages``.
    out_root: dataset root to create (``{phase}/image``, ``{phase}/label``).
    list_dir: where the list files go (default: out_root).
    phases: image phases to convert.

  Returns:
    {split: list file path}.
  """
  with open(json_path) as f:
    data = json.load(f)
  by_image = collections.defaultdict(list)
  for ann in data['annos_segmentation']:
    by_image[ann['image_id']].append(ann)
  count = 0
  for image in data['images']:
    if image.get('phase') not in phases:
      continue
    name = image['file_name']
    where = f'{json_path}: {name}'
    mask = to_index(class_mask(image, by_image[image['image_id']]), where)
    stem = os.path.splitext(name)[0]
    phase = image['phase']
    src = os.path.join(image_dir, name)
    if not os.path.isfile(src):
      raise DataError(src, 'image listed in the annotation file not found')
    _place(src, os.path.join(out_root, phase, 'image', name))
    label_path = os.path.join(out_root, phase, 'label', f'{stem}.png')
    os.makedirs(os.path.dirname(label_path), exist_ok=True)
    cv2.imwrite(label_path, mask)
    count += 1
  if not count:
    raise DataError(json_path, f'no images with phase in {phases}')
  return lists.make_lists('pascal_ctx', out_root, list_dir or out_root)
