"""The function that every export serialises.

``serving_fn(cfg, variables, pre=..., post=...)`` closes over the weights and
maps a batch of NHWC images to either the model's last output (logits at 1/4
resolution, float32 NHWC) or, with ``post``, int32 class maps at the input
size (bilinear upsample with the model's ``align_corners``, then argmax) --
exactly what :class:`hrseg_jax.Segmenter` computes.  With ``pre`` the input is
RGB uint8 and the ImageNet normalisation runs inside the graph; without it
the input is the normalised float32 image.

The batch size stays free.  The height and width are fixed at export time
unless the export asks for a free size (multiples of 32) and
:func:`dynamic_size_problem` finds that the model traces with a symbolic
height and width (bilinear resizes then compute their taps in the graph).  HANet
models see every image as a whole frame (row ``i`` of the image is row ``i``
of the frame), like ``Segmenter``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax import console
from hrseg_jax.data.imagenet_stats import MEAN, STD
from hrseg_jax.models import registry
from hrseg_jax.models.layers import resize_bilinear


def whole_frame_rows(x) -> np.ndarray:
  """int32 [1, H]: row ``i`` of every image is row ``i`` of its frame.

  The same rows as ``Segmenter`` passes, as one constant row that HANet
  broadcasts over the batch: the graph keeps no integer arithmetic on the
  (symbolic) batch dimension, which some converters cannot express.
  """
  if isinstance(x.shape[1], int):
    return np.arange(x.shape[1], dtype=np.int32)[None]
  return jnp.expand_dims(jnp.arange(x.shape[1], dtype=jnp.int32), 0)  # symbolic height


UPSAMPLED_LOGITS = 'upsampled_logits'


def apply_fn(model_cfg: Mapping[str, Any], *, pre: bool, post: bool | str,
             dtype=jnp.float32) -> Callable[[Mapping, jax.Array], jax.Array]:
  """Pure ``(variables, images) -> logits or class maps``.

  ``post=UPSAMPLED_LOGITS``: the logits at the input size, before the
  argmax.  ``dtype``: the computation's (float32 in every export; float64,
  under ``jax.enable_x64``, for the export check's exact reference).
  """
  cfg = registry.resolve(model_cfg)
  model = registry.build_model(cfg, dtype)
  align_corners = bool(cfg.get('align_corners', False))

  def fn(variables, images):
    x = images.astype(dtype)
    if pre:
      x = (x / 255.0 - np.asarray(MEAN, dtype)) / np.asarray(STD, dtype)
    out = model.apply(variables, x, train=False, rows=whole_frame_rows(x))[-1]
    out = out.astype(dtype)
    if not post:
      return out
    out = resize_bilinear(out, x.shape[1:3], align_corners)
    if post == UPSAMPLED_LOGITS:
      return out
    return jnp.argmax(out, axis=-1).astype(jnp.int32)

  return fn


def float_variables(variables: Mapping, dtype=np.float32) -> dict:
  """NumPy copies of the variables, floating ones as ``dtype``."""
  def conv(v):
    v = np.asarray(v)
    return v.astype(dtype) if v.dtype.kind == 'f' else v
  return jax.tree_util.tree_map(conv, dict(variables))


def serving_fn(model_cfg: Mapping[str, Any], variables: Mapping, *,
               pre: bool, post: bool | str, dtype=jnp.float32
               ) -> Callable[[jax.Array], jax.Array]:
  """Pure ``images -> logits or class maps`` with the weights as constants."""
  fn = apply_fn(model_cfg, pre=pre, post=post, dtype=dtype)
  variables = float_variables(variables, dtype)
  return lambda images: fn(variables, images)


SYMBOLIC_SIZE = ('32*h', '32*w')  # dynamic height and width: multiples of 32


def symbolic_image_shape(image_shape, dynamic: bool) -> tuple:
  """``(H, W, C)``, or ``('32*h', '32*w', C)`` for a dynamic size."""
  return (*SYMBOLIC_SIZE, image_shape[2]) if dynamic else tuple(image_shape)


def abstract_input(image_shape, dtype, batch: str = 'b') -> jax.ShapeDtypeStruct:
  """The input spec with a symbolic batch (and symbolic H, W when they are strings)."""
  dims = ', '.join(str(d) for d in (batch, *image_shape))
  return jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), dtype)


def _where(tb) -> str:
  """``function (file:line)`` of the innermost hrseg_jax frame of a traceback."""
  import traceback  # pylint: disable=g-import-not-at-top
  frames = [f for f in traceback.extract_tb(tb) if '/hrseg_jax/' in f.filename.replace('\\', '/')]
  if not frames:
    return 'the model'
  f = frames[-1]
  path = f.filename.replace('\\', '/')
  return f'{f.name} (hrseg_jax/{path.rsplit("/hrseg_jax/", 1)[1]}:{f.lineno})'


def dynamic_size_problem(model_cfg: Mapping[str, Any], variables: Mapping, *,
                         pre: bool, post: bool, channels: int = 3) -> str | None:
  """None if the graph traces with a symbolic height and width, else why not.

  Traces only (no compilation): ``jax.eval_shape`` on a
  ``(b, 32*h, 32*w, C)`` input.
  """
  fn = serving_fn(model_cfg, variables, pre=pre, post=post)
  spec = abstract_input(symbolic_image_shape((0, 0, channels), True),
                        np.uint8 if pre else np.float32)
  try:
    jax.eval_shape(fn, spec)
  except Exception as e:  # pylint: disable=broad-except
    return f'{_where(e.__traceback__)} needs a constant size ({console.first_line(e)})'
  return None
