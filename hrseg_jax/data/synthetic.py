"""Built-in synthetic dataset: procedural street-like scenes.

Each scene has the vertical structure of a street view: sky at the top, a
skyline of background classes (buildings, vegetation, walls) down to the
horizon, road below it flanked by sidewalk/terrain, and objects (cars, people,
poles, ...) standing on the ground, larger when nearer the bottom.  Every class
has its own colour and texture, so classes are learnable, and pixel noise,
per-image lighting and an occasional ignored ego-vehicle strip keep it from
being trivial.  Scenes are a pure function of (seed, split, index).

For K = 19 the classes are the Cityscapes trainIds (0 road, 1 sidewalk,
2 building, ..., 10 sky, 13 car, ...); for other K: 0 road, 1 sky, 2-3
background, 4 roadside, 5.. objects.  :func:`write_cityscapes_layout` writes
scenes as a Cityscapes directory tree with *labelIds* label files (255/ignore
becomes labelId 1, ego vehicle) so the real file path and label map are used.
"""
from __future__ import annotations

import os
import zlib

import cv2
import numpy as np

from hrseg_jax.data import label_maps
from hrseg_jax.data import lists

IGNORE = 255
_TILE = 32

# Cityscapes colours (trainId order), used for K = 19.
_CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32)], np.uint8)

# Object classes for K = 19: (class, height / distance-to-horizon, aspect w/h).
_CS_OBJECTS = ((13, 0.55, 1.8), (11, 1.1, 0.4), (12, 1.1, 0.5),
               (14, 0.9, 1.6), (15, 1.0, 2.2), (16, 1.0, 3.0),
               (17, 0.6, 0.9), (18, 0.6, 0.9), (5, 2.5, 0.06),
               (4, 0.35, 4.0))


def _roles(k: int) -> dict:
  if k == 19:
    return dict(road=0, sky=10, band=(2, 8, 3), side=(1, 9),
                objects=_CS_OBJECTS, signs=(6, 7))
  if k < 2:
    raise ValueError(f'num_classes must be >= 2, got {k}')
  shapes = ((0.55, 1.8), (1.1, 0.4), (2.5, 0.08), (0.9, 1.4), (0.6, 0.9))
  objects = tuple((c, *shapes[(c - 5) % len(shapes)]) for c in range(5, k))
  return dict(road=0, sky=1, band=tuple(range(2, min(k, 4))),
              side=(4,) if k > 4 else (), objects=objects, signs=())


def _palette(k: int) -> np.ndarray:
  if k == 19:
    return _CITYSCAPES_PALETTE.astype(np.int16)
  hsv = np.zeros((1, k, 3), np.uint8)
  hsv[0, :, 0] = (np.arange(k) * 180 * 0.618034) % 180   # golden-ratio hues
  hsv[0, :, 1] = 120 + (np.arange(k) * 53) % 120
  hsv[0, :, 2] = 90 + (np.arange(k) * 97) % 150
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.int16)


def _textures(k: int) -> np.ndarray:
  """Per-class [TILE, TILE, 3] int16 texture offsets (fixed, seed-free)."""
  yy, xx = np.mgrid[:_TILE, :_TILE].astype(np.float32)
  tex = np.empty((k, _TILE, _TILE, 3), np.int16)
  for c in range(k):
    rng = np.random.default_rng(1000 + c)
    angle = rng.uniform(0, np.pi)
    freq = 2 * np.pi * rng.integers(1, 5) / _TILE
    amp = rng.uniform(6, 22)
    wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    if c % 3 == 1:   # checker-like classes
      wave = np.sign(wave) * np.sign(np.sin(freq * yy + 0.5))
    speckle = rng.normal(0, 4, (_TILE, _TILE, 1))
    tex[c] = np.round(amp * wave[..., None] * rng.uniform(0.5, 1, 3) +
                      speckle).astype(np.int16)
  return tex


def _split_code(split: str) -> int:
  return {'train': 0, 'val': 1, 'test': 2}.get(split, zlib.crc32(
      split.encode()))


