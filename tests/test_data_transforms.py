"""Transforms and per-example preprocessing: exact sizes, values, randomness."""
import cv2
import numpy as np
import pytest

from hrseg_jax.data import augment
from hrseg_jax.data import transforms as T
from hrseg_jax.data.config import default_data_config


def test_constants():
  np.testing.assert_array_equal(T.MEAN, np.float32([0.485, 0.456, 0.406]))
  np.testing.assert_array_equal(T.STD, np.float32([0.229, 0.224, 0.225]))
  assert T.MEAN_PIXEL == (124, 116, 104)


def test_normalize_numbers():
  image = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0],
                     [124, 116, 104]]], np.uint8)
  out = T.normalize(image)
  assert out.dtype == np.float32 and out.shape == (1, 4, 3)
  np.testing.assert_allclose(out[0, 0], [-2.117904, -2.035714, -1.804444],
                             atol=1e-5)
  np.testing.assert_allclose(out[0, 1], [2.248908, 2.428571, 2.64], atol=1e-5)
  np.testing.assert_allclose(out[0, 2], [2.248908, -2.035714, -1.804444],
                             atol=1e-5)
  assert np.abs(out[0, 3]).max() < 0.01
  # Same as the original's float pipeline on a random image (and batched).
  x = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
  ref = (x.astype(np.float32) / 255.0 - [0.485, 0.456, 0.406]) / [
      0.229, 0.224, 0.225]
  np.testing.assert_allclose(T.normalize(x), ref, atol=1e-6)
  np.testing.assert_allclose(T.normalize(x[None])[0], ref, atol=1e-6)


@pytest.mark.parametrize('src,dst', [(1024, 2151), (1024, 512), (473, 260),
                                     (375, 520), (7, 3), (3, 7), (1, 5)])
def test_nearest_indices_match_opencv(src, dst):
  column = np.arange(src, dtype=np.uint16)[:, None].repeat(2, 1)
  expected = cv2.resize(column, (2, dst), interpolation=cv2.INTER_NEAREST)
  np.testing.assert_array_equal(T.nearest_indices(src, dst), expected[:, 0])


@pytest.mark.parametrize('h,w,long_size,expected', [
    (1024, 2048, 1638, (819, 1638)),    # Cityscapes at scale 0.8
    (1024, 2048, 4301, (2151, 4301)),   # scale 2.1: int(2150.5 + 0.5)
    (1024, 2048, 1024, (512, 1024)),
    (600, 400, 520, (520, 347)),        # tall image: long side is h
    (500, 500, 520, (520, 520)),
])
def test_long_side_rule(h, w, long_size, expected):
  assert T.long_side_size(h, w, long_size) == expected


@pytest.mark.parametrize('h,w,expected', [
    (375, 500, (520, 693)), (500, 375, (693, 520)), (400, 400, (520, 520))])
def test_short_side_rule(h, w, expected):
  assert T.short_side_size(h, w, 520) == expected


@pytest.mark.parametrize('factor,values', [
    (16, [0.5 + k / 10.0 for k in range(17)]),
    (11, [0.5 + k / 10.0 for k in range(12)])])
def test_random_scale_values(factor, values):
  rng = np.random.default_rng(0)
  drawn = {T.random_scale(rng, factor) for _ in range(2000)}
  assert drawn == set(values)


def test_pad_values():
  sample = T.Sample(np.full((3, 4, 3), 7, np.uint8),
                    np.full((3, 4), 2, np.uint8), T.initial_rows(3))
  out = T.pad(sample, (5, 6))
  assert out.image.shape == (5, 6, 3)
  assert (out.image[:3, :4] == 7).all()
  assert (out.image[3:] == 0).all() and (out.image[:, 4:] == 0).all()
  assert (out.label[:3, :4] == 2).all()
  assert (out.label[3:] == 255).all() and (out.label[:, 4:] == 255).all()
  np.testing.assert_array_equal(out.rows, [0, 1, 2, -1, -1])
  assert T.pad(sample, (2, 2)) is sample
  mean_pad = T.pad(sample, (4, 4), T.MEAN_PIXEL)
  np.testing.assert_array_equal(mean_pad.image[3, 0], [124, 116, 104])


