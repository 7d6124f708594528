"""Multi-scale sizes and sliding-window plans (pure Python geometry).

A :class:`Plan` says how one scale of one image size is predicted: resize to
``scaled``, pad (bottom/right, with the normalised value of raw pixel 0) to
``canvas``, run the network on ``window``-sized crops at ``offsets``, average
overlapping predictions, crop back to ``scaled``.  Whole-image inference is
the plan with one window equal to the canvas.

The two rules of the original (spec 5.3):

* ``'cityscapes'`` (``cityscapes.py::multi_scale_inference``): scale <= 1 is
  whole-image; above, stride = crop, windows start at ``r * crop`` and are
  shifted back to ``end - crop`` so every window is full size, no padding.
* ``'base'`` (``base_dataset.py::multi_scale_inference``): stride =
  ``int(crop * 2 / 3)``; the image is padded to at least the crop size and
  edge windows that run past the image are padded to the crop size.  When
  ``max(h, w) <= min(crop)`` this is a single padded window.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

RULES = ('cityscapes', 'base')


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one scale of one image is run (all sizes are (h, w)).

  Attributes:
    scaled: image size after the multi-scale resize.
    canvas: size after bottom/right padding (>= ``scaled``).
    window: network input size.
    offsets: top-left corners of the windows on the canvas.
  """
  scaled: tuple[int, int]
  canvas: tuple[int, int]
  window: tuple[int, int]
  offsets: tuple[tuple[int, int], ...]

  @property
  def is_single(self) -> bool:
    """One window covering the whole canvas (no averaging needed)."""
    return self.window == self.canvas and self.offsets == ((0, 0),)


def scaled_size(h: int, w: int, base_size: int, scale: float) -> tuple[int, int]:
  """The original's ``multi_scale_aug`` size: long side = int(base*s + 0.5).

  The short side is ``int(short * long / long_orig + 0.5)``; ties (h == w)
  take the width branch like the original.
  """
  long_size = int(base_size * scale + 0.5)
  if h > w:
    return long_size, int(w * long_size / h + 0.5)
  return int(h * long_size / w + 0.5), long_size


def whole_plan(size: Sequence[int]) -> Plan:
  size = (int(size[0]), int(size[1]))
  return Plan(size, size, size, ((0, 0),))


def cityscapes_windows(size: Sequence[int], crop: Sequence[int]) -> Plan:
  """Stride = crop; start ``r * crop``, end clipped, start shifted back.

  A dimension smaller than the crop gets a window of the image's size there
  (the original slices ``max(end - crop, 0):end``).
  """
  h, w = int(size[0]), int(size[1])
  ch, cw = int(crop[0]), int(crop[1])
  rows = math.ceil((h - ch) / ch) + 1
  cols = math.ceil((w - cw) / cw) + 1
  offsets = []
  for r in range(rows):
    for c in range(cols):
      h1, w1 = min(r * ch + ch, h), min(c * cw + cw, w)
      offsets.append((max(h1 - ch, 0), max(w1 - cw, 0)))
  return Plan((h, w), (h, w), (min(ch, h), min(cw, w)), tuple(offsets))


def base_windows(size: Sequence[int], crop: Sequence[int]) -> Plan:
  """Stride ``int(crop * 2 / 3)``; pad to the crop, pad short edge windows.

  The canvas is the image padded so every window lies inside it; the part
  beyond the original's padded size is cropped away with the rest of the
  padding, so counts and sums inside the image are the original's.
  """
  h, w = int(size[0]), int(size[1])
  ch, cw = int(crop[0]), int(crop[1])
  sh, sw = int(ch * 2.0 / 3.0), int(cw * 2.0 / 3.0)
  ph, pw = max(h, ch), max(w, cw)  # pad_image to at least the crop size
  rows = math.ceil((ph - ch) / sh) + 1
  cols = math.ceil((pw - cw) / sw) + 1
  offsets = tuple((r * sh, c * sw) for r in range(rows) for c in range(cols))
  canvas = ((rows - 1) * sh + ch, (cols - 1) * sw + cw)
  return Plan((h, w), canvas, (ch, cw), offsets)


def plan_scale(image_size: Sequence[int], scale: float, *, mode: str,
               rule: str, crop_size: Sequence[int] | None,
               base_size: int | None) -> Plan:
  """The plan for one scale of an image of ``image_size``.

  Args:
    image_size: (h, w) of the (normalised) input image.
    scale: the multi-scale factor.
    mode: ``'whole'`` (always one forward at the scaled size) or
      ``'sliding'`` (``rule`` decides).
    rule: ``'cityscapes'`` or ``'base'`` (module docstring).
    crop_size: (h, w) window size; required for ``'sliding'``.
    base_size: long side at scale 1; ``None`` = the image's own long side
      (scale 1 keeps the size).
  """
  h, w = int(image_size[0]), int(image_size[1])
  base = max(h, w) if base_size is None else int(base_size)
  scaled = scaled_size(h, w, base, scale)
  if mode == 'whole':
    return whole_plan(scaled)
  if mode != 'sliding':
    raise ValueError(f"eval mode must be 'whole' or 'sliding', got {mode!r}")
  if crop_size is None:
    raise ValueError("eval mode 'sliding' needs crop_size")
  if rule == 'cityscapes':
    return whole_plan(scaled) if scale <= 1.0 else cityscapes_windows(
        scaled, crop_size)
  if rule == 'base':
    return base_windows(scaled, crop_size)
  raise ValueError(f'sliding_rule must be one of {RULES}, got {rule!r}')


def window_counts(plan: Plan) -> np.ndarray:
  """Per-pixel number of windows covering each canvas pixel (int32)."""
  count = np.zeros(plan.canvas, np.int32)
  wh, ww = plan.window
  for y, x in plan.offsets:
    count[y:y + wh, x:x + ww] += 1
  return count
