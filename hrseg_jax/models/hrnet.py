"""HRNetV2 for semantic segmentation (``seg_hrnet`` / ``seg_hrnet_ocr``).

One module serves every width: the architecture is configuration data
(:data:`VARIANTS`), not copied classes.  Module names follow the PyTorch
state-dict keys (see :mod:`hrseg_jax.models.layers`).
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from hrseg_jax.models import layers
from hrseg_jax.models.hanet import HANet
from hrseg_jax.models.heads import ocr_head, seg_head
from hrseg_jax.models.layers import Conv, resize_bilinear

Dtype = Any

# Stage 1: (num_blocks, planes, block); stages 2-4: (num_modules, blocks, channels).
def _standard(c: int) -> dict:
  return dict(
      stage1=(4, 64, 'BOTTLENECK'),
      stages=((1, (4, 4), (c, 2 * c)),
              (4, (4, 4, 4), (c, 2 * c, 4 * c)),
              (3, (4, 4, 4, 4), (c, 2 * c, 4 * c, 8 * c))))


VARIANTS: dict[str, dict] = {
    'w18_small_v1': dict(
        stage1=(1, 32, 'BOTTLENECK'),
        stages=((1, (2, 2), (16, 32)),
                (1, (2, 2, 2), (16, 32, 64)),
                (1, (2, 2, 2, 2), (16, 32, 64, 128)))),
    'w18_small_v2': dict(
        stage1=(2, 64, 'BOTTLENECK'),
        stages=((1, (2, 2), (18, 36)),
                (3, (2, 2, 2), (18, 36, 72)),
                (2, (2, 2, 2, 2), (18, 36, 72, 144)))),
    **{f'w{c}': _standard(c) for c in (18, 30, 32, 40, 44, 48, 64)},
}

EXPANSION = {'BASIC': 1, 'BOTTLENECK': 4}


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(Conv, dtype=self.dtype)
    bn = layers.norm(self.train, self.dtype)
    y = nn.relu(bn(name='bn1')(conv(self.planes, 3, self.stride, name='conv1')(x)))
    y = bn(name='bn2')(conv(self.planes, 3, name='conv2')(y))
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = bn(name='downsample_1')(conv(self.planes, 1, self.stride, name='downsample_0')(x))
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(Conv, dtype=self.dtype)
    bn = layers.norm(self.train, self.dtype)
    out = 4 * self.planes
    y = nn.relu(bn(name='bn1')(conv(self.planes, 1, name='conv1')(x)))
    y = nn.relu(bn(name='bn2')(conv(self.planes, 3, self.stride, name='conv2')(y)))
    y = bn(name='bn3')(conv(out, 1, name='conv3')(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = bn(name='downsample_1')(conv(out, 1, self.stride, name='downsample_0')(x))
    return nn.relu(y + x)


BLOCKS = {'BASIC': BasicBlock, 'BOTTLENECK': Bottleneck}


class HighResolutionModule(nn.Module):
  """Parallel branches followed by multi-resolution fusion (SUM)."""
  num_blocks: Sequence[int]
  channels: Sequence[int]
  block: str = 'BASIC'
  align_corners: bool = False
  train: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs):
    conv = functools.partial(Conv, dtype=self.dtype)
    bn = layers.norm(self.train, self.dtype)
    block = functools.partial(BLOCKS[self.block], train=self.train, dtype=self.dtype)
    width = [c * EXPANSION[self.block] for c in self.channels]
    xs = list(xs)
    for i, n in enumerate(self.num_blocks):
      for b in range(n):
        xs[i] = block(self.channels[i], name=f'branches_{i}_{b}')(xs[i])
    if len(xs) == 1:
      return xs
    fused = []
    for i in range(len(xs)):
      acc = None
      for j in range(len(xs)):
        if j == i:
          t = xs[j]
        elif j > i:  # lower resolution: 1x1 conv + BN at low res, then resize.
          t = bn(name=f'fuse_layers_{i}_{j}_1')(
              conv(width[i], 1, name=f'fuse_layers_{i}_{j}_0')(xs[j]))
          t = resize_bilinear(t, xs[i].shape[1:3], self.align_corners)
        else:  # higher resolution: chain of stride-2 3x3 convs.
          t = xs[j]
          for k in range(i - j):
            last = k == i - j - 1
            name = f'fuse_layers_{i}_{j}_{k}'
            t = conv(width[i] if last else width[j], 3, 2, name=f'{name}_0')(t)
            t = bn(name=f'{name}_1')(t)
            if not last:
              t = nn.relu(t)
        acc = t if acc is None else acc + t
      fused.append(nn.relu(acc))
    return fused


def hrnet_backbone(x, stage1, stages, *, align_corners: bool, train: bool,
                   dtype: Dtype):
  """Stem, layer1, transitions and stages 2-4 of HRNetV2.

  A plain function called from a parent's ``@nn.compact`` method, so the
  layers become direct children of that parent (``conv1``, ``layer1_0``,
  ``stage2_0``, ...) exactly as in the PyTorch state dict.  Returns the branch
  outputs of the last stage and the inputs of each stage (``taps``).
  """
  conv = functools.partial(Conv, dtype=dtype)
  bn = layers.norm(train, dtype)
  x = nn.relu(bn(name='bn1')(conv(64, 3, 2, name='conv1')(x)))
  x = nn.relu(bn(name='bn2')(conv(64, 3, 2, name='conv2')(x)))
  n1, planes, block1 = stage1
  block = functools.partial(BLOCKS[block1], train=train, dtype=dtype)
  for b in range(n1):
    x = block(planes, name=f'layer1_{b}')(x)
  xs, prev, taps = [x], [x.shape[-1]], {}
  for s, (num_modules, num_blocks, channels) in enumerate(stages, start=2):
    xs = _transition(xs, prev, channels, f'transition{s - 1}', conv, bn)
    taps[f'stage{s}_input'] = xs
    for m in range(num_modules):
      xs = HighResolutionModule(num_blocks, channels, 'BASIC', align_corners,
                                train, dtype, name=f'stage{s}_{m}')(xs)
    prev = list(channels)
  return xs, taps


def _transition(xs, prev, channels, prefix, conv, bn):
  out = []
  for i, c in enumerate(channels):
    if i < len(prev):  # existing branch: identity unless the width changes
      if c != prev[i]:
        y = conv(c, 3, name=f'{prefix}_{i}_0')(xs[i])
        out.append(nn.relu(bn(name=f'{prefix}_{i}_1')(y)))
      else:
        out.append(xs[i])
      continue
    y = xs[-1]  # a new branch grows from the lowest-resolution one
    for k in range(i + 1 - len(prev)):
      last = k == i - len(prev)
      y = conv(c if last else prev[-1], 3, 2, name=f'{prefix}_{i}_{k}_0')(y)
      y = nn.relu(bn(name=f'{prefix}_{i}_{k}_1')(y))
    out.append(y)
  return out


def concat_branches(xs, align_corners: bool):
  """Upsample every branch to branch 0's size and concatenate [x0..x3]."""
  size = xs[0].shape[1:3]
  return jnp.concatenate(
      [xs[0]] + [resize_bilinear(x, size, align_corners) for x in xs[1:]], axis=-1)


