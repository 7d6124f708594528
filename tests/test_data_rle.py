"""COCO-style RLE decoding (PASCAL-Context's Detail annotations)."""
import numpy as np
import pytest

from hrseg_jax.data import rle


def _to_string(counts):
  """pycocotools' rleToString, written out independently for the test."""
  out = []
  for i, x in enumerate(counts):
    if i > 2:
      x -= counts[i - 2]
    more = True
    while more:
      c = x & 0x1F
      x >>= 5
      more = (x != -1) if c & 0x10 else (x != 0)
      if more:
        c |= 0x20
      out.append(chr(c + 48))
  return ''.join(out)


def _counts(mask):
  flat = mask.T.ravel()
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1,
                           [flat.size]])
  counts = np.diff(bounds).tolist()
  return counts if flat[0] == 0 else [0] + counts


def test_known_strings():
  assert rle.counts_from_string('8`0') == [8, 16]
  assert _to_string([8, 16]) == '8`0'
  mask = rle.decode({'size': [4, 6], 'counts': '8`0'})
  expected = np.zeros((4, 6), np.uint8)
  expected[:, 2:] = 1
  np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize('seed', range(5))
def test_round_trip_random_masks(seed):
  rng = np.random.default_rng(seed)
  h, w = rng.integers(1, 60, 2)
  mask = (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
  mask[: h // 2, : w // 3] = 1    # long runs, large deltas
  counts = _counts(mask)
  np.testing.assert_array_equal(
      rle.decode({'size': [int(h), int(w)], 'counts': _to_string(counts)}),
      mask)
  np.testing.assert_array_equal(
      rle.decode({'size': [int(h), int(w)], 'counts': counts}), mask)
  np.testing.assert_array_equal(
      rle.decode({'size': [int(h), int(w)],
                  'counts': _to_string(counts).encode()}), mask)


def test_invalid_rle():
  with pytest.raises(ValueError, match='expected 24'):
    rle.decode({'size': [4, 6], 'counts': [8, 15]})
  with pytest.raises(ValueError, match='truncated'):
    rle.counts_from_string('`')
