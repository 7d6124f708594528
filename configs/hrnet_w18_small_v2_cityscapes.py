"""HRNetV2-W18-Small-v2, Cityscapes (76.2).

  python -m hrseg_jax.main --config configs/hrnet_w18_small_v2_cityscapes.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w18_small_v2')
