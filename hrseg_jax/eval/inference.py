"""Jitted test-time prediction: flip, sliding windows, multi-scale fusion.

Reproduces the original's ``inference`` and ``multi_scale_inference``
(spec 5.2-5.3):

* one forward = the **last** model output, bilinearly resized to the input
  size (``align_corners`` of the model), optionally averaged in logit space
  with the prediction of the horizontally flipped input (flipped back; the
  channels of ``flip_pairs`` swapped first, LIP), and returned as
  ``exp(logits)`` -- not a softmax;
* per scale: resize so the long side is ``int(base_size * s + 0.5)``
  (bilinear, half-pixel = cv2 ``INTER_LINEAR``, never antialiased), predict
  whole or with sliding windows (:mod:`hrseg_jax.eval.windows`), resize the
  result back to the input size and **sum** over scales; the prediction is
  the argmax of the sum.

Every network call has a fixed shape: whole-image inputs are chunked into
batches of ``batch_size`` (the last one zero-padded), windows always have the
window size.  ``jax.jit`` compiles each function once per distinct shape and
caches it; the geometry glue (resize, pad, window gather/scatter) is jitted
separately so it never recompiles the network.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hrseg_jax.data.imagenet_stats import MEAN, STD
from hrseg_jax.eval import windows
from hrseg_jax.models import registry
from hrseg_jax.models.layers import resize_bilinear

ApplyFn = Callable[[Any, jax.Array, jax.Array], Sequence[jax.Array]]

# The normalised value of raw pixel 0: the original's test-time pad value.
PAD_VALUE = (-MEAN / STD).astype(np.float32)
# Resizes of images and predictions are exact float32 (no TF32 on GPUs).
_PRECISION = jax.lax.Precision.HIGHEST


def model_apply_fn(model) -> ApplyFn:
  """``apply_fn(variables, images, rows)`` of a Flax model in eval mode."""
  def apply_fn(variables, images, rows):
    return model.apply(variables, images, train=False, rows=rows)
  return apply_fn


@functools.lru_cache(maxsize=8)
def cached_model_apply_fn(model_json: str, dtype_name: str) -> ApplyFn:
  """:func:`model_apply_fn` of a resolved model config (JSON) and dtype.

  The same configuration gives the same function object, so predictors built
  for it share :func:`jitted_forward` (and :func:`jitted_logits`,
  :func:`jitted_class_map`) and their compiled executables: the one jit cache
  of evaluation, ``--mode predict`` and :class:`hrseg_jax.Segmenter`.
  """
  return model_apply_fn(registry.build_model(json.loads(model_json),
                                             jnp.dtype(dtype_name)))


@functools.lru_cache(maxsize=16)
def jitted_forward(apply_fn: ApplyFn, align_corners: bool, flip: bool,
                   flip_pairs: tuple[tuple[int, int], ...]):
  """The jitted :func:`forward_exp`, one per (function, settings).

  ``jax.jit`` then compiles once per input shape; variables are arguments,
  never constants baked into the executable.
  """
  return jax.jit(functools.partial(
      forward_exp, apply_fn=apply_fn, align_corners=align_corners, flip=flip,
      flip_pairs=flip_pairs))


@functools.lru_cache(maxsize=16)
def jitted_logits(apply_fn: ApplyFn):
  """Jitted ``apply_fn`` with float32 outputs: the model's list of logits."""
  def logits(variables, images, rows):
    return [o.astype(jnp.float32) for o in apply_fn(variables, images, rows)]
  return jax.jit(logits)


@functools.lru_cache(maxsize=16)
def jitted_class_map(apply_fn: ApplyFn, align_corners: bool):
  """Jitted whole-image class maps of RGB uint8 images.

  Normalises on the device, runs one forward, resizes the last logits to the
  input size and takes the argmax (int32 [B, H, W]); the computation the
  exported serving graphs reproduce (hrseg_jax.deploy.graph).
  """
  def class_map(variables, images_uint8):
    x = (images_uint8.astype(jnp.float32) / 255.0 - MEAN) / STD
    out = apply_fn(variables, x, default_rows(x))[-1]
    out = resize_bilinear(out.astype(jnp.float32), x.shape[1:3], align_corners,
                          precision=_PRECISION)
    return jnp.argmax(out, axis=-1).astype(jnp.int32)
  return jax.jit(class_map)


