"""HRNetV2-W48 + OCR, PASCAL-Context 60 classes (50.1).

  python -m hrseg_jax.main --config configs/hrnet_ocr_w48_pascal_ctx60.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('pascal_ctx60', 'w48', ocr=True)
