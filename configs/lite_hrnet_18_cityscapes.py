"""Lite-HRNet-18 with the clean segmentation head on Cityscapes: batch 16,
160k iterations, SGD 0.01, wd 5e-4, poly 0.9, no ImageNet init (the schedule
of the mmsegmentation reproduction of Lite-HRNet; see recipes.lite_recipe)."""
from hrseg_jax import recipes


def get_config():
  return recipes.lite_recipe('18', head='clean')
