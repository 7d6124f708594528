"""Converts a dataset in the original layout to a TFDS ArrayRecord dataset.

Worth it for large clusters and remote storage (few large shards instead of
many small files); read it back with ``config.data.source = 'tfds'``.
Labels stay raw (the label map is applied when reading) and image bytes are
stored unchanged, so both sources give identical examples.  Needs
TensorFlow to write; reading does not.

Example:
  python scripts/prepare_tfds.py --dataset ade20k --root data/ade20k \
      --train_list data/list/ade20k/train.lst \
      --val_list data/list/ade20k/val.lst --data_dir ~/tensorflow_datasets
  # then: config.data.source = 'tfds'; config.data.tfds_name = 'hrseg_ade20k'

For Cityscapes the TFDS builder 'cityscapes/semantic_segmentation' (fed with
the manually downloaded zips) works as is; this script is the alternative
when you have the extracted tree (its splits are then 'train' and 'val').
"""
from __future__ import annotations

import argparse

from hrseg_jax.data.config import DATASETS, default_data_config
from hrseg_jax.data.label_maps import get_label_map
from hrseg_jax.data.tfds_builder import write_tfds_dataset


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', required=True, choices=DATASETS[:-1])
  parser.add_argument('--root', default='', help='default: the recipe root')
  parser.add_argument('--train_list', default='')
  parser.add_argument('--val_list', default='')
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir')
  parser.add_argument('--name', default='',
                      help='TFDS name (default: hrseg_<dataset>)')
  parser.add_argument('--no_validate', action='store_true',
                      help='skip decoding and checking every example')
  args = parser.parse_args(argv)
  cfg = default_data_config(args.dataset)
  name = args.name or f'hrseg_{cfg.root.rstrip("/").split("/")[-1]}'
  splits = {'train': args.train_list or cfg.train_list,
            'val': args.val_list or cfg.val_list}
  label_map = None if args.no_validate else get_label_map(
      'pascal_ctx60' if cfg.label_map == 'pascal_ctx' else cfg.label_map)
  path = write_tfds_dataset(
      name, args.root or cfg.root, {s: p for s, p in splits.items() if p},
      args.data_dir, image_prefix=cfg.image_prefix,
      label_prefix=cfg.label_prefix,
      image_format='png' if args.dataset == 'cityscapes' else 'jpeg',
      label_map=label_map)
  print(f'wrote {path}\nread it with these config.data overrides:\n'
        f'  source = "tfds"\n  tfds_name = {name!r}\n'
        f'  tfds_data_dir = {args.data_dir!r}\n'
        '  tfds_train_split = "train"\n  tfds_val_split = "val"\n'
        '  tfds_image_key = "image"\n  tfds_label_key = "label"\n'
        '  tfds_id_key = "id"')


if __name__ == '__main__':
  main()
