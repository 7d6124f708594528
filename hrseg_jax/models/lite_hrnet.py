"""Lite-HRNet (Yu et al., CVPR 2021) backbones and segmentation models.

Model config (plain JSON-able data, ``arch='lite_hrnet'``; :func:`resolve`
fills the defaults and rejects unknown fields):

* ``variant``: ``'18'``, ``'30'`` (default), ``'naive_18'`` or
  ``'wider_naive_18'`` (:data:`VARIANTS`, the official configs);
* ``num_classes``: required;
* ``head``:

  - ``'clean'`` (default, recommended for new training): the standard
    IterativeHead (40 channels at stride 4), its four outputs upsampled to
    stride 4 (bilinear, ``align_corners``) and concatenated (320 channels),
    then a 1x1 classifier with bias, ``cls_head``;
  - ``'fork'``: the seed fork's head, for its checkpoints: the last
    IterativeHead projection outputs the classes directly, through BN and
    ReLU (the logits are non-negative);

* ``hanet``: ``None`` or HANet options (:mod:`hrseg_jax.models.hanet`).  As
  in the seed fork, ``hanet1`` .. ``hanet4`` (one per branch width) are shared
  across the three stages: after every stage, branch b of the output is
  modulated by ``hanet{b+1}`` computed from branch b of that stage's input;
* ``align_corners`` (False): the clean head's upsampling and the
  logits-to-labels upsampling of the loss and of ``Segmenter.predict``.  The
  IterativeHead always uses align_corners=True, as the original.

The seed fork's model is ``{'arch': 'lite_hrnet', 'variant': '30',
'num_classes': 19, 'head': 'fork', 'hanet': {}}`` (1,779,207 PyTorch
parameters, of which 187 are the frozen position tables).

Input sizes: the official model needs ``ceil(side / 4)`` to be a multiple of 8
(it raises otherwise).  Sizes that satisfy this run unchanged (parity);
others are zero-padded at the bottom / right to the next multiple of 32 (and
``rows`` with -1) and the outputs cropped back to ``ceil(side / 4)``.

:class:`LiteHRNet` is the backbone alone (the mmpose ``backbone.`` weights),
returning the four IterativeHead outputs, highest resolution first; the
official ``forward`` returns only the first.
"""
from __future__ import annotations

import copy
import functools
import re
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from hrseg_jax.models import hanet as hanet_lib
from hrseg_jax.models.hrnet import concat_branches
from hrseg_jax.models.layers import Conv
from hrseg_jax.models.lite_hrnet_blocks import (IterativeHead, LiteHRModule, Stem,
                                                dw_separable)
from hrseg_jax.models.state_shapes import dim

Dtype = Any

_COMMON = dict(stem=(32, 32, 1), num_branches=(2, 3, 4), num_blocks=(2, 2, 2))
VARIANTS: dict[str, dict] = {
    '18': dict(_COMMON, module_type='LITE', num_modules=(2, 4, 2),
               channels=(40, 80, 160, 320), reduce_ratio=8),
    '30': dict(_COMMON, module_type='LITE', num_modules=(3, 8, 3),
               channels=(40, 80, 160, 320), reduce_ratio=8),
    'naive_18': dict(_COMMON, module_type='NAIVE', num_modules=(2, 4, 2),
                     channels=(30, 60, 120, 240), reduce_ratio=1),
    'wider_naive_18': dict(_COMMON, module_type='NAIVE', num_modules=(2, 4, 2),
                           channels=(40, 80, 160, 320), reduce_ratio=1),
}
HEADS = ('clean', 'fork')
_FIELDS = ('arch', 'variant', 'num_classes', 'head', 'hanet', 'align_corners')


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def padded_size(n: int) -> int:
  """``n`` if the official model accepts it, else the next multiple of 32."""
  return n if _ceil_div(n, 4) % 8 == 0 else _ceil_div(n, 32) * 32


def pad_inputs(x, rows=None):
  """Zero-pads NHWC ``x`` (and ``rows`` with -1) to a size the model accepts."""
  h, w = x.shape[1:3]
  ph, pw = padded_size(h) - h, padded_size(w) - w
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    if rows is not None:
      rows = jnp.pad(rows, ((0, 0), (0, ph)), constant_values=-1)
  return x, rows


def crop_outputs(ys, h: int, w: int):
  """Crops branch outputs (strides 4, 8, ...) of a padded input to ``h x w``."""
  oh, ow = _ceil_div(h, 4), _ceil_div(w, 4)
  out = []
  for y in ys:
    out.append(y[:, :oh, :ow])
    oh, ow = _ceil_div(oh, 2), _ceil_div(ow, 2)
  return out


