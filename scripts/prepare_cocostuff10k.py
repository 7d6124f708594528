"""Converts COCO-Stuff-10k as downloaded to label PNGs and list files.

Reads ``<root>/imageLists/{train,test}.txt``, ``<root>/images/<name>.jpg``
and ``<root>/annotations/<name>.mat`` (the ``S`` label arrays, COCO ids
1..182, 0 = unlabeled) and writes ``<out>/{train,val}/label/<name>.png``
(the same values), links the JPEGs to ``<out>/{train,val}/image/`` and writes
train/val/testval/trainval lists (val = the 1,000 images of test.txt, as the
original).

Example:
  python scripts/prepare_cocostuff10k.py --root data/cocostuff-10k-v1.1 \\
      --out data/cocostuff --list_dir data/list/cocostuff
"""
from __future__ import annotations

import sys

from hrseg_jax import arguments
from hrseg_jax.data import cocostuff10k, lists


def main(argv=None):
  parser = arguments.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True,
                      help='the unpacked cocostuff-10k-v1.1 folder '
                           '(images/, annotations/, imageLists/)')
  parser.add_argument('--out', required=True, help='output dataset root (data/cocostuff)')
  parser.add_argument('--list_dir', default='',
                      help='where the list files go (default: --out)')
  args = parser.parse_args(argv)
  try:
    count, written = cocostuff10k.convert(args.root, args.out, args.list_dir or None)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {count} label PNGs from {args.root} under {args.out}/{{train,val}}/label')
  print('\n'.join(lists.written_lines(written)))
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
