"""Class names and palettes per dataset."""
import numpy as np
import pytest

from hrseg_jax.eval import classes, palettes


@pytest.mark.parametrize('dataset,k,first,last,checks', [
    ('cityscapes', 19, 'road', 'bicycle', {13: 'car'}),
    ('lip', 20, 'background', 'right-shoe', {14: 'left-arm', 15: 'right-arm'}),
    ('pascal_ctx', 59, 'aeroplane', 'wood', {36: 'person'}),
    ('pascal_ctx60', 60, 'background', 'wood', {37: 'person'}),
    ('ade20k', 150, 'wall', 'flag', {12: 'person'}),
    ('cocostuff', 171, 'person', 'wood', {79: 'toothbrush', 80: 'banner'}),
])
def test_class_names(dataset, k, first, last, checks):
  names = classes.class_names(dataset, k)
  assert len(names) == k == len(set(names))
  assert names[0] == first and names[-1] == last
  for i, n in checks.items():
    assert names[i] == n


def test_pascal_context_names_follow_sorted_raw_ids():
  from hrseg_jax.data.label_maps import PASCAL_CTX_RAW_IDS
  # labels.txt is alphabetical: raw ids 2, 9, 18 are aeroplane, bag, bed.
  by_id = dict(zip(PASCAL_CTX_RAW_IDS, classes.PASCAL_CTX60_CLASSES))
  assert (by_id[2], by_id[9], by_id[18], by_id[284], by_id[458]) == (
      'aeroplane', 'bag', 'bed', 'person', 'wood')
  assert list(classes.PASCAL_CTX60_CLASSES[1:]) == sorted(
      classes.PASCAL_CTX60_CLASSES[1:])


def test_unknown_dataset_or_count_gets_generic_names():
  assert classes.class_names('mine', 3) == ('class_0', 'class_1', 'class_2')
  assert classes.class_names('cityscapes', 5)[4] == 'class_4'


def test_palettes():
  voc = palettes.voc_palette(256)
  assert voc.dtype == np.uint8 and voc.shape == (256, 3)
  assert voc[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0],
                              [128, 128, 0], [0, 0, 128], [128, 0, 128]]
  assert len({tuple(c) for c in voc}) == 256
  cs = palettes.get_palette('cityscapes')
  assert cs[0].tolist() == [128, 64, 128] and cs[13].tolist() == [0, 0, 142]
  assert cs[19].tolist() == voc[19].tolist()
  assert palettes.get_palette('lip')[2].tolist() == [255, 0, 0]
  np.testing.assert_array_equal(palettes.get_palette('ade20k'), voc)
  img = np.full((1, 2, 3), 100, np.uint8)
  col = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
  assert palettes.overlay(img, col, 0.25).tolist() == [[[75, 75, 75],
                                                        [139, 139, 139]]]