def _transition(ys, prev, channels, prefix: str, *, train: bool, dtype: Dtype):
  """``transition{s}``: adapt changed widths; grow a branch from the last one."""
  conv = functools.partial(dw_separable, relu=True, train=train, dtype=dtype)
  out = []
  for i, c in enumerate(channels):
    if i < len(prev):
      out.append(ys[i] if c == prev[i] else conv(ys[i], f'{prefix}_{i}', c, 1))
      continue
    y = ys[-1]
    for k in range(i + 1 - len(prev)):
      y = conv(y, f'{prefix}_{i}_{k}', c if k == i - len(prev) else prev[-1], 2)
    out.append(y)
  return out


def lite_hrnet_backbone(x, variant: str, *, train: bool, dtype: Dtype,
                        last_features: int | None = None,
                        hanet: Mapping[str, Any] | None = None, rows=None):
  """Stem, transitions, stages (+ fork HANets) and IterativeHead.

  A plain function called from a parent's ``@nn.compact`` method, so the
  layers are direct children of the parent (``stem``, ``stage0_0``,
  ``hanet1``, ``head_layer``, ...) as in the PyTorch state dict.  ``x`` must
  have an accepted size (:func:`pad_inputs`).  Returns the IterativeHead
  outputs, highest resolution first.
  """
  spec = VARIANTS[variant]
  kw = dict(train=train, dtype=dtype)
  x = Stem(*spec['stem'], name='stem', **kw)(x)
  hanets = []
  if hanet is not None:
    hanets = [hanet_lib.HANet(c, c, dtype=dtype, name=f'hanet{b + 1}', **dict(hanet))
              for b, c in enumerate(spec['channels'])]
  ys, prev = [x], [x.shape[-1]]
  for s, num_modules in enumerate(spec['num_modules']):
    channels = spec['channels'][:spec['num_branches'][s]]
    xs = _transition(ys, prev, channels, f'transition{s}', **kw)
    ys = xs
    for m in range(num_modules):
      ys = LiteHRModule(spec['num_blocks'][s], spec['module_type'],
                        spec['reduce_ratio'], name=f'stage{s}_{m}', **kw)(ys)
    if hanets:
      ys = [hanets[b](xi, y, rows=rows, train=train)
            for b, (xi, y) in enumerate(zip(xs, ys))]
    prev = channels
  return IterativeHead(last_features, name='head_layer', **kw)(ys)


class LiteHRNet(nn.Module):
  """The official backbone (with IterativeHead); returns all four outputs."""
  variant: str = '18'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    h, w = x.shape[1:3]
    x, _ = pad_inputs(x)
    ys = lite_hrnet_backbone(x, self.variant, train=train, dtype=self.dtype)
    return crop_outputs(ys, h, w)


class LiteHRNetSeg(nn.Module):
  """Lite-HRNet segmentation network (see the module docstring).

  ``__call__(images, train=False, rows=None)`` takes normalised NHWC images
  and returns ``[logits]`` (NHWC, 1/4 resolution).  ``rows`` (int [B, H]) is
  read only by HANets with ``positions='rows'``.
  """
  variant: str
  num_classes: int
  head: str = 'clean'
  hanet: Mapping[str, Any] | None = None
  align_corners: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, rows=None):
    h, w = x.shape[1:3]
    x, rows = pad_inputs(x, rows)
    fork = self.head == 'fork'
    ys = lite_hrnet_backbone(x, self.variant, train=train, dtype=self.dtype,
                             last_features=self.num_classes if fork else None,
                             hanet=self.hanet, rows=rows)
    if fork:
      logits = ys[0]
    else:
      feats = concat_branches(ys, self.align_corners)
      logits = Conv(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                    name='cls_head')(feats)
    return crop_outputs([logits], h, w)


