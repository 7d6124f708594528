"""Writes the original list files of a dataset by scanning its directory tree.

The lists are sorted by path, which reproduces the original repository's
lists for a complete dataset (Cityscapes: 2975 train / 500 val / 3475
trainval / 1525 test lines; ADE20K's val list differs only in the original's
displaced ADE_val_00000016..27).

Examples:
  python scripts/make_lists.py cityscapes --root data/cityscapes \
      --out data/list/cityscapes
  python scripts/make_lists.py lip --root data/lip --out data/list/lip
  python scripts/make_lists.py ade20k --root data/ade20k --out data/list/ade20k
  (data/ade20k: {train,val}/{image,label}/ or ADEChallengeData2016 as
  downloaded, images/{training,validation}/ + annotations/...)
"""
from __future__ import annotations

import argparse
import sys

from hrseg_jax import arguments
from hrseg_jax.data import lists


def main(argv=None):
  parser = arguments.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('dataset', choices=sorted(lists.LIST_FORMATS))
  parser.add_argument('--root', required=True,
                      help='dataset directory in the original layout')
  parser.add_argument('--out', required=True, help='directory for the lists')
  args = parser.parse_args(argv)
  try:
    written = lists.make_lists(args.dataset, args.root, args.out)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(lists.found_line(args.root, written))
  print('\n'.join(lists.written_lines(written)))
  if 'val' not in written:   # --mode eval would then only say the list is missing
    print(f'note: no val images under {args.root}, so no val list: --mode eval and '
          f'validation during training need them (expected {lists.LAYOUTS[args.dataset]})')
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
