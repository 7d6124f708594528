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
    tmp = f'{dst}.tmp-{os.getpid()}'
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_png(path: str, mask: np.ndarray) -> None:
  """Writes ``mask`` as ``path`` through a temporary file (never half a PNG)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}.png'
  if not cv2.imwrite(tmp, mask):
    raise OSError(f'{path}: could not write the label PNG')
  os.replace(tmp, path)


def load_annotations(json_path: str) -> dict:
  """``trainval_merged.json``, checked to be a Detail annotation file."""
  try:
    with open(json_path) as f:
      data = json.load(f)
  except FileNotFoundError:
    raise DataError(json_path, 'annotation file not found (PASCAL-Context\'s '
                    'trainval_merged.json)') from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(json_path, f'not a JSON file ({e})') from None
  if not (isinstance(data, dict) and isinstance(data.get('images'), list)
          and isinstance(data.get('annos_segmentation'), list)):
    raise DataError(json_path, "not a Detail annotation file: expected 'images' and "
                    "'annos_segmentation' lists (PASCAL-Context's trainval_merged.json)")
  return data


def _plan(data: dict, json_path: str, image_dir: str, phases) -> list:
  """(image record, its annotations, source path) of every image to convert,
  after checking the records, the images and their masks (nothing written)."""
  if not os.path.isdir(image_dir):
    raise DataError(image_dir, 'image folder not found (VOCdevkit/VOC2010/JPEGImages)')
  by_image = collections.defaultdict(list)
  for i, ann in enumerate(data['annos_segmentation']):
    if not isinstance(ann, dict) or 'image_id' not in ann:
      raise DataError(json_path, f'annos_segmentation[{i}] has no image_id')
    by_image[ann['image_id']].append(ann)
  plan = []
  for i, image in enumerate(data['images']):
    if not isinstance(image, dict) or image.get('phase') not in phases:
      continue
    missing = [k for k in ('image_id', 'file_name', 'height', 'width') if k not in image]
    if missing:
      raise DataError(json_path, f'images[{i}] has no {", ".join(missing)}')
    src = os.path.join(image_dir, image['file_name'])
    if not os.path.isfile(src):
      raise DataError(src, f'image listed in {json_path} not found')
    anns = by_image[image['image_id']]
    where = f'{json_path}: {image["file_name"]}'
    try:
      to_index(class_mask(image, anns), where)
    except DataError as e:
      raise DataError(where, e.reason) from None
    except (KeyError, TypeError, ValueError) as e:
      raise DataError(where, f'bad annotation ({type(e).__name__}: {e})') from None
    plan.append((image, anns, src))
  if not plan:
    raise DataError(json_path, f'no images with phase in {tuple(phases)}')
  return plan


def convert(json_path: str, image_dir: str, out_root: str,
            list_dir: str | None = None,
            phases: tuple[str, ...] = ('train', 'val')) -> dict[str, str]:
  """Writes label PNGs, image links and list files for PASCAL-Context.

  Every image, record and mask is checked before anything is written, and
  each file is written through a temporary name, so bad input leaves
  ``out_root`` as it was and an interrupted run leaves no half-written file.

  Args:
    json_path: ``trainval_merged.json`` (Detail format).
    image_dir: ``VOCdevkit/VOC2010/JPEGImages``.
    out_root: dataset root to create (``{phase}/image``, ``{phase}/label``).
    list_dir: where the list files go (default: out_root).
    phases: image phases to convert.

  Returns:
    {split: list file path}.

  Raises:
    DataError: a missing or malformed annotation file, a missing image, a
      mask of the wrong size or a category outside the 60 classes.
  """
  data = load_annotations(json_path)
  for image, anns, src in _plan(data, json_path, image_dir, phases):
    name = image['file_name']
    mask = to_index(class_mask(image, anns), f'{json_path}: {name}')
    stem = os.path.splitext(name)[0]
    phase = image['phase']
    _place(src, os.path.join(out_root, phase, 'image', name))
    _write_png(os.path.join(out_root, phase, 'label', f'{stem}.png'), mask)
  return lists.make_lists('pascal_ctx', out_root, list_dir or out_root)