def test_random_crop_offsets_uniform_inclusive():
  image = np.arange(4 * 5, dtype=np.uint8).reshape(4, 5)[..., None].repeat(3, 2)
  sample = T.Sample(image, image[..., 0].copy(), T.initial_rows(4))
  rng = np.random.default_rng(1)
  corners = set()
  for _ in range(400):
    out = T.random_crop(sample, (2, 3), rng)
    assert out.image.shape == (2, 3, 3)
    top, left = divmod(int(out.label[0, 0]), 5)
    np.testing.assert_array_equal(out.label, image[top:top + 2,
                                                   left:left + 3, 0])
    np.testing.assert_array_equal(out.rows, [top, top + 1])
    corners.add((top, left))
  assert corners == {(y, x) for y in range(3) for x in range(3)}


@pytest.mark.parametrize('seed', range(6))
def test_resize_crop_equals_resize_pad_crop(seed):
  rng = np.random.default_rng(seed)
  h, w = (int(v) for v in rng.integers(5, 40, 2))
  sample = T.Sample(rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
                    rng.integers(0, 20, (h, w)).astype(np.uint8),
                    T.initial_rows(h))
  size = tuple(int(v) for v in rng.integers(3, 60, 2))
  crop_size = tuple(int(v) for v in rng.integers(4, 30, 2))
  top, left = T.crop_offsets(*size, crop_size, rng)
  fast = T.resize_crop(sample, size, top, left, crop_size)
  slow = T.crop(T.pad(T.resize(sample, size), crop_size), top, left,
                crop_size)
  for a, b in zip(fast, slow):
    np.testing.assert_array_equal(a, b)


def test_random_crop_pads_small_images_bottom_right():
  sample = T.Sample(np.full((2, 3, 3), 9, np.uint8),
                    np.ones((2, 3), np.uint8), T.initial_rows(2))
  out = T.random_crop(sample, (4, 5), np.random.default_rng(0))
  assert (out.image[:2, :3] == 9).all() and (out.image[2:] == 0).all()
  assert (out.label[:2, :3] == 1).all() and (out.label[:, 3:] == 255).all()
  np.testing.assert_array_equal(out.rows, [0, 1, -1, -1])


def test_hflip_with_lip_swap():
  label = np.array([[14, 16, 18, 3, 15]], np.uint8)
  image = np.arange(15, dtype=np.uint8).reshape(1, 5, 3)
  lut = np.arange(256, dtype=np.uint8)
  lut[[14, 15, 16, 17, 18, 19]] = [15, 14, 17, 16, 19, 18]
  out = T.hflip(T.Sample(image, label, np.array([0], np.int32)), lut)
  np.testing.assert_array_equal(out.label, [[14, 3, 19, 17, 15]])
  np.testing.assert_array_equal(out.image, image[:, ::-1])
  np.testing.assert_array_equal(out.rows, [0])


def test_resize_short_pad():
  sample = T.Sample(np.full((30, 45, 3), 50, np.uint8),
                    np.ones((30, 45), np.uint8), T.initial_rows(30))
  out, padding = T.resize_short_pad(sample, 20, 8)
  assert padding == (4, 2)
  assert out.image.shape == (24, 32, 3)
  np.testing.assert_array_equal(out.image[20:, 0], [[124, 116, 104]] * 4)
  assert (out.image[:20, :30] == 50).all()
  assert (out.label[20:] == 255).all() and (out.label[:, 30:] == 255).all()
  assert (out.rows[20:] == -1).all()
  np.testing.assert_array_equal(out.rows[:20], T.nearest_indices(30, 20))


def _row_coded(h, w):
  """A label whose value is the row index (h < 255), so rows can be checked."""
  rows = np.arange(h, dtype=np.uint8)[:, None].repeat(w, 1)
  image = np.random.default_rng(0).integers(0, 256, (h, w, 3)).astype(
      np.uint8)
  return {'image': image, 'label': rows, 'id': 'x'}


@pytest.mark.parametrize('name', ['cityscapes', 'lip', 'ade20k'])
def test_train_rows_follow_the_label(name):
  cfg = default_data_config(name)
  cfg.with_rows = True
  cfg.base_size, cfg.crop_size = 100, (56, 64)
  cfg.pre_resize_size = (90, 90)
  cfg.flip = name != 'lip'   # LIP's flip would swap the row codes 14..19
  transform = augment.TrainTransform(cfg)
  example = _row_coded(120, 160)
  seen_pad = False
  for seed in range(30):
    out = transform(example, np.random.default_rng(seed))
    assert out['image'].shape == (56, 64, 3)
    assert out['image'].dtype == np.float32
    assert out['label'].dtype == np.int32 and out['rows'].dtype == np.int32
    rows = out['rows']
    for r in range(56):
      values = set(np.unique(out['label'][r]).tolist())
      # Columns may be padding (255, on either side after a flip).
      assert values == ({255} if rows[r] < 0 else {int(rows[r])} | (
          values & {255})), (seed, r)
    seen_pad |= bool((rows < 0).any())
    assert rows.max() < 120
  assert seen_pad   # some small scales need padding


