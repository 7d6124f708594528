"""Random-access sources: decoded image, mapped label and id per example.

Every source (files here, TFDS in :mod:`hrseg_jax.data.tfds_source`, synthetic
in :mod:`hrseg_jax.data.synthetic`) follows Grain's random-access protocol
(``__len__``, ``__getitem__``) and returns::

  {'image': uint8 [H, W, 3] RGB,
   'label': uint8 [H, W] training ids, 255 = ignore (absent for test splits),
   'id': str}

The id is the image file name without extension (e.g.
``aachen_000000_000019_leftImg8bit``), which is also the name the original
uses for saved predictions.
"""
from __future__ import annotations

import os
from typing import Any

from hrseg_jax import paths
from hrseg_jax.data import decode
from hrseg_jax.data import lists
from hrseg_jax.data import tfds_source
from hrseg_jax.data.errors import DataError
from hrseg_jax.data.label_maps import LabelMap, get_label_map
from hrseg_jax.data.synthetic import SyntheticSource

SPLITS = ('train', 'val', 'test')


class FileSource:
  """Examples listed in a list file, read from image and label files.

  Args:
    entries: list-file entries (image[, label, ...]) relative to the root.
    root: the dataset directory.
    label_map: raw label value -> training id.
    image_prefix: directory (relative to root) prepended to image paths.
    label_prefix: directory (relative to root) prepended to label paths.
  """

  def __init__(self, entries: list[lists.Entry], root: str,
               label_map: LabelMap, *, image_prefix: str = '',
               label_prefix: str = ''):
    self._root = root
    self.list_path = ''   # the list file the entries come from (from_list)
    self._image_prefix, self._label_prefix = image_prefix, label_prefix
    self._label_map = label_map
    self._images = [os.path.join(root, image_prefix, e[0]) for e in entries]
    self.has_labels = len(entries[0]) > 1
    self._labels = ([os.path.join(root, label_prefix, e[1]) for e in entries]
                    if self.has_labels else None)

  @classmethod
  def from_list(cls, list_path: str, root: str, label_map: LabelMap,
                **kwargs) -> 'FileSource':
    source = cls(lists.read_list(list_path), root, label_map, **kwargs)
    source.list_path = list_path
    return source

  def check_layout(self, *, first_entry: bool = True) -> None:
    """Start-up checks of the list against the tree, before any reading.

    Raises DataError for a ``root`` that is not a folder, for Cityscapes
    trainId labels (``*_labelTrainIds.png``) read with the labelId map (every
    trainId is also a labelId, so they would train on wrong classes without
    a single invalid value) and, with ``first_entry``, for a first image or
    label that is not there (a wrong root or prefix fails at once, not at
    the first batch).  Local paths only; ``gs://`` roots are not stat-ed.
    """
    list_path = paths.shown(self.list_path)
    if self._labels and self._label_map.name == 'cityscapes':
      trainids = [p for p in self._labels if p.endswith('_labelTrainIds.png')]
      if trainids:
        raise DataError(trainids[0], (
            f'a trainId label (listed in {list_path}), but data.label_map='
            "'cityscapes' maps the labelIds of *_gtFine_labelIds.png: list those "
            '(scripts/make_lists.py does) or pass --config.data.label_map=identity'))
    self.check_label_kind()
    if decode.is_uri(self._root):
      return
    if not os.path.isdir(self._root or '.'):
      raise DataError(self._root, f'data.root folder not found (the paths in '
                      f'{list_path} are relative to it)')
    if not first_entry:
      return
    firsts = [(self._images[0], 'image', self._image_prefix)]
    if self._labels:
      firsts.append((self._labels[0], 'label', self._label_prefix))
    for path, kind, prefix in firsts:
      if not os.path.isfile(path):
        joined = 'data.root' + (f' + data.{kind}_prefix={prefix!r}' if prefix else '')
        raise DataError(path, f'file not found: the first {kind} of {list_path}, '
                        f'joined to {joined}')

  def check_label_kind(self) -> None:
    """COCO-Stuff's label conventions share their values, so a list read with
    the wrong map would train on shifted classes without one invalid value:
    refused at start-up, with the map the files take."""
    name = self._label_map.name
    if not self._labels or name not in ('cocostuff', 'cocostuff164k'):
      return
    for path in self._labels:
      if path.endswith('_labelTrainIds.png'):
        kind, fix = "mmsegmentation's trainIds (0..170)", 'identity'
      elif (os.path.basename(os.path.dirname(path)) in ('train2017', 'val2017')
            and os.path.basename(os.path.dirname(os.path.dirname(path))) == 'annotations'):
        kind = "COCO-Stuff-164k's stuffthingmaps (COCO id - 1, 255 = unlabeled)"
        fix = 'cocostuff164k'
      else:
        continue
      if fix != name:
        raise DataError(path, f'a label in {kind}, listed in '
                        f'{paths.shown(self.list_path)}, but data.label_map={name!r}: '
                        f'pass --config.data.label_map={fix}')

  def __len__(self) -> int:
    return len(self._images)

  def __repr__(self) -> str:
    return (f'FileSource(root={self._root!r}, n={len(self)}, '
            f'label_map={self._label_map.name!r})')

  def image_path(self, index: int) -> str:
    return self._images[index]

  def example_id(self, index: int) -> str:
    return os.path.splitext(os.path.basename(self._images[index]))[0]

  def _read(self, read, path: str):
    """``read(path)``; a missing file's error also names the list."""
    try:
      return read(path)
    except DataError as e:
      if self.list_path and e.reason == 'file not found':
        raise DataError(e.path,
                        f'file not found (listed in {paths.shown(self.list_path)})') from None
      raise

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    image_path = self._images[index]
    example = {'image': self._read(decode.read_image, image_path),
               'id': self.example_id(index)}
    if self.has_labels:
      label_path = self._labels[index]
      raw = self._read(decode.read_label, label_path)
      if raw.shape != example['image'].shape[:2]:
        raise DataError(
            f'{image_path} / {label_path}',
            f'image size {example["image"].shape[:2]} != label size '
            f'{raw.shape}')
      example['label'] = self._label_map.apply(raw, label_path)
    return example


