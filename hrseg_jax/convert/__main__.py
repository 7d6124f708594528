"""python -m hrseg_jax.convert CHECKPOINT.pth OUTPUT_DIR [options]

Converts an official PyTorch checkpoint (HRNetV2, HRNet-OCR, the seed fork's
HRNet+HANet and Lite-HRNet, mmpose Lite-HRNet backbones, ImageNet HRNet
backbones) into a self-describing Orbax checkpoint.
"""
from __future__ import annotations

import argparse
import sys

from hrseg_jax import arguments


def main(argv=None) -> int:
  p = arguments.ArgumentParser(prog='python -m hrseg_jax.convert', description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('checkpoint', help='.pth file (zip or legacy pre-1.6 format)')
  p.add_argument('output_dir', help='Orbax checkpoint directory to create')
  p.add_argument('--config', help='configs/X.py[:arg]; its `model` field fixes the '
                 'architecture (default: inferred from tensor shapes)')
  p.add_argument('--num-classes', type=int, help='classes of a freshly initialised '
                 'head (ImageNet backbones) or a check against the checkpoint')
  ac = p.add_mutually_exclusive_group()
  ac.add_argument('--align-corners', dest='align_corners', action='store_true',
                  default=None, help='bilinear align_corners=True (OCR, ADE20K, '
                  'COCO-Stuff checkpoints; the released files of the README table '
                  'get their own settings by name unless these options are given)')
  ac.add_argument('--no-align-corners', dest='align_corners', action='store_false')
  abn = p.add_mutually_exclusive_group()
  abn.add_argument('--inplace-abn', dest='inplace_abn', action='store_true', default=None,
                   help='checkpoint trained with InPlaceABN (*_torch04 files, master '
                   'branch): BN scale = |w| + 1e-5')
  abn.add_argument('--no-inplace-abn', dest='inplace_abn', action='store_false')
  p.add_argument('--backbone-only', action='store_true', default=None,
                 help='treat the file as a pretrained backbone: skip (and list) keys '
                 'the segmentation model lacks, initialise the head (auto-detected)')
  p.add_argument('--dataset', help='dataset the weights were trained on, for '
                 "predict's palette and class names (default: inferred from the "
                 'class count: 19 cityscapes, 20 lip, 59 pascal_ctx, 60 '
                 'pascal_ctx60, 150 ade20k, 171 cocostuff)')
  p.add_argument('--overwrite', action='store_true',
                 help='replace OUTPUT_DIR if it is a checkpoint written by hrseg_jax '
                 '(never a folder holding CHECKPOINT or other files)')
  p.add_argument('--seed', type=int, default=0, help='seed of a fresh head')
  args = p.parse_args(argv)
  try:
    if args.num_classes is not None and args.num_classes < 1:
      raise ValueError(f'--num-classes must be a positive integer, got {args.num_classes}')
    # The .pth file is read (and refused, if it must be) before JAX is imported.
    from hrseg_jax import overwrite, paths  # pylint: disable=g-import-not-at-top
    from hrseg_jax.convert import source  # pylint: disable=g-import-not-at-top
    src, dst = paths.resolve(args.checkpoint), paths.resolve(args.output_dir)
    overwrite.check_replaceable(dst, overwrite=args.overwrite, keep=[src])
    loaded = source.load_state(src)
    from hrseg_jax.convert import convert  # pylint: disable=g-import-not-at-top
    model_cfg = None
    if args.config:
      from hrseg_jax.config_utils import load_config_file  # pylint: disable=g-import-not-at-top
      model_cfg = load_config_file(args.config).model.to_dict()
    from hrseg_jax.convert import released  # pylint: disable=g-import-not-at-top
    # A file named as released whose contents differ is converted by what
    # it shows, not by its name (with a warning).
    align_corners, inplace_abn, note, warning = released.options(
        src, args.align_corners, args.inplace_abn, loaded=loaded,
        backbone_only=args.backbone_only)
    warnings = [warning] if warning else []
    if note:
      print(note, flush=True)
    # Not given: a file saved by InPlaceABN (no num_batches_tracked) gets its scale.
    convert.convert(src, dst, model_cfg=model_cfg,
                    num_classes=args.num_classes, align_corners=align_corners,
                    inplace_abn=inplace_abn, backbone_only=args.backbone_only,
                    overwrite=args.overwrite, seed=args.seed,
                    dataset=args.dataset, loaded=loaded,
                    log=lambda line: print(line, flush=True),
                    inplace_abn_override='--no-inplace-abn', warn=warnings.append)
    for line in warnings:   # last, where they are seen
      print(line, file=sys.stderr)
  except (OSError, ValueError, KeyError) as e:
    from hrseg_jax.convert.safe_pickle import printable  # pylint: disable=g-import-not-at-top
    # Names read from the file never reach the terminal as control characters.
    msg = printable(str(e).replace('\n', ' '))
    print(f'error: {msg}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
