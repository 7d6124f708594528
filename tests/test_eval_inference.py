"""Test-time inference: flip, exp fusion, sliding windows, multi-scale.

Most tests use a tiny stand-in network (a 3x3 convolution followed by 4x4
average pooling, i.e. spatial context and 1/4-resolution output like HRNet)
that compiles in milliseconds; the geometry is checked against a literal
NumPy/OpenCV transcription of the original's ``multi_scale_inference``.
"""
import os
import subprocess
import sys
import textwrap

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrseg_jax.eval import inference, windows
from hrseg_jax.eval.config import LIP_FLIP_PAIRS
from hrseg_jax.inference import MEAN, STD, Segmenter, normalize
from hrseg_jax.models import registry
from hrseg_jax.models.layers import interp_matrix, resize_bilinear

K = 6
TINY_HRNET = dict(arch='hrnet', variant='custom', num_classes=5,
                  stage1=[1, 8, 'BOTTLENECK'],
                  stages=[[1, [1, 1], [4, 8]], [1, [1, 1, 1], [4, 8, 16]],
                          [1, [1, 1, 1, 1], [4, 8, 16, 32]]])


def conv_pool_apply(variables, x, rows):
  """Stand-in network: [aux, logits at 1/4 resolution (ceil)]."""
  del rows
  y = jax.lax.conv_general_dilated(
      x, variables['w'], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)
  y = jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 4, 4, 1), (1, 4, 4, 1),
                            'SAME') / 16.0
  return [jnp.full_like(y, 100.0), y]


def rows_apply(variables, x, rows):
  """Stand-in network whose logit 0 is the source row of each pixel."""
  del variables
  r = jnp.broadcast_to(rows[:, :, None, None].astype(jnp.float32),
                       (*x.shape[:3], 1))
  return [jnp.concatenate([r, jnp.zeros_like(r)], -1)]


def conv_variables(k=K, seed=0):
  w = np.random.default_rng(seed).normal(size=(3, 3, 3, k)) * 0.5
  return {'w': w.astype(np.float32)}


def random_image(h, w, seed=1):
  return normalize(np.random.default_rng(seed).integers(0, 256, (h, w, 3),
                                                        np.uint8))


def torch_resize(x, size, align_corners):
  """F.interpolate(bilinear) of an [h, w, C] map in NumPy."""
  wh = interp_matrix(x.shape[0], size[0], align_corners)
  ww = interp_matrix(x.shape[1], size[1], align_corners)
  return np.einsum('pw,owc->opc', ww, np.einsum('oh,hwc->owc', wh, x))


