"""Writes a dataset in the original layout as a TFDS ArrayRecord dataset.

Used by ``scripts/prepare_tfds.py``.  Worth it on large clusters and remote
storage: thousands of small files become a few ArrayRecord shards readable
with random access by ``tfds.data_source`` (copy them to local disk first;
ArrayRecord random access does not work on GCS, tensorflow/datasets#5100).

Each example stores the **original encoded bytes** of the image (no
re-encoding, so decoding gives exactly what the files source gives), the raw
label as a single-channel PNG (palette PNGs are re-encoded as grayscale with
the same values) and the id.  Labels stay raw: the label map is applied at
read time, as for the files source.  Preparing needs TensorFlow (TFDS writes
through it); reading does not.
"""
from __future__ import annotations

import contextlib
import io
import os
import time
import types
from typing import Callable

import cv2
import numpy as np
import tensorflow_datasets as tfds

from hrseg_jax import files
from hrseg_jax.progress import Progress
from hrseg_jax.data import decode
from hrseg_jax.data import lists
from hrseg_jax.data.errors import DataError
from hrseg_jax.data.label_maps import LabelMap


def _label_png(data: bytes, path: str) -> bytes:
  raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if raw is not None and raw.ndim == 2:
    return data
  ok, encoded = cv2.imencode('.png', decode.decode_label(data, path))
  if not ok:
    raise DataError(path, 'cannot re-encode label as PNG')
  return encoded.tobytes()


def _examples(root, entries, image_prefix, label_prefix, label_map):
  for entry in entries:
    image_path = os.path.join(root, image_prefix, entry[0])
    image_bytes = decode.read_bytes(image_path)
    example = {'image': image_bytes,
               'id': os.path.splitext(os.path.basename(entry[0]))[0]}
    if len(entry) > 1:
      label_path = os.path.join(root, label_prefix, entry[1])
      label_bytes = _label_png(decode.read_bytes(label_path), label_path)
      if label_map is not None:
        image = decode.decode_image(image_bytes, image_path)
        raw = decode.decode_label(label_bytes, label_path)
        if raw.shape != image.shape[:2]:
          raise DataError(f'{image_path} / {label_path}',
                          f'image size {image.shape[:2]} != label size '
                          f'{raw.shape}')
        label_map.apply(raw, label_path)
      example['label'] = label_bytes
    yield entry[0], example


def _plain_progress(examples, total: int, split: str, log: Callable[[str], None],
                    every_s: float = 60.0):
  """``examples``, with a line to ``log`` at each tenth of ``total`` (and at
  least every ``every_s`` seconds): the progress bars' form for a log file."""
  progress = Progress(total, f'converting {split}')
  last = time.monotonic()
  for done, example in enumerate(examples, 1):
    now = time.monotonic()
    if done * 10 // total > (done - 1) * 10 // total or now - last >= every_s:
      log(progress.line(done))
      last = now
    yield example


def write_tfds_dataset(name: str, root: str, split_lists: dict[str, str],
                       data_dir: str, *, image_prefix: str = '',
                       label_prefix: str = '', image_format: str = 'jpeg',
                       label_map: LabelMap | None = None,
                       version: str = '1.0.0',
                       log: Callable[[str], None] | None = None) -> str:
  """Converts list-file splits of a dataset into a TFDS ArrayRecord dataset.

  Args:
    name: TFDS dataset name (e.g. 'hrseg_ade20k'), read back with
      ``tfds.data_source(name, data_dir=data_dir)``.
    root: dataset directory (list paths are relative to it).
    split_lists: {TFDS split name: list file}; all lists must have labels.
    data_dir: TFDS data directory to write into.
    image_prefix, label_prefix: as ``config.data.image_prefix`` etc.
    image_format: 'jpeg' or 'png', recorded in the feature spec.
    label_map: if given, every example is decoded and checked (sizes, label
      values) while converting.
    version: dataset version.
    log: receives a plain progress line per tenth of each split instead of
      TFDS's progress bars (None: the bars, for a terminal).

  Returns:
    The directory of the written dataset version.
  """
  target = os.path.join(data_dir, name, version)
  if os.path.isdir(target) and os.listdir(target):
    # TFDS would reuse it silently: the lists' current contents would not be written.
    raise ValueError(f'{target} already holds a TFDS dataset (kept; nothing written): '
                     'remove it, or write to another name or data_dir')
  split_entries = {s: lists.read_list(p) for s, p in split_lists.items()}
  for split, entries in split_entries.items():
    if len(entries[0]) < 2:
      raise ValueError(f'split {split!r} has no labels; only labelled splits '
                       'are converted')
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3),
                                   encoding_format=image_format),
      'label': tfds.features.Image(shape=(None, None, 1),
                                   encoding_format='png'),
      'id': tfds.features.Text(),
  })

  def body(ns):
    ns['VERSION'] = tfds.core.Version(version)
    ns['RELEASE_NOTES'] = {version: 'Converted by hrseg_jax.'}
    ns['name'] = name

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=features,
          description=f'{name}: converted from {root} by hrseg_jax '
                      '(raw labels; apply the dataset label map).')

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(entries, split)
              for split, entries in split_entries.items()}

    def _generate_examples(self, entries, split):
      examples = _examples(root, entries, image_prefix, label_prefix, label_map)
      return _plain_progress(examples, len(entries), split, log) if log else examples

    ns.update(_info=_info, _split_generators=_split_generators,
              _generate_examples=_generate_examples)

  cls = types.new_class(f'Builder_{name}', (tfds.core.GeneratorBasedBuilder,),
                        {'skip_registration': True}, body)
  # TFDS makes data_dir/<name> and data_dir/downloads/extracted (and
  # data_dir's missing parents) before the first example; it removes its own
  # incomplete.* folder when one fails, these folders are removed here then
  # (the empty download folders after success too: nothing is downloaded).
  made_for_name = files.missing_folders(os.path.join(data_dir, name))
  made_for_downloads = files.missing_folders(
      os.path.join(data_dir, 'downloads', 'extracted'))
  try:
    builder = cls(data_dir=data_dir)
    # TFDS prints 'Downloading and preparing dataset Unknown size ...' and
    # '... downloaded and prepared' to stdout: nothing is downloaded here, and
    # the caller says what was written.  Its progress bars (stderr) stay,
    # unless ``log`` takes plain lines instead.
    if log:
      tfds.display_progress_bar(False)
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(
          file_format='array_record',
          download_config=tfds.download.DownloadConfig(
              download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  except BaseException:
    files.remove_empty_folders(made_for_downloads + made_for_name)
    raise
  finally:
    if log:
      tfds.display_progress_bar(True)
  files.remove_empty_folders(made_for_downloads)
  return str(builder.data_dir)
