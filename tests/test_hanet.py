"""HANet: parity with the official ``HANet_Conv``, positions, and the seed
fork's HRNet-W32 + HANet and Lite-HRNet-30 + HANet checkpoints.

Golden fixtures (``../shared/golden``, README_litehrnet_hanet.md): float32
with the highest matmul precision, max|jax - ref| / mean|ref| <= 1e-4 for the
result, the attention and the pre-sigmoid logits; the fork's Lite-HRNet model
in float64 at <= 1e-4.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hrseg_jax import Segmenter, checkpoints
from hrseg_jax.convert import convert, mapping, pth_write
from hrseg_jax.models import hanet, registry

FIXTURES = ('hanet_best_hanet0', 'hanet_best_hanet3', 'hanet_maxpool_pos1_hanet1',
            'hanet_maxpool_pos1_hanet2')
FORK_W32 = {'arch': 'hrnet', 'variant': 'w32', 'num_classes': 19, 'hanet': {}}
FORK_LITE = 'lite_hrnet_30_hanet_cityscapes'


def max_over_mean(a, ref):
  return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / np.mean(np.abs(ref)))


def count(tree) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(tree))


def nchw_to_nhwc(a):
  return a.transpose(0, 2, 3, 1)


def ncl_to_nlc(a):
  return a.transpose(0, 2, 1)


def rows_from_pos_h(pos_h):
  """The official uint8 ``pos_h`` map (row // 8, 128 = padding) -> ``rows``."""
  col = pos_h[:, :, 0].astype(np.int32)
  return np.where(col == 128, -1, col * 8).astype(np.int32)


def random_variables(shapes, seed: int = 0):
  """Random weights and BN statistics drawn with NumPy for abstract ``shapes``."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, spec in traverse_util.flatten_dict(shapes).items():
    value = rng.normal(0.0, 0.3, spec.shape).astype(np.float32)
    out[path] = np.abs(value) + 0.5 if path[-1] == 'var' else value
  return traverse_util.unflatten_dict(out)


def load_fixture(golden, name: str, positions: str = 'rows'):
  """(HANet module, its variables, npz arrays, json meta) for one fixture."""
  meta = json.loads((golden / f'{name}.json').read_text())
  c = meta['constructor']
  model = hanet.HANet(
      c['in_channel'], c['out_channel'], kernel_size=c['kernel_size'],
      r_factor=c['r_factor'], num_layers=c['layer'], pos_injection=c['pos_injection'],
      encoding='sinusoidal' if c['is_encoding'] else 'learned',
      pos_rfactor=c['pos_rfactor'], pooling=c['pooling'], dropout=c['dropout_prob'],
      pos_noise=c['pos_noise'], positions=positions)
  state, layout = convert.load_state(golden / f'{name}.pth')
  assert layout['prefix'] == 'module.'
  prefix = meta['deepv3_attribute'] + '.'
  state = {k[len(prefix):]: v for k, v in state.items()}
  arrays = dict(np.load(golden / f'{name}.npz'))
  shapes = jax.eval_shape(
      functools.partial(model.init, jax.random.PRNGKey(0)),
      nchw_to_nhwc(arrays['x']), nchw_to_nhwc(arrays['out']),
      rows_from_pos_h(arrays['pos_h']))
  flat, _ = mapping.torch_to_variables(state, shapes)
  return model, traverse_util.unflatten_dict(flat), arrays, meta


@pytest.mark.parametrize('name', FIXTURES)
def test_fixture_parity(golden, name):
  model, variables, a, _ = load_fixture(golden, name)
  rows = rows_from_pos_h(a['pos_h'])
  np.testing.assert_array_equal(hanet.position_buckets(rows, 16, 8), a['pos_index'][:, 0])
  with jax.default_matmul_precision('highest'):
    result, inter = model.apply(variables, nchw_to_nhwc(a['x']), nchw_to_nhwc(a['out']),
                                rows, mutable=['intermediates'])
  inter = inter['intermediates']
  assert max_over_mean(result, nchw_to_nhwc(a['result'])) <= 1e-4
  assert max_over_mean(inter['attention'][0], ncl_to_nlc(a['attention'])) <= 1e-4
  assert max_over_mean(inter['logits'][0], ncl_to_nlc(a['logits'])) <= 1e-4
  assert max_over_mean(inter['pooled'][0], ncl_to_nlc(a['pooled'])) <= 1e-4


@pytest.mark.parametrize('name', FIXTURES)
def test_tables_and_counts_match_the_original(golden, name):
  model, variables, _, meta = load_fixture(golden, name)
  (table,) = jax.tree_util.tree_leaves(variables['constants'])
  np.testing.assert_array_equal(table, hanet.sinusoid_table(*table.shape))
  assert count(variables['params']) == meta['num_trainable_params']
  assert count(variables['params']) + table.size == meta['num_params']
  c = meta['constructor']
  prefix = meta['deepv3_attribute'] + '.'
  state, _ = convert.load_state(golden / f'{name}.pth')
  cfg = hanet.infer_config({k[len(prefix):]: v for k, v in state.items()}, '')
  assert (cfg['kernel_size'], cfg['r_factor'], cfg['num_layers'], cfg['pos_injection'],
          cfg['encoding'], cfg['pos_rfactor']) == (
              c['kernel_size'], c['r_factor'], c['layer'], c['pos_injection'],
              'sinusoidal', c['pos_rfactor'])
  assert model.num_layers == cfg['num_layers']


def test_position_buckets():
  full = np.arange(1024, dtype=np.int32)[None]
  np.testing.assert_array_equal(hanet.position_buckets(full, 16, 8)[0], np.arange(16))
  # hanet_spec.md section 4: a 768-row crop starting at original row 200.
  crop = (200 + np.arange(768, dtype=np.int32))[None]
  np.testing.assert_array_equal(hanet.position_buckets(crop, 16, 8)[0],
                                [3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12, 12, 13, 14])
  padded = np.concatenate([-np.ones((1, 64), np.int32), full[:, :960]], axis=1)
  assert hanet.position_buckets(padded, 16, 8)[0, 0] == 16
  beyond = np.arange(1024, 3072, 2, dtype=np.int32)[None]
  assert int(np.max(hanet.position_buckets(beyond, 16, 8))) == 15


def test_positions_change_the_output_and_none_is_the_fork_mode(golden):
  fork, variables, a, _ = load_fixture(golden, 'hanet_best_hanet3', positions='none')
  with_rows = fork.clone(positions='rows')
  x, out = nchw_to_nhwc(a['x']), nchw_to_nhwc(a['out'])
  rows_a = rows_from_pos_h(a['pos_h'])
  rows_b = np.broadcast_to(np.arange(864, dtype=np.int32), rows_a.shape)
  with jax.default_matmul_precision('highest'):
    plain = fork.apply(variables, x, out)
    ignored = fork.apply(variables, x, out, rows_a)
    pos_a = with_rows.apply(variables, x, out, rows_a)
    pos_b = with_rows.apply(variables, x, out, rows_b)
  np.testing.assert_array_equal(plain, ignored)
  assert max_over_mean(pos_a, np.asarray(pos_b, np.float64)) > 1e-3
  assert max_over_mean(pos_a, np.asarray(plain, np.float64)) > 1e-3
  np.testing.assert_allclose(pos_a, nchw_to_nhwc(a['result']), rtol=0, atol=1e-4)
  whole_frame = np.broadcast_to(np.arange(1024, dtype=np.int32), (2, 1024))
  with jax.default_matmul_precision('highest'):
    np.testing.assert_array_equal(with_rows.apply(variables, x, out),
                                  with_rows.apply(variables, x, out, whole_frame))


def test_model_rows_reach_hanet():
  """HRNetSeg passes ``rows`` to ``hanet3_0``: used with positions, else ignored."""
  cfg = dict(arch='hrnet', variant='custom', num_classes=3, stage1=[1, 8, 'BOTTLENECK'],
             stages=[[1, [1, 1], [4, 8]], [1, [1, 1, 1], [4, 8, 16]],
                     [1, [1, 1, 1, 1], [4, 8, 16, 32]]],
             hanet={'positions': 'rows'})
  variables = random_variables(registry.abstract_variables(cfg))
  variables['constants'] = jax.tree_util.tree_map(
      lambda v: hanet.sinusoid_table(*v.shape), variables['constants'])
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  whole = np.broadcast_to(np.arange(0, 1024, 16, dtype=np.int32), (2, 64))
  crop = np.broadcast_to(np.arange(512, 576, dtype=np.int32), (2, 64))
  outputs = {}
  for positions in ('rows', 'none'):
    cfg['hanet'] = {'positions': positions}
    apply = jax.jit(registry.build_model(cfg).apply)
    outputs[positions] = [np.asarray(apply(variables, x, rows=r)[0]) for r in (whole, crop)]
  assert not np.allclose(*outputs['rows'])
  np.testing.assert_array_equal(*outputs['none'])


def test_training_noise_dropout_and_batch_stats(golden):
  model, variables, a, _ = load_fixture(golden, 'hanet_best_hanet3')
  model = model.clone(pos_noise=0.5)
  rows = rows_from_pos_h(a['pos_h'])
  clean = hanet.position_buckets(rows, 16, 8)
  noisy = model.apply(variables, rows, 16, True, rngs={'dropout': jax.random.PRNGKey(3)},
                      method=model._buckets)  # pylint: disable=protected-access
  assert np.all(np.abs(noisy - clean) <= 2) and noisy.min() >= 0 and noisy.max() <= 16
  assert np.any(noisy != clean)
  x, out = nchw_to_nhwc(a['x']), nchw_to_nhwc(a['out'])

  @jax.jit
  def run(key):  # NumPy variables: closed over, they stay NumPy under jit
    return model.apply(variables, x, out, rows, train=True, mutable=['batch_stats'],
                       rngs={'dropout': key})
  y1, s1 = run(jax.random.PRNGKey(0))
  y2, _ = run(jax.random.PRNGKey(1))
  y1_again, _ = run(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(y1, y1_again)
  assert not np.allclose(y1, y2)
  old = variables['batch_stats']['attention_first_1']['mean']
  assert not np.allclose(s1['batch_stats']['attention_first_1']['mean'], old)


def test_resolve_rejects_unknown_and_bad_options():
  assert hanet.resolve({}) == hanet.DEFAULTS
  assert hanet.resolve(None) is None
  with pytest.raises(ValueError, match='layer'):
    hanet.resolve({'layer': 3})
  with pytest.raises(ValueError, match='pooling'):
    hanet.resolve({'pooling': 'sum'})
  assert hanet.mid_channels(304, 64) == 5 and hanet.mid_channels(40, -2) == 80


@functools.cache
def w32_shapes():
  return registry.abstract_variables(FORK_W32)


def test_hrnet_w32_hanet_parameters():
  shapes = w32_shapes()
  # hanet_spec.md 9(a): hanet3_0 = HANet_Conv(32, 32): mid 1 / 2.
  expected = {
      ('attention_first_0', 'kernel'): (1, 32, 1),
      ('attention_first_1', 'scale'): (1,), ('attention_first_1', 'bias'): (1,),
      ('attention_second_0', 'kernel'): (3, 1, 2), ('attention_second_0', 'bias'): (2,),
      ('attention_second_1', 'scale'): (2,), ('attention_second_1', 'bias'): (2,),
      ('attention_third_0', 'kernel'): (3, 2, 32), ('attention_third_0', 'bias'): (32,),
  }
  got = traverse_util.flatten_dict(shapes['params']['hanet3_0'])
  assert {k: v.shape for k, v in got.items()} == expected
  assert count(shapes['params']) == 29_546_515 + 270  # HRNet-W32 + hanet3_0
  table = shapes['constants']['hanet3_0']['pos_emb1d_2nd']['pos_layer']['embedding']
  assert table.shape == (17, 1)
  torch_keys = {mapping.flax_path_to_torch(p) for p in traverse_util.flatten_dict(shapes)}
  assert 'hanet3.0.pos_emb1d_2nd.pos_layer.weight' in torch_keys  # before TORCH_NAMES


def test_hrnet_w32_hanet_converter_round_trip(tmp_path):
  """Random weights in the fork's layout -> convert -> same config and tensors."""
  variables = random_variables(w32_shapes())
  variables['constants'] = jax.tree_util.tree_map(  # the fork's frozen table
      lambda v: hanet.sinusoid_table(*v.shape), variables['constants'])
  torch_state = convert.rename_keys(mapping.variables_to_torch(variables),
                                    {'hanet3.0.': 'hanet3_0.'})
  obj = {}
  for key, value in torch_state.items():
    obj['model.' + key] = value
    if key.endswith('running_var'):
      obj['model.' + key[:-len('running_var')] + 'num_batches_tracked'] = np.asarray(
          7, np.int64)
  obj['loss.criterion.weight'] = np.linspace(0.8, 1.2, 19, dtype=np.float32)
  assert 'model.hanet3_0.attention_third.0.weight' in obj
  pth_write.save_pth(obj, tmp_path / 'fork_w32_hanet.pth')
  meta = convert.convert(tmp_path / 'fork_w32_hanet.pth', tmp_path / 'ckpt',
                         log=lambda *_: None)
  assert not meta['backbone_only'] and not meta['initialised']
  cfg, loaded, meta = checkpoints.load_model(tmp_path / 'ckpt')
  assert cfg == registry.resolve(FORK_W32)
  assert cfg['hanet']['positions'] == 'none'
  flat_in = traverse_util.flatten_dict(variables)
  flat_out = traverse_util.flatten_dict(loaded)
  assert sorted(flat_in) == sorted(flat_out)
  for k, v in flat_in.items():
    np.testing.assert_array_equal(flat_out[k], v, err_msg='/'.join(k))
  back = convert.to_state_dict(loaded, meta)
  assert sorted(back) == sorted(obj)
  for k, v in obj.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_fork_lite_hrnet_hanet_parity(golden, tmp_path, x64):
  """The seed fork's Lite-HRNet-30 + 4 HANets via the converter and Segmenter."""
  lines = []
  convert.convert(golden / f'{FORK_LITE}.pth', tmp_path / 'lite', log=lines.append)
  assert ': lite_hrnet 30+HANet (fork head), 19 classes, 1,779,020 parameters' in lines[0]
  seg = Segmenter.from_checkpoint(tmp_path / 'lite', dtype=jnp.float64)
  assert seg.config == registry.resolve(
      {'arch': 'lite_hrnet', 'variant': '30', 'num_classes': 19, 'head': 'fork',
       'hanet': {}})
  # PyTorch counts the four frozen (17, d) position tables as parameters.
  assert count(seg.variables['constants']) == 17 * (1 + 2 + 3 + 5)
  assert count(seg.variables['params']) + count(seg.variables['constants']) == 1_779_207
  head = seg.variables['params']['head_layer']['projects_3']['pointwise_conv']
  assert head['conv']['kernel'].shape == (1, 1, 40, 19) and head['bn']['scale'].shape == (19,)
  seg.variables = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64),
                                         seg.variables)
  fixture = np.load(golden / f'{FORK_LITE}.npz')
  for i in (0, 1):
    ref = nchw_to_nhwc(fixture[f'output_{i}_0']).astype(np.float64)
    (out,) = seg.logits(nchw_to_nhwc(fixture[f'input_{i}']))
    assert out.shape == ref.shape
    assert max_over_mean(out, ref) <= 1e-4, i