def _size(value) -> tuple[int, int]:
  h, w = (int(v) for v in value)
  return h, w


def make_source(data_cfg, split: str):
  """Returns the random-access source of ``split`` for ``config.data``.

  Args:
    data_cfg: ``config.data`` (see :mod:`hrseg_jax.data.config`).
    split: 'train', 'val' or 'test'.
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  if data_cfg.ignore_label != 255:
    raise ValueError('data.ignore_label must be 255: every label map writes '
                     f'ignore as 255 (got {data_cfg.ignore_label})')
  label_map = get_label_map(data_cfg.label_map, data_cfg.num_classes)
  if data_cfg.source == 'synthetic':
    count = {'train': data_cfg.num_train, 'val': data_cfg.num_val}.get(split)
    if not count:
      raise ValueError(f'synthetic data has no {split!r} split (num_{split})')
    return SyntheticSource(count, image_size=_size(data_cfg.image_size),
                           num_classes=data_cfg.num_classes,
                           seed=data_cfg.seed, split=split)
  if data_cfg.source == 'tfds':
    return tfds_source.TfdsSource(
        data_cfg.tfds_name, data_cfg[f'tfds_{split}_split'], label_map,
        data_dir=data_cfg.tfds_data_dir or None,
        keys=(data_cfg.tfds_image_key, data_cfg.tfds_label_key,
              data_cfg.tfds_id_key),
        with_labels=split != 'test')
  if data_cfg.source != 'files':
    raise ValueError(f"data.source must be 'files', 'tfds' or 'synthetic', "
                     f'got {data_cfg.source!r}')
  list_path = data_cfg[f'{split}_list']
  if not list_path:
    raise ValueError(f'data.{split}_list is not set for {data_cfg.name!r}')
  source = FileSource.from_list(
      list_path, data_cfg.root, label_map,
      image_prefix=data_cfg.image_prefix, label_prefix=data_cfg.label_prefix)
  source.check_layout(first_entry=not data_cfg.skip_bad_examples)
  return source
