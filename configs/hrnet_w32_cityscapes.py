"""The seed fork's HRNet-W32, Cityscapes (seg_hrnet_w32.yaml: ImageNet
HRNet-W32 init, crop 512x1024, batch 12, SGD 0.01, wd 5e-4, 484 epochs).

  python -m hrseg_jax.main --config configs/hrnet_w32_cityscapes.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w32')
