"""HRNetV2-W48 + OCR, PASCAL-Context 59 classes (56.2).

  python -m hrseg_jax.main --config configs/hrnet_ocr_w48_pascal_ctx.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('pascal_ctx', 'w48', ocr=True)