def default_rows(images):
  """int32 [B, H]: every input row is its own source row."""
  b, h = images.shape[0], images.shape[1]
  return jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32), (b, h))


def swap_channels(x, flip_pairs: Sequence[Sequence[int]]):
  """Swaps the channel pairs (a, b) of NHWC ``x`` (LIP left/right classes)."""
  if not flip_pairs:
    return x
  perm = np.arange(x.shape[-1])
  for a, b in flip_pairs:
    perm[a], perm[b] = b, a
  return x[..., perm]


def forward_exp(variables, images, rows, *, apply_fn: ApplyFn,
                align_corners: bool, flip: bool = False,
                flip_pairs: Sequence[Sequence[int]] = ()):
  """The original's ``inference``: exp of the (flip-averaged) logits.

  Args:
    variables: model variables.
    images: float32 [B, h, w, 3] normalised inputs.
    rows: int32 [B, h] source-image row of each input row (-1 = padding).
    apply_fn: ``apply_fn(variables, images, rows) -> list of NHWC logits``.
    align_corners: for the resize of the logits to ``(h, w)``.
    flip: also run the horizontally flipped input and average the logits.
    flip_pairs: channel pairs swapped in the flipped prediction.

  Returns:
    float32 [B, h, w, K] ``exp(logits)``.
  """
  size = images.shape[1:3]

  def logits(x, r):
    out = apply_fn(variables, x, r)[-1].astype(jnp.float32)
    return resize_bilinear(out, size, align_corners, precision=_PRECISION)

  if not flip:
    return jnp.exp(logits(images, rows))
  b = images.shape[0]
  both = logits(jnp.concatenate([images, images[:, :, ::-1]]),
                jnp.concatenate([rows, rows]))
  flipped = swap_channels(both[b:], flip_pairs)[:, :, ::-1]
  return jnp.exp(0.5 * (both[:b] + flipped))


def source_rows(src_h: int, scaled_h: int, canvas_h: int) -> np.ndarray:
  """int32 [canvas_h]: source row of each scaled row (nearest), -1 = pad."""
  rows = np.full(canvas_h, -1, np.int32)
  src = np.floor(np.arange(scaled_h) * (src_h / scaled_h)).astype(np.int64)
  rows[:scaled_h] = np.minimum(src, src_h - 1)
  return rows


def canvas_rows(rows: np.ndarray | None, batch: int, src_h: int,
                scaled_h: int, canvas_h: int) -> np.ndarray:
  """int32 [B, canvas_h] original-image rows of the scaled, padded canvas.

  Args:
    rows: optional int [B, src_h] original row of each input row (the data
      pipeline's row map, -1 = padding); ``None`` = ``arange(src_h)``.
    batch: B.
    src_h: input image height.
    scaled_h: height after the multi-scale resize (rows follow nearest).
    canvas_h: height after padding (padding rows are -1).
  """
  idx = source_rows(src_h, scaled_h, canvas_h)
  if rows is None:
    return np.broadcast_to(idx, (batch, canvas_h)).astype(np.int32)
  rows = np.asarray(rows, np.int32).reshape(batch, src_h)
  return np.where(idx >= 0, rows[:, np.maximum(idx, 0)], -1).astype(np.int32)


@functools.partial(jax.jit, static_argnames=('size', 'align_corners'))
def _resize(x, size, align_corners):
  return resize_bilinear(x, size, align_corners, precision=_PRECISION)


@functools.partial(jax.jit, static_argnames=('canvas',))
def _pad(x, canvas):
  b, h, w, c = x.shape
  out = jnp.broadcast_to(jnp.asarray(PAD_VALUE, x.dtype), (b, *canvas, c))
  return out.at[:, :h, :w].set(x)


