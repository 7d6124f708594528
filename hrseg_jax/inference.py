"""A small inference API: ``Segmenter``.

>>> seg = hrseg_jax.Segmenter.from_checkpoint('converted/hrnet_w48_cs')
>>> logits = seg.logits(images)      # float32 NHWC, already normalised
>>> classes = seg.predict(rgb_uint8) # (B, H, W) int32 class maps at input size
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax.models import registry
from hrseg_jax.models.layers import resize_bilinear

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(images_uint8) -> np.ndarray:
  """RGB uint8 -> the original's normalised float32 input."""
  return ((np.asarray(images_uint8, np.float32) / 255.0) - MEAN) / STD


class Segmenter:
  """Eval-mode model + variables with jitted, shape-cached entry points."""

  def __init__(self, model_cfg: Mapping[str, Any], variables: Mapping, *,
               dtype=jnp.float32, meta: Mapping | None = None):
    self.config = registry.resolve(model_cfg)
    self.meta = dict(meta or {})
    self.model = registry.build_model(self.config, dtype)
    self.variables = jax.tree_util.tree_map(jnp.asarray, dict(variables))
    self.num_classes = self.config['num_classes']
    self.align_corners = bool(self.config.get('align_corners', False))

  @classmethod
  def from_checkpoint(cls, path, *, dtype=jnp.float32, step: int | None = None):
    from hrseg_jax import checkpoints  # pylint: disable=g-import-not-at-top
    cfg, variables, meta = checkpoints.load_model(path, step=step)
    return cls(cfg, variables, dtype=dtype, meta=meta)

  @functools.partial(jax.jit, static_argnums=0)
  def _logits(self, variables, images, rows):
    outs = self.model.apply(variables, images, train=False, rows=rows)
    return [o.astype(jnp.float32) for o in outs]

  @staticmethod
  def _rows(images):
    b, h = images.shape[0], images.shape[1]
    return jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32), (b, h))

  def logits(self, images, rows=None):
    """Normalised float32 NHWC -> list of NHWC logits (1/4 resolution)."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 3:
      images = images[None]
    rows = self._rows(images) if rows is None else jnp.asarray(rows, jnp.int32)
    return self._logits(self.variables, images, rows)

  @functools.partial(jax.jit, static_argnums=0)
  def _predict(self, variables, images_uint8):
    x = (images_uint8.astype(jnp.float32) / 255.0 - MEAN) / STD
    out = self.model.apply(variables, x, train=False, rows=self._rows(x))[-1]
    out = resize_bilinear(out.astype(jnp.float32), x.shape[1:3], self.align_corners)
    return jnp.argmax(out, axis=-1).astype(jnp.int32)

  def predict(self, images_uint8) -> np.ndarray:
    """RGB uint8 (B,H,W,3) or (H,W,3) -> int32 class maps at input size."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
      raise ValueError(f'predict expects uint8 RGB images, got {images.dtype}')
    single = images.ndim == 3
    if single:
      images = images[None]
    out = np.asarray(self._predict(self.variables, jnp.asarray(images)))
    return out[0] if single else out
