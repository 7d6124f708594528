"""HRNetV2-W48, LIP (55.83).

  python -m hrseg_jax.main --config configs/hrnet_w48_lip.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('lip', 'w48')
