"""Label maps: raw label values -> training ids, table-driven."""
import numpy as np
import pytest

from hrseg_jax.data import label_maps
from hrseg_jax.data.errors import DataError

# Cityscapes labelId -> trainId, spec 4.5 (255 = ignore).
CITYSCAPES = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1,
    9: 255, 10: 255, 11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5,
    18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18, 255: 255}

# (map name, {raw: train id} spot checks, invalid raw values)
CASES = [
    ('cityscapes', CITYSCAPES, [34, 100, 254]),
    ('lip', {0: 0, 13: 13, 14: 14, 19: 19, 255: 255}, [20, 21, 200]),
    ('pascal_ctx', {0: 255, 1: 0, 2: 1, 59: 58, 255: 255}, [60, 61, 254]),
    ('pascal_ctx60', {0: 0, 1: 1, 59: 59, 255: 255}, [60, 254]),
    ('ade20k', {0: 255, 1: 0, 2: 1, 150: 149, 255: 255}, [151, 200, 254]),
    ('cocostuff', {0: 255, 1: 0, 11: 10, 13: 11, 25: 23, 27: 24, 28: 25,
                   31: 26, 182: 170, 255: 255},
     [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91, 183, 254]),
]


@pytest.mark.parametrize('name,table,invalid', CASES,
                         ids=[c[0] for c in CASES])
def test_label_map_table(name, table, invalid):
  lm = label_maps.get_label_map(name)
  raw = np.array([list(table)], np.uint8)
  np.testing.assert_array_equal(lm.apply(raw, 'x.png')[0],
                                np.array(list(table.values()), np.uint8))
  for value in invalid:
    with pytest.raises(DataError, match=r'bad_label\.png.*\[%d\]' % value):
      lm.apply(np.array([[0, value]], np.uint8), 'bad_label.png')


@pytest.mark.parametrize('name,k', [('cityscapes', 19), ('lip', 20),
                                    ('pascal_ctx', 59), ('pascal_ctx60', 60),
                                    ('cocostuff', 171), ('ade20k', 150)])
def test_valid_values_cover_exactly_the_classes(name, k):
  lm = label_maps.get_label_map(name, k)
  mapped = lm.lut[lm.valid]
  assert lm.num_classes == k
  assert sorted(set(mapped.tolist()) - {255}) == list(range(k))
  # Distinct raw values never merge into one class except into ignore.
  counts = np.bincount(mapped[mapped != 255], minlength=k)
  assert counts.max() == 1


def test_cocostuff_raw_id_list():
  assert len(label_maps.COCOSTUFF_RAW_IDS) == 172
  assert label_maps.COCOSTUFF_RAW_IDS[:13] == tuple(range(12)) + (13,)


def test_cityscapes_inverse_map_round_trips():
  lm = label_maps.get_label_map('cityscapes')
  label_ids = label_maps.CITYSCAPES_TRAIN_TO_LABEL
  np.testing.assert_array_equal(lm.lut[label_ids], np.arange(19))
  assert label_ids[10] == 23 and label_ids[0] == 7   # sky, road


def test_lip_flip_pairs():
  lm = label_maps.get_label_map('lip')
  assert lm.flip_pairs == ((14, 15), (16, 17), (18, 19))
  expected = np.arange(256)
  for a, b in ((14, 15), (16, 17), (18, 19)):
    expected[a], expected[b] = b, a
  np.testing.assert_array_equal(lm.flip_lut, expected)
  assert label_maps.get_label_map('cityscapes').flip_pairs == ()


def test_identity_map_and_errors():
  lm = label_maps.get_label_map('identity', 3)
  np.testing.assert_array_equal(
      lm.apply(np.array([[0, 1, 2, 255]], np.uint8)), [[0, 1, 2, 255]])
  with pytest.raises(DataError, match=r'\[3\]'):
    lm.apply(np.array([[3]], np.uint8), 'y.png')
  with pytest.raises(ValueError, match='needs num_classes'):
    label_maps.get_label_map('identity')
  with pytest.raises(ValueError, match='has 19 classes'):
    label_maps.get_label_map('cityscapes', 20)
  with pytest.raises(ValueError, match='unknown label map'):
    label_maps.get_label_map('kitti')


def test_uint16_labels():
  lm = label_maps.get_label_map('ade20k')
  np.testing.assert_array_equal(
      lm.apply(np.array([[0, 150]], np.uint16)), [[255, 149]])
  with pytest.raises(DataError, match=r'big\.png.*\[300\]'):
    lm.apply(np.array([[1, 300]], np.uint16), 'big.png')
