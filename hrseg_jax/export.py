"""python -m hrseg_jax.export CKPT OUT [--format pytorch|onnx|savedmodel|stablehlo]

Writes a PyTorch state dict that the official code loads (``tools/test.py``
and ``init_weights``), in the layout the weights originally came in (or the
released checkpoints' ``model.``-prefixed layout for trained weights).
No PyTorch needed.  CKPT is a converted checkpoint or a training workdir
(its latest step, or ``--step best|N``).

``--format onnx|savedmodel|stablehlo`` (or the extension ``.onnx``,
``.savedmodel``, ``.stablehlo``) writes a deployment export instead, checked
against the JAX model in its own runtime, with a JSON card beside it
(:mod:`hrseg_jax.deploy.cli`).
"""
from __future__ import annotations

import argparse
import os
import sys

from hrseg_jax import arguments
from hrseg_jax.deploy import cli as deploy_cli


def parse_step(text: str) -> int | str:
  """``--step``: a step number, ``best`` or ``latest`` (an argparse ``type``)."""
  if text in ('best', 'latest'):
    return text
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'{text!r}: expected a step number, best or latest') from None


def main(argv=None) -> int:
  p = arguments.ArgumentParser(prog='python -m hrseg_jax.export', description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('checkpoint', help='converted checkpoint or training workdir')
  p.add_argument('output', help='file (or SavedModel directory) to write')
  p.add_argument('--prefix', default=None, help="key prefix ('' for a bare state "
                 "dict; default: the source layout, else 'model.')")
  p.add_argument('--step', type=parse_step, default=None,
                 help='step of a training workdir to export: a number, best (the '
                 'highest validation mIoU) or latest (default)')
  p.add_argument('--overwrite', action='store_true',
                 help='replace OUTPUT if it exists (a file, or a SavedModel directory; '
                 'never any other directory)')
  deploy_cli.add_arguments(p)
  args = p.parse_args(argv)
  from hrseg_jax import console  # pylint: disable=g-import-not-at-top
  console.configure()
  try:
    fmt = deploy_cli.output_format(args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if fmt != 'pytorch':
    try:
      return deploy_cli.export(args)
    except (OSError, ValueError, KeyError) as e:
      print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
      return 2
  try:
    from hrseg_jax import paths  # pylint: disable=g-import-not-at-top
    output = paths.resolve(args.output)
    if os.path.isdir(output):
      raise IsADirectoryError(f'output is a directory: {args.output}')
    if os.path.lexists(output) and not args.overwrite:
      raise FileExistsError(f'output file exists: {args.output} (pass --overwrite '
                            'to replace it)')
    paths.check_writable(args.output, 'output path')
    from hrseg_jax.convert import convert, pth_write  # pylint: disable=g-import-not-at-top
    from hrseg_jax.checkpoints import info as checkpoint_info  # pylint: disable=g-import-not-at-top
    # A training checkpoint's step is its number of training steps (a
    # converted one is step 0): BN's num_batches_tracked counts them.
    _, variables, meta, step = checkpoint_info.load_step(paths.resolve(args.checkpoint),
                                                         args.step)
    obj = convert.to_state_dict(variables, meta, prefix=args.prefix, steps_trained=step)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    pth_write.save_pth(obj, output)
  except (OSError, ValueError, KeyError, TypeError) as e:
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
    return 2
  # The source file's wrapper ({'state_dict': ...}, {'model': ...}) if it had one.
  wrapper = next(iter(obj)) if len(obj) == 1 and isinstance(next(iter(obj.values())),
                                                            dict) else None
  n = len(obj[wrapper]) if wrapper else len(obj)
  what = f'step {step} of {args.checkpoint}' if step else f'{args.checkpoint} (converted)'
  print(f'wrote {args.output}: {n:,} tensors, PyTorch state dict'
        + (f' under {wrapper!r}' if wrapper else '') + f' of {what}')
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
