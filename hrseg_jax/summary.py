"""python -m hrseg_jax.summary: parameters and FLOPs per model.

FLOPs are counted from the traced program of one eval-mode forward of one
image (no compilation, no memory): every convolution and every matrix
product (attention) contributes 2 x multiply-adds; bilinear resizes and
elementwise work are not model FLOPs.  The original's README quotes conv
multiply-adds / 1024^3 as "GFLOPs" (696.2 for W48 at 1024x2048); both
figures are printed.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping

if __name__ == '__main__':   # Ctrl-C while the modules below import: one line
  from hrseg_jax import pipes
  pipes.stop_at_once_on_ctrl_c()

import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax import arguments
from hrseg_jax.models import registry


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    vals = v if isinstance(v, (list, tuple)) else [v]
    for x in vals:
      if hasattr(x, 'jaxpr') and hasattr(x, 'consts'):
        yield x.jaxpr
      elif hasattr(x, 'eqns'):
        yield x


def _count(jaxpr, acc):
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
      out = eqn.outvars[0].aval
      dn = eqn.params['dimension_numbers']
      k = rhs.shape
      # rhs spec: (out_feature, in_feature, spatial...) indices
      spatial = int(np.prod([k[i] for i in dn.rhs_spec[2:]]))
      cin_per_group = k[dn.rhs_spec[1]]
      acc['conv'] += int(np.prod(out.shape)) * spatial * cin_per_group
      del lhs
    elif name == 'dot_general':
      (lc, _), (lb, _) = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval
      contract = int(np.prod([lhs.shape[i] for i in lc])) if lc else 1
      kind = 'interp' if 'interpolate' in str(eqn.source_info.name_stack) else 'matmul'
      acc[kind] += int(np.prod(eqn.outvars[0].aval.shape)) * contract
      del lb
    for sub in _sub_jaxprs(eqn):
      _count(sub, acc)
  return acc


def count_macs(model_cfg: Mapping[str, Any], height: int, width: int,
               batch: int = 1) -> dict:
  """Multiply-adds of one eval-mode forward: conv, matmul (attention) and
  interp (bilinear resizes, written as small matmuls; not model FLOPs)."""
  model = registry.build_model(model_cfg)
  variables = registry.abstract_variables(model_cfg)
  x = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return _count(closed.jaxpr, {'conv': 0, 'matmul': 0, 'interp': 0})


def num_params(model_cfg) -> int:
  v = registry.abstract_variables(model_cfg)
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v['params']))


def summary_row(model_cfg, height: int, width: int) -> dict:
  macs = count_macs(model_cfg, height, width)
  total = macs['conv'] + macs['matmul']
  return {'params': num_params(model_cfg), 'conv_gmac': macs['conv'] / 1e9,
          'matmul_gmac': macs['matmul'] / 1e9, 'gflop': 2 * total / 1e9,
          'readme_gflops': macs['conv'] / 1024 ** 3}


def main(argv=None) -> int:
  p = arguments.ArgumentParser(prog='python -m hrseg_jax.summary', description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', action='append', default=[],
                 help='configs/X.py (repeatable); its `model` field')
  p.add_argument('--variant', action='append', default=[],
                 help='HRNet variant, e.g. w48, w18_small_v2 (repeatable)')
  p.add_argument('--ocr', action='store_true', help='with --variant: add the OCR head')
  p.add_argument('--num-classes', type=int, default=19,
                 help='classes of the --variant models (default: 19)')
  p.add_argument('--size', type=int, nargs=2, default=(1024, 2048), metavar=('H', 'W'),
                 help='input image size (default: 1024 2048)')
  args = p.parse_args(argv)
  models = []
  try:
    for c in args.config:
      from hrseg_jax.config_utils import load_config_file  # pylint: disable=g-import-not-at-top
      models.append((c, load_config_file(c).model.to_dict()))
    for v in args.variant:
      models.append((v + ('+ocr' if args.ocr else ''),
                     dict(arch='hrnet', variant=v, num_classes=args.num_classes,
                          ocr={} if args.ocr else None)))
    if not models:
      models = [(v, dict(arch='hrnet', variant=v, num_classes=args.num_classes))
                for v in ('w18_small_v1', 'w18_small_v2', 'w18', 'w32', 'w48')]
      models.append(('w48+ocr', dict(arch='hrnet', variant='w48',
                                     num_classes=args.num_classes, ocr={})))
    h, w = args.size
    rows = [(name, summary_row(cfg, h, w)) for name, cfg in models]
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'one {h}x{w} image, eval-mode forward')
  width = max([28] + [len(name) for name, _ in rows])   # a config path may be long
  print(f'{"model":{width}s} {"params":>12s} {"conv GMAC":>10s} {"matmul GMAC":>11s} '
        f'{"GFLOP":>9s} {"GFLOPs (orig.)":>14s}')
  for name, r in rows:
    print(f'{name:{width}s} {r["params"]:>12,d} {r["conv_gmac"]:>10.1f} '
          f'{r["matmul_gmac"]:>11.2f} {r["gflop"]:>9.1f} {r["readme_gflops"]:>14.1f}')
  print('GFLOP: 2 x (conv + matmul) multiply-adds / 1e9; GFLOPs (orig.): conv '
        'multiply-adds / 1024^3, as the official HRNet README counts them (W48: 696.2 '
        'at 1024x2048)')
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
