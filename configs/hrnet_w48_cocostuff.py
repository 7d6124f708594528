"""HRNetV2-W48, COCO-Stuff 171 classes, OHEM (36.2 / 37.9).

  python -m hrseg_jax.main --config configs/hrnet_w48_cocostuff.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cocostuff', 'w48')
