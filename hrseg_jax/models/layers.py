"""Shared building blocks with PyTorch semantics (NHWC).

Naming convention used by every model in this package (the checkpoint
converter relies on it): a Flax module path, joined with ``.`` after turning
every ``_<digits>`` name segment into ``.<digits>``, is the PyTorch
state-dict prefix of the same layer.  ``stage2_0/fuse_layers_1_0_0_0/kernel``
is ``stage2.0.fuse_layers.1.0.0.0.weight``.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# PyTorch-like default init for training from scratch (HRNet init_weights).
conv_init = nn.initializers.normal(stddev=0.001)


class Conv(nn.Module):
  """Conv2d with explicit symmetric PyTorch padding (``k // 2`` unless given).

  Parameters ``kernel`` (HWIO, float32) and optional ``bias``; computation in
  ``dtype``.  ``groups`` is PyTorch's ``groups`` (depthwise: groups = C).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  groups: int = 1
  use_bias: bool = False
  padding: int | None = None
  dtype: Dtype = jnp.float32
  kernel_init: Any = conv_init

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    p = k // 2 if self.padding is None else self.padding
    cin = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, cin // self.groups, self.features), jnp.float32)
    if (self.groups > 1 and self.groups == cin == self.features
        and depthwise_kernel_grad() == 'shifted'):
      y = depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype),
                         self.stride, p)
    else:
      y = _conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, p,
                self.groups)
    if self.use_bias:
      bound = 1.0 / np.sqrt(k * k * cin // self.groups)  # PyTorch default
      bias = self.param('bias', _uniform_init(bound), (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


DEPTHWISE_KERNEL_GRAD_ENV = 'HRSEG_DEPTHWISE_KERNEL_GRAD'
DEPTHWISE_KERNEL_GRADS = ('shifted', 'xla')


def depthwise_kernel_grad() -> str:
  """How depthwise convolutions compute their kernel gradient.

  ``'shifted'`` (the default): :func:`depthwise_conv`'s k*k shifted
  products.  ``'xla'``: XLA's own gradient of the grouped convolution (on
  GPUs a grouped-convolution library call; XLA:CPU expands it into a dense
  convolution).  Set by ``$HRSEG_DEPTHWISE_KERNEL_GRAD``, read when a model
  is traced; forward values and gradients are the same either way.

  Raises:
    ValueError: the variable holds another value.
  """
  value = os.environ.get(DEPTHWISE_KERNEL_GRAD_ENV, '') or 'shifted'
  if value not in DEPTHWISE_KERNEL_GRADS:
    raise ValueError(f'${DEPTHWISE_KERNEL_GRAD_ENV}={value!r}: expected one of '
                     f'{", ".join(DEPTHWISE_KERNEL_GRADS)}')
  return value


def _conv(x, kernel, stride: int, pad: int, groups: int):
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x, kernel, stride: int, pad: int):
  """Depthwise convolution (groups = C, one filter per channel), NHWC/HWIO.

  Forward and input gradient are XLA's grouped convolutions.  The kernel
  gradient is written as k*k shifted products summed over N, H, W: XLA's own
  kernel gradient of a grouped convolution (a ``batch_group_count``
  convolution) is expanded by some backends (XLA:CPU) into a dense one that
  does C times the arithmetic.
  """
  return _conv(x, kernel, stride, pad, x.shape[-1])


def _depthwise_fwd(x, kernel, stride, pad):
  return depthwise_conv(x, kernel, stride, pad), (x, kernel)


def _depthwise_bwd(stride, pad, res, g):
  x, kernel = res
  _, dx = jax.vjp(lambda t: _conv(t, kernel, stride, pad, x.shape[-1]), x)
  (dx,) = dx(g)
  k = kernel.shape[0]
  oh, ow = g.shape[1], g.shape[2]
  acc = jnp.promote_types(x.dtype, jnp.float32)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  gf = g.astype(acc)
  rows = []
  for i in range(k):
    row = []
    for j in range(k):
      win = jax.lax.slice(
          xp, (0, i, j, 0),
          (xp.shape[0], i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1,
           xp.shape[3]), (1, stride, stride, 1))
      row.append(_sum_leading(win.astype(acc) * gf))
    rows.append(jnp.stack(row))
  dk = jnp.stack(rows)[:, :, None, :]
  return dx, dk.astype(kernel.dtype)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


def _uniform_init(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _stat_dtype(x):
  return jnp.promote_types(x.dtype, jnp.float32)


def _sum_leading(x):
  """Sum over every axis but the last, one axis at a time.

  Nested partial sums keep float32 rounding error small on backends that
  reduce sequentially (XLA:CPU); on GPUs/TPUs it costs nothing extra.
  """
  for a in reversed(range(x.ndim - 1)):
    x = jnp.sum(x, axis=a)
  return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """Training-mode BN over all axes but the last: (y, batch mean, biased var).

  The backward pass is PyTorch's closed form
  ``dx = scale*inv/n * (n*g - sum(g) - xhat*sum(g*xhat))``, which is both
  cheaper and far more accurate in float32 than differentiating the forward
  expression (whose mean/variance terms cancel).
  """
  return _bn_fwd(x, scale, bias, epsilon)[0]


def _bn_fwd(x, scale, bias, epsilon):
  n = np.prod(x.shape[:-1])
  xf = x.astype(_stat_dtype(x))
  mean = _sum_leading(xf) / n
  var = _sum_leading(jnp.square(xf - mean)) / n  # two-pass: stable
  inv = jax.lax.rsqrt(var + epsilon)
  y = ((xf - mean) * (scale * inv) + bias).astype(x.dtype)
  return (y, mean, var), (x, mean, inv, scale)


def _bn_bwd(epsilon, res, cts):
  del epsilon
  x, mean, inv, scale = res
  gy = cts[0]  # mean/var are only used under stop_gradient (running stats)
  axes = tuple(range(x.ndim - 1))
  n = np.prod([x.shape[a] for a in axes])
  g = gy.astype(mean.dtype)
  xhat = (x.astype(mean.dtype) - mean) * inv
  dbias = _sum_leading(g)
  dscale = _sum_leading(g * xhat)
  dx = (scale * inv / n) * (n * g - dbias - xhat * dscale)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class BatchNorm(nn.Module):
  """BatchNorm with PyTorch semantics.

  * momentum 0.9 in Flax terms (PyTorch 0.1), eps 1e-5;
  * statistics reduced in (at least) float32 over every axis but the last;
  * the running variance is updated with the *unbiased* batch variance, as
    PyTorch does;
  * under ``jax.jit`` with a batch-sharded input the reduction is global over
    the whole batch (cross-replica, like SyncBatchNorm), with no axis name.
  """
  use_running_average: bool = True
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    use_ra = nn.merge_param('use_running_average', self.use_running_average,
                            use_running_average)
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    x = x.astype(self.dtype)
    if use_ra:
      mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      add = bias - ra_mean.value * mul
      return x * mul.astype(self.dtype) + add.astype(self.dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      n = int(np.prod(x.shape[:-1]))
      unbiased = jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * unbiased
    return y


def interp_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """(out, in) matrix of PyTorch bilinear/linear interpolation weights."""
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = dst * np.float32(scale)
  else:
    src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = src - i0
  w = np.zeros((out_size, in_size), np.float64)
  np.add.at(w, (np.arange(out_size), i0), 1.0 - frac)
  np.add.at(w, (np.arange(out_size), i1), frac)
  return w.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _taps(in_size: int, out_size: int, align_corners: bool):
  """Both taps of every output: (index0, index1, weight0, weight1), numpy."""
  w = interp_matrix(in_size, out_size, align_corners)
  rows = np.arange(out_size)
  i0 = np.argmax(w != 0, axis=1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return (i0.astype(np.int32), i1.astype(np.int32), w[rows, i0],
          np.where(i1 != i0, w[rows, i1], 0.0).astype(np.float32))


@functools.lru_cache(maxsize=None)
def _transposed_taps(in_size: int, out_size: int, align_corners: bool):
  """The transpose of the interpolation as a padded gather: (in, K) each."""
  w = interp_matrix(in_size, out_size, align_corners).T   # (in, out)
  k = max(int((w != 0).sum(axis=1).max()), 1)
  idx = np.zeros((in_size, k), np.int32)
  wt = np.zeros((in_size, k), np.float32)
  for i in range(in_size):
    nz = np.nonzero(w[i])[0]
    idx[i, :len(nz)] = nz
    wt[i, :len(nz)] = w[i, nz]
  return idx, wt


def _bcast(v, axis: int, ndim: int):
  shape = [1] * ndim
  shape[axis] = v.shape[0]
  return v.reshape(shape)


def _lerp(x, axis: int, i0, i1, w0, w1, mode: str | None = 'clip'):
  acc = jnp.promote_types(x.dtype, jnp.float32)
  a = jnp.take(x, i0, axis=axis, mode=mode).astype(acc)
  b = jnp.take(x, i1, axis=axis, mode=mode).astype(acc)
  w0 = _bcast(jnp.asarray(w0, acc), axis, x.ndim)
  w1 = _bcast(jnp.asarray(w1, acc), axis, x.ndim)
  return (a * w0 + b * w1).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _resize_axis(x, axis: int, out_size: int, align_corners: bool):
  """Linear interpolation of one axis: a 2-tap gather and lerp.

  Its gradient is the transposed interpolation, written as a fixed-width
  gather too (no scatter-add).
  """
  return _lerp(x, axis, *_taps(x.shape[axis], out_size, align_corners))


def _resize_axis_fwd(x, axis, out_size, align_corners):
  return _resize_axis(x, axis, out_size, align_corners), x.shape[axis]


def _resize_axis_bwd(axis, out_size, align_corners, in_size, g):
  idx, wt = _transposed_taps(in_size, out_size, align_corners)
  acc = jnp.promote_types(g.dtype, jnp.float32)
  dx = None
  for t in range(idx.shape[1]):
    term = (jnp.take(g, idx[:, t], axis=axis, mode='clip').astype(acc)
            * _bcast(jnp.asarray(wt[:, t], acc), axis, g.ndim))
    dx = term if dx is None else dx + term
  return (dx.astype(g.dtype),)


_resize_axis.defvjp(_resize_axis_fwd, _resize_axis_bwd)


def _is_constant(size) -> bool:
  """Whether a size is a number (a symbolic size of ``jax.export`` is not)."""
  try:
    int(size)
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def _resize_axis_symbolic(x, axis: int, out_size, align_corners: bool):
  """:func:`_resize_axis` for sizes known only when the graph runs (a model
  exported with a free height and width): the same taps, computed in the
  graph from the sizes (PyTorch's source-index rule) instead of as constants.
  Equal sizes give the identity, as in PyTorch."""
  in_size = x.shape[axis]
  acc = jnp.promote_types(x.dtype, jnp.float32)
  n_in = jnp.asarray(in_size, acc)
  n_out = jnp.asarray(out_size, acc)
  dst = jnp.arange(out_size, dtype=acc)
  if align_corners:
    src = dst * jnp.where(n_out > 1, (n_in - 1) / jnp.maximum(n_out - 1, 1), 0)
  else:
    src = jnp.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0)
  i0 = jnp.minimum(jnp.floor(src), n_in - 1)
  frac = src - i0
  i0 = i0.astype(jnp.int32)
  i1 = jnp.minimum(i0 + 1, jnp.asarray(in_size, jnp.int32) - 1)
  # Indices in range: a plain take (ONNX converters map it to one Gather).
  return _lerp(x, axis, i0, i1, 1 - frac, frac, mode=None)


def resize_bilinear(x, size: Sequence[int], align_corners: bool,
                    precision=None):
  """Bilinear resize of an NHWC tensor to ``size`` (H, W), PyTorch semantics.

  Exact for both ``align_corners`` settings and never antialiased (like
  ``F.interpolate``).  Separable: per axis, two gathers with static indices
  and a lerp computed in (at least) float32, which XLA fuses into the
  consumer; 3 FLOPs per output element and axis instead of the 2 x input
  size of an interpolation matmul.  ``precision`` is accepted for callers of
  the former matmul form and has no effect.
  """
  del precision
  h, w = x.shape[1], x.shape[2]
  if not all(map(_is_constant, (h, w, *size))):
    with jax.named_scope('interpolate'):   # a symbolic size (jax.export)
      y = _resize_axis_symbolic(x, 1, size[0], align_corners)
      return _resize_axis_symbolic(y, 2, size[1], align_corners)
  oh, ow = int(size[0]), int(size[1])
  if (h, w) == (oh, ow):
    return x
  with jax.named_scope('interpolate'):
    y = _resize_axis(x, 1, oh, align_corners) if h != oh else x
    y = _resize_axis(y, 2, ow, align_corners) if w != ow else y
  return y


def norm(train: bool, dtype: Dtype, **kw):
  return functools.partial(BatchNorm, use_running_average=not train, dtype=dtype, **kw)
