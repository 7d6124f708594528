"""HRNetV2-W48 + OCR, LIP (56.48).

  python -m hrseg_jax.main --config configs/hrnet_ocr_w48_lip.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('lip', 'w48', ocr=True)
