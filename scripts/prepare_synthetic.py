"""Writes the built-in synthetic dataset to disk in the Cityscapes layout.

Images go to ``<root>/leftImg8bit/{train,val,test}/...`` and labels, as
Cityscapes labelIds, to ``<root>/gtFine/...``, with list files in --list_dir,
so the real files path (decoding, labelIds -> trainIds) runs end to end.

Example:
  python scripts/prepare_synthetic.py --root /tmp/synthetic_cs \
      --num_train 200 --num_val 20 --height 256 --width 512
"""
from __future__ import annotations

import argparse

from hrseg_jax.data.synthetic import write_cityscapes_layout


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--list_dir', default='',
                      help='where the list files go (default: --root)')
  parser.add_argument('--num_train', type=int, default=200)
  parser.add_argument('--num_val', type=int, default=20)
  parser.add_argument('--num_test', type=int, default=0)
  parser.add_argument('--height', type=int, default=256)
  parser.add_argument('--width', type=int, default=512)
  parser.add_argument('--num_classes', type=int, default=19)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  written = write_cityscapes_layout(
      args.root, num_train=args.num_train, num_val=args.num_val,
      num_test=args.num_test, image_size=(args.height, args.width),
      num_classes=args.num_classes, seed=args.seed,
      list_dir=args.list_dir or None)
  for split, path in sorted(written.items()):
    print(f'{split:9s} {path}')
  h, w = args.height, args.width
  print('\nUse with the cityscapes recipe, e.g. overrides:\n'
        f'  config.data.root = {args.root!r}\n'
        f'  config.data.train_list = {written.get("train", "")!r}\n'
        f'  config.data.val_list = {written.get("val", "")!r}\n'
        f'  config.data.base_size = {max(h, w)}\n'
        f'  config.data.crop_size = ({h // 2}, {w // 2})\n'
        f'  config.data.eval_size = ({h}, {w})\n'
        f'  config.data.eval_base_size = {max(h, w)}\n'
        f'  config.data.eval_crop_size = ({h}, {w})')


if __name__ == '__main__':
  main()