def reference_multi_scale(image, variables, apply_fn, *, scales, rule, crop,
                          base, flip, flip_pairs, align):
  """Literal transcription of the original's multi_scale_inference."""
  padvalue = tuple(float(v) for v in -MEAN / STD)

  def infer(img):  # the original's `inference` on one [h, w, 3] image
    h, w = img.shape[:2]
    rows = np.arange(h, dtype=np.int32)[None]
    out = np.asarray(apply_fn(variables, img[None], rows)[-1])[0]
    pred = torch_resize(out, (h, w), align)
    if flip:
      fo = np.asarray(apply_fn(variables, img[None, :, ::-1].copy(), rows)[-1])[0]
      fo = torch_resize(fo, (h, w), align)[:, ::-1]
      fp = fo.copy()
      for a, b in flip_pairs:
        fp[..., a], fp[..., b] = fo[..., b], fo[..., a]
      pred = 0.5 * (pred + fp)
    return np.exp(pred)

  def pad_image(img, h, w):
    pad_h, pad_w = max(crop[0] - h, 0), max(crop[1] - w, 0)
    return cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                              value=padvalue)

  ori_h, ori_w = image.shape[:2]
  if rule == 'base':
    stride_h, stride_w = int(crop[0] * 2.0 / 3.0), int(crop[1] * 2.0 / 3.0)
  else:
    stride_h, stride_w = crop
  final = np.zeros((ori_h, ori_w, K), np.float64)
  for scale in scales:
    long_size = int(base * scale + 0.5)
    if ori_h > ori_w:
      new_h, new_w = long_size, int(ori_w * long_size / ori_h + 0.5)
    else:
      new_w, new_h = long_size, int(ori_h * long_size / ori_w + 0.5)
    new_img = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    height, width = new_img.shape[:2]
    if rule == 'cityscapes' and scale <= 1.0:
      preds = infer(new_img)[:height, :width]
    elif rule == 'base' and max(height, width) <= min(crop):
      preds = infer(pad_image(new_img, height, width))[:height, :width]
    else:
      if rule == 'base' and (height < crop[0] or width < crop[1]):
        new_img = pad_image(new_img, height, width)
      new_h, new_w = new_img.shape[:2]
      rows = int(np.ceil(1.0 * (new_h - crop[0]) / stride_h)) + 1
      cols = int(np.ceil(1.0 * (new_w - crop[1]) / stride_w)) + 1
      preds = np.zeros((new_h, new_w, K))
      count = np.zeros((new_h, new_w, 1))
      for r in range(rows):
        for c in range(cols):
          h0, w0 = r * stride_h, c * stride_w
          h1, w1 = min(h0 + crop[0], new_h), min(w0 + crop[1], new_w)
          if rule == 'cityscapes':
            h0, w0 = max(int(h1 - crop[0]), 0), max(int(w1 - crop[1]), 0)
          crop_img = new_img[h0:h1, w0:w1]
          if rule == 'base' and (h1 == new_h or w1 == new_w):
            crop_img = pad_image(crop_img, h1 - h0, w1 - w0)
          pred = infer(crop_img)
          preds[h0:h1, w0:w1] += pred[:h1 - h0, :w1 - w0]
          count[h0:h1, w0:w1] += 1
      preds = (preds / count)[:height, :width]
    final += torch_resize(preds.astype(np.float32), (ori_h, ori_w), align)
  return final


def make_predictor(apply_fn=conv_pool_apply, variables=None, **kw):
  kw.setdefault('num_classes', K)
  kw.setdefault('align_corners', False)
  if variables is None:
    variables = conv_variables()
  return inference.Predictor(apply_fn, variables, **kw)


@pytest.mark.parametrize('flip,batch_size,align', [
    (False, 1, False), (True, 3, True)])
def test_cityscapes_rule_matches_original(flip, batch_size, align):
  image = random_image(16, 32)
  kw = dict(scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=flip,
            flip_pairs=((1, 2),), crop=(16, 32), base=32, align=align)
  p = make_predictor(align_corners=align, scales=kw['scales'], flip=flip,
                     flip_pairs=kw['flip_pairs'], mode='sliding',
                     sliding_rule='cityscapes', crop_size=kw['crop'],
                     base_size=kw['base'], batch_size=batch_size)
  assert [len(pl.offsets) for pl in p.plans((16, 32))] == [1, 1, 1, 4, 4, 4]
  want = reference_multi_scale(image, conv_variables(), conv_pool_apply,
                               rule='cityscapes', **kw)
  got = np.asarray(p.multi_scale(image))[0]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize('flip,batch_size', [(False, 1), (True, 2)])
