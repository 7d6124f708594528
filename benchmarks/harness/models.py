"""The benchmarked models, their training recipe and the tiny stand-ins.

Each entry of :data:`MODELS` is a model configuration for
:func:`hrseg_jax.models.registry.build_model` plus the loss weights of its
recipe.  :data:`TINY_MODELS` are small HRNet variants with the same code paths
(plain head, OCR, HANet) that compile in seconds on a CPU.  No JAX import here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

# hrseg_jax.recipes.CITYSCAPES_CLASS_WEIGHTS (not imported: recipes needs
# ml_collections, which the GPU machine lacks; a test checks they are equal).
CITYSCAPES_CLASS_WEIGHTS = (
    0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786,
    1.0023, 0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529,
    1.0507)

NUM_CLASSES = 19
IGNORE_LABEL = 255
# The Cityscapes recipe of hrseg_jax.recipes: SGD 0.9, wd 5e-4, lr 1e-2, poly.
TRAIN_RECIPE = dict(base_lr=1e-2, momentum=0.9, nesterov=False,
                    weight_decay=5e-4, poly_power=0.9, warmup_steps=0,
                    nonbackbone_keywords=(), nonbackbone_mult=10.0,
                    grad_accum_steps=1)
# 484 epochs of 2975 images at batch 12: the recipe's schedule length.
TOTAL_STEPS = 484 * (2975 // 12)
# The recipe normalises the loss per chunk of 4 (the original's 4 GPUs).
LOSS_CHUNKS = 4


@dataclasses.dataclass(frozen=True)
class BenchModel:
  """One benchmarked model.

  Attributes:
    key: the name used on the command line and in the JSON.
    label: a human-readable name.
    config: the registry model configuration.
    balance_weights: loss weight of each model output (OCR: aux, main).
  """
  key: str
  label: str
  config: dict[str, Any]
  balance_weights: tuple[float, ...] = (1.0,)

  @property
  def align_corners(self) -> bool:
    """The model's ``align_corners`` (logits-to-labels resize)."""
    return bool(self.config.get('align_corners', False))


def _hrnet(variant: str, **kw) -> dict[str, Any]:
  return dict(arch='hrnet', variant=variant, num_classes=NUM_CLASSES, **kw)


def _lite(hanet: bool) -> dict[str, Any]:
  cfg = dict(arch='lite_hrnet', variant='30', num_classes=NUM_CLASSES,
             head='fork' if hanet else 'clean')
  if hanet:
    cfg['hanet'] = {}
  return cfg


MODELS: dict[str, BenchModel] = {m.key: m for m in (
    BenchModel('w48', 'HRNetV2-W48', _hrnet('w48')),
    BenchModel('w18_small_v2', 'HRNetV2-W18-Small-v2', _hrnet('w18_small_v2')),
    BenchModel('w18', 'HRNetV2-W18', _hrnet('w18')),
    # Every seg_hrnet_ocr recipe uses align_corners=True and loss 0.4 + 1.0.
    BenchModel('ocr_w48', 'HRNetV2-W48 + OCR',
               _hrnet('w48', ocr={}, align_corners=True), (0.4, 1.0)),
    BenchModel('w32_hanet', 'HRNet-W32 + HANet (seed fork)',
               _hrnet('w32', hanet={})),
    BenchModel('lite30_hanet', 'Lite-HRNet-30 + 4 HANets (seed fork)',
               _lite(hanet=True)),
    BenchModel('lite30', 'Lite-HRNet-30 (clean head)', _lite(hanet=False)),
)}

DEFAULT_MODELS = ('w48', 'w18_small_v2', 'w18', 'ocr_w48', 'w32_hanet',
                  'lite30_hanet')

# Two-stage HRNet: few layers, so XLA:CPU compiles the train step in seconds.
_TINY_LAYOUT = dict(variant='custom', stage1=(1, 8, 'BOTTLENECK'),
                    stages=((1, (1, 1), (8, 16)),))

TINY_MODELS: dict[str, BenchModel] = {m.key: m for m in (
    BenchModel('tiny', 'tiny HRNet (2 branches)',
               dict(arch='hrnet', num_classes=NUM_CLASSES, **_TINY_LAYOUT)),
    BenchModel('tiny_ocr', 'tiny HRNet + OCR',
               dict(arch='hrnet', num_classes=NUM_CLASSES, align_corners=True,
                    ocr=dict(mid_channels=16, key_channels=8),
                    **_TINY_LAYOUT), (0.4, 1.0)),
    BenchModel('tiny_hanet', 'tiny HRNet + HANet',
               dict(arch='hrnet', num_classes=NUM_CLASSES, hanet={},
                    **_TINY_LAYOUT)),
)}

DEFAULT_TINY_MODELS = ('tiny',)


def get(key: str) -> BenchModel:
  """The model named ``key`` (full-size or tiny).

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if key in MODELS:
    return MODELS[key]
  if key in TINY_MODELS:
    return TINY_MODELS[key]
  raise ValueError(f'unknown benchmark model {key!r}; known: '
                   f'{sorted(MODELS) + sorted(TINY_MODELS)}')


def loss_config(model: BenchModel, batch: int) -> dict[str, Any]:
  """The recipe's loss settings for ``model`` at global batch ``batch``.

  Cross-entropy with ignore 255 and the Cityscapes class weights, no OHEM,
  normalised per chunk of :data:`LOSS_CHUNKS` images when the batch divides.
  """
  return dict(ignore_label=IGNORE_LABEL,
              class_weights=list(CITYSCAPES_CLASS_WEIGHTS), ohem=False,
              ohem_thresh=0.9, ohem_min_kept=131072,
              balance_weights=list(model.balance_weights),
              num_chunks=LOSS_CHUNKS if batch % LOSS_CHUNKS == 0 else 1)