class HRNetSeg(nn.Module):
  """HRNetV2 segmentation network, optionally with the OCR head or HANet.

  ``__call__(images, train=False, rows=None)`` takes normalised float NHWC
  images and returns the list of NHWC logit maps at 1/4 resolution in the
  original's order: ``[logits]`` or, with OCR, ``[aux, main]``.  ``rows``
  (int [B, H], the source image row of each input row, -1 for padding) is only
  read by HANet with positions enabled.
  """
  stage1: Sequence[Any]
  stages: Sequence[Any]
  num_classes: int
  align_corners: bool = False
  final_conv_kernel: int = 1
  ocr: Mapping[str, Any] | None = None
  hanet: Mapping[str, Any] | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, rows=None):
    xs, taps = hrnet_backbone(x, self.stage1, self.stages,
                              align_corners=self.align_corners, train=train,
                              dtype=self.dtype)
    if self.hanet is not None:
      # The seed fork: attention from the stage-2 input of branch 0 modulates
      # the stage-4 output of branch 0.
      low = taps['stage2_input'][0]
      y0 = HANet(in_channels=low.shape[-1], out_channels=xs[0].shape[-1],
                 dtype=self.dtype, name='hanet3_0', **dict(self.hanet))(
                     low, xs[0], rows=rows, train=train)
      xs = [y0] + list(xs[1:])
    feats = concat_branches(xs, self.align_corners)
    if self.ocr is not None:
      return ocr_head(feats, self.num_classes, train=train, dtype=self.dtype,
                      **dict(self.ocr))
    return [seg_head(feats, 'last_layer', self.num_classes,
                     final_kernel=self.final_conv_kernel, train=train,
                     dtype=self.dtype)]