@functools.partial(jax.jit, static_argnames=('window',))
def _extract(canvas, rows, offsets, window):
  """Windows [n, wh, ww, C] and rows [n, wh] of canvas [B, H, W, C] and
  rows [B, H] at offsets [n, 3] = (image, y, x)."""
  wh, ww = window

  def one(o):
    img = jax.lax.dynamic_slice(canvas, (o[0], o[1], o[2], 0),
                                (1, wh, ww, canvas.shape[-1]))[0]
    return img, jax.lax.dynamic_slice(rows, (o[0], o[1]), (1, wh))[0]
  return jax.vmap(one)(offsets)


@jax.jit
def _accumulate(buf, preds, offsets, valid):
  """Adds window predictions [n, wh, ww, K] (times ``valid``) into buf."""
  def body(i, buf):
    o = offsets[i]
    start = (o[0], o[1], o[2], 0)
    cur = jax.lax.dynamic_slice(buf, start, (1, *preds.shape[1:]))
    return jax.lax.dynamic_update_slice(
        buf, cur + preds[i][None] * valid[i], start)
  return jax.lax.fori_loop(0, preds.shape[0], body, buf)


@functools.partial(jax.jit, static_argnames=('scaled', 'size',
                                             'align_corners'))
def _finish(buf, count, scaled, size, align_corners):
  """Average by count, crop the padding, resize to the input size."""
  if count is not None:
    buf = buf / count[None, :, :, None]
  buf = buf[:, :scaled[0], :scaled[1]]
  return resize_bilinear(buf, size, align_corners, precision=_PRECISION)


