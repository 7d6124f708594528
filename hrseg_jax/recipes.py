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
"""
from __future__ import annotations

import ml_collections

CITYSCAPES_CLASS_WEIGHTS = (
    0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786,
    1.0023, 0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529,
    1.0507)

# dataset: (classes, global batch, epochs, lr, wd, ohem, train list)
_DATASETS = {
    'cityscapes': (19, 12, 484, 1e-2, 5e-4, False),
    'lip': (20, 40, 150, 7e-3, 5e-4, False),
    'pascal_ctx': (59, 16, 200, 1e-3, 1e-4, False),
    'pascal_ctx60': (60, 16, 200, 1e-3, 1e-4, False),
    'cocostuff': (171, 16, 110, 1e-3, 1e-4, True),
    'ade20k': (150, 16, 120, 2e-2, 1e-4, True),
    'synthetic': (8, 8, 1, 1e-2, 5e-4, False),
}
_EVAL_EVERY = {'cityscapes': 2470, 'lip': 7610, 'pascal_ctx': 3120,
               'pascal_ctx60': 3120, 'cocostuff': 5620, 'ade20k': 12630}
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
# x10 LR for head parameters (PASCAL-Context and COCO-Stuff only).
_NONBACKBONE = ('pascal_ctx', 'pascal_ctx60', 'cocostuff')


def base_config(dataset: str) -> ml_collections.ConfigDict:
  from hrseg_jax.data.config import default_data_config  # pylint: disable=g-import-not-at-top
  from hrseg_jax.eval.config import default_eval_config  # pylint: disable=g-import-not-at-top
  if dataset not in _DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; known: {sorted(_DATASETS)}')
  classes, batch, epochs, lr, wd, ohem = _DATASETS[dataset]
  c = ml_collections.ConfigDict()
  c.seed = 304
  c.model = ml_collections.ConfigDict(dict(
      arch='hrnet', variant='w48', num_classes=classes, align_corners=False,
      final_conv_kernel=1, ocr=None, hanet=None))
  c.data = default_data_config(dataset)
  c.train = ml_collections.ConfigDict(dict(
      batch_size=batch, num_epochs=epochs, num_steps=-1, base_lr=lr,
      momentum=0.9, nesterov=False, weight_decay=wd, poly_power=0.9,
      warmup_steps=0, nonbackbone_keywords=(), nonbackbone_mult=10.0,
      grad_accum_steps=1, dtype='bfloat16', log_every_steps=50,
      checkpoint_every_steps=1000, keep_checkpoints=3, keep_best=True,
      async_checkpoints=True, init_from='', nonfinite='stop',
      stop_at_step=-1, transfer_guard='allow'))
  c.loss = ml_collections.ConfigDict(dict(
      ignore_label=255,
      class_weights=list(CITYSCAPES_CLASS_WEIGHTS) if dataset == 'cityscapes' else None,
      ohem=ohem, ohem_thresh=0.9, ohem_min_kept=131072, balance_weights=[1.0],
      # The original normalises the loss per GPU (4 GPUs) and averages.
      num_chunks=4 if dataset != 'synthetic' else 1))
  c.eval = default_eval_config(dataset)
  # Validation every 10 epochs of the original (it validated every epoch).
  c.eval.every_steps = _EVAL_EVERY.get(dataset, -1)
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1))
  if dataset in ('cocostuff', 'ade20k'):
    c.model.align_corners = True  # those yamls leave the default (True)
  if dataset in _NONBACKBONE:
    c.train.nonbackbone_keywords = ('last_layer',)
  return c


def recipe(dataset: str, variant: str = 'w48', *, ocr: bool = False,
           hanet: bool = False, ohem: bool | None = None,
           train_list: str | None = None) -> ml_collections.ConfigDict:
  """An experiment of the original repository (or the seed fork)."""
  c = base_config(dataset)
  c.model.variant = variant
  if ocr:
    c.model.ocr = ml_collections.ConfigDict(dict(mid_channels=512, key_channels=256,
                                                 dropout=0.05))
    c.model.align_corners = True  # every seg_hrnet_ocr yaml: default True
    c.loss.balance_weights = [0.4, 1.0]
    if dataset in _NONBACKBONE:
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
  return c


def lite_recipe(variant: str = '30', *, head: str = 'clean', hanet: bool = False,
                fork: bool = False) -> ml_collections.ConfigDict:
  """Lite-HRNet on Cityscapes.

  ``fork=True``: the seed fork's ``seg_lite_hrnet_w32.yaml`` as trained by its
  ``tools/lite_train.py``: no ImageNet init, crop 512x1024, batch 8, SGD 0.01,
  wd 5e-4, poly 0.9, 484 epochs, Cityscapes class weights, align_corners
  False, validation every 10 epochs.  Otherwise the Lite-HRNet paper's
  Cityscapes recipe: batch 16, 160k iterations, same optimizer.
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
