"""Segmentation heads on the concatenated HRNet branches.

Called inside the parent module's compact method, so their parameters sit at
the top level of the model's tree (``last_layer_*``, ``aux_head_*``,
``conv3x3_ocr_*``, ``ocr_distri_head``, ``cls_head``), under the names the
PyTorch key mapping expects (:mod:`hrseg_jax.convert.mapping`).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn

from hrseg_jax.models import layers
from hrseg_jax.models.layers import Conv
from hrseg_jax.models.ocr import SpatialOCR, spatial_gather, torch_default_init

Dtype = Any

# The OCR head of every seg_hrnet_ocr yaml (MODEL.OCR): the defaults of a
# model config's ``ocr`` field.
OCR_DEFAULTS = dict(mid_channels=512, key_channels=256, dropout=0.05)


def seg_head(x, prefix: str, num_classes: int, *, final_kernel: int = 1,
             train: bool, dtype: Dtype, kernel_init=layers.conv_init):
  """``last_layer`` / ``aux_head``: 1x1 conv -> BN -> ReLU -> conv, with biases."""
  conv = functools.partial(Conv, use_bias=True, dtype=dtype, kernel_init=kernel_init)
  y = conv(x.shape[-1], 1, name=f'{prefix}_0')(x)
  y = nn.relu(layers.norm(train, dtype)(name=f'{prefix}_1')(y))
  return conv(num_classes, final_kernel, name=f'{prefix}_3')(y)


def ocr_head(feats, num_classes: int, *, train: bool, dtype: Dtype,
             mid_channels: int = OCR_DEFAULTS['mid_channels'],
             key_channels: int = OCR_DEFAULTS['key_channels'],
             dropout: float = OCR_DEFAULTS['dropout']):
  """Called inside the parent's compact method; returns ``[aux, main]``."""
  aux = seg_head(feats, 'aux_head', num_classes, train=train, dtype=dtype,
                 kernel_init=torch_default_init)
  y = Conv(mid_channels, 3, use_bias=True, dtype=dtype,
           kernel_init=torch_default_init, name='conv3x3_ocr_0')(feats)
  y = nn.relu(layers.norm(train, dtype)(name='conv3x3_ocr_1')(y))
  proxy = spatial_gather(y, aux)
  y = SpatialOCR(key_channels, mid_channels, dropout, train, dtype,
                 name='ocr_distri_head')(y, proxy)
  out = Conv(num_classes, 1, use_bias=True, dtype=dtype,
             kernel_init=torch_default_init, name='cls_head')(y)
  return [aux, out]
