"""HRNetV2-W48 + OHEM, Cityscapes train (81.2).

  python -m hrseg_jax.main --config configs/hrnet_w48_cityscapes_ohem.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w48', ohem=True)
