"""HRNetV2-W18-Small-v1, Cityscapes (70.3).

  python -m hrseg_jax.main --config configs/hrnet_w18_small_v1_cityscapes.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w18_small_v1')