def test_base_rule_matches_original(flip, batch_size):
  image = random_image(18, 26)
  kw = dict(scales=(0.5, 0.75, 1.0, 1.5, 2.0), flip=flip,
            flip_pairs=((1, 2), (3, 4)), crop=(20, 20), base=24, align=False)
  p = make_predictor(scales=kw['scales'], flip=flip, flip_pairs=kw['flip_pairs'],
                     mode='sliding', sliding_rule='base', crop_size=kw['crop'],
                     base_size=kw['base'], batch_size=batch_size)
  plans = p.plans((18, 26))
  assert plans[0].is_single and plans[0].canvas == (20, 20)   # padded
  assert len(plans[-1].offsets) == 8  # 33x48, stride 13: 2 x 4 windows
  want = reference_multi_scale(image, conv_variables(), conv_pool_apply,
                               rule='base', **kw)
  got = np.asarray(p.multi_scale(image))[0]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_batches_of_images_equal_single_images():
  images = np.stack([random_image(18, 26, seed=s) for s in range(3)])
  p = make_predictor(scales=(1.0, 1.5), mode='sliding', sliding_rule='base',
                     crop_size=(20, 20), base_size=24, batch_size=4)
  batched = np.asarray(p.multi_scale(images))
  for i in range(3):
    np.testing.assert_allclose(batched[i], np.asarray(p.multi_scale(images[i]))[0],
                               rtol=1e-6, atol=1e-7)


def test_flip_swaps_lip_channels_before_unflipping():
  image = random_image(12, 20)
  v = conv_variables(k=20)
  p = make_predictor(variables=v, num_classes=20, flip=True,
                     flip_pairs=LIP_FLIP_PAIRS)
  size = (12, 20)
  a = resize_bilinear(conv_pool_apply(v, image[None], None)[-1], size, False)
  b = resize_bilinear(conv_pool_apply(v, image[None, :, ::-1], None)[-1],
                      size, False)
  perm = list(range(20))
  for i, j in ((14, 15), (16, 17), (18, 19)):
    perm[i], perm[j] = j, i
  want = np.exp(0.5 * (np.asarray(a) + np.asarray(b)[:, :, ::-1][..., perm]))
  got = np.asarray(p.whole(image))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  no_swap = make_predictor(variables=v, num_classes=20, flip=True)
  diff = np.abs(np.asarray(no_swap.whole(image)) - got).max(axis=(0, 1, 2))
  assert np.all(diff[14:20] > 0) and np.all(diff[:14] == 0)


def test_swap_channels():
  x = jnp.arange(20.0)[None, None, None]
  y = np.asarray(inference.swap_channels(x, LIP_FLIP_PAIRS))[0, 0, 0]
  assert y[14] == 15 and y[15] == 14 and y[18] == 19 and y[13] == 13


def test_exp_fusion_sums_exp_logits_not_softmax():
  def constant_apply(variables, x, rows):
    del variables, rows
    logits = jnp.arange(K, dtype=jnp.float32) * 0.5
    return [jnp.broadcast_to(logits, (x.shape[0], 4, 5, K))]
  p = make_predictor(apply_fn=constant_apply, variables={}, scales=(0.5, 1.0, 1.5))
  fused = np.asarray(p.multi_scale(random_image(16, 20)))
  np.testing.assert_allclose(fused, 3 * np.exp(np.arange(K) * 0.5)
                             * np.ones_like(fused), rtol=1e-6)
  assert fused.sum(-1).min() > 3.5  # softmax would sum to exactly 3


def test_everything_reduces_to_whole_image_inference():
  cfg = registry.resolve(TINY_HRNET)
  v = tiny_hrnet_variables(cfg)
  image = random_image(24, 40)
  p = inference.Predictor.from_config(
      cfg, v, dict(mode='sliding', sliding_rule='cityscapes', crop_size=(24, 40),
                   base_size=40))
  whole = np.asarray(p.whole(image))
  for plan in (windows.whole_plan((24, 40)),
               windows.base_windows((24, 40), (24, 40)),
               windows.cityscapes_windows((24, 40), (24, 40)),
               windows.cityscapes_windows((24, 40), (32, 64))):
    np.testing.assert_array_equal(np.asarray(p.run_plan(image, plan)), whole)
  np.testing.assert_array_equal(np.asarray(p.multi_scale(image)), whole)
  np.testing.assert_array_equal(np.asarray(p.sliding(image, 'base')), whole)
  logits = Segmenter(cfg, v).logits(image)[-1]  # the plain forward
  direct = np.exp(np.asarray(resize_bilinear(logits, (24, 40), False)))
  np.testing.assert_allclose(whole, direct, rtol=1e-5)
  np.testing.assert_array_equal(p.predict(image), direct.argmax(-1))


