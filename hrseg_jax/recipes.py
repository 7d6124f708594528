"""The original training recipes as ``ml_collections`` configs.

``configs/*.py`` are one-line ``get_config()`` wrappers around
:func:`recipe`; every hyper-parameter below comes from the original yaml
files of HRNet-Semantic-Segmentation (``experiments/*/*.yaml``) unless noted.

Config layout::

  seed                  int (304, the original's)
  model                 model config (see hrseg_jax.models.registry)
  data                  see hrseg_jax.data.config
  train                 batch_size (global), num_epochs | num_steps, base_lr,
                        momentum, nesterov, weight_decay, poly_power,
                        warmup_steps, nonbackbone_keywords, nonbackbone_mult,
                        grad_accum_steps, dtype, log_every_steps,
                        checkpoint_every_steps, keep_checkpoints, keep_best,
                        async_checkpoints, init_from (see PRETRAINED),
                        init_from_inplace_abn (None: as convert chooses, a
                        .pth saved by InPlaceABN gets its BN scale; True or
                        False: that),
                        nonfinite ('stop'|'skip'),
                        stop_at_step (save and stop there, as on preemption),
                        transfer_guard ('allow'; 'disallow' raises if a step
                        between log/checkpoint/eval steps waits for the
                        device, see hrseg_jax.train.host_sync)
  loss                  ignore_label, class_weights, ohem, ohem_thresh,
                        ohem_min_kept, balance_weights, num_chunks
  eval                  see hrseg_jax.eval.config, plus every_steps
  mesh                  fsdp (devices per FSDP group; 1 = pure data parallel)

Every recipe uses the original loop's LR schedule, which sets the LR after
each step: step t of T (1-based) runs at base_lr * (1 - max(t - 2, 0) / T) **
poly_power, so steps 1 and 2 both run at base_lr (hrseg_jax.train.optim).
With grad_accum_steps = k, t, T and warmup_steps count updates (k steps
each), so the LR still decays to the end of the run.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

from hrseg_jax.data.config import default_data_config
from hrseg_jax.eval.config import default_eval_config
from hrseg_jax.models.heads import OCR_DEFAULTS

CITYSCAPES_CLASS_WEIGHTS = (
    0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786,
    1.0023, 0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529,
    1.0507)
# The scales of the original README's Cityscapes multi-scale + flip numbers.
CITYSCAPES_MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclasses.dataclass(frozen=True)
class DatasetRecipe:
  """The per-dataset training settings of the original yamls.

  The number of classes comes from ``config.data`` (hrseg_jax.data.config).
  """
  batch_size: int  # global
  num_epochs: int
  base_lr: float
  weight_decay: float
  ohem: bool = False
  # Validation every 10 epochs of the original (it validated every epoch);
  # -1: no validation during training.
  eval_every_steps: int = -1
  # x10 LR for head parameters (PASCAL-Context and COCO-Stuff only).
  nonbackbone_lr: bool = False
  # cocostuff/ade20k yamls leave the default (True); every seg_hrnet_ocr
  # yaml too (see recipe()).
  align_corners: bool = False
  class_weights: tuple[float, ...] | None = None
  # The original normalises the loss per GPU (4 GPUs) and averages.
  loss_chunks: int = 4


DATASETS = {
    'cityscapes': DatasetRecipe(
        batch_size=12, num_epochs=484, base_lr=1e-2, weight_decay=5e-4,
        eval_every_steps=2470, class_weights=CITYSCAPES_CLASS_WEIGHTS),
    'lip': DatasetRecipe(
        batch_size=40, num_epochs=150, base_lr=7e-3, weight_decay=5e-4,
        eval_every_steps=7610),
    'pascal_ctx': DatasetRecipe(
        batch_size=16, num_epochs=200, base_lr=1e-3, weight_decay=1e-4,
        eval_every_steps=3120, nonbackbone_lr=True),
    'pascal_ctx60': DatasetRecipe(
        batch_size=16, num_epochs=200, base_lr=1e-3, weight_decay=1e-4,
        eval_every_steps=3120, nonbackbone_lr=True),
    'cocostuff': DatasetRecipe(
        batch_size=16, num_epochs=110, base_lr=1e-3, weight_decay=1e-4,
        ohem=True, eval_every_steps=5620, nonbackbone_lr=True,
        align_corners=True),
    'ade20k': DatasetRecipe(
        batch_size=16, num_epochs=120, base_lr=2e-2, weight_decay=1e-4,
        ohem=True, eval_every_steps=12630, align_corners=True),
    # The built-in synthetic scenes (not an original experiment).
    'synthetic': DatasetRecipe(
        batch_size=8, num_epochs=1, base_lr=1e-2, weight_decay=5e-4,
        loss_chunks=1),
}
# The ImageNet-pretrained backbones the original yamls start from
# (MODEL.PRETRAINED; HRNet-Image-Classification releases), relative to the
# working directory like the original's ``pretrained_models/``.  W32 is the
# seed fork's seg_hrnet_w32.yaml (ImageNet HRNet-W32 init).  Lite-HRNet, the
# synthetic scenes and the demo train from scratch.  A missing file stops
# training at start-up with a one-line message (hrseg_jax.train.pretrained).
PRETRAINED = {
    'w18_small_v1': 'pretrained_models/hrnet_w18_small_model_v1.pth',
    'w18_small_v2': 'pretrained_models/hrnet_w18_small_model_v2.pth',
    'w32': 'pretrained_models/hrnetv2_w32_imagenet_pretrained.pth',
    'w48': 'pretrained_models/hrnetv2_w48_imagenet_pretrained.pth',
}


def base_config(dataset: str) -> ml_collections.ConfigDict:
  """The plain HRNetV2-W48 recipe of ``dataset`` (a key of :data:`DATASETS`)."""
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; known: {sorted(DATASETS)}')
  r = DATASETS[dataset]
  c = ml_collections.ConfigDict()
  c.seed = 304
  c.data = default_data_config(dataset)
  c.model = ml_collections.ConfigDict(dict(
      arch='hrnet', variant='w48', num_classes=c.data.num_classes,
      align_corners=r.align_corners, final_conv_kernel=1, ocr=None, hanet=None))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=r.batch_size, num_epochs=r.num_epochs, num_steps=-1,
      base_lr=r.base_lr, momentum=0.9, nesterov=False,
      weight_decay=r.weight_decay, poly_power=0.9, warmup_steps=0,
      nonbackbone_keywords=('last_layer',) if r.nonbackbone_lr else (),
      nonbackbone_mult=10.0, grad_accum_steps=1, dtype='bfloat16',
      log_every_steps=50, checkpoint_every_steps=1000, keep_checkpoints=3,
      keep_best=True, async_checkpoints=True, init_from='',
      init_from_inplace_abn=ml_collections.config_dict.placeholder(bool),
      nonfinite='stop', stop_at_step=-1, transfer_guard='allow'))
  c.loss = ml_collections.ConfigDict(dict(
      ignore_label=255,
      class_weights=None if r.class_weights is None else list(r.class_weights),
      ohem=r.ohem, ohem_thresh=0.9, ohem_min_kept=131072, balance_weights=[1.0],
      num_chunks=r.loss_chunks))
  c.eval = default_eval_config(dataset)
  c.eval.every_steps = r.eval_every_steps
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1))
  return c


def recipe(dataset: str, variant: str = 'w48', *, ocr: bool = False,
           hanet: bool = False, ohem: bool | None = None,
           train_list: str | None = None) -> ml_collections.ConfigDict:
  """An experiment of the original repository (or the seed fork)."""
  c = base_config(dataset)
  c.model.variant = variant
  if ocr:
    c.model.ocr = ml_collections.ConfigDict(dict(OCR_DEFAULTS))
    c.model.align_corners = True  # every seg_hrnet_ocr yaml: default True
    c.loss.balance_weights = [0.4, 1.0]
    if DATASETS[dataset].nonbackbone_lr:
      c.train.nonbackbone_keywords = ('cls', 'aux', 'ocr')
  if hanet:
    c.model.hanet = ml_collections.ConfigDict(dict(positions='none'))
  if dataset != 'synthetic':
    c.train.init_from = PRETRAINED.get(variant, '')
  if dataset == 'ade20k' and not ocr:
    c.data.scale_factor = 11  # seg_hrnet ADE20K yaml (OCR: 16)
  if ohem is not None:
    c.loss.ohem = ohem
  if train_list is not None:
    c.data.train_list = train_list
  if dataset == 'cityscapes' and 'trainval' in (train_list or ''):
    # The README's trainval numbers (W48 81.5 in the master README, OCR 82.3
    # in the HRNet-OCR README) are on the test set, multi-scale + flip.
    c.data.readme_eval_scales = CITYSCAPES_MS_SCALES
    c.data.readme_eval_flip = True
    # Every 10 epochs, as for train: 3475 images / 12 = 289 steps per epoch.
    c.eval.every_steps = 2890
  return c


def lite_recipe(variant: str = '30', *, head: str = 'clean', hanet: bool = False,
                fork: bool = False) -> ml_collections.ConfigDict:
  """Lite-HRNet on Cityscapes.

  ``fork=True``: the seed fork's ``seg_lite_hrnet_w32.yaml`` as trained by its
  ``tools/lite_train.py``: no ImageNet init, crop 512x1024, batch 8, SGD 0.01,
  wd 5e-4, poly 0.9, 484 epochs, Cityscapes class weights, align_corners
  False, validation every 10 epochs.  Otherwise batch 16 and 160k
  iterations with the same optimizer, the schedule of the mmsegmentation
  reproduction of Lite-HRNet on Cityscapes (its minimum learning rate 1e-4
  and photometric distortion are not used; the augmentation is HRNet's).
  The Lite-HRNet paper's own segmentation schedule is not in its released
  code.
  """
  c = base_config('cityscapes')
  c.model = ml_collections.ConfigDict(dict(
      arch='lite_hrnet', variant=variant, num_classes=19, head=head,
      align_corners=False, hanet=None))
  if hanet:
    c.model.hanet = ml_collections.ConfigDict(dict(positions='none'))
  c.loss.num_chunks = 1  # the fork trains with DataParallel (one loss)
  if fork:
    c.train.batch_size = 8
    c.eval.every_steps = 3710  # 10 epochs of 371 batches of 8
  else:
    c.train.batch_size = 16
    c.train.num_steps = 160_000
    c.eval.every_steps = 8000
  return c


def synthetic_recipe(variant: str = 'w48', *, hanet: bool = False,
                     model: Mapping[str, Any] | None = None,
                     image_size: tuple[int, int] = (128, 256),
                     crop_size: tuple[int, int] | None = None,
                     num_train: int = 256, num_val: int = 32,
                     batch_size: int = 8, num_steps: int,
                     log_every_steps: int, checkpoint_every_steps: int,
                     eval_every_steps: int) -> ml_collections.ConfigDict:
  """A small run on the built-in synthetic scenes, sized for a CPU.

  Images, evaluation examples and sliding-window crops are ``image_size``
  (training crops ``crop_size``, default the same), evaluated whole, in
  float32, at LR 0.05 and evaluation batches of 8.

  Args:
    variant, hanet: as for :func:`recipe`.
    model: fields that replace those of ``config.model`` (e.g. a
      ``variant='custom'`` stage layout).
    image_size: (h, w) of the generated scenes.
    crop_size: (h, w) of training crops; default ``image_size``.
    num_train, num_val: number of generated scenes per split.
    batch_size: global training batch.
    num_steps, log_every_steps, checkpoint_every_steps: as in ``config.train``.
    eval_every_steps: ``config.eval.every_steps`` (-1: no evaluation).
  """
  c = recipe('synthetic', variant, hanet=hanet)
  for k, v in (model or {}).items():
    c.model[k] = v
  h, w = image_size
  c.data.num_train = num_train
  c.data.num_val = num_val
  c.data.image_size = (h, w)
  c.data.crop_size = tuple(crop_size or (h, w))
  c.data.base_size = w
  c.data.eval_size = (h, w)
  c.data.eval_base_size = w
  c.data.eval_crop_size = (h, w)
  c.train.batch_size = batch_size
  c.train.num_steps = num_steps
  c.train.base_lr = 0.05
  c.train.dtype = 'float32'
  c.train.log_every_steps = log_every_steps
  c.train.checkpoint_every_steps = checkpoint_every_steps
  c.eval.every_steps = eval_every_steps
  c.eval.batch_size = 8
  c.eval.mode = 'whole'
  c.eval.crop_size = (h, w)
  c.eval.base_size = w
  return c
