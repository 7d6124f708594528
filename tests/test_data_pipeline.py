"""Grain pipelines: determinism, sharding, epochs, padded eval, resume."""
import os
import subprocess
import sys

import numpy as np
import pytest

from hrseg_jax.data import pipeline
from hrseg_jax.data import sources
from hrseg_jax.data import transforms as T
from hrseg_jax.data.config import default_data_config


def _synthetic(**overrides):
  cfg = default_data_config('synthetic')
  cfg.update(dict(num_train=12, num_val=7, image_size=(32, 64),
                  crop_size=(16, 32), base_size=64, eval_size=(32, 64),
                  read_threads=0), **overrides)
  return cfg


class _IndexSource:
  """Constant images whose pixel value is 10 + the example index."""

  def __init__(self, n, size=(16, 32)):
    self.n, self.size = n, size
    self.has_labels = True

  def __len__(self):
    return self.n

  def example_id(self, i):
    return f'ex{i}'

  def __getitem__(self, i):
    return {'image': np.full(self.size + (3,), 10 + i, np.uint8),
            'label': np.full(self.size, i % 5, np.uint8), 'id': f'ex{i}'}


def _indices(images):
  """Recovers the example index of each (normalised, constant) image."""
  raw = images[:, 0, 0, 0] * T.STD[0] + T.MEAN[0]
  return [int(v) - 10 for v in np.rint(raw * 255)]


@pytest.fixture
def index_source(monkeypatch):
  """Makes the pipeline read _IndexSource(n) and returns a config for it."""
  def make(n):
    monkeypatch.setattr(sources, 'make_source',
                        lambda cfg, split: _IndexSource(n))
    return _synthetic(multi_scale=False, flip=False, crop_size=(16, 32),
                      eval_size=(16, 32))
  return make


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batch_contract():
  cfg = _synthetic(with_rows=True)
  batch = next(pipeline.make_train_iterator(cfg, batch_size=3, seed=0))
  assert set(batch) == {'image', 'label', 'rows'}
  assert batch['image'].shape == (3, 16, 32, 3)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (3, 16, 32)
  assert batch['label'].dtype == np.int32
  assert batch['rows'].shape == (3, 16) and batch['rows'].dtype == np.int32
  assert set(np.unique(batch['label'])) <= set(range(19)) | {255}
  assert pipeline.num_train_examples(cfg) == 12
  assert 'rows' not in next(pipeline.make_train_iterator(
      _synthetic(), batch_size=3, seed=0))


def test_same_seed_same_batches_different_seed_different():
  cfg = _synthetic()
  a = _take(pipeline.make_train_iterator(cfg, batch_size=4, seed=5), 4)
  b = _take(pipeline.make_train_iterator(cfg, batch_size=4, seed=5), 4)
  c = _take(pipeline.make_train_iterator(cfg, batch_size=4, seed=6), 4)
  _assert_same(a, b)
  assert not all(np.array_equal(x['image'], y['image'])
                 for x, y in zip(a, c))


def test_epochs_are_fresh_permutations_with_drop_remainder(index_source):
  cfg = index_source(14)   # 14 // 4 = 3 batches per epoch, 2 dropped
  it = pipeline.make_train_iterator(cfg, batch_size=4, seed=1)
  epochs = [sum((_indices(b['image']) for b in _take(it, 3)), [])
            for _ in range(3)]
  for order in epochs:
    assert len(order) == 12 and len(set(order)) == 12
    assert set(order) <= set(range(14))
  assert epochs[0] != epochs[1] != epochs[2]


