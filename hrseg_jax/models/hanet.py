"""HANet: height-driven attention (Choi et al., CVPR 2020), ``HANet_Conv``.

A lower-level map ``low`` (B, H_l, W_l, C_l) is pooled over the width and to
``128 // pos_rfactor`` row bins, passed through a small stack of 1-D
convolutions along the height (optionally with a positional encoding of the
absolute image row), squashed by a sigmoid, linearly upsampled to the height
of the target map ``high`` and multiplied into it (no residual).

Options (the fields of a model config's ``hanet`` entry; :func:`resolve`
fills the defaults, which are the seed fork's ``HANet_Conv(C, C, 3, 64, 3, 2,
1, 8, 'mean', 0.1, 0.5)``):

* ``kernel_size`` (3): kernel of the last 1-D conv.
* ``r_factor`` (64): mid width ``ceil(C_l / r)``; negative = expansion,
  ``C_l * |r|``.  The 3-layer form doubles it in the middle layer.
* ``num_layers`` (3): 2 or 3 conv layers (the original's ``layer``).
* ``pos_injection`` (2): add the positional table after the row pooling (1,
  width C_l) or after the first conv (2, width mid).
* ``encoding`` (``'sinusoidal'``): the frozen sinusoid + 1 table of
  ``PosEncoding1D`` (kept in the ``constants`` collection, never trained), or
  ``'learned'``: the zero-initialised ``nn.Embedding`` of ``PosEmbedding1D``
  (a normal parameter).  The original's ``is_encoding`` 1 / 0.
* ``pos_rfactor`` (8): row bins ``128 // pos_rfactor`` (16) and position
  buckets; the table has one more row, for padding.
* ``pooling`` (``'mean'``): ``'mean'`` or ``'max'`` adaptive pooling with
  PyTorch's bin edges ``floor(i*H/n)`` .. ``ceil((i+1)*H/n)``.
* ``dropout`` (0.1): ``Dropout2d`` on the pooled (B, C, n) tensor in training,
  i.e. whole channels per sample.
* ``pos_noise`` (0.5): training-time noise on the position buckets,
  ``floor(N(0, pos_noise))`` clipped to ``+-16 // pos_rfactor``.
* ``positions`` (``'none'``): what positions the module sees.

  - ``'none'``: no positional encoding is added, although the table exists
    (and is stored).  This is what the seed fork does (it always passes
    ``pos=None``), so fork checkpoints need it.
  - ``'rows'``: the original paper's behaviour.  The model's ``rows``
    argument (int [B, H_img]: for every input image row, its row in the
    original full-resolution frame, -1 for padding) gives each bin a bucket:
    bin i reads image row ``r = rows[:, floor(i * H_img / n)]`` (PyTorch's
    legacy nearest resize of the position map) and uses table row
    ``(r * 128 // frame_height) // pos_rfactor`` (the original dataset's
    ``pos_h = r // 8`` on 1024-row frames, then ``// pos_rfactor``), or row
    ``n`` (16) for padding.  ``frame_height`` (1024, Cityscapes) is the
    height of the dataset's full-resolution frames; rows beyond it land in
    the last bucket.  At
    whole-image inference of a 1024-row image the buckets are 0, 1, ..., 15;
    ``rows=None`` means a whole frame at any scale and gives the same
    buckets (the original's whole-image evaluation at every scale).

Random numbers (dropout, position noise) come from the ``'dropout'`` RNG.
Intermediates ``pooled``, ``logits`` (before the sigmoid, n rows) and
``attention`` (after upsampling) are sown into ``'intermediates'``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax.models import layers
from hrseg_jax.models.state_shapes import dim

Dtype = Any

DEFAULTS = {
    'kernel_size': 3, 'r_factor': 64, 'num_layers': 3, 'pos_injection': 2,
    'encoding': 'sinusoidal', 'pos_rfactor': 8, 'pooling': 'mean',
    'dropout': 0.1, 'pos_noise': 0.5, 'positions': 'none', 'frame_height': 1024,
}
_CHOICES = {
    'num_layers': (2, 3), 'pos_injection': (1, 2),
    'encoding': ('sinusoidal', 'learned'), 'pooling': ('mean', 'max'),
    'positions': ('none', 'rows'),
}
# The original's position map is row // 8 over a 1024-row frame (128 values).
_POS_VALUES = 128

# initialize_weights in mynn.py: Kaiming normal (fan_in, ReLU), zero biases.
kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def resolve(cfg: Mapping[str, Any] | None) -> dict | None:
  """Fills the defaults of a ``hanet`` config; rejects unknown or bad values."""
  if cfg is None:
    return None
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'hanet config: unknown field(s) {unknown}; '
                     f'known: {sorted(DEFAULTS)}')
  out = {**DEFAULTS, **dict(cfg)}
  for field, choices in _CHOICES.items():
    if out[field] not in choices:
      raise ValueError(f'hanet config: {field}={out[field]!r} not in {choices}')
  if not out['r_factor'] or not 0 < out['pos_rfactor'] <= _POS_VALUES:
    raise ValueError('hanet config: r_factor must be non-zero and pos_rfactor '
                     f'in 1..{_POS_VALUES}')
  return out


def mid_channels(in_channels: int, r_factor: int) -> int:
  """Width of the first conv: ceil(C / r), or C * |r| for r < 0."""
  if r_factor > 0:
    return math.ceil(in_channels / r_factor)
  return in_channels * -r_factor


def sinusoid_table(rows: int, dim: int) -> np.ndarray:
  """``PosEncoding1D``'s frozen table: sin/cos + 1, cycle 10 (dim > 50) or 100."""
  cycle = 10 if dim > 50 else 100
  pos = np.arange(rows, dtype=np.float64)[:, None]
  col = np.arange(dim)[None, :]
  angle = pos / np.power(cycle, 2 * (col // 2) / dim)
  table = np.where(col % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32) + np.float32(1)


def row_bins(size: int, n: int) -> list[tuple[int, int]]:
  """PyTorch adaptive pooling windows: [floor(i*H/n), ceil((i+1)*H/n))."""
  return [(i * size // n, -(-(i + 1) * size // n)) for i in range(n)]


def row_pool(x, n: int, pooling: str):
  """Adaptive mean/max pooling of NHWC ``x`` to (n, 1) -> (B, n, C)."""
  reduce = jnp.mean if pooling == 'mean' else jnp.max
  x = reduce(x, axis=2)
  b, h, c = x.shape
  if h % n == 0:   # equal bins: one reduction
    return reduce(x.reshape(b, n, h // n, c), axis=2)
  return jnp.stack([reduce(x[:, s:e], axis=1) for s, e in row_bins(x.shape[1], n)],
                   axis=1)


def position_buckets(rows, n: int, pos_rfactor: int, frame_height: int = 1024):
  """Table row of each of the ``n`` bins from image ``rows`` (int [B, H]).

  ``pos_h = r * 128 // frame_height`` (the original's ``r // 8`` on its
  1024-row Cityscapes frames), then ``// pos_rfactor``.
  """
  sel = np.arange(n) * rows.shape[1] // n  # legacy nearest: floor(i * H / n)
  r = rows[:, sel]
  pos_h = (r * _POS_VALUES) // frame_height
  idx = jnp.minimum(pos_h // pos_rfactor, n - 1)
  return jnp.where(r < 0, n, idx).astype(jnp.int32)


class PosTable(nn.Module):
  """The (rows, dim) table: frozen sinusoid (``constants``) or a parameter."""
  rows: int
  dim: int
  learned: bool = False

  @nn.compact
  def __call__(self):
    if self.learned:
      return self.param('embedding', nn.initializers.zeros, (self.rows, self.dim),
                        jnp.float32)
    return self.variable('constants', 'embedding', lambda: jnp.asarray(
        sinusoid_table(self.rows, self.dim))).value


class PosEmbedding1D(nn.Module):
  """``pos_emb1d_{1st,2nd}``; its ``pos_layer`` holds the table."""
  rows: int
  dim: int
  learned: bool = False

  @nn.compact
  def __call__(self):
    return PosTable(self.rows, self.dim, self.learned, name='pos_layer')()


def conv1d(features: int, kernel_size: int, use_bias: bool, dtype: Dtype, name: str):
  """PyTorch Conv1d (padding k // 2) on (B, L, C); kernel stored (K, I, O)."""
  p = kernel_size // 2
  return nn.Conv(features, (kernel_size,), padding=((p, p),), use_bias=use_bias,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=kaiming_normal,
                 bias_init=nn.initializers.zeros, name=name)


class HANet(nn.Module):
  """``HANet_Conv``: ``high * upsample(sigmoid(convs(rowpool(low))))``.

  Attributes are the config fields described in the module docstring plus the
  channel counts of ``low`` (``in_channels``) and ``high`` (``out_channels``).
  """
  in_channels: int
  out_channels: int
  kernel_size: int = 3
  r_factor: int = 64
  num_layers: int = 3
  pos_injection: int = 2
  encoding: str = 'sinusoidal'
  pos_rfactor: int = 8
  pooling: str = 'mean'
  dropout: float = 0.1
  pos_noise: float = 0.5
  positions: str = 'none'
  frame_height: int = 1024
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, low, high, rows=None, train: bool = False):
    """Returns ``high`` (B, H_h, W_h, C_h) modulated by the row attention.

    Args:
      low: (B, H_l, W_l, in_channels), the attention source.
      high: (B, H_h, W_h, out_channels), the modulated map.
      rows: int [B, H_img], original-frame row of every input image row (-1
        for padding); read only with ``positions='rows'``, where ``None``
        means a whole frame.
      train: batch statistics, dropout and position noise.
    """
    resolve({f: getattr(self, f) for f in DEFAULTS})  # validates the options
    bn = layers.norm(train, self.dtype)
    n = _POS_VALUES // self.pos_rfactor
    mid = mid_channels(self.in_channels, self.r_factor)
    first = self.pos_injection == 1
    table = jnp.asarray(PosEmbedding1D(
        n + 1, self.in_channels if first else mid, self.encoding == 'learned',
        name='pos_emb1d_1st' if first else 'pos_emb1d_2nd')(), self.dtype)
    idx = self._buckets(rows, n, train, low.shape[0])

    x = row_pool(low.astype(self.dtype), n, self.pooling)
    self.sow('intermediates', 'pooled', x)
    if first and idx is not None:
      x = x + table[idx]
    x = nn.Dropout(self.dropout, broadcast_dims=(1,), deterministic=not train)(x)
    x = conv1d(mid, 1, False, self.dtype, 'attention_first_0')(x)
    x = nn.relu(bn(name='attention_first_1')(x))
    if not first and idx is not None:
      x = x + table[idx]
    if self.num_layers == 3:
      x = conv1d(2 * mid, 3, True, self.dtype, 'attention_second_0')(x)
      x = nn.relu(bn(name='attention_second_1')(x))
      x = conv1d(self.out_channels, self.kernel_size, True, self.dtype,
                 'attention_third_0')(x)
    else:
      x = conv1d(self.out_channels, self.kernel_size, True, self.dtype,
                 'attention_second_0')(x)
    self.sow('intermediates', 'logits', x)
    att = layers.resize_bilinear(nn.sigmoid(x)[:, :, None, :], (high.shape[1], 1),
                                 align_corners=False)[:, :, 0]
    self.sow('intermediates', 'attention', att)
    return high.astype(self.dtype) * att[:, :, None, :]

  def _buckets(self, rows, n: int, train: bool, batch: int = 1):
    """Table rows (B, n) for ``positions='rows'``, with training noise."""
    if self.positions == 'none':
      return None
    if rows is None:  # a whole frame, at any scale
      idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
    else:
      idx = position_buckets(jnp.asarray(rows), n, self.pos_rfactor,
                             self.frame_height)
    if train and self.pos_noise > 0:
      clip = 16 // self.pos_rfactor
      noise = jnp.floor(self.pos_noise * jax.random.normal(
          self.make_rng('dropout'), idx.shape)).astype(jnp.int32)
      idx = jnp.clip(idx + jnp.clip(noise, -clip, clip), 0, n)
    return idx


def _infer_r_factor(in_channels: int, mid: int) -> int:
  """An ``r_factor`` giving ``mid`` from ``in_channels`` (64 when possible)."""
  if mid > in_channels and mid % in_channels == 0:
    return -(mid // in_channels)
  for r in (64, 32, 16, 128, 8, 4, 2, 1):
    if mid_channels(in_channels, r) == mid:
      return r
  # The smallest r >= 3 (up to 4 * in_channels) with ceil(C / r) == mid:
  # ceil(C / r) falls as r grows, so only r = max(3, ceil(C / mid)) can be it
  # (computed, not searched: the widths come from the file).
  if mid > 0:
    r = max(3, -(-in_channels // mid))
    if r <= 4 * in_channels and mid_channels(in_channels, r) == mid:
      return r
  raise ValueError(f'no HANet r_factor maps {in_channels} channels to {mid}')


def infer_config(state: Mapping[str, np.ndarray], prefix: str) -> dict:
  """HANet options recoverable from a state dict's keys, shapes and table.

  Shapes give ``kernel_size``, ``num_layers``, ``pos_injection``,
  ``pos_rfactor`` and an ``r_factor`` consistent with the widths (64 when it
  fits); the table's values tell the frozen sinusoid from a learned embedding.
  Everything else takes the seed fork's values (mean pooling, dropout 0.1,
  position noise 0.5, no positions).
  """
  first = prefix + 'attention_first.0.weight'
  if first not in state:
    raise ValueError(f'no HANet at {prefix!r}: {first} missing')
  mid, in_channels = dim(state, first, 0), dim(state, first, 1)
  third = prefix + 'attention_third.0.weight'
  last = third if third in state else prefix + 'attention_second.0.weight'
  cfg = dict(DEFAULTS)
  cfg['num_layers'] = 3 if third in state else 2
  cfg['kernel_size'] = dim(state, last, -1)
  cfg['r_factor'] = _infer_r_factor(in_channels, mid)
  for injection, name in ((2, 'pos_emb1d_2nd'), (1, 'pos_emb1d_1st')):
    table = state.get(f'{prefix}{name}.pos_layer.weight')
    if table is not None:
      break
  else:
    raise ValueError(f'HANet at {prefix!r} has no positional table '
                     '(pos_emb1d_1st / pos_emb1d_2nd)')
  cfg['pos_injection'] = injection
  if np.ndim(table) != 2:
    raise ValueError(f'{prefix}{name}.pos_layer.weight has shape {np.shape(table)}, '
                     'not (rows, dim)')
  rows, width = (int(n) for n in np.shape(table))
  rfactors = [r for r in (8, 4, 16, 2, 32, 1, 64, 128, *range(3, _POS_VALUES))
              if _POS_VALUES // r == rows - 1]
  if not rfactors:
    raise ValueError(f'{prefix}{name}.pos_layer.weight: {rows} rows is not '
                     f'{_POS_VALUES} // pos_rfactor + 1')
  cfg['pos_rfactor'] = rfactors[0]
  sinusoid = np.allclose(np.asarray(table, np.float64), sinusoid_table(rows, width),
                         rtol=0, atol=1e-5)
  cfg['encoding'] = 'sinusoidal' if sinusoid else 'learned'
  return cfg
