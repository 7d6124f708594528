"""HRNetV2-W48, PASCAL-Context 59 classes (54.1).

  python -m hrseg_jax.main --config configs/hrnet_w48_pascal_ctx.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('pascal_ctx', 'w48')
