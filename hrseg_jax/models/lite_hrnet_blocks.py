"""Lite-HRNet building blocks (HRNet/Lite-HRNet ``models/backbones/litehrnet.py``).

Module names follow the official state-dict keys (mmcv ``ConvModule``
children ``conv`` / ``bn``; numbered ``nn.Sequential`` children), see
:mod:`hrseg_jax.models.layers`.  Every k x k conv pads k // 2 on both sides;
depthwise convs are followed by BN only, never by an activation.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from hrseg_jax.models import layers
from hrseg_jax.models.layers import Conv

Dtype = Any


def channel_shuffle(x, groups: int = 2):
  """``channel_shuffle``: output channel g' * groups + g is input g * C/groups + g'."""
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


def split_half(x):
  """``x.chunk(2, dim=1)``: (first half, second half) of the channels."""
  c = x.shape[-1] // 2
  return x[..., :c], x[..., c:]


def avg_pool_to(x, size: Sequence[int]):
  """``adaptive_avg_pool2d`` for sizes that divide exactly (block means)."""
  b, h, w, c = x.shape
  fh, fw = h // size[0], w // size[1]
  assert (fh * size[0], fw * size[1]) == (h, w), (x.shape, size)
  return x.reshape(b, size[0], fh, size[1], fw, c).mean(axis=(2, 4))


def upsample_repeat(x, factor_h: int, factor_w: int | None = None):
  """Nearest upsampling by integer factors (``nn.Upsample`` / size-exact 'nearest')."""
  factor_w = factor_h if factor_w is None else factor_w
  return jnp.repeat(jnp.repeat(x, factor_h, axis=1), factor_w, axis=2)


class ConvModule(nn.Module):
  """mmcv ``ConvModule``: ``conv`` (bias only without norm) -> ``bn`` -> act."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  use_norm: bool = True
  act: Callable | None = nn.relu
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, self.kernel_size, self.stride, self.groups,
             use_bias=not self.use_norm, dtype=self.dtype, name='conv')(x)
    if self.use_norm:
      x = layers.norm(self.train, self.dtype)(name='bn')(x)
    return x if self.act is None else self.act(x)


class Stem(nn.Module):
  """``stem``: 3x3/2 conv, then a ShuffleNetV2 downsampling unit (stride 4)."""
  stem_channels: int = 32
  out_channels: int = 32
  expand_ratio: float = 1.0
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cm = functools.partial(ConvModule, train=self.train, dtype=self.dtype)
    mid = int(round(self.stem_channels * self.expand_ratio))
    half = self.stem_channels // 2
    same = self.stem_channels == self.out_channels
    inc = self.out_channels - (half if same else self.stem_channels)
    x = cm(self.stem_channels, 3, 2, name='conv1')(x)
    x1, x2 = split_half(x)
    x1 = cm(half, 3, 2, groups=half, act=None, name='branch1_0')(x1)
    x1 = cm(inc, 1, name='branch1_1')(x1)
    x2 = cm(mid, 1, name='expand_conv')(x2)
    x2 = cm(mid, 3, 2, groups=mid, act=None, name='depthwise_conv')(x2)
    x2 = cm(half if same else self.stem_channels, 1, name='linear_conv')(x2)
    return channel_shuffle(jnp.concatenate([x1, x2], axis=-1))


