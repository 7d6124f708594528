"""The model configuration a PyTorch state dict describes, from its key names
and tensor shapes (HRNetV2 with or without OCR and HANet, Lite-HRNet)."""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from hrseg_jax.models import hanet, hrnet, lite_hrnet
from hrseg_jax.models.heads import OCR_DEFAULTS
from hrseg_jax.models.state_shapes import dim


# Twice what any HRNet has (4 modules, 4 branches, 4 blocks): a file claiming
# more is refused before its keys are searched or a model is traced for it
# (tracing comes before the file's tensors are checked against the model, and
# 64 modules of 16 branches of 64 blocks would trace a million variables).
MAX_MODULES = 8
MAX_BRANCHES = 8
MAX_BLOCKS = 8


def _check_at_most(n: int, limit: int, what: str, where: str) -> None:
  if n > limit:
    raise ValueError(f'not an HRNet state dict: {where} has {n} {what} (at most {limit})')


def _count(state, pattern: str) -> int:
  rx = re.compile(pattern)
  return len({m.group(1) for k in state if (m := rx.match(k))})


def infer_hrnet(state: Mapping[str, np.ndarray], num_classes: int | None = None) -> dict:
  """HRNetV2 (+OCR, +HANet) layout from ``state`` (prefixes removed)."""
  if 'conv1.weight' not in state or 'layer1.0.conv1.weight' not in state:
    raise ValueError('not an HRNet state dict: conv1.weight / layer1.0.conv1.weight missing')
  n1 = _count(state, r'layer1\.(\d+)\.conv1\.weight$')
  _check_at_most(n1, MAX_BLOCKS, 'blocks', 'layer1')
  block1 = 'BOTTLENECK' if 'layer1.0.conv3.weight' in state else 'BASIC'
  planes = dim(state, 'layer1.0.conv1.weight')
  # One pass over the keys: stage -> module -> branch -> its blocks' indices.
  rx = re.compile(r'stage([234])\.(\d+)\.branches\.(\d+)\.(\d+)\.conv1\.weight$')
  found: dict = {}
  for k in state:
    if m := rx.match(k):
      stage, module, branch, block = m.groups()
      found.setdefault(stage, {}).setdefault(module, {}).setdefault(branch, set()).add(block)
  stages = []
  for s in (2, 3, 4):
    # Modules and branches count where their first block is (as in the model).
    first = {m: [i for i, b in br.items() if '0' in b]
             for m, br in found.get(str(s), {}).items()}
    modules = sum('0' in branches for branches in first.values())
    if not modules:
      raise ValueError(f'not an HRNet state dict: stage{s} missing')
    _check_at_most(modules, MAX_MODULES, 'modules', f'stage{s}')
    layouts = set()
    for m in range(modules):
      branches = len(first.get(str(m), ()))
      _check_at_most(branches, MAX_BRANCHES, 'branches', f'stage{s}.{m}')
      module_blocks = found[str(s)].get(str(m), {})
      blocks = tuple(len(module_blocks.get(str(i), ())) for i in range(branches))
      for i, n in enumerate(blocks):
        _check_at_most(n, MAX_BLOCKS, 'blocks', f'stage{s}.{m}.branches.{i}')
      chans = tuple(dim(state, f'stage{s}.{m}.branches.{i}.0.conv1.weight')
                    for i in range(branches))
      layouts.add((blocks, chans))
    if len(layouts) != 1:
      raise ValueError(f'stage{s}: modules differ in layout {sorted(layouts)}')
    blocks, chans = layouts.pop()
    stages.append([modules, list(blocks), list(chans)])
  cfg = {'arch': 'hrnet', 'stage1': [n1, planes, block1], 'stages': stages}
  cfg['variant'] = 'custom'
  for name, spec in hrnet.VARIANTS.items():
    if (list(spec['stage1']) == cfg['stage1'] and
        [[m, list(b), list(c)] for m, b, c in spec['stages']] == stages):
      cfg['variant'] = name
      break
  head = None
  if 'last_layer.3.weight' in state:
    head = 'last_layer.3.weight'
    cfg['final_conv_kernel'] = dim(state, head, -1)
  elif 'cls_head.weight' in state:
    head = 'cls_head.weight'
  if 'conv3x3_ocr.0.weight' in state:
    cfg['ocr'] = {
        'mid_channels': dim(state, 'conv3x3_ocr.0.weight'),
        'key_channels': dim(state, 'ocr_distri_head.object_context_block.f_pixel.0.weight'),
        'dropout': OCR_DEFAULTS['dropout']}
  else:
    cfg['ocr'] = None
  if any(k.startswith('hanet3_0.') for k in state):
    cfg['hanet'] = hanet.infer_config(state, 'hanet3_0.')
  else:
    cfg['hanet'] = None
  if head is not None:
    k = dim(state, head)
    if num_classes is not None and num_classes != k:
      raise ValueError(f'--num-classes {num_classes} but the checkpoint head has {k} '
                       'classes (last_layer.3.weight / cls_head.weight)')
    cfg['num_classes'] = k
  elif num_classes is not None:
    cfg['num_classes'] = num_classes
  else:
    raise ValueError('the checkpoint has no segmentation head (an ImageNet backbone?): '
                     'pass --num-classes or --config')
  return cfg


def infer_model_config(state: Mapping[str, np.ndarray], num_classes: int | None = None) -> dict:
  if any(k.startswith('stem.') for k in state):
    return lite_hrnet.infer_config(state, num_classes)
  return infer_hrnet(state, num_classes)


def has_head(state: Mapping[str, np.ndarray]) -> bool:
  if any(k.startswith('stem.') for k in state):
    return lite_hrnet.has_head(state)
  return any(k.startswith(('last_layer.', 'cls_head.', 'aux_head.', 'head_layer.'))
             for k in state)
