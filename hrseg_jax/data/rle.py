"""Decoding COCO-style run-length encoded masks (pycocotools format) in NumPy.

An RLE is ``{'size': [h, w], 'counts': ...}``: alternating run lengths of 0s
and 1s (starting with 0s) over the mask in column-major order.  ``counts`` is
either a list of ints or the compressed string of ``pycocotools``
(``rleToString``: each count as 5-bit groups in ASCII 48.., a 0x20 bit meaning
"more groups", sign-extended from 0x10 of the last group, and counts after
the second stored as differences to the count two before).
"""
from __future__ import annotations

import numpy as np


def counts_from_string(s: str | bytes) -> list[int]:
  """Decodes pycocotools' compressed counts string."""
  data = s.encode() if isinstance(s, str) else s
  counts: list[int] = []
  p = 0
  while p < len(data):
    x = k = 0
    more = True
    while more:
      if p >= len(data):
        raise ValueError('truncated RLE counts string')
      c = data[p] - 48
      x |= (c & 0x1F) << (5 * k)
      more = bool(c & 0x20)
      p += 1
      k += 1
      if not more and c & 0x10:
        x |= -1 << (5 * k)
    if len(counts) > 2:
      x += counts[-2]
    counts.append(x)
  return counts


def decode(rle: dict) -> np.ndarray:
  """Returns the uint8 {0, 1} mask [h, w] of an RLE dict."""
  h, w = (int(v) for v in rle['size'])
  counts = rle['counts']
  if isinstance(counts, (str, bytes)):
    counts = counts_from_string(counts)
  counts = np.asarray(counts, np.int64)
  if (counts.size and counts.min() < 0) or counts.sum() != h * w:
    raise ValueError(f'invalid RLE: counts {counts[:8].tolist()}... sum to '
                     f'{counts.sum()}, expected {h * w} = {h}x{w}')
  values = np.arange(counts.size, dtype=np.int64) % 2
  flat = np.repeat(values.astype(np.uint8), counts)
  return flat.reshape(w, h).T.copy()