@pytest.mark.parametrize('flip', [True, False])
def test_train_flip_probability(flip):
  cfg = default_data_config('cityscapes')
  cfg.update(crop_size=(4, 8), base_size=8, multi_scale=False, flip=flip)
  transform = augment.TrainTransform(cfg)
  label = np.zeros((4, 8), np.uint8)
  label[:, :3] = 1
  example = {'image': np.zeros((4, 8, 3), np.uint8), 'label': label}
  flipped = [bool(transform(example, np.random.default_rng(s))['label'][0, 7])
             for s in range(200)]
  if flip:
    assert 70 < sum(flipped) < 130   # p = 0.5
  else:
    assert not any(flipped)


def test_lip_train_flip_swaps_left_right_labels():
  cfg = default_data_config('lip')
  cfg.pre_resize_size, cfg.crop_size, cfg.base_size = (8, 8), (8, 8), 8
  cfg.multi_scale = False
  transform = augment.TrainTransform(cfg)
  label = np.full((8, 8), 14, np.uint8)
  label[:, 4:] = 16
  example = {'image': np.zeros((8, 8, 3), np.uint8), 'label': label}
  outcomes = set()
  for seed in range(40):
    out = transform(example, np.random.default_rng(seed))['label']
    outcomes.add((int(out[0, 0]), int(out[0, 7])))
  assert outcomes == {(14, 16), (17, 15)}


def test_val_transform_modes():
  cfg = default_data_config('cityscapes')
  cfg.eval_size, cfg.with_rows = (6, 8), True
  example = {'image': np.full((4, 8, 3), 255, np.uint8),
             'label': np.zeros((4, 8), np.uint8), 'id': 'a'}
  out = augment.ValTransform(cfg)(example, np.random.default_rng(0))
  assert out['image'].shape == (6, 8, 3)
  np.testing.assert_allclose(out['image'][5, 0], [-2.117904, -2.035714,
                                                  -1.804444], atol=1e-5)
  np.testing.assert_array_equal(out['rows'], [0, 1, 2, 3, -1, -1])
  assert (out['label'][4:] == 255).all()
  cfg.eval_size = (3, 8)
  with pytest.raises(ValueError, match='larger than data.eval_size'):
    augment.ValTransform(cfg)(example, np.random.default_rng(0))

  lip = default_data_config('lip')
  lip.eval_size = (5, 5)
  out = augment.ValTransform(lip)(example, np.random.default_rng(0))
  assert out['image'].shape == (5, 5, 3) and out['label'].shape == (5, 5)

  ade = default_data_config('ade20k')
  ade.eval_size, ade.eval_base_size = (6, 6), 5
  out = augment.ValTransform(ade)(example, np.random.default_rng(0))
  assert out['image'].shape == (6, 6, 3) and out['label'].shape == (6, 6)


def test_test_transform_keeps_label_size():
  example = {'image': np.zeros((30, 45, 3), np.uint8),
             'label': np.ones((30, 45), np.uint8), 'id': 'img'}
  ade = default_data_config('ade20k')
  ade.eval_base_size, ade.with_rows = 20, True
  out = augment.FullEvalTransform(ade)(example)
  assert out['image'].shape == (24, 32, 3)
  assert out['label'].shape == (30, 45) and out['label'].dtype == np.int32
  np.testing.assert_array_equal(out['pad'], [4, 2])
  assert out['rows'].shape == (24,) and (out['rows'][20:] == -1).all()
  assert out['id'] == 'img'
  lip = default_data_config('lip')
  out = augment.FullEvalTransform(lip)(example)
  assert out['image'].shape == (473, 473, 3) and out['label'].shape == (30, 45)
  cs = default_data_config('cityscapes')
  out = augment.FullEvalTransform(cs)(example)
  assert out['image'].shape == (30, 45, 3)
  np.testing.assert_array_equal(out['pad'], [0, 0])
