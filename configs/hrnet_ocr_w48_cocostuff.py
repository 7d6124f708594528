"""HRNetV2-W48 + OCR, COCO-Stuff 171 classes, OHEM (39.7 / 40.6).

  python -m hrseg_jax.main --config configs/hrnet_ocr_w48_cocostuff.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cocostuff', 'w48', ocr=True)
