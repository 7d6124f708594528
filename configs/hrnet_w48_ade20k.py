"""HRNetV2-W48, ADE20K 150 classes, OHEM (43.1 / 44.2).

  python -m hrseg_jax.main --config configs/hrnet_w48_ade20k.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('ade20k', 'w48')
