"""What the released HRNet-Semantic-Segmentation checkpoints were trained
with that their files do not record: bilinear ``align_corners`` and
InPlaceABN's BN scale (README, "Using the official checkpoints").

``python -m hrseg_jax.convert`` converts a file of this table, named as
released, with its own settings unless told otherwise (and then warns).
"""
from __future__ import annotations

import os

from hrseg_jax import paths

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


def _bn(inplace_abn: bool) -> str:
  return 'InPlaceABN' if inplace_abn else 'standard BatchNorm'


def options(path: str, align_corners: bool | None, inplace_abn: bool | None
            ) -> tuple[bool | None, bool | None, str | None, str | None]:
  """(align_corners, inplace_abn, note, warning) to convert ``path`` with.

  For a file of :data:`RELEASED`, named as released, an option not given
  (None) takes the value the file was trained with, which ``note`` names
  where it differs from the plain default; an
  option given against it is kept, and ``warning`` says so. For other files
  the options are returned as given (None: not given) and both lines are None.
  """
  name = os.path.basename(paths.shown(path))   # a symlink by its own name
  if name not in RELEASED:
    return align_corners, inplace_abn, None, None
  want_align, want_abn = RELEASED[name]
  # What it takes from the table that plain defaults would have missed.
  filled = (['align_corners=True'] if align_corners is None and want_align else []) + (
      ['InPlaceABN'] if inplace_abn is None and want_abn else [])
  note = (f'{name}: a released checkpoint: converting with {", ".join(filled)}, as '
          'it was trained' if filled else None)
  against = []
  if align_corners is not None and align_corners != want_align:
    against.append('--align-corners' if align_corners else '--no-align-corners')
  if inplace_abn is not None and inplace_abn != want_abn:
    against.append('--inplace-abn' if inplace_abn else '--no-inplace-abn')
  warning = (f'warning: {name} is a released checkpoint trained with '
             f'align_corners={want_align}, {_bn(want_abn)}: converted with '
             f'{" ".join(against)} as asked, its predictions will be off (drop the '
             'option to use its own settings)' if against else None)
  return (want_align if align_corners is None else align_corners,
          want_abn if inplace_abn is None else inplace_abn, note, warning)


# Datasets whose released checkpoints, with or without OCR, all use
# align_corners=True (RELEASED: the ADE20K and COCO-Stuff files).
ALIGN_CORNERS_DATASETS = ('ade20k', 'cocostuff')


def align_corners_note(path, model_cfg, dataset: str | None) -> str | None:
  """The line for a file outside :data:`RELEASED` (or renamed) converted
  without --align-corners/--no-align-corners whose kind of model was
  released with align_corners=True (OCR, ADE20K, COCO-Stuff): it gets the
  plain default False, and the line says so and names the flag."""
  if model_cfg.get('align_corners'):
    return None
  if model_cfg.get('ocr'):
    kind, released = 'an OCR model', 'OCR'
  elif dataset in ALIGN_CORNERS_DATASETS:
    kind = f'a {dataset} model ({model_cfg["num_classes"]} classes)'
    released = dataset
  else:
    return None
  return (f'{os.path.basename(paths.shown(path))}: {kind} not under a released file name: '
          f'converting with align_corners=False (the default), but the released {released} '
          'checkpoints were trained with align_corners=True: pass --align-corners if this '
          'one was too (--no-align-corners: False, without this line)')


def inplace_abn_warning(path, layout, inplace_abn: bool | None,
                        option: str = '--inplace-abn') -> str | None:
  """The ``warning:`` line for ``option`` (InPlaceABN's scale asked for:
  ``--inplace-abn``, ``train.init_from_inplace_abn=True``) given for a file
  (not of :data:`RELEASED`, which :func:`options` warns about) with
  ``num_batches_tracked`` buffers: standard PyTorch BatchNorm saves them,
  InPlaceABN does not (``source.saved_by_inplace_abn``)."""
  name = os.path.basename(paths.shown(path))
  if inplace_abn is not True or name in RELEASED or not layout.get('num_batches_tracked'):
    return None
  return (f'warning: {name} has num_batches_tracked buffers, as saved by standard '
          f'BatchNorm (InPlaceABN saves none): converted with {option} as asked, '
          'its BN scales |w| + 1e-5 are off if it was trained with BatchNorm (drop the '
          'option to use its BN weights as they are)')
