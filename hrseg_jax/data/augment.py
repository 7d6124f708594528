"""Per-example preprocessing of the original recipes, built from transforms.

* :class:`TrainTransform`: ``__getitem__`` + ``gen_sample`` of the original
  training datasets (random rescale, pad, random crop, flip, normalise).
* :class:`ValTransform`: fixed-shape examples for batched validation (the
  original's ``val`` lists: full Cityscapes images, LIP resized to 473, a
  520 crop after the short-side resize for the others).
* :class:`FullEvalTransform`: full-size examples for per-image evaluation
  (the original's ``testval`` lists): the label keeps its original size.

All take a source example (``{'image': RGB uint8, 'label': uint8, 'id'}``)
and return ``{'image': float32 normalised [H, W, 3], 'label': int32 [H, W]}``
plus ``'rows'`` (int32 [H]) when ``with_rows``.  With ``normalize=False``
(used by the pipeline, which normalises whole batches at once: less copying)
'image' stays RGB uint8 and 'label' uint8.
"""
from __future__ import annotations

import numpy as np

from hrseg_jax.data import config as data_config
from hrseg_jax.data import transforms as T
from hrseg_jax.data.label_maps import get_label_map


def _hw(data_cfg, name: str) -> tuple[int, int]:
  return data_config.size_field(data_cfg, name)


def _output(sample: T.Sample, with_rows: bool, normalize: bool = True
            ) -> dict:
  out = {'image': T.normalize(sample.image) if normalize else sample.image}
  if sample.label is not None:
    out['label'] = (sample.label.astype(np.int32) if normalize
                    else sample.label)
  if with_rows:
    out['rows'] = sample.rows
  return out


def collate(examples: list[dict]) -> dict:
  """Batches ``normalize=False`` examples: normalised float32 images, int32
  labels (and masks/rows as they are)."""
  batch = {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}
  batch['image'] = T.normalize(batch['image'])
  if 'label' in batch:
    batch['label'] = batch['label'].astype(np.int32)
  return batch


def _start(example: dict, with_rows: bool) -> T.Sample:
  image = example['image']
  rows = T.initial_rows(image.shape[0]) if with_rows else None
  return T.Sample(image, example.get('label'), rows)


class TrainTransform:
  """The original training augmentation, drawing randomness from ``rng``.

  Order (as the original): [LIP: flip with label swap, resize to
  pre_resize_size] or [short side -> base_size]; random scale
  0.5 + randint(0, scale_factor)/10 of the long side base_size; pad to the
  crop (image 0, label ignore); uniform random crop; flip (p = 0.5);
  normalise.
  """

  def __init__(self, data_cfg, normalize: bool = True):
    self.normalize = normalize
    self.crop_size = _hw(data_cfg, 'crop_size')
    self.base_size = int(data_cfg.base_size)
    self.scale_factor = int(data_cfg.scale_factor)
    self.multi_scale = bool(data_cfg.multi_scale)
    self.flip = bool(data_cfg.flip)
    self.pre_resize = data_cfg.pre_resize
    if self.pre_resize not in ('none', 'fixed', 'short_side'):
      raise ValueError(f'unknown data.pre_resize {self.pre_resize!r}')
    self.pre_resize_size = _hw(data_cfg, 'pre_resize_size')
    self.with_rows = bool(data_cfg.with_rows)
    label_map = get_label_map(data_cfg.label_map, data_cfg.num_classes)
    self.flip_lut = label_map.flip_lut if label_map.flip_pairs else None

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    sample = _start(example, self.with_rows)
    flip_first = self.pre_resize == 'fixed'
    if self.flip and flip_first and rng.random() < 0.5:
      sample = T.hflip(sample, self.flip_lut)
    if self.pre_resize == 'fixed':
      sample = T.resize(sample, self.pre_resize_size)
    elif self.pre_resize == 'short_side':
      h, w = sample.image.shape[:2]
      sample = T.resize(sample, T.short_side_size(h, w, self.base_size))
    h, w = sample.image.shape[:2]
    if self.multi_scale:
      scale = T.random_scale(rng, self.scale_factor)
      h, w = T.long_side_size(h, w, int(self.base_size * scale + 0.5))
    top, left = T.crop_offsets(h, w, self.crop_size, rng)
    sample = T.resize_crop(sample, (h, w), top, left, self.crop_size)
    if self.flip and not flip_first and rng.random() < 0.5:
      sample = T.hflip(sample, self.flip_lut)
    return _output(sample, self.with_rows, self.normalize)


class ValTransform:
  """Fixed-shape (eval_size) validation examples; see data.eval_mode."""

  def __init__(self, data_cfg, normalize: bool = True):
    self.normalize = normalize
    self.mode = data_cfg.eval_mode
    if self.mode not in ('full', 'fixed', 'short_side_pad'):
      raise ValueError(f'unknown data.eval_mode {self.mode!r}')
    self.size = _hw(data_cfg, 'eval_size')
    self.base_size = int(data_cfg.eval_base_size)
    self.stride = int(data_cfg.eval_stride)
    self.with_rows = bool(data_cfg.with_rows)

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    sample = _start(example, self.with_rows)
    if self.mode == 'full':
      h, w = sample.image.shape[:2]
      if h > self.size[0] or w > self.size[1]:
        raise ValueError(f'{example["id"]}: image {h}x{w} larger than '
                         f'data.eval_size {self.size}')
      sample = T.pad(sample, self.size)
    elif self.mode == 'fixed':
      sample = T.resize(sample, self.size)
    else:
      sample, _ = T.resize_short_pad(sample, self.base_size, self.stride)
      sample = T.random_crop(sample, self.size, rng)
    return _output(sample, self.with_rows, self.normalize)

  def padding_example(self) -> dict:
    """A masked-out filler example (black image, all-ignore label)."""
    h, w = self.size
    sample = T.Sample(np.zeros((h, w, 3), np.uint8),
                      np.full((h, w), T.IGNORE, np.uint8),
                      np.full(h, -1, np.int32))
    return _output(sample, self.with_rows, self.normalize)


class FullEvalTransform:
  """Full-size evaluation examples (the original's ``testval``).

  The image is preprocessed per data.eval_mode ('full': as is; 'fixed':
  resized to eval_size; 'short_side_pad': short side -> eval_base_size and
  padded with the mean colour to a multiple of eval_stride) and normalised;
  the label keeps the original size.  Adds 'pad' = (pad_h, pad_w), the
  stride padding at the bottom/right of the image.
  """

  def __init__(self, data_cfg):
    self.mode = data_cfg.eval_mode
    self.size = _hw(data_cfg, 'eval_size')
    self.base_size = int(data_cfg.eval_base_size)
    self.stride = int(data_cfg.eval_stride)
    self.with_rows = bool(data_cfg.with_rows)

  def __call__(self, example: dict) -> dict:
    image_only = T.Sample(example['image'], None, T.initial_rows(
        example['image'].shape[0]) if self.with_rows else None)
    padding = (0, 0)
    if self.mode == 'fixed':
      image_only = T.resize(image_only, self.size)
    elif self.mode == 'short_side_pad':
      image_only, padding = T.resize_short_pad(image_only, self.base_size,
                                               self.stride)
    out = _output(image_only, self.with_rows)
    if 'label' in example:
      out['label'] = example['label'].astype(np.int32)
    out['id'] = example['id']
    out['pad'] = np.array(padding, np.int32)
    return out
