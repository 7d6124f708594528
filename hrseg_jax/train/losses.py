"""Segmentation losses with the original's exact semantics.

Logits (NHWC, 1/4 resolution) are bilinearly upsampled to the label size
before the loss, like ``lib/core/criterion.py``.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from hrseg_jax.models.layers import resize_bilinear


def _f32(x):
  """At least float32 (bf16 logits are promoted; float64 stays float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _pixel_nll(logits, labels, ignore_label, class_weights):
  """Per-pixel weighted NLL, the validity mask, and the GT-class probability."""
  num_classes = logits.shape[-1]
  logits = _f32(logits)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits, axis=-1)
  # A one-hot product, not take_along_axis: its gradient is elementwise and
  # fuses, where a gather's is a scatter-add into the full-size logits.
  onehot = jax.nn.one_hot(safe, num_classes, dtype=logp.dtype)
  logp_gt = jnp.sum(logp * onehot, axis=-1)
  w = (jnp.ones((), logits.dtype) if class_weights is None
       else jnp.asarray(class_weights, logits.dtype)[safe])
  nll = -logp_gt * w
  return nll, valid, w, jnp.exp(logp_gt)


def upsample_to(logits, labels, align_corners: bool):
  return resize_bilinear(_f32(logits), labels.shape[1:3], align_corners)


def cross_entropy(logits, labels, *, ignore_label: int = 255, class_weights=None,
                  align_corners: bool = False):
  """``nn.CrossEntropyLoss(weight, ignore_index)``: weighted mean over valid pixels."""
  logits = upsample_to(logits, labels, align_corners)
  nll, valid, w, _ = _pixel_nll(logits, labels, ignore_label, class_weights)
  den = jnp.sum(jnp.where(valid, w, 0.0))
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(den, 1e-12)


def pixel_mean_cross_entropy(logits, labels, *, ignore_label: int = 255,
                             class_weights=None, align_corners: bool = False):
  """Per-pixel CE averaged over *all* pixels, ignored ones counting as 0.

  The OCR auxiliary term under OHEM in the original (a reduction='none' CE
  broadcast into the OHEM scalar, then ``.mean()``).
  """
  logits = upsample_to(logits, labels, align_corners)
  nll, valid, _, _ = _pixel_nll(logits, labels, ignore_label, class_weights)
  return jnp.mean(jnp.where(valid, nll, 0.0))


def ohem_cross_entropy(logits, labels, *, ignore_label: int = 255, class_weights=None,
                       align_corners: bool = False, thresh: float = 0.9,
                       min_kept: int = 131072):
  """OhemCrossEntropy: keep the pixels whose GT probability is below
  ``max(prob_sorted[min(min_kept, n_valid - 1)], thresh)``; unweighted mean of
  their (class-weighted) CE."""
  logits = upsample_to(logits, labels, align_corners)
  nll, valid, _, prob = _pixel_nll(logits, labels, ignore_label, class_weights)
  flat_p = jnp.where(valid, prob, jnp.inf).reshape(-1)
  n_valid = jnp.sum(valid)
  sorted_p = jnp.sort(flat_p)
  k = jnp.clip(jnp.minimum(max(int(min_kept), 1), n_valid - 1), 0, flat_p.size - 1)
  threshold = jnp.maximum(sorted_p[k], thresh)
  keep = valid & (prob < threshold)
  return jnp.sum(jnp.where(keep, nll, 0.0)) / jnp.maximum(jnp.sum(keep), 1)


def segmentation_loss(outputs: Sequence, labels, *, ignore_label: int = 255,
                      class_weights=None, align_corners: bool = False,
                      balance_weights: Sequence[float] = (1.0,),
                      ohem: bool = False, ohem_thresh: float = 0.9,
                      ohem_min_kept: int = 131072):
  """Sum_k balance[k] * loss(output_k), as the original's criteria.

  With OHEM only the last output uses OHEM; earlier (auxiliary) outputs use
  the original's all-pixel mean.
  """
  if len(balance_weights) != len(outputs):
    raise ValueError(f'loss.balance_weights has {len(balance_weights)} entries '
                     f'but the model has {len(outputs)} outputs')
  kw = dict(ignore_label=ignore_label, class_weights=class_weights,
            align_corners=align_corners)
  total = 0.0
  for i, (w, out) in enumerate(zip(balance_weights, outputs)):
    last = i == len(outputs) - 1
    if ohem and last:
      term = ohem_cross_entropy(out, labels, thresh=ohem_thresh,
                                min_kept=ohem_min_kept, **kw)
    elif ohem:
      term = pixel_mean_cross_entropy(out, labels, **kw)
    else:
      term = cross_entropy(out, labels, **kw)
    total = total + w * term
  return total
