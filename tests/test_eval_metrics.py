"""Confusion matrix and IoU metrics against hand-computed values."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrseg_jax.eval import metrics

# Two 2x4 examples, K = 4, ignore 255.  Example 0 has: an ignored pixel
# (gt 255), a gt >= K pixel (gt 4) and a pred >= K pixel (pred 5); class 3
# never occurs in it.  Example 1 is all class 3, predicted right, and is the
# padding example that the mask removes.
LABEL = np.array([[[0, 0, 1, 2], [255, 4, 1, 0]],
                  [[3, 3, 3, 3], [3, 3, 3, 3]]], np.uint8)
PRED = np.array([[[0, 1, 1, 0], [2, 1, 5, 0]],
                 [[3, 3, 3, 3], [3, 3, 3, 3]]], np.int32)
MASK = np.array([1, 0], np.int32)
# Counted pixels of example 0 (gt, pred): (0,0) (0,1) (1,1) (2,0) (0,0).
EXPECTED_CM = np.array([[2, 1, 0, 0],
                        [0, 1, 0, 0],
                        [1, 0, 0, 0],
                        [0, 0, 0, 0]])


def test_confusion_matrix_hand_computed_numpy():
  cm = metrics.confusion_matrix(PRED, LABEL, 4, 255, mask=MASK)
  assert cm.dtype == np.int64
  np.testing.assert_array_equal(cm, EXPECTED_CM)


def test_confusion_matrix_jax_and_jit_match_numpy():
  cm = metrics.confusion_matrix(jnp.asarray(PRED), jnp.asarray(LABEL), 4, 255,
                                mask=jnp.asarray(MASK))
  np.testing.assert_array_equal(np.asarray(cm), EXPECTED_CM)
  jitted = jax.jit(metrics.confusion_matrix, static_argnums=(2, 3))
  np.testing.assert_array_equal(
      np.asarray(jitted(PRED, LABEL, 4, 255, mask=MASK)), EXPECTED_CM)


def test_unmasked_padding_example_would_count():
  cm = metrics.confusion_matrix(PRED, LABEL, 4, 255)
  expected = EXPECTED_CM.copy()
  expected[3, 3] = 8
  np.testing.assert_array_equal(cm, expected)


def test_per_pixel_mask_and_negative_ignore_label():
  label = np.array([[-1, 0, 1, 255]])
  pred = np.array([[0, 0, 0, 1]])
  # ignore -1 (PASCAL-Context 59 yaml): -1 dropped as ignore, 255 as >= K.
  np.testing.assert_array_equal(
      metrics.confusion_matrix(pred, label, 2, -1), [[1, 0], [1, 0]])
  pixel_mask = np.array([[1, 0, 1, 1]])
  np.testing.assert_array_equal(
      metrics.confusion_matrix(pred, label, 2, -1, mask=pixel_mask),
      [[0, 0], [1, 0]])


def test_shape_mismatch_is_an_error():
  with pytest.raises(ValueError, match='shape'):
    metrics.confusion_matrix(PRED[:, :1], LABEL, 4)
  with pytest.raises(ValueError, match='mask'):
    metrics.confusion_matrix(PRED, LABEL, 4, mask=np.ones(3))


def test_iou_metrics_hand_computed():
  m = metrics.iou_metrics(EXPECTED_CM)
  # pos = [3,1,1,0], res = [3,2,0,0], tp = [2,1,0,0].
  np.testing.assert_allclose(m['iou'], [2 / 4, 1 / 2, 0.0, 0.0])
  assert m['miou'] == pytest.approx(0.25)  # absent class 3 counts as 0
  assert m['pixel_acc'] == pytest.approx(3 / 5)
  assert m['mean_acc'] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)
  assert all(isinstance(m[k], float) for k in ('miou', 'pixel_acc', 'mean_acc'))


def test_iou_metrics_empty_matrix_is_zero_not_nan():
  m = metrics.iou_metrics(np.zeros((3, 3)))
  assert m['miou'] == 0.0 and m['pixel_acc'] == 0.0 and m['mean_acc'] == 0.0


def test_clu_metric_merge_adds_exactly_beyond_int32():
  cm_type = metrics.ConfusionMatrix.bind(4)
  total = cm_type.empty()
  for _ in range(3):
    total = total.merge(cm_type.from_model_output(
        predictions=jnp.asarray(PRED), labels=jnp.asarray(LABEL),
        mask=jnp.asarray(MASK)))
  np.testing.assert_array_equal(total.matrix, 3 * EXPECTED_CM)
  assert total.compute() == pytest.approx(0.25)
  assert total.compute_metrics()['pixel_acc'] == pytest.approx(0.6)
  big = cm_type(matrix=np.full((4, 4), 2**31 - 1, np.int64))
  np.testing.assert_array_equal(big.merge(big).matrix,
                                np.full((4, 4), 2**32 - 2, np.int64))


def test_clu_metric_inside_jit_and_unbound_empty():
  cm_type = metrics.ConfusionMatrix.bind(4)

  @jax.jit
  def step(acc, pred, label, mask):
    return acc.merge(cm_type.from_model_output(predictions=pred, labels=label,
                                               mask=mask))
  acc = cm_type(matrix=jnp.zeros((4, 4), jnp.int32))
  acc = step(step(acc, PRED, LABEL, MASK), PRED, LABEL, MASK)
  np.testing.assert_array_equal(np.asarray(acc.matrix), 2 * EXPECTED_CM)
  with pytest.raises(ValueError, match='bind'):
    metrics.ConfusionMatrix.empty()


def test_format_iou_table():
  m = metrics.iou_metrics(EXPECTED_CM)
  table = metrics.format_iou_table(m, ['road', 'car', 'sky', 'tree'])
  assert 'road' in table and ' 50.00' in table
  assert 'mIoU 25.00%' in table and 'pixel acc 60.00%' in table
  with pytest.raises(ValueError):
    metrics.format_iou_table(m, ['road'])


_SHARDED = textwrap.dedent('''
    import jax, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from hrseg_jax.eval import metrics
    assert jax.device_count() == 2, jax.devices()
    mesh = jax.make_mesh((2,), ('data',), axis_types=(AxisType.Auto,))
    sh = NamedSharding(mesh, P('data'))
    rng = np.random.default_rng(0)
    label = rng.integers(0, 8, (4, 16, 16)).astype(np.int32)
    label[:, :2] = 255
    pred = rng.integers(0, 7, (4, 16, 16)).astype(np.int32)
    mask = np.array([1, 1, 1, 0], np.int32)
    want = metrics.confusion_matrix(pred, label, 7, 255, mask=mask)
    args = [jax.device_put(a, sh) for a in (pred, label, mask)]
    assert len(args[0].sharding.device_set) == 2
    f = jax.jit(lambda p, l, m: metrics.confusion_matrix(p, l, 7, 255, mask=m))
    got = np.asarray(f(*args))
    assert (got == want).all() and want.sum() > 0, (got, want)
    print('OK')
''')


def test_confusion_matrix_on_batch_sharded_arrays():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', _SHARDED], env=env,
                       capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]
