"""HRNetV2-W48 + OCR, ADE20K 150 classes, OHEM (44.5 / 45.5).

  python -m hrseg_jax.main --config configs/hrnet_ocr_w48_ade20k.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('ade20k', 'w48', ocr=True)
