"""Image/label transforms of the original pipeline, in NumPy and OpenCV.

No JAX here: these run in Grain worker processes.  Images are RGB uint8
``[H, W, 3]`` until :func:`normalize`; labels are uint8 training ids
(255 = ignore); ``rows`` is an optional int32 ``[H]`` vector giving, for every
row, the row of the original full-resolution image it came from (-1 for
padding).  Resizes use ``cv2.INTER_LINEAR`` for images and
``cv2.INTER_NEAREST`` for labels, as the original; ``rows`` follows the label
(the nearest-neighbour source row, i.e. ``floor(dst * src / dst_size)``).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np

from hrseg_jax.data.imagenet_stats import MEAN, STD
IGNORE = 255
# Padding colour of the original's eval-time stride padding: the mean colour
# (``tuple(x * 255 for x in mean)`` rounded by OpenCV), normalised ~ 0.
MEAN_PIXEL = tuple(int(round(float(m) * 255)) for m in MEAN)

# normalize() as one affine colour transform: out = x * (1 / (255 STD)) +
# (-MEAN / STD), per channel.
_AFFINE = np.concatenate([np.diag(1.0 / (255.0 * STD)), (-MEAN / STD)[:, None]],
                         axis=1).astype(np.float32)


class Sample(NamedTuple):
  """An image with its (optional) label and row map."""
  image: np.ndarray
  label: np.ndarray | None = None
  rows: np.ndarray | None = None


def normalize(image: np.ndarray) -> np.ndarray:
  """RGB uint8 [..., H, W, 3] -> float32 ``(x / 255 - MEAN) / STD``."""
  image = np.asarray(image)
  if image.ndim < 3 or image.shape[-1] != 3 or 0 in image.shape:
    raise ValueError(f'expected [..., H, W, 3] RGB, got shape {image.shape}')
  flat = np.ascontiguousarray(image).reshape(-1, image.shape[-2], 3)
  out = cv2.transform(flat.astype(np.float32), _AFFINE)
  return out.reshape(image.shape)


def nearest_indices(src: int, dst: int) -> np.ndarray:
  """Source index of each destination index under cv2.INTER_NEAREST."""
  scale = 1.0 / (dst / src)
  idx = np.floor(np.arange(dst, dtype=np.float64) * scale).astype(np.int32)
  return np.minimum(idx, src - 1)


def initial_rows(height: int) -> np.ndarray:
  return np.arange(height, dtype=np.int32)


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
  """Resizes to ``size`` = (h, w): image bilinear, label/rows nearest."""
  h, w = size
  image, label, rows = sample
  if image.shape[:2] == (h, w):
    return sample
  image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
  if label is not None:
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
  if rows is not None:
    rows = rows[nearest_indices(len(rows), h)]
  return Sample(image, label, rows)


def long_side_size(h: int, w: int, long_size: int) -> tuple[int, int]:
  """The original's ``multi_scale_aug`` size rule: long side -> long_size."""
  if h > w:
    return long_size, int(w * long_size / h + 0.5)
  return int(h * long_size / w + 0.5), long_size


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
  """The original's ``resize_short_length`` size rule: short side -> short."""
  if h < w:
    return short, int(w * short / h + 0.5)
  return int(h * short / w + 0.5), short


def random_scale(rng: np.random.Generator, scale_factor: int) -> float:
  """0.5 + randint(0, scale_factor) / 10 (inclusive, uniform)."""
  return 0.5 + int(rng.integers(0, scale_factor + 1)) / 10.0


def pad(sample: Sample, size: tuple[int, int],
        image_value: Sequence[int] = (0, 0, 0)) -> Sample:
  """Pads bottom/right up to ``size`` (no-op where already larger).

  The image gets ``image_value`` (raw 0 = black in training, the mean colour
  at eval), the label IGNORE and rows -1.
  """
  image, label, rows = sample
  h, w = image.shape[:2]
  ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
  if not (ph or pw):
    return sample
  image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                             value=tuple(image_value))
  if label is not None:
    label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT,
                               value=IGNORE)
  if rows is not None:
    rows = np.concatenate([rows, np.full(ph, -1, np.int32)])
  return Sample(image, label, rows)


