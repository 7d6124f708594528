"""Model configuration (plain, JSON-serialisable data) -> Flax module.

A model configuration is a mapping with at least ``arch`` and
``num_classes``.  For ``arch='hrnet'``:

* ``variant``: a key of :data:`hrseg_jax.models.hrnet.VARIANTS` (``w48``,
  ``w18_small_v2``, ...) or ``'custom'`` with explicit ``stage1``/``stages``;
* ``align_corners`` (bool), ``final_conv_kernel`` (1 or 3);
* ``ocr``: ``None`` or ``{'mid_channels', 'key_channels', 'dropout'}``;
* ``hanet``: ``None`` or HANet options (:mod:`hrseg_jax.models.hanet`).

``arch='lite_hrnet'`` is described in :mod:`hrseg_jax.models.lite_hrnet`.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from hrseg_jax.models import hanet, hrnet, lite_hrnet
from hrseg_jax.models.heads import OCR_DEFAULTS

# Module names (first path element) that belong to the segmentation head
# rather than to an ImageNet-pretrained backbone.
HEAD_PREFIXES = ('last_layer', 'aux_head', 'conv3x3_ocr', 'ocr_distri_head',
                 'cls_head', 'hanet')


def _plain(x):
  """ConfigDict / tuples -> plain JSON-friendly python data."""
  if hasattr(x, 'to_dict'):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


def resolve(model_cfg: Mapping[str, Any]) -> dict:
  """Fills defaults and the explicit stage layout; validates field names."""
  cfg = _plain(copy.deepcopy(dict(_plain(model_cfg))))
  arch = cfg.get('arch', 'hrnet')
  cfg['arch'] = arch
  if 'num_classes' not in cfg:
    raise ValueError('model config: missing field "num_classes"')
  if arch == 'hrnet':
    allowed = {'arch', 'variant', 'num_classes', 'align_corners',
               'final_conv_kernel', 'ocr', 'hanet', 'stage1', 'stages'}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
      raise ValueError(f'model config: unknown field(s) {unknown} for arch hrnet')
    variant = cfg.setdefault('variant', 'w48')
    if 'stages' in cfg and 'stage1' in cfg:
      _check_named_layout(variant, cfg['stage1'], cfg['stages'])
    else:
      if variant not in hrnet.VARIANTS:
        raise ValueError(f'model config: unknown HRNet variant {variant!r}; '
                         f'known: {sorted(hrnet.VARIANTS)}')
      spec = hrnet.VARIANTS[variant]
      cfg.setdefault('stage1', _plain(spec['stage1']))
      cfg.setdefault('stages', _plain(spec['stages']))
    cfg.setdefault('align_corners', False)
    cfg.setdefault('final_conv_kernel', 1)
    cfg.setdefault('ocr', None)
    cfg['hanet'] = hanet.resolve(cfg.get('hanet'))
    if cfg['ocr'] is not None:
      ocr = dict(OCR_DEFAULTS)
      ocr.update(cfg['ocr'])
      cfg['ocr'] = ocr
    return cfg
  if arch == 'lite_hrnet':
    return lite_hrnet.resolve(cfg)
  raise ValueError(f'model config: unknown arch {arch!r} (hrnet, lite_hrnet)')


def _check_named_layout(variant: str, stage1, stages) -> None:
  """An explicit ``stage1``/``stages`` layout is ``variant='custom'``'s or
  that of the variant named (``--config.model.variant=w18`` on a config with
  an explicit layout would otherwise train that layout under W18's name)."""
  if variant == 'custom':
    return
  spec = hrnet.VARIANTS.get(variant)
  if spec is None:
    raise ValueError(f'model config: unknown HRNet variant {variant!r}; known: '
                     f'{sorted(hrnet.VARIANTS)}, or \'custom\' with model.stage1 and '
                     'model.stages')
  if _plain(stage1) != _plain(spec['stage1']) or _plain(stages) != _plain(spec['stages']):
    raise ValueError(f'model.variant={variant!r} names another layout than the '
                     "config's model.stage1/model.stages: start from a config of "
                     f"{variant}, or keep model.variant='custom' for this layout")


def model_name(model_cfg: Mapping[str, Any]) -> str:
  """``hrnet w48+OCR``, ``lite_hrnet 30+HANet (fork head)``: for console lines."""
  extras = ''.join(f'+{k.upper() if k == "ocr" else "HANet"}'
                   for k in ('ocr', 'hanet') if model_cfg.get(k))
  head = model_cfg.get('head')
  head = f' ({head} head)' if head and head != 'clean' else ''
  return f'{model_cfg.get("arch", "model")} {model_cfg.get("variant", "")}{extras}{head}'


def _tuples(x):
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def build_model(model_cfg: Mapping[str, Any], dtype=jnp.float32):
  """Returns the Flax module for a (resolved or not) model configuration."""
  cfg = resolve(model_cfg)
  if cfg['arch'] == 'hrnet':
    return hrnet.HRNetSeg(
        stage1=_tuples(cfg['stage1']), stages=_tuples(cfg['stages']),
        num_classes=cfg['num_classes'], align_corners=cfg['align_corners'],
        final_conv_kernel=cfg['final_conv_kernel'],
        ocr=None if cfg['ocr'] is None else dict(cfg['ocr']),
        hanet=None if cfg['hanet'] is None else dict(cfg['hanet']),
        dtype=dtype)
  return lite_hrnet.build(cfg, dtype)


def num_outputs(model_cfg) -> int:
  cfg = resolve(model_cfg)
  return 2 if cfg.get('ocr') else 1


def abstract_variables(model_cfg, image_size=(64, 64)):
  """Shapes of the model's variables, without allocating them."""
  model = build_model(model_cfg)
  x = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


def init_variables(model_cfg, rng, image_size=(64, 64)):
  model = build_model(model_cfg)
  x = jnp.zeros((1, *image_size, 3), jnp.float32)
  return jax.jit(model.init)(rng, x)