class CrossResolutionWeighting(nn.Module):
  """Channel weights from all branches pooled to the smallest one."""
  reduce_ratio: int = 8
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs):
    cm = functools.partial(ConvModule, kernel_size=1, train=self.train, dtype=self.dtype)
    size = xs[-1].shape[1:3]
    widths = [x.shape[-1] for x in xs]
    total = sum(widths)
    y = jnp.concatenate([avg_pool_to(x, size) for x in xs[:-1]] + [xs[-1]], axis=-1)
    y = cm(int(total / self.reduce_ratio), name='conv1')(y)
    y = cm(total, act=nn.sigmoid, name='conv2')(y)
    out, start = [], 0
    for x, c in zip(xs, widths):
      a = y[..., start:start + c]
      start += c
      out.append(x * upsample_repeat(a, x.shape[1] // size[0], x.shape[2] // size[1]))
    return out


class SpatialWeighting(nn.Module):
  """SE gate without BN: global mean -> 1x1 (+bias) ReLU -> 1x1 (+bias) sigmoid."""
  ratio: int = 4
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cm = functools.partial(ConvModule, kernel_size=1, use_norm=False,
                           train=self.train, dtype=self.dtype)
    c = x.shape[-1]
    y = jnp.mean(x, axis=(1, 2), keepdims=True)
    y = cm(int(c / self.ratio), name='conv1')(y)
    y = cm(c, act=nn.sigmoid, name='conv2')(y)
    return x * y


class ConditionalChannelWeighting(nn.Module):
  """LITE block: split, weight x2 (cross-resolution, dw conv, spatial), shuffle."""
  reduce_ratio: int = 8
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs):
    kw = dict(train=self.train, dtype=self.dtype)
    halves = [split_half(x) for x in xs]
    x2 = CrossResolutionWeighting(self.reduce_ratio, name='cross_resolution_weighting',
                                  **kw)([h[1] for h in halves])
    out = []
    for i, ((x1, _), y) in enumerate(zip(halves, x2)):
      c = y.shape[-1]
      y = ConvModule(c, 3, groups=c, act=None, name=f'depthwise_convs_{i}', **kw)(y)
      y = SpatialWeighting(name=f'spatial_weighting_{i}', **kw)(y)
      out.append(channel_shuffle(jnp.concatenate([x1, y], axis=-1)))
    return out


class ShuffleUnit(nn.Module):
  """NAIVE block (stride 1): x2 -> 1x1 ReLU -> dw 3x3 -> 1x1 ReLU; shuffle."""
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cm = functools.partial(ConvModule, train=self.train, dtype=self.dtype)
    x1, x2 = split_half(x)
    f = x2.shape[-1]
    x2 = cm(f, 1, name='branch2_0')(x2)
    x2 = cm(f, 3, groups=f, act=None, name='branch2_1')(x2)
    x2 = cm(f, 1, name='branch2_2')(x2)
    return channel_shuffle(jnp.concatenate([x1, x2], axis=-1))


def dw_separable(x, prefix: str, features: int, stride: int, *, relu: bool,
                 train: bool, dtype: Dtype):
  """Plain Sequential ``prefix.{0..4}``: dw 3x3 conv, BN, 1x1 conv, BN[, ReLU]."""
  bn = layers.norm(train, dtype)
  c = x.shape[-1]
  x = Conv(c, 3, stride, groups=c, dtype=dtype, name=f'{prefix}_0')(x)
  x = bn(name=f'{prefix}_1')(x)
  x = Conv(features, 1, dtype=dtype, name=f'{prefix}_2')(x)
  x = bn(name=f'{prefix}_3')(x)
  return nn.relu(x) if relu else x


class LiteHRModule(nn.Module):
  """Blocks on every branch, then the official fuse (with its quirk).

  The official fuse starts row 0's sum from branch 0's tensor itself and then
  adds every branch including 0, in place.  So branch 0 counts twice and
  every later row reads the overwritten (pre-ReLU) row-0 sum:
  ``S0 = 2 o0 + sum_{j>0} Up(o_j)``; ``out_i = ReLU(2 Down_i0(S0) + o_i +
  sum_{j>0, j!=i} F_ij(o_j))``.  The released checkpoints depend on it.
  """
  num_blocks: int
  module_type: str = 'LITE'
  reduce_ratio: int = 8
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs):
    kw = dict(train=self.train, dtype=self.dtype)
    xs = list(xs)
    if self.module_type == 'LITE':
      for b in range(self.num_blocks):
        xs = ConditionalChannelWeighting(self.reduce_ratio, name=f'layers_{b}', **kw)(xs)
    else:
      for i in range(len(xs)):
        for b in range(self.num_blocks):
          xs[i] = ShuffleUnit(name=f'layers_{i}_{b}', **kw)(xs[i])
    return self._fuse(xs)

  @nn.nowrap
  def _path(self, x, i: int, j: int, width: int):
    """``fuse_layers.i.j``: branch j resampled to branch i's size and width."""
    bn = layers.norm(self.train, self.dtype)
    if j > i:
      y = Conv(width, 1, dtype=self.dtype, name=f'fuse_layers_{i}_{j}_0')(x)
      y = bn(name=f'fuse_layers_{i}_{j}_1')(y)
      return upsample_repeat(y, 2 ** (j - i))
    for k in range(i - j):
      last = k == i - j - 1
      x = dw_separable(x, f'fuse_layers_{i}_{j}_{k}', width if last else x.shape[-1],
                       2, relu=not last, train=self.train, dtype=self.dtype)
    return x

  @nn.nowrap
  def _fuse(self, xs):
    n = len(xs)
    widths = [x.shape[-1] for x in xs]
    s0 = 2 * xs[0]
    for j in range(1, n):
      s0 = s0 + self._path(xs[j], 0, j, widths[0])
    out = [nn.relu(s0)]
    for i in range(1, n):
      y = 2 * self._path(s0, i, 0, widths[i]) + xs[i]
      for j in range(1, n):
        if j != i:
          y = y + self._path(xs[j], i, j, widths[i])
      out.append(nn.relu(y))
    return out


class DepthwiseSeparableConvModule(nn.Module):
  """mmcv: ``depthwise_conv`` (BN, no act) -> ``pointwise_conv`` (BN, ReLU)."""
  features: int
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(train=self.train, dtype=self.dtype)
    c = x.shape[-1]
    x = ConvModule(c, 3, groups=c, act=None, name='depthwise_conv', **kw)(x)
    return ConvModule(self.features, 1, name='pointwise_conv', **kw)(x)


class IterativeHead(nn.Module):
  """``head_layer``: top-down, each projection's output upsampled (bilinear,
  align_corners=True) and added to the next branch.  Returns high-first.

  ``last_features`` replaces the width of the last (stride-4) projection: the
  seed fork makes it the number of classes.
  """
  last_features: int | None = None
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs):
    xs = list(xs)[::-1]
    widths = [x.shape[-1] for x in xs[1:]] + [self.last_features or xs[-1].shape[-1]]
    out, prev = [], None
    for k, (x, width) in enumerate(zip(xs, widths)):
      if prev is not None:
        x = x + layers.resize_bilinear(prev, x.shape[1:3], align_corners=True)
      prev = DepthwiseSeparableConvModule(width, self.train, self.dtype,
                                          name=f'projects_{k}')(x)
      out.append(prev)
    return out[::-1]
