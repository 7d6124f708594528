"""Resizes, depthwise convolutions and the loss without excess arithmetic.

Each is checked against the plain formulation it replaces (interpolation
matrices, XLA's grouped-convolution gradient, take_along_axis), values and
gradients, and its compiled FLOP count is bounded (XLA's cost analysis is
deterministic; no timing).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrseg_jax.models import layers
from hrseg_jax.train import losses


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def _matrix_resize(x, size, align_corners):
  wh = layers.interp_matrix(x.shape[1], size[0], align_corners).astype(np.float64)
  ww = layers.interp_matrix(x.shape[2], size[1], align_corners).astype(np.float64)
  return np.einsum('pw,nowc->nopc', ww, np.einsum('oh,nhwc->nowc', wh, x))


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('shape,size', [((7, 13), (29, 50)), ((32, 16), (9, 16)),
                                        ((1, 4), (3, 8)), ((8, 16), (32, 64))])
def test_resize_and_its_gradient_match_the_interpolation_matrices(
    shape, size, align_corners):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *shape, 3)).astype(np.float32)
  g = rng.normal(size=(2, *size, 3)).astype(np.float32)
  y, vjp = jax.vjp(lambda t: layers.resize_bilinear(t, size, align_corners),
                   jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), _matrix_resize(x, size, align_corners),
                             rtol=1e-5, atol=1e-5)
  wh = layers.interp_matrix(shape[0], size[0], align_corners).astype(np.float64)
  ww = layers.interp_matrix(shape[1], size[1], align_corners).astype(np.float64)
  expected = np.einsum('oh,nowc->nhwc', wh, np.einsum('pw,nopc->nowc', ww, g))
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), expected,
                             rtol=1e-5, atol=1e-5)


def test_resize_costs_a_few_flops_per_output_element():
  x = jnp.ones((2, 16, 32, 19), jnp.float32)
  outputs = 2 * 64 * 128 * 19
  fwd = _xla_flops(lambda t: layers.resize_bilinear(t, (64, 128), False), x)
  assert fwd <= 4 * outputs   # matrices: 2 x 32 per output for the W axis alone
  bwd = _xla_flops(jax.grad(
      lambda t: jnp.sum(layers.resize_bilinear(t, (64, 128), False) ** 2)), x)
  assert bwd <= 10 * outputs


@pytest.mark.parametrize('stride', [1, 2])
def test_depthwise_conv_gradients_match_xla_and_stay_cheap(stride):
  rng = np.random.default_rng(1)
  c = 12
  x = jnp.asarray(rng.normal(size=(2, 9, 11, c)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 1, c)), jnp.float32)

  def plain(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)

  def lean(x, w):
    return layers.depthwise_conv(x, w, stride, 1)

  loss = lambda f: (lambda x, w: jnp.sum(f(x, w) ** 2))
  np.testing.assert_allclose(np.asarray(lean(x, w)), np.asarray(plain(x, w)),
                             rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.grad(loss(lean), (0, 1))(x, w),
                       jax.grad(loss(plain), (0, 1))(x, w)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want),
                               rtol=1e-4, atol=1e-4)
  fwd = _xla_flops(lean, x, w)
  kernel_grad = _xla_flops(jax.grad(lambda x, w: jnp.sum(lean(x, w)), 1), x, w)
  assert kernel_grad <= 2 * fwd


def test_depthwise_kernel_grad_is_chosen_by_the_environment(monkeypatch):
  conv = layers.Conv(12, 3, groups=12)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 11, 12)), jnp.float32)
  variables = conv.init(jax.random.PRNGKey(0), x)
  got = {}
  for impl in ('shifted', 'xla'):
    monkeypatch.setenv(layers.DEPTHWISE_KERNEL_GRAD_ENV, impl)
    # A new function each time: a jitted one keeps its first trace.
    grad = jax.grad(lambda v: jnp.sum(conv.apply(v, x) ** 2))
    got[impl] = (grad(variables)['params']['kernel'], _xla_flops(grad, variables))
  np.testing.assert_allclose(np.asarray(got['shifted'][0]), np.asarray(got['xla'][0]),
                             rtol=1e-4, atol=1e-4)
  # XLA:CPU expands its own grouped kernel gradient into a dense convolution.
  assert got['xla'][1] > 2 * got['shifted'][1], got
  monkeypatch.setenv(layers.DEPTHWISE_KERNEL_GRAD_ENV, 'fast')
  with pytest.raises(ValueError, match=r"^\$HRSEG_DEPTHWISE_KERNEL_GRAD='fast': "
                                       r"expected one of shifted, xla"):
    grad(variables)


def test_cross_entropy_matches_a_gather_and_has_no_scatter():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, 5)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 5, size=(2, 8, 8)), jnp.int32)
  labels = labels.at[0, 0, :3].set(255)
  weights = [1.0, 2.0, 0.5, 1.5, 1.0]

  def reference(z):
    logp = jax.nn.log_softmax(z, -1)
    valid = labels != 255
    safe = jnp.where(valid, labels, 0)
    w = jnp.asarray(weights)[safe]
    nll = -jnp.take_along_axis(logp, safe[..., None], -1)[..., 0] * w
    return jnp.sum(jnp.where(valid, nll, 0)) / jnp.sum(jnp.where(valid, w, 0))

  def ours(z):
    return losses.cross_entropy(z, labels, class_weights=weights)

  np.testing.assert_allclose(float(ours(logits)), float(reference(logits)),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.grad(ours)(logits)),
                             np.asarray(jax.grad(reference)(logits)),
                             rtol=1e-5, atol=1e-7)
  hlo = jax.jit(jax.grad(ours)).lower(logits).as_text()
  assert 'scatter' not in hlo


def _plain_batch_norm(x, scale, bias):
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias, mean, var


def test_batch_norm_matches_differentiating_the_plain_formula_in_float64():
  rng = np.random.default_rng(3)
  c = 6
  x = rng.normal(3.0, 0.5, size=(2, 5, 7, c))   # mean far from 0
  scale = rng.normal(1.0, 0.3, size=c)
  bias = rng.normal(0.0, 0.3, size=c)
  g = rng.normal(size=x.shape)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  y, vjp = jax.vjp(lambda *a: layers.batch_norm_train(*a, 1e-5),
                   f32(x), f32(scale), f32(bias))
  grads = vjp((f32(g), jnp.zeros(c, jnp.float32), jnp.zeros(c, jnp.float32)))
  with jax.enable_x64(True):
    y_ref, vjp_ref = jax.vjp(_plain_batch_norm, *(jnp.asarray(a, jnp.float64)
                                                  for a in (x, scale, bias)))
    grads_ref = vjp_ref((jnp.asarray(g), jnp.zeros(c), jnp.zeros(c)))
    for got, want in zip(y, y_ref):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_batch_norm_training_costs_at_most_19_flops_per_element():
  """Forward and backward in PyTorch's closed form (centred first: a form
  with fewer FLOPs, x*mul + (bias - mean*mul), lost enough float32 digits
  for resumes on another device count to drift; tests/test_multihost.py)."""
  x = jnp.ones((2, 16, 32, 8), jnp.float32)
  s = jnp.ones((8,), jnp.float32)

  def forward_and_backward(x, s, g):
    y, vjp = jax.vjp(lambda x, s, b: layers.batch_norm_train(x, s, b, 1e-5)[0], x, s, s)
    return y, vjp(g)

  assert _xla_flops(forward_and_backward, x, s, x) <= 19 * x.size + 50 * s.size


def test_resize_with_a_symbolic_size_equals_the_constant_taps():
  """The taps computed in the graph (models exported with a free height and
  width) equal the constant ones, both align_corners settings, up and down."""
  rng = np.random.default_rng(0)
  for h, w, oh, ow in ((8, 12, 32, 48), (32, 48, 8, 12), (7, 9, 13, 20), (16, 16, 16, 16)):
    for align in (False, True):
      x = jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32)
      got = layers._resize_axis_symbolic(  # pylint: disable=protected-access
          layers._resize_axis_symbolic(x, 1, oh, align), 2, ow, align)  # pylint: disable=protected-access
      np.testing.assert_allclose(got, layers.resize_bilinear(x, (oh, ow), align),
                                 rtol=0, atol=1e-5, err_msg=str((h, w, oh, ow, align)))
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape('2, 8*h, 8*w, 3'), jnp.float32)
  out = jax.eval_shape(lambda x: layers.resize_bilinear(x, (x.shape[1] * 4, x.shape[2] * 4),
                                                        False), spec)
  assert str(out.shape) == '(2, 32*h, 32*w, 3)'
