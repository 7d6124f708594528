"""What the released HRNet-Semantic-Segmentation checkpoints were trained
with that their files do not record: bilinear ``align_corners`` and
InPlaceABN's BN scale (README, "Using the official checkpoints").

``python -m hrseg_jax.convert`` converts a file of this table, named as
released, with its own settings unless told otherwise (and then warns).
"""
from __future__ import annotations

import os

import numpy as np

from hrseg_jax import paths
from hrseg_jax.convert import source
from hrseg_jax.models import from_state_dict

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


# What the released files hold, which their name must not override when a
# file under that name holds something else: all are HRNetV2-W48 (these
# branch widths), with an OCR head where the name says ``ocr``, and the
# class count of their dataset (PASCAL-Context: 59, or 60 with background).
W48_WIDTHS = (48, 96, 192, 384)
_CLASSES = {'_cs_': (19,), '_pascal_ctx_': (59, 60), '_lip_': (20,),
            '_cocostuff_': (171,), '_ade20k_': (150,)}


def contents(name: str) -> tuple[tuple[int, ...], bool]:
  """(class counts, OCR head) of the released file ``name`` of :data:`RELEASED`."""
  classes = next(v for k, v in _CLASSES.items() if k in name)
  return classes, name.startswith('hrnet_ocr_')


def _bn(inplace_abn: bool) -> str:
  return 'InPlaceABN' if inplace_abn else 'standard BatchNorm'


def differences(name: str, state, layout) -> list[str]:
  """How the file ``name`` of :data:`RELEASED` (its ``state`` and ``layout``,
  as :func:`source.load_state` read them) differs from the released file of
  that name: its BN buffers (``num_batches_tracked``: standard BatchNorm,
  where the file was trained with InPlaceABN), its architecture, its class
  count. Empty: nothing the file shows contradicts its name."""
  want_abn = RELEASED[name][1]
  classes, ocr = contents(name)
  found = []
  if want_abn and layout.get('num_batches_tracked'):
    found.append('num_batches_tracked buffers (standard BatchNorm, not InPlaceABN)')
  if any(k.startswith('stem.') for k in state):
    found.append('a Lite-HRNet (not HRNetV2-W48)')
    return found
  keys = [f'stage4.0.branches.{i}.0.conv1.weight' for i in range(4)]
  widths = tuple(int(np.shape(state[k])[0]) for k in keys
                 if k in state and np.ndim(state[k]) == 4)
  if widths != W48_WIDTHS:
    found.append(f'branch widths {", ".join(map(str, widths)) or "unknown"} (not '
                 f"HRNetV2-W48's {', '.join(map(str, W48_WIDTHS))})")
  if ('conv3x3_ocr.0.weight' in state) != ocr:
    found.append('no OCR head (not HRNet-OCR)' if ocr else 'an OCR head (not plain HRNetV2)')
  head = next((k for k in ('last_layer.3.weight', 'cls_head.weight') if k in state), None)
  if head is None or np.ndim(state[head]) < 1:
    found.append('no segmentation head')
  elif np.shape(state[head])[0] not in classes:
    found.append(f'{np.shape(state[head])[0]} classes (not '
                 f'{" or ".join(map(str, classes))})')
  return found


def shows_inplace_abn(state, layout, backbone_only: bool | None = None) -> bool:
  """Whether the file's own evidence says InPlaceABN: a segmentation model
  (not ``backbone_only``) saved with BN statistics but no
  ``num_batches_tracked`` buffers (:func:`source.saved_by_inplace_abn`)."""
  return bool(not backbone_only and source.saved_by_inplace_abn(state, layout)
              and from_state_dict.has_head(state))


def mismatch_warning(name: str, found: list[str], done: str, hint: str = '') -> str:
  """The ``warning:`` line for a file named as released whose contents
  differ (``found``, :func:`differences`): ``done``, how it was converted
  instead; ``hint``, the options that give it the released file's settings."""
  return (f'warning: {name} is named as a released checkpoint but its contents differ: '
          f'{", ".join(found)}; converted as a file of its own, with {done}'
          + (f'; {hint}' if hint else ''))


def bn_done(inplace_abn: bool, asked: bool, layout) -> str:
  """How the BN scale was chosen, for :func:`mismatch_warning`."""
  if asked:
    return f'{_bn(inplace_abn)} as asked'
  if inplace_abn:
    return "InPlaceABN's BN scale |w| + 1e-5 (it has no num_batches_tracked buffers)"
  if layout.get('num_batches_tracked'):
    return 'standard BatchNorm (its num_batches_tracked buffers)'
  return 'standard BatchNorm'


def _not_as_released(name, found, align_corners, inplace_abn, loaded, backbone_only):
  """:func:`options` for a file whose contents contradict its released name:
  what it shows wins (InPlaceABN only without num_batches_tracked buffers),
  options given are kept, align_corners takes the plain default."""
  want_align, want_abn = RELEASED[name]
  abn = shows_inplace_abn(*loaded, backbone_only) if inplace_abn is None else inplace_abn
  align = bool(align_corners)
  align_how = f'align_corners={align}' + (' as asked' if align_corners is not None
                                          else ' (the default)')
  # The released file's settings it did not get, and the options that give them.
  hint = [(opt, what) for given, got, want, opt, what in (
      (align_corners, align, want_align, '--align-corners', 'align_corners=True'),
      (inplace_abn, abn, want_abn, '--inplace-abn', 'InPlaceABN'))
          if given is None and want and not got]
  return (align, abn, None, mismatch_warning(
      name, found, f'{bn_done(abn, inplace_abn is not None, loaded[1])}, {align_how}',
      f'pass {" ".join(o for o, _ in hint)} if it was trained with '
      f'{" and ".join(w for _, w in hint)}' if hint else ''))


def options(path: str, align_corners: bool | None, inplace_abn: bool | None,
            loaded: tuple | None = None, backbone_only: bool | None = None
            ) -> tuple[bool | None, bool | None, str | None, str | None]:
  """(align_corners, inplace_abn, note, warning) to convert ``path`` with.

  For a file of :data:`RELEASED`, named as released, an option not given
  (None) takes the value the file was trained with, which ``note`` names
  where it differs from the plain default; an
  option given against it is kept, and ``warning`` says so. For other files
  the options are returned as given (None: not given) and both lines are None.

  With ``loaded`` (the file's ``(state, layout)``), a file named as released
  whose contents differ (:func:`differences`) gets what it shows instead
  (InPlaceABN only if it has no ``num_batches_tracked`` buffers, unless
  asked for; ``backbone_only`` as given to the converter) and the plain
  default align_corners=False, both returned as decided (not None), and
  ``warning`` says what differs and what was done.
  """
  name = os.path.basename(paths.shown(path))   # a symlink by its own name
  if name not in RELEASED:
    return align_corners, inplace_abn, None, None
  if loaded is not None:
    found = differences(name, *loaded)
    if found:
      return _not_as_released(name, found, align_corners, inplace_abn, loaded,
                              backbone_only)
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