class SyntheticSource:
  """Random-access source of synthetic street scenes.

  Args:
    num_examples: dataset length.
    image_size: (h, w).
    num_classes: K >= 2 (19: Cityscapes trainId semantics).
    seed: dataset seed; (seed, split, index) determines each scene.
    split: split name; different splits give different scenes.
  """

  def __init__(self, num_examples: int, image_size=(256, 512),
               num_classes: int = 19, seed: int = 0, split: str = 'train'):
    self._n = int(num_examples)
    self._size = (int(image_size[0]), int(image_size[1]))
    self._k = int(num_classes)
    self._seed = int(seed)
    self._split = split
    self._roles = _roles(self._k)
    self._palette = _palette(self._k)
    # [K * TILE * TILE, 3]: class colour + class texture.
    self._appearance = (self._palette[:, None, None] + _textures(
        self._k)).reshape(-1, 3)
    self.has_labels = True

  def __len__(self) -> int:
    return self._n

  def __repr__(self) -> str:
    return (f'SyntheticSource(n={self._n}, size={self._size}, '
            f'K={self._k}, seed={self._seed}, split={self._split!r})')

  def example_id(self, index: int) -> str:
    return f'synthetic_{self._split}_{int(index):06d}'

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self._n:
      raise IndexError(f'index {index} out of range for {self!r}')
    rng = np.random.default_rng(
        [self._seed, _split_code(self._split), index])
    label = self._layout(rng)
    return {'image': self._render(label, rng), 'label': label,
            'id': self.example_id(index)}

  def _layout(self, rng: np.random.Generator) -> np.ndarray:
    h, w = self._size
    r = self._roles
    label = np.empty((h, w), np.uint8)
    horizon = int(h * rng.uniform(0.42, 0.58))
    label[:horizon] = r['sky']
    # Skyline: column segments of background classes with random heights.
    if r['band']:
      x = 0
      while x < w:
        seg = int(rng.integers(w // 16 + 1, w // 4 + 2))
        top = int(rng.uniform(0.08, 0.9) * horizon)
        label[top:horizon, x:x + seg] = r['band'][rng.integers(len(r['band']))]
        x += seg
    # Ground: road widening towards the bottom, roadside on both sides.
    label[horizon:] = r['road']
    if r['side']:
      side = r['side'][rng.integers(len(r['side']))]
      depth = np.arange(h - horizon, dtype=np.float32) / max(h - horizon, 1)
      centre = w * rng.uniform(0.4, 0.6)
      half = w * (0.04 + rng.uniform(0.35, 0.6) * depth)
      xs = np.arange(w, dtype=np.float32)
      label[horizon:][np.abs(xs[None] - centre) > half[:, None]] = side
    # Objects standing on the ground, far ones first.
    objects = r['objects']
    if objects:
      count = int(rng.integers(2, 9))
      bottoms = np.sort(rng.integers(min(horizon + 2, h), h + 1, count))
      for bottom in bottoms:
        cls, rel_h, aspect = objects[rng.integers(len(objects))]
        oh = max(int(rel_h * (bottom - horizon) * rng.uniform(0.8, 1.2)), 2)
        ow = max(int(oh * aspect), 2)
        left = int(rng.integers(-ow // 2, w - ow // 2))
        label[max(bottom - oh, 0):bottom, max(left, 0):left + ow] = cls
        if r['signs'] and cls == 5 and oh > 8:   # a light or sign on a pole
          sz = max(ow * 3, 3)
          top = max(bottom - oh, 0)
          label[top:top + sz, max(left - ow, 0):left + 2 * ow] = (
              r['signs'][rng.integers(len(r['signs']))])
    if rng.random() < 0.3:   # ego-vehicle strip, ignored
      label[h - max(h // 25, 1):] = IGNORE
    return label

  def _render(self, label: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
    h, w = label.shape
    cls = np.minimum(label, self._k - 1).astype(np.int32)
    oy, ox = rng.integers(0, _TILE, 2)
    ty = (np.arange(h, dtype=np.int32) + oy) % _TILE
    tx = (np.arange(w, dtype=np.int32) + ox) % _TILE
    index = cls * (_TILE * _TILE) + (ty[:, None] * _TILE + tx[None, :])
    gain = rng.uniform(0.8, 1.15)
    table = (self._appearance * gain).astype(np.int16)
    image = np.take(table, index, axis=0)
    image += np.linspace(12, -12, h).astype(np.int16)[:, None, None]
    image += rng.integers(-10, 11, (h, w, 1), dtype=np.int16)
    image[label == IGNORE] = 20
    return np.clip(image, 0, 255).astype(np.uint8)


def write_cityscapes_layout(root: str, *, num_train: int, num_val: int,
                            num_test: int = 0, image_size=(1024, 2048),
                            num_classes: int = 19, seed: int = 0,
                            list_dir: str | None = None,
                            png_compression: int = 3) -> dict[str, str]:
  """Writes synthetic scenes as a Cityscapes tree, plus list files.

  Images go to ``leftImg8bit/{split}/{city}/{city}_{n:06d}_000019_
  leftImg8bit.png`` and labels, as Cityscapes labelIds, to ``gtFine/...
  _gtFine_labelIds.png``; the lists (train, val, trainval, test) are made by
  scanning the tree like ``scripts/make_lists.py``.  Scenes equal
  ``SyntheticSource(n, image_size, num_classes, seed, split)[i]``.

  Args:
    root: output dataset directory.
    num_train, num_val, num_test: examples per split (test: images only).
    image_size: (h, w).
    num_classes: K <= 19; trainId t is written as its Cityscapes labelId.
    seed: scene seed.
    list_dir: where the lists go (default: ``root``).
    png_compression: zlib level for the PNG files.

  Returns:
    {split: list file path}.
  """
  if num_classes > 19:
    raise ValueError('the Cityscapes layout stores at most 19 classes')
  to_label_id = np.full(256, 1, np.uint8)   # ignore -> 1 (ego vehicle)
  to_label_id[:19] = label_maps.CITYSCAPES_TRAIN_TO_LABEL
  params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)]
  for split, count in (('train', num_train), ('val', num_val),
                       ('test', num_test)):
    if not count:
      continue
    source = SyntheticSource(count, image_size, num_classes, seed, split)
    city = f'synth{split}'
    for i in range(count):
      ex = source[i]
      stem = f'{city}_{i:06d}_000019'
      image_path = os.path.join(root, 'leftImg8bit', split, city,
                                f'{stem}_leftImg8bit.png')
      os.makedirs(os.path.dirname(image_path), exist_ok=True)
      cv2.imwrite(image_path, cv2.cvtColor(ex['image'], cv2.COLOR_RGB2BGR),
                  params)
      label_path = os.path.join(root, 'gtFine', split, city,
                                f'{stem}_gtFine_labelIds.png')
      os.makedirs(os.path.dirname(label_path), exist_ok=True)
      cv2.imwrite(label_path, cv2.LUT(ex['label'], to_label_id), params)
  return lists.make_lists('cityscapes', root, list_dir or root)
