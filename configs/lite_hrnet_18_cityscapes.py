"""Lite-HRNet-18 with the clean segmentation head on Cityscapes (the
Lite-HRNet paper's recipe: batch 16, 160k iterations, SGD 0.01, wd 5e-4)."""
from hrseg_jax import recipes


def get_config():
  return recipes.lite_recipe('18', head='clean')
