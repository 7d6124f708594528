"""Synthetic scenes: determinism, structure, learnability, disk layout."""
import time

import numpy as np
from PIL import Image
import pytest

from hrseg_jax.data import pipeline
from hrseg_jax.data.config import default_data_config
from hrseg_jax.data.sources import make_source
from hrseg_jax.data.synthetic import SyntheticSource, write_cityscapes_layout


def test_deterministic_per_seed_split_index():
  a = SyntheticSource(5, (64, 128), 19, seed=1, split='train')
  b = SyntheticSource(5, (64, 128), 19, seed=1, split='train')
  for i in range(5):
    np.testing.assert_array_equal(a[i]['image'], b[i]['image'])
    np.testing.assert_array_equal(a[i]['label'], b[i]['label'])
  other_seed = SyntheticSource(5, (64, 128), 19, seed=2, split='train')[0]
  other_split = SyntheticSource(5, (64, 128), 19, seed=1, split='val')[0]
  assert not np.array_equal(a[0]['image'], other_seed['image'])
  assert not np.array_equal(a[0]['image'], other_split['image'])
  assert not np.array_equal(a[0]['label'], a[1]['label'])
  assert a[3]['id'] == 'synthetic_train_000003'
  with pytest.raises(IndexError):
    a[5]


@pytest.mark.parametrize('size', [(1, 1), (2, 3), (5, 4), (40, 7)])
def test_any_size(size):
  for k in (2, 19):
    ex = SyntheticSource(3, size, k, seed=0)[2]
    assert ex['image'].shape == size + (3,) and ex['label'].shape == size


@pytest.mark.parametrize('k', [2, 3, 5, 19, 60])
def test_any_class_count(k):
  source = SyntheticSource(6, (48, 96), k, seed=0)
  labels = np.stack([source[i]['label'] for i in range(6)])
  images = np.stack([source[i]['image'] for i in range(6)])
  assert images.shape == (6, 48, 96, 3) and images.dtype == np.uint8
  assert labels.dtype == np.uint8
  assert set(np.unique(labels)) <= set(range(k)) | {255}
  assert {0, 1 if k != 19 else 10} <= set(np.unique(labels))


def test_height_structure_for_cityscapes_classes():
  source = SyntheticSource(30, (96, 192), 19, seed=0)
  labels = np.stack([source[i]['label'] for i in range(30)])
  top, bottom = labels[:, :8], labels[:, -16:]
  assert (top == 10).mean() > 0.9            # sky at the top
  assert (bottom == 10).mean() == 0
  assert (bottom == 0).mean() > 0.4          # road at the bottom
  middle = labels[:, 30:60]
  assert np.isin(middle, [2, 3, 8]).mean() > 0.2   # buildings/vegetation
  objects = set(np.unique(labels)) & {5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18}
  assert len(objects) >= 6
  assert (labels == 255).any()               # ego-vehicle strips


def test_classes_learnable_from_colour():
  """A nearest-mean colour classifier fitted on 15 scenes generalises."""
  source = SyntheticSource(30, (64, 128), 19, seed=3)
  pixels, targets = [], []
  for i in range(30):
    ex = source[i]
    keep = ex['label'] != 255
    pixels.append(ex['image'][keep].astype(np.float32))
    targets.append(ex['label'][keep])
  x_fit, y_fit = np.concatenate(pixels[:15]), np.concatenate(targets[:15])
  x_test, y_test = np.concatenate(pixels[15:]), np.concatenate(targets[15:])
  classes = np.unique(y_fit)
  means = np.stack([x_fit[y_fit == c].mean(0) for c in classes])
  pred = classes[np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), 1)]
  assert (pred == y_test).mean() > 0.75


def test_generation_is_fast():
  source = SyntheticSource(40, (256, 512), 19, seed=0)
  source[0]
  start = time.process_time()
  for i in range(1, 21):
    source[i]
  per_sample = (time.process_time() - start) / 20
  assert per_sample < 0.03, f'{per_sample * 1e3:.1f} ms per 256x512 sample'


def test_cityscapes_layout_round_trip(tmp_path):
  written = write_cityscapes_layout(str(tmp_path / 'cs'), num_train=4,
                                    num_val=2, num_test=1,
                                    image_size=(32, 64), seed=5)
  assert sorted(written) == ['test', 'train', 'trainval', 'val']
  cfg = default_data_config('cityscapes')
  cfg.root = str(tmp_path / 'cs')
  cfg.train_list, cfg.val_list = written['train'], written['val']
  cfg.test_list = written['test']
  from_disk = make_source(cfg, 'train')
  in_memory = SyntheticSource(4, (32, 64), 19, seed=5, split='train')
  saw_ignore = False
  for i in range(4):
    disk, mem = from_disk[i], in_memory[i]
    np.testing.assert_array_equal(disk['image'], mem['image'])
    # labelIds on disk -> trainIds through the real Cityscapes label map.
    np.testing.assert_array_equal(disk['label'], mem['label'])
    saw_ignore |= bool((mem['label'] == 255).any())
  raw = np.asarray(Image.open(from_disk._labels[0]))
  assert raw.max() <= 33 and 23 in raw   # labelIds (sky = 23), not trainIds
  assert len(make_source(cfg, 'val')) == 2
  assert len(make_source(cfg, 'test')) == 1
  with pytest.raises(ValueError, match='at most 19'):
    write_cityscapes_layout(str(tmp_path / 'x'), num_train=1, num_val=0,
                            num_classes=20)


def test_synthetic_recipe_trains_and_evaluates():
  cfg = default_data_config('synthetic')
  cfg.num_train, cfg.num_val = 8, 3
  batch = next(pipeline.make_train_iterator(cfg, batch_size=4, seed=0))
  assert batch['image'].shape == (4, 128, 256, 3)
  batches = list(pipeline.make_eval_iterator(cfg, batch_size=2))
  assert [b['image'].shape for b in batches] == [(2, 256, 512, 3)] * 2
  np.testing.assert_array_equal(batches[1]['mask'], [True, False])
