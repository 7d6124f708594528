"""A small inference API: ``Segmenter``.

>>> seg = hrseg_jax.Segmenter.from_checkpoint('converted/hrnet_w48_cs')
>>> logits = seg.logits(images)      # float32 NHWC, already normalised
>>> classes = seg.predict(rgb_uint8) # (B, H, W) int32 class maps at input size
>>> classes = seg.predict('photo.png')       # (H, W), the image's own size
>>> picture = seg.overlay('photo.png')       # RGB uint8 blend with the colours
>>> seg.class_names[classes[0, 0]]           # e.g. 'road'

``predict`` is one whole-image forward at the input's size (the command
line's ``--mode predict`` default).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax import checkpoints
from hrseg_jax.checkpoints import info as checkpoint_info
from hrseg_jax.data.imagenet_stats import MEAN, STD
from hrseg_jax.data.transforms import normalize
from hrseg_jax.eval import classes, palettes
from hrseg_jax.eval.inference import Predictor
from hrseg_jax.models import registry
from hrseg_jax.predict import read_image

# The ImageNet mean/std (hrseg_jax.data.imagenet_stats) and the input
# normalisation (hrseg_jax.data.transforms.normalize) of every path:
# training, evaluation, prediction and the exports.
__all__ = ['MEAN', 'STD', 'Segmenter', 'normalize', 'overlay']


def overlay(image, class_map, dataset: str | None = 'cityscapes',
            alpha: float = 0.5) -> np.ndarray:
  """RGB uint8 [H, W, 3]: ``image`` blended with the colours of ``class_map``.

  Args:
    image: RGB uint8 [H, W, 3] (or a path, decoded like ``predict``).
    class_map: integer [H, W] class ids (the image's size).
    dataset: palette name (:mod:`hrseg_jax.eval.palettes`).
    alpha: opacity of the colours.
  """
  image = _as_image(image)
  class_map = np.asarray(class_map)
  if class_map.shape != image.shape[:2]:
    raise ValueError(f'overlay: class map {class_map.shape} and image '
                     f'{image.shape[:2]} differ in size')
  colors = palettes.colorize(class_map, palettes.get_palette(dataset or ''))
  return palettes.overlay(image, colors, alpha)


def _as_image(image) -> np.ndarray:
  """RGB uint8 array of an array or an image path."""
  if isinstance(image, (str, os.PathLike)):
    return read_image(os.fspath(image))
  return np.asarray(image)


class Segmenter:
  """A model with its variables on top of the evaluation :class:`Predictor`.

  It shares the predictor's jitted, shape-cached functions (one cache per
  model configuration, see :func:`hrseg_jax.eval.inference.cached_model_apply_fn`)
  and adds image files, class names and colour overlays.

  Attributes:
    config: the resolved model config.
    meta: the checkpoint's meta.
    dataset: the dataset the weights were trained for (palette, class names):
      ``dataset=`` or what the checkpoint records; ``None`` if unknown.
    class_names: K names (``class_<i>`` for an unknown dataset).
    predictor: the :class:`Predictor` (whole image, scale 1, no flip, on the
      first local device).
    variables: the model variables (the predictor's).
  """

  def __init__(self, model_cfg: Mapping[str, Any], variables: Mapping, *,
               dtype=jnp.float32, meta: Mapping | None = None,
               dataset: str | None = None):
    self.config = registry.resolve(model_cfg)
    checkpoint_info.check_dataset(dataset, self.config['num_classes'])
    self.meta = dict(meta or {})
    self.predictor = Predictor.from_config(
        self.config, jax.tree_util.tree_map(jnp.asarray, dict(variables)),
        dtype=dtype, devices=jax.local_devices()[:1])
    self.num_classes = self.config['num_classes']
    self.align_corners = bool(self.config.get('align_corners', False))
    self.dataset = (checkpoint_info.check_dataset(dataset)
                    or checkpoint_info.dataset_of(self.meta))
    self.class_names: Sequence[str] = classes.class_names(self.dataset,
                                                          self.num_classes)

  @property
  def variables(self):
    return self.predictor.variables

  @variables.setter
  def variables(self, value):
    self.predictor.variables = value

  @classmethod
  def from_checkpoint(cls, path, *, dtype=jnp.float32, step: int | None = None,
                      dataset: str | None = None):
    cfg, variables, meta = checkpoints.load_model(path, step=step)
    return cls(cfg, variables, dtype=dtype, meta=meta, dataset=dataset)

  def logits(self, images, rows=None):
    """Normalised float32 NHWC -> list of NHWC logits (1/4 resolution)."""
    return self.predictor.logits(images, rows)

  def predict(self, images) -> np.ndarray:
    """Class maps at the input's size (int32).

    Args:
      images: RGB uint8 (B, H, W, 3) -> (B, H, W); (H, W, 3) or an image
        path (decoded like ``--mode predict``) -> (H, W).
    """
    images = _as_image(images)
    if images.dtype != np.uint8:
      raise ValueError(f'predict expects uint8 RGB images, got {images.dtype}')
    if images.ndim not in (3, 4) or images.shape[-1] != 3:   # the shape as given
      raise ValueError(f'predict expects RGB images (B, H, W, 3) or (H, W, 3), '
                       f'got shape {images.shape}')
    single = images.ndim == 3
    if single:
      images = images[None]
    out = np.asarray(self.predictor.class_map(images))
    return out[0] if single else out

  def overlay(self, image, class_map=None, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 blend of ``image`` (array or path) and its class colours.

    ``class_map`` defaults to :meth:`predict` of the image; the palette is
    the checkpoint's dataset's.
    """
    image = _as_image(image)
    if class_map is None:
      class_map = self.predict(image)
    return overlay(image, class_map, self.dataset, alpha)
