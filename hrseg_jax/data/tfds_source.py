"""TFDS ArrayRecord datasets as random-access sources (no TensorFlow needed).

Reads datasets prepared with ``file_format='array_record'`` through
``tfds.data_source``: the TFDS Cityscapes builder (raw labelIds, mapped here
with the same label map as the files source) or datasets written by
``scripts/prepare_tfds.py``.  The encoded image and label bytes are read
without TFDS decoding and decoded like the files source (OpenCV, RGB; label
values as stored), so both paths give identical examples.
"""
from __future__ import annotations

from typing import Any

from hrseg_jax.data import decode
from hrseg_jax.data.errors import DataError
from hrseg_jax.data.label_maps import LabelMap


def open_data_source(name: str, split: str, data_dir: str | None,
                     skip_decoding: tuple[str, ...]):
  """Opens a prepared TFDS dataset as an ArrayRecord data source."""
  from hrseg_jax import console  # pylint: disable=g-import-not-at-top
  try:
    console.import_tensorflow_quietly()   # quiet, and off the GPUs
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("data.source='tfds' needs TensorFlow Datasets: "
                     "pip install 'hrseg-jax[tfds]'") from e
  decoders = {key: tfds.decode.SkipDecoding() for key in skip_decoding}
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            decoders=decoders, download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f'cannot open TFDS dataset {name!r} split {split!r} in data_dir '
        f'{data_dir!r}: it must be prepared with file_format="array_record" '
        f'(scripts/prepare_tfds.py, or tfds.builder(...).download_and_prepare'
        f'(file_format="array_record")). Cause: {e}') from e


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


class TfdsSource:
  """One split of a TFDS dataset, with the files source's output contract.

  Args:
    name: TFDS name, with config/version if needed.
    split: TFDS split (split syntax allowed, e.g. 'train+val').
    label_map: raw label -> training ids.
    data_dir: TFDS data directory (None = TFDS default).
    keys: (image, label, id) feature names.
    with_labels: False for splits without labels.
  """

  def __init__(self, name: str, split: str, label_map: LabelMap, *,
               data_dir: str | None = None,
               keys: tuple[str, str, str] = ('image', 'label', 'id'),
               with_labels: bool = True):
    self._name, self._split, self._data_dir = name, split, data_dir
    self._label_map = label_map
    self._keys = tuple(keys)
    self.has_labels = with_labels
    self._ds = None
    self._len = len(self._source())

  def _source(self):
    if self._ds is None:
      skip = self._keys[:2] if self.has_labels else self._keys[:1]
      self._ds = open_data_source(self._name, self._split, self._data_dir,
                                  skip)
    return self._ds

  def __getstate__(self):
    # Worker processes reopen the ArrayRecord files themselves.
    state = dict(self.__dict__)
    state['_ds'] = None
    return state

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:
    return f'TfdsSource({self._name!r}, split={self._split!r}, n={self._len})'

  def example_id(self, index: int) -> str:
    return _text(self._source()[int(index)][self._keys[2]])

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    record = self._source()[index]
    image_key, label_key, id_key = self._keys
    where = f'tfds:{self._name}[{self._split}][{index}]'
    example = {'image': decode.decode_image(record[image_key], where),
               'id': _text(record[id_key])}
    if self.has_labels:
      raw = decode.decode_label(record[label_key], where)
      if raw.ndim == 3:
        raw = raw[..., 0]
      if raw.shape != example['image'].shape[:2]:
        raise DataError(where, f'image size {example["image"].shape[:2]} != '
                        f'label size {raw.shape}')
      example['label'] = self._label_map.apply(raw, where)
    return example
