"""HRNetV2-W48, PASCAL-Context 60 classes (48.3).

  python -m hrseg_jax.main --config configs/hrnet_w48_pascal_ctx60.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('pascal_ctx60', 'w48')
