"""The JSON card written beside every export (``<output>.json``)."""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import platform
from typing import Any, Mapping

import jax
import numpy as np

from hrseg_jax.eval import classes as class_lists
from hrseg_jax.data.imagenet_stats import MEAN, STD


def card_path(output) -> str:
  """``model.onnx`` -> ``model.onnx.json``; ``saved/`` -> ``saved.json``."""
  return os.fspath(output).rstrip('/\\') + '.json'


def weights_digest(variables: Mapping) -> str:
  """SHA-256 over every variable's path, dtype, shape and bytes (sorted)."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(dict(variables))[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f'{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}\n'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def versions(*packages: str) -> dict[str, str]:
  out = {'python': platform.python_version()}
  for name in ('hrseg-jax', 'jax', 'jaxlib', 'flax', 'numpy', *packages):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      pass
  return out


def make_card(*, fmt: str, output: str, model_cfg: Mapping[str, Any],
              dataset: str | None, height: int | str, width: int | str, pre: bool,
              post: bool, checkpoint: str, variables: Mapping,
              checkpoint_step: int | None = None,
              extra: Mapping[str, Any] | None = None,
              packages: tuple[str, ...] = ()) -> dict:
  """The card's content (see the README's Deploy section)."""
  k = int(model_cfg['num_classes'])
  stride = 4
  dynamic = not isinstance(height, int)
  if post:
    out = {'name': 'output', 'kind': 'class_map', 'dtype': 'int32',
           'shape': ['batch', height, width]}
  else:
    out = {'name': 'output', 'kind': 'logits', 'dtype': 'float32', 'layout': 'NHWC',
           'shape': ['batch', f'({height})/{stride}' if dynamic else -(-height // stride),
                     f'({width})/{stride}' if dynamic else -(-width // stride), k],
           'note': 'last model output at 1/4 resolution; upsample bilinearly '
                   f'(align_corners={bool(model_cfg.get("align_corners", False))}) '
                   'and take the argmax'}
  return {
      'format': fmt,
      'file': os.path.basename(os.fspath(output).rstrip('/\\')),
      'model': dict(model_cfg),
      'num_classes': k,
      'dataset': dataset,
      'classes': list(class_lists.class_names(dataset, k)),
      'input': {
          'name': 'images', 'layout': 'NHWC', 'color': 'RGB',
          'shape': ['batch', height, width, 3],
          'dtype': 'uint8' if pre else 'float32',
          'normalization_in_graph': bool(pre),
          'dynamic': ['batch', 'height', 'width'] if dynamic else ['batch'],
      },
      'output': out,
      'mean': [round(float(v), 6) for v in MEAN], 'std': [round(float(v), 6) for v in STD],
      'normalization': 'x = (rgb / 255 - mean) / std',
      'checkpoint': {'path': checkpoint, 'step': checkpoint_step,
                     'weights_sha256': weights_digest(variables)},
      'software': versions(*packages),
      **dict(extra or {}),
  }