class Predictor:
  """Jitted, shape-cached test-time prediction for one model.

  Attributes:
    num_classes: K.
    batch_size: network inputs (images or windows) per forward call.
  """

  def __init__(self, apply_fn: ApplyFn, variables, *, num_classes: int,
               align_corners: bool, scales: Sequence[float] = (1.0,),
               flip: bool = False, flip_pairs: Sequence[Sequence[int]] = (),
               mode: str = 'whole', sliding_rule: str = 'cityscapes',
               crop_size: Sequence[int] | None = None,
               base_size: int | None = None, batch_size: int = 1,
               devices: Sequence[jax.Device] | None = None):
    """Builds the predictor.

    Args:
      apply_fn: ``apply_fn(variables, images[B,h,w,3], rows[B,h])`` returning
        the list of NHWC logit maps (see :func:`model_apply_fn`).
      variables: model variables.
      num_classes: K.
      align_corners: the model's ``align_corners`` (logit and result resizes).
      scales: multi-scale factors (summed).
      flip: flip test.
      flip_pairs: class pairs swapped under a horizontal flip (LIP).
      mode: ``'whole'`` or ``'sliding'``.
      sliding_rule: ``'cityscapes'`` or ``'base'``.
      crop_size: (h, w) window size for ``'sliding'``.
      base_size: long side at scale 1; ``None`` = each image's long side.
      batch_size: network inputs per forward call (rounded up to a multiple
        of the number of devices).
      devices: devices to shard each forward batch over (default: this
        process's local devices).
    """
    self.num_classes = int(num_classes)
    self.align_corners = bool(align_corners)
    self.scales = tuple(float(s) for s in scales)
    if not self.scales or min(self.scales) <= 0:
      raise ValueError(f'eval scales must be positive, got {list(scales)}')
    self.mode = mode
    self.sliding_rule = sliding_rule
    self.crop_size = None if crop_size is None else tuple(int(c) for c in crop_size)
    self.base_size = None if base_size is None else int(base_size)
    windows.plan_scale((8, 8), 1.0, mode=mode, rule=sliding_rule,
                       crop_size=self.crop_size, base_size=8)  # validates
    devices = list(devices if devices is not None else jax.local_devices())
    self.batch_size = -(-max(1, int(batch_size)) // len(devices)) * len(devices)
    self._batch_sharding = None
    if len(devices) > 1:
      mesh = Mesh(np.array(devices), ('batch',), axis_types=(AxisType.Auto,))
      self._batch_sharding = NamedSharding(mesh, P('batch'))
      variables = jax.device_put(variables, NamedSharding(mesh, P()))
    else:
      variables = jax.device_put(variables, devices[0])
    self.variables = variables
    self._forward = jitted_forward(
        apply_fn, self.align_corners, bool(flip),
        tuple((int(a), int(b)) for a, b in flip_pairs))
    self._logits = jitted_logits(apply_fn)
    self._class_map = jitted_class_map(apply_fn, self.align_corners)

  @classmethod
  def from_config(cls, model_cfg: Mapping[str, Any], variables,
                  eval_cfg: Mapping[str, Any] | None = None, *,
                  dtype=jnp.float32, devices=None) -> 'Predictor':
    """From a model config and an ``eval`` config section (or defaults)."""
    # ml_collections only here: inference (and the benchmark) run without it.
    from hrseg_jax.eval import config as eval_config  # pylint: disable=g-import-not-at-top
    cfg = registry.resolve(model_cfg)
    e = eval_config.predictor_kwargs(eval_cfg)
    apply_fn = cached_model_apply_fn(json.dumps(cfg, sort_keys=True),
                                     jnp.dtype(dtype).name)
    return cls(apply_fn, variables,
               num_classes=cfg['num_classes'],
               align_corners=bool(cfg.get('align_corners', False)),
               devices=devices, **e)

  # ---- network calls ---------------------------------------------------

  def _call(self, x, rows):
    """One forward of at most ``batch_size`` inputs (padded to it)."""
    n = x.shape[0]
    if n < self.batch_size:
      x = jnp.concatenate([x, jnp.zeros((self.batch_size - n, *x.shape[1:]),
                                        x.dtype)])
      rows = jnp.concatenate([rows, jnp.full(
          (self.batch_size - n, rows.shape[1]), -1, rows.dtype)])
    if self._batch_sharding is not None:
      x = jax.device_put(x, self._batch_sharding)
      rows = jax.device_put(rows, self._batch_sharding)
    out = self._forward(self.variables, x, rows)
    return out if n == self.batch_size else out[:n]

  def _whole_canvas(self, canvas, rows):
    b = canvas.shape[0]
    rows = jnp.asarray(rows)
    outs = [self._call(canvas[i:i + self.batch_size], rows[i:i + self.batch_size])
            for i in range(0, b, self.batch_size)]
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs)

  def _sliding_canvas(self, canvas, rows, plan: windows.Plan):
    b = canvas.shape[0]
    offsets = np.array([(i, y, x) for i in range(b) for y, x in plan.offsets],
                       np.int32)
    buf = jnp.zeros((b, *plan.canvas, self.num_classes), jnp.float32)
    rows = jnp.asarray(rows)
    for start in range(0, len(offsets), self.batch_size):
      chunk = offsets[start:start + self.batch_size]
      offs = np.zeros((self.batch_size, 3), np.int32)
      offs[:len(chunk)] = chunk
      valid = np.zeros(self.batch_size, np.float32)
      valid[:len(chunk)] = 1.0
      win, win_rows = _extract(canvas, rows, offs, window=plan.window)
      buf = _accumulate(buf, self._call(win, win_rows), offs, valid)
    return buf

  # ---- public API ------------------------------------------------------

  def run_plan(self, images, plan: windows.Plan, rows=None):
    """Predicts one scale: float32 [B, H, W, K] exp-logits at input size.

    Args:
      images: normalised float [B, H, W, 3] (or [H, W, 3]).
      plan: the scale's :class:`~hrseg_jax.eval.windows.Plan`.
      rows: optional int [B, H] original-image row of each input row (the
        data pipeline's ``'rows'``); default ``arange(H)``.  Only read by
        models with height-driven attention positions.
    """
    images = _as_batch(images)
    b, h, w = images.shape[:3]
    x = _resize(images, size=plan.scaled, align_corners=False)
    rows = canvas_rows(rows, b, h, plan.scaled[0], plan.canvas[0])
    if plan.canvas != plan.scaled:
      x = _pad(x, canvas=plan.canvas)
    if plan.is_single:
      buf, count = self._whole_canvas(x, rows), None
    else:
      buf = self._sliding_canvas(x, rows, plan)
      count = jnp.asarray(windows.window_counts(plan), jnp.float32)
    return _finish(buf, count, scaled=plan.scaled, size=(h, w),
                   align_corners=self.align_corners)

  def whole(self, images, rows=None):
    """One forward (with flip if configured) at the input size."""
    images = _as_batch(images)
    return self.run_plan(images, windows.whole_plan(images.shape[1:3]), rows)

  def sliding(self, images, rule: str | None = None, rows=None):
    """Sliding windows at the input size (``rule`` or the configured one).

    Unlike :meth:`multi_scale`, the Cityscapes rule tiles here even though
    the original switches to whole-image inference for scales <= 1.
    """
    images = _as_batch(images)
    rule = rule or self.sliding_rule
    if self.crop_size is None:
      raise ValueError('sliding inference needs crop_size')
    size = images.shape[1:3]
    plan = (windows.cityscapes_windows(size, self.crop_size)
            if rule == 'cityscapes' else windows.base_windows(size, self.crop_size))
    return self.run_plan(images, plan, rows)

  def plans(self, image_size: Sequence[int]) -> list[windows.Plan]:
    """The per-scale plans for an input of ``image_size`` (h, w)."""
    return [windows.plan_scale(image_size, s, mode=self.mode,
                               rule=self.sliding_rule, crop_size=self.crop_size,
                               base_size=self.base_size) for s in self.scales]

  def multi_scale(self, images, rows=None):
    """Sum over scales of the exp-logits at input size: float32 [B,H,W,K].

    ``rows`` as in :meth:`run_plan`.
    """
    images = _as_batch(images)
    total = None
    for plan in self.plans(images.shape[1:3]):
      out = self.run_plan(images, plan, rows)
      total = out if total is None else total + out
    return total

  def predict(self, images, rows=None) -> np.ndarray:
    """[B, H, W] class ids (argmax of :meth:`multi_scale`), see _argmax."""
    return np.asarray(_argmax_jit(self.multi_scale(images, rows)))

  def logits(self, images, rows=None):
    """The model's outputs for normalised images: list of float32 NHWC logits.

    Args:
      images: normalised float [B, H, W, 3] (or [H, W, 3]).
      rows: optional int [B, H] source row of each input row; default
        ``arange(H)``.

    Returns:
      ``[logits]`` or, with OCR, ``[aux, main]``, at the model's output
      resolution (1/4 of the input); no flip, scales or windows.
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 3:
      images = images[None]
    rows = default_rows(images) if rows is None else jnp.asarray(rows, jnp.int32)
    return self._logits(self.variables, images, rows)

  def class_map(self, images_uint8) -> jax.Array:
    """int32 [B, H, W]: one whole-image forward of RGB uint8 [B, H, W, 3].

    Normalised on the device, no flip, scales or windows (:func:`jitted_class_map`).
    """
    return self._class_map(self.variables, jnp.asarray(images_uint8))


def _argmax(x):
  """Class ids as uint8 like the original (int32 when K > 256)."""
  ids = jnp.argmax(x, axis=-1)
  return ids.astype(jnp.uint8 if x.shape[-1] <= 256 else jnp.int32)


_argmax_jit = jax.jit(_argmax)


def label_prediction(fused, label_size: Sequence[int], align_corners: bool,
                     border_padding: Sequence[int] | None = None) -> np.ndarray:
  """[B, h, w] class ids at the label size, as the original's testval.

  Crops the dataset's bottom/right ``border_padding`` (pad_h, pad_w) from the
  fused prediction, bilinearly resizes it to ``label_size`` when the sizes
  differ, then takes the argmax.
  """
  return np.asarray(_label_prediction(
      fused, size=tuple(int(s) for s in label_size), align_corners=align_corners,
      border=(0, 0) if border_padding is None else tuple(
          int(b) for b in border_padding)))


@functools.partial(jax.jit, static_argnames=('size', 'align_corners', 'border'))
def _label_prediction(fused, size, align_corners, border):
  h, w = fused.shape[1:3]
  fused = fused[:, :h - border[0], :w - border[1]]
  fused = resize_bilinear(fused, size, align_corners, precision=_PRECISION)
  return _argmax(fused)


def _as_batch(images):
  images = jnp.asarray(images, jnp.float32)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected normalised float images [B, H, W, 3], got '
                     f'shape {images.shape}')
  return images
