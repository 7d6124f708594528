"""Shared building blocks with PyTorch semantics (NHWC).

Naming convention used by every model in this package (the checkpoint
converter relies on it): a Flax module path, joined with ``.`` after turning
every ``_<digits>`` name segment into ``.<digits>``, is the PyTorch
state-dict prefix of the same layer.  ``stage2_0/fuse_layers_1_0_0_0/kernel``
is ``stage2.0.fuse_layers.1.0.0.0.weight``.
"""
from __future__ import annotations

import functools
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
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=self.groups)
    if self.use_bias:
      bound = 1.0 / np.sqrt(k * k * cin // self.groups)  # PyTorch default
      bias = self.param('bias', _uniform_init(bound), (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


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


def resize_bilinear(x, size: Sequence[int], align_corners: bool,
                    precision=None):
  """Bilinear resize of an NHWC tensor to ``size`` (H, W), PyTorch semantics.

  Exact for both ``align_corners`` settings and never antialiased (like
  ``F.interpolate``).  Written as two small matmuls so it runs on tensor cores
  and fuses well; ``precision`` follows the caller's matmul precision.
  """
  h, w = x.shape[1], x.shape[2]
  oh, ow = int(size[0]), int(size[1])
  if (h, w) == (oh, ow):
    return x
  with jax.named_scope('interpolate'):
    wh = jnp.asarray(interp_matrix(h, oh, align_corners), x.dtype)
    ww = jnp.asarray(interp_matrix(w, ow, align_corners), x.dtype)
    y = jnp.einsum('oh,nhwc->nowc', wh, x, precision=precision) if h != oh else x
    y = jnp.einsum('pw,nowc->nopc', ww, y, precision=precision) if w != ow else y
  return y


def resize_nearest(x, size: Sequence[int]):
  """PyTorch legacy 'nearest': source index floor(dst * in / out)."""
  h, w = x.shape[1], x.shape[2]
  oh, ow = int(size[0]), int(size[1])
  ih = np.floor(np.arange(oh) * (h / oh)).astype(np.int32)
  iw = np.floor(np.arange(ow) * (w / ow)).astype(np.int32)
  return x[:, ih][:, :, iw]


def norm(train: bool, dtype: Dtype, **kw):
  return functools.partial(BatchNorm, use_running_average=not train, dtype=dtype, **kw)