def crop(sample: Sample, top: int, left: int, size: tuple[int, int]) -> Sample:
  """Crops ``size`` = (h, w) at (top, left); must fit inside the image."""
  ch, cw = size
  image, label, rows = sample
  image = image[top:top + ch, left:left + cw]
  if label is not None:
    label = label[top:top + ch, left:left + cw]
  if rows is not None:
    rows = rows[top:top + ch]
  return Sample(image, label, rows)


def crop_offsets(height: int, width: int, size: tuple[int, int],
                 rng: np.random.Generator) -> tuple[int, int]:
  """The original's ``rand_crop`` offsets (x first, then y) for an image of
  (height, width) padded up to ``size``: uniform over all valid positions."""
  left = int(rng.integers(0, max(width, size[1]) - size[1] + 1))
  top = int(rng.integers(0, max(height, size[0]) - size[0] + 1))
  return top, left


def random_crop(sample: Sample, size: tuple[int, int],
                rng: np.random.Generator) -> Sample:
  """The original's ``rand_crop``: pad to ``size`` then a uniform crop."""
  h, w = sample.image.shape[:2]
  top, left = crop_offsets(h, w, size, rng)
  return crop(pad(sample, size), top, left, size)


def _gather(array: np.ndarray, row_idx: np.ndarray, col_idx: np.ndarray,
            size: tuple[int, int], fill: int) -> np.ndarray:
  out = array.take(row_idx, axis=0).take(col_idx, axis=1)
  if out.shape != size:
    out = cv2.copyMakeBorder(out, 0, size[0] - out.shape[0], 0,
                             size[1] - out.shape[1], cv2.BORDER_CONSTANT,
                             value=fill)
  return out


def resize_crop(sample: Sample, size: tuple[int, int], top: int, left: int,
                crop_size: tuple[int, int]) -> Sample:
  """``crop(pad(resize(sample, size), crop_size), top, left, crop_size)``.

  Identical result, but the label and rows are resized only inside the crop
  (nearest neighbour is a gather), which saves the full-size label resize.
  """
  h, w = size
  ch, cw = crop_size
  image, label, rows = sample
  src_h, src_w = image.shape[:2]
  if (src_h, src_w) != (h, w):
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
  image = crop(pad(Sample(image), crop_size), top, left, crop_size).image
  row_idx = nearest_indices(src_h, h)[top:top + ch]
  if label is not None:
    col_idx = nearest_indices(src_w, w)[left:left + cw]
    label = _gather(label, row_idx, col_idx, crop_size, IGNORE)
  if rows is not None:
    rows = np.concatenate([rows[row_idx],
                           np.full(ch - len(row_idx), -1, np.int32)])
  return Sample(image, label, rows)


def hflip(sample: Sample, flip_lut: np.ndarray | None = None) -> Sample:
  """Horizontal flip; ``flip_lut`` swaps left/right label ids (LIP)."""
  image, label, rows = sample
  image = cv2.flip(image, 1)
  if label is not None:
    label = cv2.flip(label, 1)
    if flip_lut is not None:
      label = cv2.LUT(label, flip_lut)
  return Sample(image, label, rows)


def resize_short_pad(sample: Sample, short: int, stride: int | None,
                     ) -> tuple[Sample, tuple[int, int]]:
  """The original's ``resize_short_length(..., fit_stride)``.

  Short side -> ``short``; then, if ``stride``, pad bottom/right to a multiple
  of it (image: mean colour, label: ignore, rows: -1).

  Returns:
    The sample and the (pad_h, pad_w) border padding.
  """
  h, w = sample.image.shape[:2]
  sample = resize(sample, short_side_size(h, w, short))
  if not stride:
    return sample, (0, 0)
  h, w = sample.image.shape[:2]
  ph, pw = -h % stride, -w % stride
  return pad(sample, (h + ph, w + pw), MEAN_PIXEL), (ph, pw)

