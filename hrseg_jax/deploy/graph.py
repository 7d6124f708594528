"""The function that every export serialises.

``serving_fn(cfg, variables, pre=..., post=...)`` closes over the weights and
maps a batch of NHWC images to either the model's last output (logits at 1/4
resolution, float32 NHWC) or, with ``post``, int32 class maps at the input
size (bilinear upsample with the model's ``align_corners``, then argmax) --
exactly what :class:`hrseg_jax.Segmenter` computes.  With ``pre`` the input is
RGB uint8 and the ImageNet normalisation runs inside the graph; without it
the input is the normalised float32 image.

The height and width are fixed at export time: the model's bilinear resizes
are small interpolation matrices built for the traced size.  The batch size
stays free.  HANet models see every image as a whole frame (row ``i`` of the
image is row ``i`` of the frame), like ``Segmenter``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax.inference import MEAN, STD
from hrseg_jax.models import registry
from hrseg_jax.models.layers import resize_bilinear


def whole_frame_rows(x) -> np.ndarray:
  """int32 [1, H]: row ``i`` of every image is row ``i`` of its frame.

  The same rows as ``Segmenter`` passes, as one constant row that HANet
  broadcasts over the batch: the graph keeps no integer arithmetic on the
  (symbolic) batch dimension, which some converters cannot express.
  """
  return np.arange(x.shape[1], dtype=np.int32)[None]


def apply_fn(model_cfg: Mapping[str, Any], *, pre: bool, post: bool
             ) -> Callable[[Mapping, jax.Array], jax.Array]:
  """Pure ``(variables, images) -> logits or class maps``."""
  cfg = registry.resolve(model_cfg)
  model = registry.build_model(cfg)
  align_corners = bool(cfg.get('align_corners', False))

  def fn(variables, images):
    x = images.astype(jnp.float32)
    if pre:
      x = (x / 255.0 - MEAN) / STD
    out = model.apply(variables, x, train=False, rows=whole_frame_rows(x))[-1]
    out = out.astype(jnp.float32)
    if not post:
      return out
    out = resize_bilinear(out, x.shape[1:3], align_corners)
    return jnp.argmax(out, axis=-1).astype(jnp.int32)

  return fn


def float32_variables(variables: Mapping) -> dict:
  """NumPy copies of the variables, floating ones as float32."""
  def conv(v):
    v = np.asarray(v)
    return v.astype(np.float32) if v.dtype.kind == 'f' else v
  return jax.tree_util.tree_map(conv, dict(variables))


def serving_fn(model_cfg: Mapping[str, Any], variables: Mapping, *,
               pre: bool, post: bool) -> Callable[[jax.Array], jax.Array]:
  """Pure ``images -> logits or class maps`` with the weights as constants."""
  fn = apply_fn(model_cfg, pre=pre, post=post)
  variables = float32_variables(variables)
  return lambda images: fn(variables, images)


def input_spec(height: int, width: int, pre: bool) -> tuple[tuple[int, int, int], Any]:
  """(H, W, 3) and dtype of one input image."""
  return (height, width, 3), (np.uint8 if pre else np.float32)
