"""Writes the built-in synthetic dataset to disk in the Cityscapes layout.

Images go to ``<root>/leftImg8bit/{train,val,test}/...`` and labels, as
Cityscapes labelIds, to ``<root>/gtFine/...``, with list files in --list_dir,
so the real files path (decoding, labelIds -> trainIds) runs end to end.

Example:
  python scripts/prepare_synthetic.py --root /tmp/synthetic_cs \
      --num_train 200 --num_val 20 --height 256 --width 512
"""
from __future__ import annotations

import os
import shlex
import sys

from hrseg_jax import arguments
from hrseg_jax.data import lists
from hrseg_jax.data.synthetic import write_cityscapes_layout


def _check_args(args) -> None:
  """Bad numbers and a --root that is a file fail before anything is written."""
  for name in ('num_train', 'num_val', 'num_test'):
    if getattr(args, name) < 0:
      raise ValueError(f'--{name} must be >= 0, got {getattr(args, name)}')
  if not args.num_train + args.num_val + args.num_test:
    raise ValueError('--num_train, --num_val and --num_test are all 0: nothing to write')
  for name in ('height', 'width'):
    if getattr(args, name) < 1:
      raise ValueError(f'--{name} must be >= 1, got {getattr(args, name)}')
  if not 1 <= args.num_classes <= 19:
    raise ValueError(f'--num_classes must be 1..19 (the Cityscapes train ids), '
                     f'got {args.num_classes}')
  for flag, folder in (('--root', args.root), ('--list_dir', args.list_dir)):
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
      raise ValueError(f'{flag} {folder} is a file, not a folder')
  # New images beside earlier ones (of another size, perhaps) would mix two
  # datasets under the new list files.
  held = [name for name in ('leftImg8bit', 'gtFine')
          if os.path.isdir(os.path.join(args.root, name))
          and os.listdir(os.path.join(args.root, name))]
  if held:
    raise ValueError(f'--root {args.root} already holds a dataset '
                     f'({", ".join(n + "/" for n in held)}): pass an empty or new '
                     'folder (nothing there is replaced)')


def main(argv=None):
  parser = arguments.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True, help='folder to write (Cityscapes layout)')
  parser.add_argument('--list_dir', default='',
                      help='where the list files go (default: --root)')
  parser.add_argument('--num_train', type=int, default=200, help='training images (200)')
  parser.add_argument('--num_val', type=int, default=20, help='validation images (20)')
  parser.add_argument('--num_test', type=int, default=0, help='test images (0)')
  parser.add_argument('--height', type=int, default=256, help='image height (256)')
  parser.add_argument('--width', type=int, default=512, help='image width (512)')
  parser.add_argument('--num_classes', type=int, default=19,
                      help='classes drawn, of the 19 Cityscapes train ids (19)')
  parser.add_argument('--seed', type=int, default=0, help='random seed (0)')
  args = parser.parse_args(argv)
  try:
    _check_args(args)
    written = write_cityscapes_layout(
        args.root, num_train=args.num_train, num_val=args.num_val,
        num_test=args.num_test, image_size=(args.height, args.width),
        num_classes=args.num_classes, seed=args.seed,
        list_dir=args.list_dir or None)
  except (OSError, ValueError) as e:
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
    return 2
  h, w = args.height, args.width
  print(f'wrote {args.num_train} train, {args.num_val} val, {args.num_test} test '
        f'images ({h}x{w}) under {args.root}')
  print('\n'.join(lists.written_lines(written)))
  overrides = {
      'data.root': args.root, 'data.train_list': written.get('train', ''),
      'data.val_list': written.get('val', ''), 'data.base_size': max(h, w),
      'data.crop_size': f'({h // 2}, {w // 2})', 'data.eval_size': f'({h}, {w})',
      'data.eval_base_size': max(h, w), 'data.eval_crop_size': f'({h}, {w})',
      'eval.base_size': max(h, w), 'eval.crop_size': f'({h}, {w})',
      'train.init_from': ''}
  flags = [f'--config.{k}={v}' for k, v in overrides.items()]
  print('\nTrain on it with a Cityscapes config (from scratch), e.g.:\n  '
        + shlex.join(['python', '-m', 'hrseg_jax.main', '--config',
                      'configs/hrnet_w18_small_v1_cityscapes.py', '--workdir',
                      'runs/synthetic_cs', *flags]))
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
