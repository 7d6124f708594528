"""HRNetV2-W48 + OCR, Cityscapes train (81.6).

  python -m hrseg_jax.main --config configs/hrnet_ocr_w48_cityscapes.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w48', ocr=True)
