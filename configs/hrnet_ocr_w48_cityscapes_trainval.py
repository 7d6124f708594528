"""HRNetV2-W48 + OCR, Cityscapes train+val (82.3 test, MS+flip).

  python -m hrseg_jax.main --config configs/hrnet_ocr_w48_cityscapes_trainval.py --workdir DIR
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w48', ocr=True,
                        train_list='data/list/cityscapes/trainval.lst')