def test_shards_disjoint_cover_and_match_the_global_batch(index_source):
  cfg = index_source(12)
  shards = [_take(pipeline.make_train_iterator(
      cfg, batch_size=2, seed=3, shard_index=p, shard_count=3), 4)
            for p in range(3)]
  single = _take(pipeline.make_train_iterator(cfg, batch_size=6, seed=3), 4)
  for epoch in range(2):
    seen = [sum((_indices(b['image']) for b in shard[2 * epoch:
                                                     2 * epoch + 2]), [])
            for shard in shards]
    union = sum(seen, [])
    assert sorted(union) == list(range(12))   # disjoint and covering
  for step in range(4):
    joined = sum((_indices(shard[step]['image']) for shard in shards), [])
    assert joined == _indices(single[step]['image'])
  with pytest.raises(ValueError, match='fewer than one global batch'):
    pipeline.make_train_iterator(cfg, batch_size=5, seed=0, shard_count=3)
  with pytest.raises(ValueError, match='shard_index'):
    pipeline.make_train_iterator(cfg, batch_size=2, seed=0, shard_index=3,
                                 shard_count=3)


def test_augmentation_does_not_depend_on_process_count():
  cfg = _synthetic()
  single = next(pipeline.make_train_iterator(cfg, batch_size=4, seed=9))
  parts = [next(pipeline.make_train_iterator(
      cfg, batch_size=2, seed=9, shard_index=p, shard_count=2))
           for p in range(2)]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(
        single[key], np.concatenate([p[key] for p in parts]))


def test_resume_from_state():
  cfg = _synthetic(with_rows=True)
  it = pipeline.make_train_iterator(cfg, batch_size=3, seed=2)
  _take(it, 5)   # crosses the epoch boundary (4 batches per epoch)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = pipeline.make_train_iterator(cfg, batch_size=3, seed=2)
  fresh.set_state(state)
  _assert_same(_take(fresh, 3), expected)


