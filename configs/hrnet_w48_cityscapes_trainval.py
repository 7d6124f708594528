"""HRNetV2-W48, Cityscapes train+val (the second phase of the original's
'trainval x2' recipe is not chained; see README).

  python -m hrseg_jax.main --config configs/hrnet_w48_cityscapes_trainval.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w48', train_list='data/list/cityscapes/trainval.lst')
