"""The PyTorch layout the converter writes, checked against the official one.

The names, shapes and per-module parameter counts below are written out from
the official ``seg_hrnet`` / ``seg_hrnet_ocr`` models (HRNet-Semantic-
Segmentation, HRNet-OCR branch), not derived from :mod:`hrseg_jax.convert.
mapping`, so the round-trip tests of the converter (which build their
"official" state dicts with the mapping) rest on a layout pinned here.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest
from flax import traverse_util

from hrseg_jax.convert import mapping
from hrseg_jax.models import registry

K = 19  # classes
BN = ('weight', 'bias', 'running_mean', 'running_var')

# seg_hrnet_ocr head (MID 512, KEY 256, 720 backbone channels): key -> shape.
OCR_HEAD = {
    'conv3x3_ocr.0.weight': (512, 720, 3, 3), 'conv3x3_ocr.0.bias': (512,),
    **{f'conv3x3_ocr.1.{b}': (512,) for b in BN},
    **{f'ocr_distri_head.object_context_block.{f}.0.weight': (256, 512, 1, 1)
       for f in ('f_pixel', 'f_object', 'f_down')},
    **{f'ocr_distri_head.object_context_block.{f}.2.weight': (256, 256, 1, 1)
       for f in ('f_pixel', 'f_object')},
    **{f'ocr_distri_head.object_context_block.{f}.{i}.0.{b}': (256,)
       for f in ('f_pixel', 'f_object') for i in (1, 3) for b in BN},
    **{f'ocr_distri_head.object_context_block.f_down.1.0.{b}': (256,) for b in BN},
    'ocr_distri_head.object_context_block.f_up.0.weight': (512, 256, 1, 1),
    **{f'ocr_distri_head.object_context_block.f_up.1.0.{b}': (512,) for b in BN},
    'ocr_distri_head.conv_bn_dropout.0.weight': (512, 1024, 1, 1),
    **{f'ocr_distri_head.conv_bn_dropout.1.0.{b}': (512,) for b in BN},
    'cls_head.weight': (K, 512, 1, 1), 'cls_head.bias': (K,),
    'aux_head.0.weight': (720, 720, 1, 1), 'aux_head.0.bias': (720,),
    **{f'aux_head.1.{b}': (720,) for b in BN},
    'aux_head.3.weight': (K, 720, 1, 1), 'aux_head.3.bias': (K,),
}

# W48 parameters per top-level module (running statistics and
# num_batches_tracked are buffers, not parameters); the stem BNs bn1 and bn2
# hold 2 x 64 each.
W48_PARAMS = {
    'conv1': 1_728, 'bn1': 128, 'conv2': 36_864, 'bn2': 128, 'layer1': 286_208,
    'transition1': 332_064,
    'stage2': 878_112, 'transition2': 166_272, 'stage3': 15_335_040,
    'transition3': 664_320, 'stage4': 47_624_256,
}
OCR_PARAMS = {'conv3x3_ocr': 3_319_296, 'ocr_distri_head': 1_184_256,
              'cls_head': 9_747, 'aux_head': 534_259}


def torch_layout(model_cfg) -> dict[str, tuple[tuple[int, ...], bool]]:
  """{PyTorch key: (shape, is a parameter)} the converter writes, from shapes only."""
  variables = registry.abstract_variables(model_cfg)
  out = {}
  for path, leaf in traverse_util.flatten_dict(variables).items():
    dummy = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), leaf.shape,
                                            [0] * len(leaf.shape))
    out[mapping.flax_path_to_torch(path)] = (
        mapping.flax_to_torch_array(path[-1], dummy).shape, path[0] == 'params')
  return out


def per_module_params(layout) -> dict[str, int]:
  counts = collections.Counter()
  for key, (shape, is_param) in layout.items():
    if is_param:
      counts[key.split('.')[0]] += int(np.prod(shape))
  return dict(counts)


def bn_layers(layout) -> int:
  return sum(key.endswith('.running_var') for key in layout)


@pytest.fixture(scope='module')
def ocr_layout():
  return torch_layout(dict(arch='hrnet', variant='w48', num_classes=K, ocr={}))


def test_ocr_head_keys_and_shapes(ocr_layout):
  head = {k: shape for k, (shape, _) in ocr_layout.items()
          if k.split('.')[0] in OCR_PARAMS}
  assert head == OCR_HEAD
  assert 'last_layer.0.weight' not in ocr_layout  # the OCR model has no last_layer


def test_ocr_totals_and_module_parameter_counts(ocr_layout):
  # 1890 keys with num_batches_tracked = 1576 tensors + 314 BN counters.
  assert len(ocr_layout) == 1576 and bn_layers(ocr_layout) == 314
  convs = [k for k, (shape, _) in ocr_layout.items() if len(shape) == 4]
  assert len(convs) == 316
  with_bias = {k.rsplit('.', 1)[0] for k in ocr_layout if k.endswith('.bias')
               and k.rsplit('.', 1)[0] + '.weight' in convs}
  assert with_bias == {'conv3x3_ocr.0', 'aux_head.0', 'aux_head.3', 'cls_head'}
  assert per_module_params(ocr_layout) == {**W48_PARAMS, **OCR_PARAMS}
  assert sum(per_module_params(ocr_layout).values()) == 70_372_678


def test_seg_hrnet_w48_totals_and_module_parameter_counts():
  layout = torch_layout(dict(arch='hrnet', variant='w48', num_classes=K))
  # 1839 keys with num_batches_tracked = 1533 tensors + 306 BN counters.
  assert len(layout) == 1533 and bn_layers(layout) == 306
  assert per_module_params(layout) == {**W48_PARAMS, 'last_layer': 534_259}
  assert sum(per_module_params(layout).values()) == 65_859_379
  assert {k: layout[k][0] for k in layout if k.startswith('last_layer')} == {
      'last_layer.0.weight': (720, 720, 1, 1), 'last_layer.0.bias': (720,),
      **{f'last_layer.1.{b}': (720,) for b in BN},
      'last_layer.3.weight': (K, 720, 1, 1), 'last_layer.3.bias': (K,)}