def resolve(model_cfg: Mapping[str, Any]) -> dict:
  """Fills the defaults of a ``lite_hrnet`` model config and validates it."""
  cfg = copy.deepcopy(dict(model_cfg))
  unknown = sorted(set(cfg) - set(_FIELDS))
  if unknown:
    raise ValueError(f'model config: unknown field(s) {unknown} for arch lite_hrnet; '
                     f'known: {list(_FIELDS)}')
  cfg['variant'] = str(cfg.get('variant', '30'))
  if cfg['variant'] not in VARIANTS:
    raise ValueError(f'model config: unknown Lite-HRNet variant {cfg["variant"]!r}; '
                     f'known: {sorted(VARIANTS)}')
  cfg.setdefault('head', 'clean')
  if cfg['head'] not in HEADS:
    raise ValueError(f'model config: head {cfg["head"]!r} not in {HEADS}')
  if not isinstance(cfg.get('num_classes'), int) or cfg['num_classes'] < 1:
    raise ValueError(f'model config: num_classes must be a positive int, '
                     f'got {cfg.get("num_classes")!r}')
  cfg['hanet'] = hanet_lib.resolve(cfg.get('hanet'))
  cfg['align_corners'] = bool(cfg.get('align_corners', False))
  return cfg


def build(model_cfg: Mapping[str, Any], dtype=jnp.float32) -> LiteHRNetSeg:
  cfg = resolve(model_cfg)
  return LiteHRNetSeg(variant=cfg['variant'], num_classes=cfg['num_classes'],
                      head=cfg['head'], hanet=cfg['hanet'],
                      align_corners=cfg['align_corners'], dtype=dtype)


def _fork_head_classes(state: Mapping[str, np.ndarray]) -> int | None:
  """Classes of the fork's head: projects.3 changes the width, else None."""
  pw = 'head_layer.projects.3.pointwise_conv.conv.weight'
  dw = 'head_layer.projects.3.depthwise_conv.conv.weight'
  if pw not in state or dw not in state or dim(state, pw) == dim(state, dw):
    return None
  return dim(state, pw)


def has_head(state: Mapping[str, np.ndarray]) -> bool:
  """Whether a Lite-HRNet state dict has a segmentation head (fork or clean)."""
  return 'cls_head.weight' in state or _fork_head_classes(state) is not None


def _infer_variant(state: Mapping[str, np.ndarray]) -> str:
  naive = 'stage0.0.layers.0.0.branch2.0.conv.weight' in state
  modules = []
  for s in range(3):
    rx = re.compile(rf'stage{s}\.(\d+)\.')
    modules.append(len({m.group(1) for k in state if (m := rx.match(k))}))
  try:
    channels = [dim(state, f'head_layer.projects.{3 - b}.depthwise_conv.conv.weight')
                for b in range(4)]
  except ValueError as e:
    raise ValueError(f'not a Lite-HRNet state dict: {e}') from None
  found = dict(module_type='NAIVE' if naive else 'LITE', num_modules=tuple(modules),
               channels=tuple(channels))
  for name, spec in VARIANTS.items():
    if all(spec[k] == v for k, v in found.items()):
      return name
  raise ValueError(f'unknown Lite-HRNet layout {found}; known variants: {sorted(VARIANTS)}')


# The HANets a Lite-HRNet can have (one per branch width): others in a file
# are unexpected keys, never inferred from (each inference compares a table).
HANET_NAMES = ('hanet1', 'hanet2', 'hanet3', 'hanet4')


def _infer_hanet(state: Mapping[str, np.ndarray]) -> dict | None:
  names = sorted({k.split('.')[0] for k in state if k.startswith(HANET_NAMES)} &
                 set(HANET_NAMES))
  if not names:
    return None
  configs = [hanet_lib.infer_config(state, f'{n}.') for n in names]
  if any(c != configs[0] for c in configs):
    raise ValueError(f'Lite-HRNet HANets {names} differ in their options: {configs}')
  return configs[0]


def infer_config(state: Mapping[str, np.ndarray], num_classes: int | None = None) -> dict:
  """Model config from a Lite-HRNet state dict (wrapper prefixes removed).

  mmpose backbone files (after stripping ``backbone.``) have no segmentation
  head: they give a clean head and need ``num_classes``.  The fork's files give
  ``head='fork'`` and its HANets.
  """
  if 'cls_head.weight' in state:
    head, classes = 'clean', dim(state, 'cls_head.weight')
  else:
    classes = _fork_head_classes(state)
    head = 'clean' if classes is None else 'fork'
  if classes is not None and num_classes is not None and num_classes != classes:
    raise ValueError(f'--num-classes {num_classes} but the checkpoint head has '
                     f'{classes} classes')
  if classes is None and num_classes is None:
    raise ValueError('the checkpoint has no segmentation head (an mmpose Lite-HRNet '
                     'backbone?): pass --num-classes or --config')
  return {'arch': 'lite_hrnet', 'variant': _infer_variant(state),
          'num_classes': classes if classes is not None else num_classes,
          'head': head, 'hanet': _infer_hanet(state), 'align_corners': False}
