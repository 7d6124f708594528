"""Colour palettes for visualising class maps (uint8 [256, 3]).

* ``'cityscapes'``: the official Cityscapes colours of the 19 trainIds
  (cityscapesScripts ``labels.py``); ids 19..255 use the VOC palette.
* ``'lip'``: the LIP colour map of the LIP authors' JPPNet/CE2P code
  (``label_colours``), ids 20..255 from the VOC palette.
* Any other name (PASCAL-Context, ADE20K, COCO-Stuff, custom data; no
  official palette is used for those here): the deterministic PASCAL
  VOC bit-interleaved palette, which is also what the original's
  ``get_palette`` uses for its saved predictions.
"""
from __future__ import annotations

import numpy as np

CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32))

LIP_COLORS = (
    (0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (170, 0, 51),
    (255, 85, 0), (0, 0, 85), (0, 119, 221), (85, 85, 0), (0, 85, 85),
    (85, 51, 0), (52, 86, 128), (0, 128, 0), (0, 0, 255), (51, 170, 221),
    (0, 255, 255), (85, 255, 170), (170, 255, 85), (255, 255, 0),
    (255, 170, 0))
_OFFICIAL = {'cityscapes': CITYSCAPES_COLORS, 'lip': LIP_COLORS}


def voc_palette(n: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map: bits of the id interleaved into R, G, B."""
  out = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    out[i] = (r, g, b)
  return out


def get_palette(name: str) -> np.ndarray:
  """uint8 [256, 3] palette for a dataset name (see module docstring)."""
  pal = voc_palette(256)
  colors = _OFFICIAL.get(name)
  if colors is not None:
    pal[:len(colors)] = colors
  return pal


def colorize(class_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] colours of a class map (ids >= 256 wrap)."""
  return palette[np.asarray(class_map).astype(np.int64) % len(palette)]


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5
            ) -> np.ndarray:
  """uint8 alpha blend ``(1 - alpha) * image + alpha * colors``."""
  mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colors.astype(np.float32)
  return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
