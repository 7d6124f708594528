"""Object-Contextual Representations modules (``seg_hrnet_ocr``).

The head that assembles them is :func:`hrseg_jax.models.heads.ocr_head`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrseg_jax.models import layers
from hrseg_jax.models.layers import Conv

Dtype = Any

# The OCR modules keep PyTorch's default init (kaiming_uniform(a=sqrt(5))).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3, 'fan_in', 'uniform')


def _conv_bn_relu(x, prefix, features, *, train, dtype, index=0):
  """``prefix.{i}`` 1x1 conv (no bias), then ``prefix.{i+1}.0`` BN + ReLU."""
  y = Conv(features, 1, dtype=dtype, kernel_init=torch_default_init,
           name=f'{prefix}_{index}')(x)
  return nn.relu(layers.norm(train, dtype)(name=f'{prefix}_{index + 1}_0')(y))


class ObjectAttentionBlock(nn.Module):
  """ObjectAttentionBlock2D with scale 1: pixel-to-object attention."""
  key_channels: int
  out_channels: int
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats, proxy):
    kw = dict(train=self.train, dtype=self.dtype)
    kc = self.key_channels
    # f_pixel / f_object: [conv, [BN, ReLU], conv, [BN, ReLU]].
    q = _conv_bn_relu(_conv_bn_relu(feats, 'f_pixel', kc, **kw), 'f_pixel', kc,
                      index=2, **kw)
    k = _conv_bn_relu(_conv_bn_relu(proxy, 'f_object', kc, **kw), 'f_object', kc,
                      index=2, **kw)
    v = _conv_bn_relu(proxy, 'f_down', kc, **kw)
    b, h, w, _ = q.shape
    q = q.reshape(b, h * w, kc)
    k = k.reshape(b, -1, kc)
    v = v.reshape(b, -1, kc)
    sim = jnp.einsum('bpc,bkc->bpk', q, k,   # float32 at least (bf16 compute)
                     preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
    sim = jax.nn.softmax(sim * (kc ** -0.5), axis=-1)
    ctx = jnp.einsum('bpk,bkc->bpc', sim.astype(self.dtype), v)
    ctx = ctx.reshape(b, h, w, kc)
    return _conv_bn_relu(ctx, 'f_up', self.out_channels, **kw)


class SpatialOCR(nn.Module):
  """``ocr_distri_head``: object context, concat [context, feats], 1x1 conv."""
  key_channels: int
  out_channels: int
  dropout: float
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats, proxy):
    ctx = ObjectAttentionBlock(self.key_channels, feats.shape[-1], self.train,
                               self.dtype, name='object_context_block')(feats, proxy)
    y = jnp.concatenate([ctx, feats], axis=-1)
    y = _conv_bn_relu(y, 'conv_bn_dropout', self.out_channels, train=self.train,
                      dtype=self.dtype)
    # Dropout2d: whole channels per sample.
    return nn.Dropout(self.dropout, broadcast_dims=(1, 2),
                      deterministic=not self.train)(y)


def spatial_gather(feats, aux_logits):
  """Soft object regions: softmax over pixels, then region-weighted features.

  Returns the proxy as an NHWC image (B, K, 1, C), like the original.
  """
  b, h, w, c = feats.shape
  probs = jax.nn.softmax(
      aux_logits.reshape(b, h * w, -1).astype(
          jnp.promote_types(aux_logits.dtype, jnp.float32)), axis=1)
  proxy = jnp.einsum('bpk,bpc->bkc', probs.astype(feats.dtype),
                     feats.reshape(b, h * w, c))
  return proxy[:, :, None, :]