def tiny_hrnet_variables(cfg, seed=0):
  """Random variables of a model without compiling its init."""
  shapes = registry.abstract_variables(cfg, (32, 32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
    if "'var'" in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if "'scale'" in name:
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_windows_get_their_source_rows():
  h, w = 30, 20
  p = make_predictor(apply_fn=rows_apply, variables={}, num_classes=2,
                     mode='sliding', sliding_rule='base', crop_size=(16, 16),
                     batch_size=2)
  out = np.log(np.asarray(p.sliding(random_image(h, w))))[0, :, :, 0]
  np.testing.assert_allclose(out, np.broadcast_to(np.arange(h)[:, None], (h, w)),
                             atol=1e-4)
  assert inference.source_rows(10, 20, 24).tolist() == (
      [i // 2 for i in range(20)] + [-1] * 4)


def test_given_rows_follow_scaling_windows_and_padding():
  given = np.array([[10, 11, 12]], np.int32)
  assert inference.canvas_rows(given, 1, 3, 6, 8).tolist() == [
      [10, 10, 11, 11, 12, 12, -1, -1]]
  assert inference.canvas_rows(None, 2, 3, 3, 4).tolist() == [[0, 1, 2, -1]] * 2
  h, w = 30, 20
  rows = np.stack([np.arange(h) * 2 + 7, np.arange(h)[::-1]]).astype(np.int32)
  p = make_predictor(apply_fn=rows_apply, variables={}, num_classes=2,
                     mode='sliding', sliding_rule='base', crop_size=(16, 16))
  images = np.stack([random_image(h, w, seed=s) for s in (1, 2)])
  out = np.log(np.asarray(p.sliding(images, rows=rows)))[..., 0]
  np.testing.assert_allclose(out, np.broadcast_to(rows[:, :, None], (2, h, w)),
                             rtol=1e-5)


@pytest.mark.parametrize('size', [(72, 104), (45, 65), (27, 39), (18, 26),
                                  (50, 40), (36, 52)])
def test_image_resize_matches_cv2_inter_linear(size):
  image = random_image(36, 52)
  want = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
  got = np.asarray(inference._resize(image[None], size=size,  # pylint: disable=protected-access
                                     align_corners=False))[0]
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_label_prediction_crops_border_then_resizes():
  fused = np.zeros((1, 10, 12, 3), np.float32)
  fused[0, :, :6, 1] = 1.0    # left half: class 1
  fused[0, :, 6:10, 2] = 1.0  # right: class 2; columns 10, 11 are padding
  fused[0, 8:, :, 0] = 5.0    # rows 8, 9 are padding
  pred = inference.label_prediction(fused, (16, 20), False, (2, 2))
  assert pred.shape == (1, 16, 20) and pred.dtype == np.uint8
  assert set(np.unique(pred[0, :, :10])) == {1}
  assert set(np.unique(pred[0, :, 14:])) == {2}


_SHARDED = textwrap.dedent('''
    import sys
    import jax, numpy as np
    sys.path.insert(0, 'tests')
    import test_eval_inference as t
    assert jax.device_count() == 2
    img = np.stack([t.random_image(18, 26, seed=s) for s in range(3)])
    kw = dict(scales=(1.0, 1.5), flip=True, mode='sliding', sliding_rule='base',
              crop_size=(20, 20), base_size=24, batch_size=3)
    two = t.make_predictor(**kw)
    assert two.batch_size == 4
    one = t.make_predictor(devices=jax.devices()[:1], **kw)
    np.testing.assert_allclose(np.asarray(two.multi_scale(img)),
                               np.asarray(one.multi_scale(img)), rtol=1e-6)
    print('OK')
''')


def test_forward_batches_shard_over_devices():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', _SHARDED], env=env,
                       capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]
