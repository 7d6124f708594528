"""Converts PASCAL-Context (Detail annotations) to label PNGs and list files.

Replaces the original's run-time Detail API: reads ``trainval_merged.json``
once and writes ``<out>/{train,val}/label/<name>.png`` (values 0..59, 0 =
background, in sorted raw-id order as the original), links the JPEGs to
``<out>/{train,val}/image/`` and writes train/val/testval/trainval lists.

Example:
  python scripts/prepare_pascal_ctx.py \
      --json data/pascal_ctx/VOCdevkit/VOC2010/trainval_merged.json \
      --images data/pascal_ctx/VOCdevkit/VOC2010/JPEGImages \
      --out data/pascal_ctx --list_dir data/list/pascal_ctx
"""
from __future__ import annotations

import sys

from hrseg_jax import arguments
from hrseg_jax.data import lists, pascal_ctx


def main(argv=None):
  parser = arguments.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--json', required=True,
                      help='trainval_merged.json (Detail format)')
  parser.add_argument('--images', required=True,
                      help='VOCdevkit/VOC2010/JPEGImages')
  parser.add_argument('--out', required=True, help='output dataset root')
  parser.add_argument('--list_dir', default='',
                      help='where the list files go (default: --out)')
  args = parser.parse_args(argv)
  try:
    written = pascal_ctx.convert(args.json, args.images, args.out,
                                 args.list_dir or None)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  labels = sum(len(lists.read_list(written[k])) for k in ('train', 'val') if k in written)
  print(f'wrote {labels} label PNGs from {args.json} under {args.out}/{{train,val}}/label')
  print('\n'.join(lists.written_lines(written)))
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
