"""Lite-HRNet: parity with the official code, parameter counts, padding and
conversion of mmpose backbone files.

Golden fixtures (``../shared/golden``, see README_litehrnet_hanet.md): the
official backbones with random weights; references computed in float64, so
the check runs in float64 at max|jax - ref| / mean|ref| <= 1e-4.  The seed
fork's full Lite-HRNet-30 + HANet model (parity, 1,779,207 parameters) is tested
in ``test_hanet.py``.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hrseg_jax import checkpoints
from hrseg_jax.convert import convert, mapping, pth, pth_write
from hrseg_jax.models import lite_hrnet, registry

BACKBONES = {'litehrnet_18': '18', 'litehrnet_30': '30', 'naive_litehrnet_18': 'naive_18'}


def max_over_mean(a, ref):
  return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / np.mean(np.abs(ref)))


def count(tree) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(tree))


@functools.cache
def backbone_shapes(variant: str):
  """Abstract variables of the backbone alone."""
  model = lite_hrnet.LiteHRNet(variant)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


def backbone_variables(state, variant: str, dtype=np.float64):
  """Official backbone state dict (``backbone.`` removed) -> LiteHRNet variables."""
  flat, report = mapping.torch_to_variables(state, backbone_shapes(variant))
  assert report['initialised'] == [] and report['skipped'] == []
  return traverse_util.unflatten_dict({k: np.asarray(v, dtype) for k, v in flat.items()})


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_backbone_parity_float64(golden, x64, name):
  state, layout = convert.load_state(golden / f'{name}.pth')
  assert layout['prefix'] == 'backbone.'
  variables = backbone_variables(state, BACKBONES[name])
  model = lite_hrnet.LiteHRNet(BACKBONES[name], dtype=jnp.float64)
  apply = jax.jit(model.apply)
  fixture = np.load(golden / f'{name}.npz')
  for i in (0, 1):
    x = fixture[f'input_{i}'].transpose(0, 2, 3, 1).astype(np.float64)
    ref = fixture[f'output_{i}_0'].transpose(0, 2, 3, 1).astype(np.float64)
    outs = apply(variables, x)
    assert len(outs) == 4
    assert outs[0].dtype == jnp.float64 and outs[0].shape == ref.shape
    assert max_over_mean(outs[0], ref) <= 1e-4, (name, i)


@pytest.mark.parametrize('variant,expected', [
    ('18', 1_130_072), ('30', 1_763_020), ('naive_18', 759_838),
    ('wider_naive_18', 1_317_928)])
def test_backbone_parameter_counts(variant, expected):
  shapes = backbone_shapes(variant)
  assert set(shapes) == {'params', 'batch_stats'}
  assert count(shapes['params']) == expected


def test_padded_size_keeps_valid_sizes():
  # The official model accepts a side iff ceil(side / 4) is a multiple of 8.
  assert [lite_hrnet.padded_size(n) for n in (189, 256, 317, 512)] == [189, 256, 317, 512]
  assert [lite_hrnet.padded_size(n) for n in (203, 250, 100)] == [224, 256, 128]


def random_variables(shapes, seed: int = 0):
  """Random weights and BN statistics (NumPy: a jitted Flax init of
  Lite-HRNet compiles one RNG kernel per parameter shape, minutes on CPU)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(shapes)
  out = {}
  for path, spec in flat.items():
    value = rng.normal(0.0, 0.3, spec.shape).astype(np.float32)
    out[path] = np.abs(value) + 0.5 if path[-1] == 'var' else value
  return traverse_util.unflatten_dict(out)


def test_odd_input_is_padded_and_cropped():
  """203 x 317 (rejected by the official model) is padded, outputs cropped."""
  model = lite_hrnet.LiteHRNet('18')
  x = np.random.default_rng(1).normal(size=(1, 203, 317, 3)).astype(np.float32)
  outs = jax.jit(model.apply)(random_variables(backbone_shapes('18')), x)
  assert [o.shape for o in outs] == [(1, 51, 80, 40), (1, 26, 40, 40), (1, 13, 20, 80),
                                     (1, 7, 10, 160)]
  assert all(np.isfinite(np.asarray(o)).all() for o in outs)


def test_resolve_defaults_and_errors():
  cfg = registry.resolve({'arch': 'lite_hrnet', 'num_classes': 19})
  assert cfg == {'arch': 'lite_hrnet', 'variant': '30', 'num_classes': 19,
                 'head': 'clean', 'hanet': None, 'align_corners': False}
  with pytest.raises(ValueError, match='head_type'):
    registry.resolve({'arch': 'lite_hrnet', 'num_classes': 19, 'head_type': 'fork'})
  with pytest.raises(ValueError, match='variant'):
    registry.resolve({'arch': 'lite_hrnet', 'num_classes': 19, 'variant': '50'})
  with pytest.raises(ValueError, match='rfactor'):
    registry.resolve({'arch': 'lite_hrnet', 'num_classes': 19, 'hanet': {'rfactor': 8}})


def test_mmpose_backbone_converts_to_clean_head(golden, tmp_path):
  """A released-style file (backbone + pose head) -> fresh segmentation head."""
  obj = pth.load_pth(golden / 'litehrnet_18.pth')
  obj['state_dict']['keypoint_head.final_layer.weight'] = np.ones((17, 40, 1, 1), np.float32)
  obj['state_dict']['keypoint_head.final_layer.bias'] = np.zeros((17,), np.float32)
  src = tmp_path / 'mmpose.pth'
  pth_write.save_pth(obj, src)
  with pytest.raises(ValueError, match='num-classes'):
    convert.convert(src, tmp_path / 'no_classes', log=lambda *_: None)
  meta = convert.convert(src, tmp_path / 'seg', num_classes=19, log=lambda *_: None)
  assert meta['backbone_only']
  assert meta['initialised'] == ['cls_head.bias', 'cls_head.weight']
  assert meta['skipped'] == ['keypoint_head.final_layer.bias',
                             'keypoint_head.final_layer.weight']
  cfg, variables, _ = checkpoints.load_model(tmp_path / 'seg')
  assert cfg == registry.resolve({'arch': 'lite_hrnet', 'variant': '18',
                                  'num_classes': 19, 'head': 'clean'})
  state, _ = convert.load_state(golden / 'litehrnet_18.pth')
  tensors = mapping.variables_to_torch(variables)
  for key, value in state.items():
    if not key.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(tensors[key], value, err_msg=key)
  assert tensors['cls_head.weight'].shape == (19, 320, 1, 1)


def test_infer_config_recognises_every_variant(golden):
  for name, variant in BACKBONES.items():
    state, _ = convert.load_state(golden / f'{name}.pth')
    cfg = lite_hrnet.infer_config(state, 7)
    assert (cfg['variant'], cfg['head'], cfg['num_classes'], cfg['hanet']) == (
        variant, 'clean', 7, None)
    assert not lite_hrnet.has_head(state)
