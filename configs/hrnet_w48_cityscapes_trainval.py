"""HRNetV2-W48, Cityscapes train+val: one phase of 484 epochs on trainval at
LR 0.01 from the ImageNet backbone (the schedule of the OCR trainval recipe).

The original's W48 trainval numbers (81.5 / 81.9 with OHEM, test set,
multi-scale + flip) come from its two-phase "trainval x2" recipe: 484 epochs
on train at LR 0.01, then 484 more on trainval with a fresh poly schedule
from LR 0.001.  This config does not chain them; to run the second phase,
train configs/hrnet_w48_cityscapes.py first, then start this config from it:

  python -m hrseg_jax.main --config configs/hrnet_w48_cityscapes.py --workdir runs/w48_cs
  python -m hrseg_jax.main --config configs/hrnet_w48_cityscapes_trainval.py \
      --workdir runs/w48_cs_trainval \
      --config.train.base_lr=0.001 --config.train.init_from=runs/w48_cs

(the original also carries the SGD momentum buffers over; this starts them
at zero).
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w48', train_list='data/list/cityscapes/trainval.lst')
