"""Reading and decoding image and label files, with errors that name the file.

Images are decoded with OpenCV like the original (``cv2.imread`` semantics:
3-channel, BGR) and returned as **RGB** uint8.  Labels are read as stored: a
single-channel (grayscale) PNG gives its values, a palette ('P') PNG its
palette indices, exactly like ``np.array(Image.open(p).convert('P'))`` of the
original for those two modes.  RGB labels are rejected rather than quantised.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from hrseg_jax.data.errors import DataError

_JPEG_SOI = b'\xff\xd8'
_JPEG_EOI = b'\xff\xd9'
_JPEG_SOS = b'\xff\xda'
# OpenCV >= 4.10 decodes straight to RGB (identical to imread + BGR2RGB).
_IMREAD_RGB = getattr(cv2, 'IMREAD_COLOR_RGB', None)


def is_uri(path) -> bool:
  """True for ``gs://``, ``s3://``... paths (read through ``etils.epath``)."""
  return '://' in str(path)


def read_bytes(path: str) -> bytes:
  """Returns the bytes of ``path``; DataError if missing or unreadable.

  Local paths are read with ``open``; ``gs://`` (and other URI) paths through
  ``etils.epath`` (TensorFlow's gfile when installed, else fsspec).
  """
  try:
    if is_uri(path):
      from etils import epath  # pylint: disable=g-import-not-at-top
      data = epath.Path(path).read_bytes()
    else:
      with open(path, 'rb') as f:
        data = f.read()
  except FileNotFoundError:
    raise DataError(path, 'file not found') from None
  except OSError as e:
    raise DataError(path, f'cannot read file ({e})') from None
  if not data:
    raise DataError(path, 'empty file')
  return data


def _check_jpeg_complete(data: bytes, path: str) -> None:
  # Entropy-coded data byte-stuffs 0xFF, so the last EOI marker must follow
  # the last start-of-scan marker in a complete file (trailing bytes allowed).
  if data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS):
    raise DataError(path, 'truncated JPEG (no end-of-image marker)')


def decode_image(data: bytes, path: str = '<bytes>') -> np.ndarray:
  """Decodes an encoded image to RGB uint8 [H, W, 3].

  Raises:
    DataError: corrupt, truncated or not an image.
  """
  if data.startswith(_JPEG_SOI):
    _check_jpeg_complete(data, path)
  buf = np.frombuffer(data, np.uint8)
  if _IMREAD_RGB is not None:
    image = cv2.imdecode(buf, _IMREAD_RGB)
  else:
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is not None:
      image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  if image is None:
    raise DataError(path, 'cannot decode image (corrupt, truncated or not '
                    'an image)')
  return image


def decode_label(data: bytes, path: str = '<bytes>') -> np.ndarray:
  """Decodes an encoded label map to a 2-D integer array of stored values.

  Raises:
    DataError: corrupt or truncated, or a colour (non-palette) label image.
  """
  if data.startswith(_JPEG_SOI):
    raise DataError(path, 'label is a JPEG; lossy labels are not accepted')
  raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if raw is None:
    raise DataError(path, 'cannot decode label (corrupt, truncated or not '
                    'an image)')
  if raw.ndim == 2:
    return raw
  # OpenCV expands palette PNGs to colour; read the indices with PIL.
  try:
    with Image.open(io.BytesIO(data)) as im:
      mode = im.mode
      if mode in ('P', 'L'):
        return np.asarray(im)
  except OSError as e:
    raise DataError(path, f'cannot decode label ({e})') from None
  raise DataError(path, f'label image has mode {mode!r} with '
                  f'{raw.shape[-1]} channels; expected a single-channel or '
                  'palette PNG')


def read_image(path: str) -> np.ndarray:
  """Reads an image file as RGB uint8 [H, W, 3]."""
  return decode_image(read_bytes(path), path)


def read_label(path: str) -> np.ndarray:
  """Reads a label file as a 2-D array of stored values."""
  return decode_label(read_bytes(path), path)
