"""Pictures of an evaluation: the confusion matrix and prediction overlays.

Both are uint8 RGB arrays (for TensorBoard image summaries and PNG files);
drawn with Pillow alone.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hrseg_jax.eval import palettes

CONFUSION_FILE = 'confusion.png'


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one fixed-size bitmap font.
    return ImageFont.load_default()


def confusion_image(cm: np.ndarray, names: Sequence[str]) -> np.ndarray:
  """The row-normalised confusion matrix as a picture.

  Rows are ground-truth classes, columns predictions; a cell's darkness is
  the share of the row's pixels predicted as the column's class (a perfect
  model draws the diagonal; rows without pixels are grey).  Rows are
  labelled ``id name``, columns ``id``.

  Args:
    cm: int [K, K] pixel counts (rows = ground truth).
    names: K class names.

  Returns:
    uint8 [H, W, 3].
  """
  cm = np.asarray(cm, np.float64)
  k = cm.shape[0]
  cell = int(np.clip(720 // max(k, 1), 3, 28))
  font_size = int(np.clip(cell - 4, 8, 14))
  font = _font(font_size)
  labels = [f'{i} {n}' for i, n in enumerate(names)] if cell >= 8 else []
  left = 8 + max([int(font.getlength(t)) for t in labels] + [0])
  top = 2 * font_size + 12 if cell >= 8 else 2 * font_size + 4
  share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  white, dark = np.array([255., 255., 255.]), np.array([8., 48., 107.])
  grid = white + share[..., None] * (dark - white)               # white -> blue
  grid = np.where(cm.sum(axis=1, keepdims=True)[..., None] > 0, grid, 225)
  grid = np.repeat(np.repeat(np.rint(grid), cell, 0), cell, 1).astype(np.uint8)
  title = 'rows: ground truth, columns: prediction (row shares)'
  width = max(left + k * cell + 8, int(font.getlength(title)) + 8)
  height = top + k * cell + 8
  canvas = Image.new('RGB', (width, height), (255, 255, 255))
  canvas.paste(Image.fromarray(grid), (left, top))
  draw = ImageDraw.Draw(canvas)
  draw.text((4, 2), title, fill=(0, 0, 0), font=font)
  if labels:
    for i, text in enumerate(labels):
      y = top + i * cell + (cell - font_size) // 2
      draw.text((4, y), text, fill=(0, 0, 0), font=font)
      if cell >= 2 * font_size or i % max(1, (2 * font_size) // cell) == 0:
        draw.text((left + i * cell + 1, top - font_size - 4), str(i),
                  fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def overlay_strips(images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                   palette: np.ndarray, ignore_label: int = 255,
                   alpha: float = 0.6) -> np.ndarray:
  """``image | ground truth | prediction`` side by side, per example.

  Args:
    images: [N, H, W, 3] RGB, 0..255 (any numeric dtype).
    labels: int [N, H, W] training ids (``ignore_label`` drawn as the image).
    preds: int [N, H, W] predicted ids.
    palette: uint8 [256, 3].
    ignore_label: the label value not drawn.
    alpha: weight of the class colours over the image.

  Returns:
    uint8 [N, H, 3 W, 3].
  """
  images = np.clip(np.rint(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
  out = []
  for image, label, pred in zip(images, np.asarray(labels), np.asarray(preds)):
    gt = palettes.overlay(image, palettes.colorize(label, palette), alpha)
    gt = np.where((label == ignore_label)[..., None], image, gt)
    pr = palettes.overlay(image, palettes.colorize(pred, palette), alpha)
    out.append(np.concatenate([image, gt, pr], axis=1))
  return np.stack(out)
