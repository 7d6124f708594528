"""Where a benchmark workload's XLA FLOPs go: per source operation.

Compiles one workload of benchmarks/benchmark.py (the same jitted training
step or whole-image inference; nothing is run) and prints XLA's total beside
the model's own FLOPs and the program's as written (the unoptimised HLO,
before XLA's fusion recomputes cheap elementwise producers inside several
consumers), then the operations that account for XLA's figure, grouped by the
Flax module path and JAX primitive each instruction comes from (``fwd`` or
``bwd``, numbered layers merged; ``?`` is code XLA generated without a
source, mostly weight-gradient convolutions).  See docs/performance.md.

Usage:
  python benchmarks/flop_breakdown.py --model lite30_hanet --mode train
  python benchmarks/flop_breakdown.py --model w48 --mode infer --by opcode
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time

_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from benchmarks.harness import cli  # pylint: disable=wrong-import-position  (no JAX)
from benchmarks.harness import models as models_lib  # pylint: disable=wrong-import-position


def main(argv: list[str] | None = None) -> int:
  p = cli.Parser(description=__doc__.split('\n\n')[0])
  p.add_argument('--model', default='lite30_hanet')
  p.add_argument('--mode', choices=('train', 'infer'), default='train')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--size', default='256x512', help='crop (train) or image (infer), HxW')
  p.add_argument('--by', choices=('source', 'opcode'), default='source')
  p.add_argument('--depth', type=int, default=2, help='module names kept per key')
  p.add_argument('--top', type=int, default=40)
  p.add_argument('--hlo-out', help='also write the optimised HLO text here')
  args = p.parse_args(argv)
  try:
    bench = models_lib.get(args.model)
    h, w = cli.parse_size(args.size)
    if args.batch < 1:
      raise ValueError(f'--batch must be >= 1; got {args.batch}')
    if args.hlo_out:
      cli.check_writable(args.hlo_out, '--hlo-out')
  except (ValueError, argparse.ArgumentTypeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks.harness import flops as flops_lib, hlo_costs  # pylint: disable=g-import-not-at-top
  from benchmarks.harness import workloads  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  from hrseg_jax.train import optim, step as step_lib  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  model = registry.build_model(bench.config, workloads.DTYPES[args.dtype])
  # Shapes only: nothing is initialised or run, only lowered and compiled.
  keys = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}
  variables = jax.eval_shape(functools.partial(model.init, train=False), keys,
                             jax.ShapeDtypeStruct((1, *workloads.INIT_SIZE, 3), jnp.float32))
  if args.mode == 'train':
    tx, _ = optim.make_optimizer(workloads.Attrs(models_lib.TRAIN_RECIPE),
                                 models_lib.TOTAL_STEPS)
    loss_cfg = workloads.Attrs(models_lib.loss_config(bench, args.batch))
    state = jax.eval_shape(lambda v: workloads.new_state(v, tx), variables)
    batch = workloads.random_batch(rng, args.batch, (h, w), models_lib.NUM_CLASSES)
    fn = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx,
                                   loss_cfg=loss_cfg, align_corners=bench.align_corners))
    lowered = fn.lower(state, batch)
    model_flops = flops_lib.train_flops(bench.config, h, w, args.batch)
  else:
    images = workloads.random_batch(rng, args.batch, (h, w), 0, False)['image']
    fn = jax.jit(workloads.whole_image_fn(model, bench.align_corners))
    lowered = fn.lower(variables, images)
    model_flops = flops_lib.forward_flops(bench.config, h, w, args.batch)
  program = flops_lib.xla_cost(lowered)['xla_flops'] or 0.0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  text = compiled.as_text()
  if args.hlo_out:
    out = pathlib.Path(args.hlo_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(out)
  xla = flops_lib.xla_cost(compiled)['xla_flops'] or 0.0
  total, rows = hlo_costs.breakdown(text, depth=args.depth, by=args.by)
  print(f'{bench.label} {args.mode} {args.dtype}, batch {args.batch}, {h}x{w}; '
        f'compiled in {compile_s:.1f} s')
  print(f'model GFLOP {model_flops / 1e9:.4g}  program GFLOP {program / 1e9:.4g} '
        f'({program / model_flops:.3f}x)  XLA GFLOP {xla / 1e9:.4g} '
        f'({xla / model_flops:.3f}x; this walk: {total / 1e9:.4g})')
  print(f'\n| {"operation":<70} | GFLOP | share | count |')
  print(f'|{"-" * 72}|------:|------:|------:|')
  for key, f, n in rows[:args.top]:
    print(f'| {key[:70]:<70} | {f / 1e9:5.2f} | {f / total:5.1%} | {n:5d} |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