def test_resume_with_grain_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  import grain
  cfg = _synthetic()
  it = pipeline.make_train_iterator(cfg, batch_size=2, seed=4)
  _take(it, 3)
  manager = ocp.CheckpointManager(str(tmp_path / 'ckpt'))
  manager.save(3, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = _take(it, 2)
  fresh = pipeline.make_train_iterator(cfg, batch_size=2, seed=4)
  manager.restore(3, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_same(_take(fresh, 2), expected)
  manager.close()


def test_worker_processes_match_in_process_and_resume():
  cfg = _synthetic(with_rows=True)
  reference = _take(pipeline.make_train_iterator(cfg, batch_size=2, seed=7), 6)
  cfg.num_workers, cfg.read_threads = 2, 1
  it = pipeline.make_train_iterator(cfg, batch_size=2, seed=7)
  try:
    first = _take(it, 3)
    state = it.get_state()
  finally:
    it.close()
  _assert_same(first, reference[:3])
  fresh = pipeline.make_train_iterator(cfg, batch_size=2, seed=7)
  try:
    fresh.set_state(state)
    _assert_same(_take(fresh, 3), reference[3:])
  finally:
    fresh.close()
  # Resuming by step needs no saved state, with any worker count.
  cfg.num_workers = 1
  by_step = pipeline.make_train_iterator(cfg, batch_size=2, seed=7, start_step=4)
  try:
    _assert_same(_take(by_step, 2), reference[4:])
  finally:
    by_step.close()


def test_eval_batches_padded_masked_and_sharded(index_source):
  cfg = index_source(7)
  per_shard = []
  for p in range(2):
    batches = list(pipeline.make_eval_iterator(cfg, batch_size=3,
                                               shard_index=p, shard_count=2))
    ids = pipeline.eval_batch_ids(cfg, batch_size=3, shard_index=p,
                                  shard_count=2)
    assert len(batches) == len(ids) == 2   # same count on every process
    for batch, batch_ids in zip(batches, ids):
      assert set(batch) == {'image', 'label', 'mask'}
      assert batch['image'].shape == (3, 16, 32, 3)
      assert batch['mask'].dtype == np.bool_
      np.testing.assert_array_equal(batch['mask'],
                                    [i is not None for i in batch_ids])
      real = batch['mask']
      assert [f'ex{i}' for i in _indices(batch['image'][real])] == [
          i for i in batch_ids if i is not None]
      assert (batch['label'][~real] == 255).all()
      black = T.normalize(np.zeros((1, 1, 3), np.uint8))[0, 0]
      np.testing.assert_allclose(batch['image'][~real], np.broadcast_to(
          black, batch['image'][~real].shape))
    per_shard.append([i for b in ids for i in b if i is not None])
  assert per_shard == [['ex0', 'ex2', 'ex4', 'ex6'], ['ex1', 'ex3', 'ex5']]
  # Re-iterable, and val_num_samples caps the set.
  cfg.val_num_samples = 4
  batches = list(pipeline.make_eval_iterator(cfg, batch_size=3))
  np.testing.assert_array_equal(np.concatenate([b['mask'] for b in batches]),
                                [True] * 4 + [False] * 2)


def test_eval_examples_full_size():
  cfg = _synthetic(with_rows=True)
  examples = pipeline.eval_examples(cfg)
  assert len(examples) == 7
  ex = examples[3]
  assert ex['image'].shape == (32, 64, 3) and ex['image'].dtype == np.float32
  assert ex['label'].shape == (32, 64) and ex['label'].dtype == np.int32
  np.testing.assert_array_equal(ex['rows'], np.arange(32))
  assert ex['id'] == 'synthetic_val_000003'
  shard = examples[1::2]
  assert len(shard) == 3 and shard[0]['id'] == 'synthetic_val_000001'


def test_worker_init_fn_hides_accelerators():
  code = ('import os, signal, jax\n'
          'from hrseg_jax.data.workers import worker_init_fn\n'
          'worker_init_fn(0, 1)\n'
          'import cv2\n'
          'print(os.environ["JAX_PLATFORMS"], repr(os.environ['
          '"CUDA_VISIBLE_DEVICES"]), os.environ['
          '"XLA_PYTHON_CLIENT_PREALLOCATE"], jax.config.jax_platforms, '
          'cv2.getNumThreads(), jax.devices()[0].platform, '
          'signal.getsignal(signal.SIGINT) == signal.SIG_IGN)\n')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, env=env, check=True).stdout.split()
  assert out == ['cpu', "''", 'false', 'cpu', '1', 'cpu', 'True']


def test_data_package_import_is_light():
  code = ('import sys, hrseg_jax.data, hrseg_jax.data.config, '
          'hrseg_jax.data.transforms, hrseg_jax.data.sources, '
          'hrseg_jax.data.synthetic, hrseg_jax.data.augment\n'
          'print(sorted(m for m in ("jax", "tensorflow", "grain") '
          'if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == '[]'


def test_images_seen_of_a_checkpoint_without_the_count_is_steps_times_batch():
  """Checkpoints saved before the images-seen count: the step times the
  current global batch (the earlier epoch estimate); with it, the count."""
  old = pipeline.data_order_state(step=10, seed=0, global_batch=8, num_examples=100)
  assert 'images_seen' not in old
  assert pipeline.images_seen(old, 10, 4) == 40
  assert pipeline.images_seen(None, 10, 4) == 40
  saved = pipeline.data_order_state(step=10, seed=0, global_batch=8, num_examples=100,
                                    images_seen=56)
  assert pipeline.images_seen(saved, 10, 4) == 56
  assert not pipeline.data_order_differences(saved, old)   # not part of the order


def test_order_differences_are_named_as_the_config_sets_them():
  """A resume with another batch said 'global_batch 8 -> 4' (an internal key)."""
  saved = pipeline.data_order_state(step=10, seed=0, global_batch=8, num_examples=100)
  now = pipeline.data_order_state(step=10, seed=0, global_batch=4, num_examples=90)
  assert pipeline.data_order_differences(saved, now) == [
      'train.batch_size 8 -> 4', 'training examples 100 -> 90']
