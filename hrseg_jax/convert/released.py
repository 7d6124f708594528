"""What the released HRNet-Semantic-Segmentation checkpoints were trained
with that their files do not record: bilinear ``align_corners`` and
InPlaceABN's BN scale (README, "Using the official checkpoints").

``python -m hrseg_jax.convert`` warns when a file of this table, named as
released, is converted with other options.
"""
from __future__ import annotations

import os

# File name -> (align_corners, inplace_abn).
RELEASED = {
    'hrnet_cs_8090_torch11.pth': (False, False),
    'hrnet_pascal_ctx_5410_torch11.pth': (False, False),
    'hrnet_ocr_cs_8162_torch11.pth': (True, False),
    'hrnet_ocr_cs_trainval_8227_torch11.pth': (True, False),
    'hrnet_ocr_pascal_ctx_5618_torch11.pth': (True, False),
    'hrnet_lip_5583_torch04.pth': (False, True),
    'hrnet_ocr_lip_5648_torch04.pth': (True, True),
    'hrnet_cocostuff_3617_torch04.pth': (True, True),
    'hrnet_ocr_cocostuff_3965_torch04.pth': (True, True),
    'hrnet_ade20k_4312_torch04.pth': (True, True),
    'hrnet_ocr_ade20k_4451_torch04.pth': (True, True),
}


def option_warning(path: str, align_corners: bool | None, inplace_abn: bool) -> str | None:
  """The warning for converting the released file ``path`` with options
  other than its own (``align_corners`` None: not given, i.e. False); None
  when they match or the file is not one of :data:`RELEASED`."""
  name = os.path.basename(os.fspath(path))
  if name not in RELEASED:
    return None
  want_align, want_abn = RELEASED[name]
  add, drop = [], []
  if bool(align_corners) != want_align:
    (add if want_align else drop).append('--align-corners')
  if bool(inplace_abn) != want_abn:
    (add if want_abn else drop).append('--inplace-abn')
  if not add + drop:
    return None
  trained = (f'align_corners={want_align}, '
             + ('InPlaceABN' if want_abn else 'standard BatchNorm'))
  again = ' '.join((['without', *drop, 'and'] if drop else [])
                   + ['with', *add, '--overwrite'])
  return (f'warning: {name} is a released checkpoint trained with {trained}: '
          f'convert it again {again}, or its predictions will be off')
