"""HRNetV2-W48, Cityscapes train -> val (80.9 mIoU in the original README).

  python -m hrseg_jax.main --config configs/hrnet_w48_cityscapes.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w48')
