"""Converts a dataset in the original layout to a TFDS ArrayRecord dataset.

Worth it for large clusters and remote storage (few large shards instead of
many small files); read it back with ``config.data.source = 'tfds'``.
Labels stay raw (the label map is applied when reading) and image bytes are
stored unchanged, so both sources give identical examples.  Needs
TensorFlow to write; reading does not.  In a terminal TFDS draws progress
bars; into a log file, a pipe or CI it prints a plain line per tenth of
each split instead.

Example:
  python scripts/prepare_tfds.py --dataset ade20k --root data/ade20k \
      --train_list data/list/ade20k/train.lst \
      --val_list data/list/ade20k/val.lst --data_dir ~/tensorflow_datasets
  # then train with the flags it prints: --config.data.source=tfds
  #   --config.data.tfds_name=hrseg_ade20k --config.data.tfds_data_dir=...
  # (COCO-Stuff-164k: --label_map cocostuff164k, and the same for training)

For Cityscapes the TFDS builder 'cityscapes/semantic_segmentation' (fed with
the manually downloaded zips) works as is; this script is the alternative
when you have the extracted tree (its splits are then 'train' and 'val').
"""
from __future__ import annotations

import os
import sys

from hrseg_jax import arguments
from hrseg_jax.data import lists
from hrseg_jax.data import sources
from hrseg_jax.data.errors import DataError
from hrseg_jax.data.config import DATASETS, default_data_config
from hrseg_jax.data.label_maps import get_label_map


def _check_first_entries(root: str, splits: dict[str, str], cfg) -> None:
  """A wrong --root or list fails here in one line, before TFDS makes any
  folder (list paths are relative to the root, LIP's with its prefixes)."""
  if not os.path.isdir(root):
    raise DataError(root, 'dataset folder not found (--root; the list paths are relative to it)')
  for split, list_path in splits.items():
    if not list_path:
      continue
    entry = lists.read_list(list_path)[0]
    for column, prefix in zip(entry[:2], (cfg.image_prefix, cfg.label_prefix)):
      path = os.path.join(root, prefix, column)
      if not os.path.isfile(path):
        raise DataError(path, f'file not found: the first {split} entry of {list_path}, '
                        'joined to --root' + (f' and {prefix!r}' if prefix else ''))


def _check_label_kind(root: str, splits: dict[str, str], map_name: str,
                      num_classes: int) -> None:
  """COCO-Stuff label files of another convention than ``map_name`` (see
  hrseg_jax.data.sources) fail here, naming the --label_map to pass."""
  label_map = get_label_map(map_name, num_classes if map_name == 'identity' else None)
  for list_path in splits.values():
    if not list_path:
      continue
    source = sources.FileSource.from_list(list_path, root, label_map)
    try:
      source.check_label_kind()
    except DataError as e:
      raise DataError(e.path, e.reason.replace('--config.data.label_map=', '--label_map ')
                      .replace('data.label_map=', '--label_map ')) from None


def _progress_log():
  """TFDS's progress bars for a terminal; for a log file, a pipe or CI (where
  each redraw is one more carriage-return fragment) plain lines, each tenth
  of a split, on the same stream."""
  if sys.stderr.isatty():
    return None
  return lambda line: print(line, file=sys.stderr, flush=True)


def main(argv=None):
  parser = arguments.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', required=True, choices=DATASETS[:-1])
  parser.add_argument('--root', default='', help='default: the recipe root')
  parser.add_argument('--train_list', default='')
  parser.add_argument('--val_list', default='')
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir')
  parser.add_argument('--name', default='',
                      help="TFDS name (default: the recipe's data.tfds_name, hrseg_<dataset>)")
  parser.add_argument('--label_map', default='',
                      help="label map the examples are checked with (default: the recipe's; "
                           "e.g. cocostuff164k, identity); labels are stored raw")
  parser.add_argument('--no_validate', action='store_true',
                      help='skip decoding and checking every example')
  args = parser.parse_args(argv)
  cfg = default_data_config(args.dataset)
  name = args.name or (cfg.tfds_name if cfg.tfds_name.startswith('hrseg_')
                       else f'hrseg_{args.dataset}')
  splits = {'train': args.train_list or cfg.train_list,
            'val': args.val_list or cfg.val_list}
  map_name = args.label_map or cfg.label_map
  try:
    label_map = None if args.no_validate else get_label_map(
        'pascal_ctx60' if map_name == 'pascal_ctx' else map_name,
        cfg.num_classes if map_name == 'identity' else None)
    _check_first_entries(args.root or cfg.root, splits, cfg)
    _check_label_kind(args.root or cfg.root, splits, map_name, cfg.num_classes)
    from hrseg_jax.data.tfds_builder import write_tfds_dataset  # pylint: disable=g-import-not-at-top
    path = write_tfds_dataset(
        name, args.root or cfg.root, {s: p for s, p in splits.items() if p},
        args.data_dir, image_prefix=cfg.image_prefix,
        label_prefix=cfg.label_prefix,
        image_format='png' if args.dataset == 'cityscapes' else 'jpeg',
        label_map=label_map, log=_progress_log())
  except ImportError as e:
    print(f"error: writing a TFDS dataset needs TensorFlow Datasets ({e}): "
          "pip install -e '.[tensorflow]'", file=sys.stderr)
    return 2
  except (OSError, ValueError) as e:
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
    return 2
  flags = ['--config.data.source=tfds', f'--config.data.tfds_name={name}',
           f'--config.data.tfds_data_dir={args.data_dir}']
  for field, value in (('tfds_train_split', 'train'), ('tfds_val_split', 'val'),
                       ('tfds_image_key', 'image'), ('tfds_label_key', 'label'),
                       ('tfds_id_key', 'id')):
    if cfg[field] != value:
      flags.append(f'--config.data.{field}={value}')
  if args.label_map and args.label_map != cfg.label_map:
    flags.append(f'--config.data.label_map={args.label_map}')
  print(f'wrote {path}\nread it with: ' + ' '.join(flags))
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
