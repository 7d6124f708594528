"""python -m hrseg_jax.main --config configs/X.py --workdir DIR [--mode train|eval|predict]

Kept thin on purpose: flags, multi-host start-up, then the library.
Override any field with ``--config.a.b=value`` (after ``--config``).
"""
from __future__ import annotations

import os
import sys

# TensorFlow (clu writers) is only a logging backend here: keep it quiet and
# off the accelerators.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'], 'What to run.')
flags.DEFINE_string('checkpoint', None, 'eval/predict: checkpoint directory '
                    '(default: the workdir\'s latest checkpoint).')
flags.DEFINE_multi_string('input', [], 'predict: image files, folders or list files.')
config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Experiment config file.',
                                lock_config=True)


def distributed_mode(env) -> str | None:
  """How this process joins a multi-process run (docs/distributed.md).

  Returns:
    'explicit': ``HRSEG_COORDINATOR`` (host:port), ``HRSEG_NUM_PROCESSES``
      and ``HRSEG_PROCESS_ID`` are given (scripts/launch_local.py).
    'auto': ``jax.distributed.initialize()`` detects the cluster: asked for
      with ``HRSEG_DISTRIBUTED=1`` (TPU VM slices, detected through the GCE
      metadata server: scripts/launch_tpu_vm.py sets it), or inside an
      ``srun`` step with several tasks, an Open MPI job with several ranks,
      GKE TPU or multi-slice variables, or ``JAX_COORDINATOR_ADDRESS``.
    None: a single process (an ``salloc`` shell or a one-task job included);
      ``HRSEG_DISTRIBUTED=0`` forces this.
  """
  flag = env.get('HRSEG_DISTRIBUTED', '').strip().lower()
  if flag in ('0', 'false', 'no'):
    return None
  if 'HRSEG_COORDINATOR' in env:
    return 'explicit'
  if flag in ('1', 'true', 'yes', 'auto'):
    return 'auto'
  if any(k in env for k in ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES',
                            'MEGASCALE_COORDINATOR_ADDRESS')):
    return 'auto'
  if 'SLURM_STEP_NODELIST' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
    return 'auto'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'auto'
  return None


def _maybe_initialize_distributed():
  """jax.distributed on clusters (TPU pods, Slurm, MPI, explicit env vars)."""
  import jax  # pylint: disable=g-import-not-at-top
  env = os.environ
  mode = distributed_mode(env)
  if mode == 'explicit':
    jax.distributed.initialize(
        coordinator_address=env['HRSEG_COORDINATOR'],
        num_processes=int(env['HRSEG_NUM_PROCESSES']),
        process_id=int(env['HRSEG_PROCESS_ID']))
  elif mode == 'auto':
    jax.distributed.initialize()


def _hide_gpus_from_tf():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  except Exception:  # pylint: disable=broad-except
    pass


def run(config, workdir: str, mode: str, checkpoint=None, inputs=()):
  import jax  # pylint: disable=g-import-not-at-top
  from hrseg_jax import paths  # pylint: disable=g-import-not-at-top
  # Relative paths, ~ and symlinks become absolute here, once.
  config = paths.resolve_config(config)
  workdir = paths.resolve(workdir)
  inputs = paths.resolve_all(inputs)
  if mode == 'train':
    from hrseg_jax.train import loop  # pylint: disable=g-import-not-at-top
    result = loop.train_and_evaluate(config, workdir)
    if jax.process_index() == 0:
      ev = result.get('eval')
      print(f"trained {result['final_step']} steps in {result['seconds']:.0f} s; "
            + (f"final mIoU {100 * ev['miou']:.2f}% (pixel acc "
               f"{100 * ev['pixel_acc']:.2f}%)" if ev else 'no evaluation'))
    return result
  from hrseg_jax import checkpoints  # pylint: disable=g-import-not-at-top
  model_cfg, variables, _ = checkpoints.load_model(checkpoint or workdir)
  if mode == 'eval':
    from hrseg_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.evaluate(model_cfg, variables, config.data, config.eval,
                             out_dir=os.path.join(workdir, 'eval'))
  from hrseg_jax import predict  # pylint: disable=g-import-not-at-top
  if not inputs:
    raise ValueError('--mode predict needs --input (image files, folders or list files)')
  return predict.predict(model_cfg, variables, list(inputs),
                         os.path.join(workdir, 'predictions'),
                         palette=config.data.name, eval_cfg=config.eval)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  logging.set_verbosity(logging.INFO)
  _hide_gpus_from_tf()
  try:
    _maybe_initialize_distributed()
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.checkpoint, FLAGS.input)
  except (OSError, ValueError, KeyError, RuntimeError) as e:
    msg = str(e).strip().replace('\n', ' ') or type(e).__name__
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(2)


def _one_line(message) -> str:
  """A message on one line; a traceback folded into it becomes its last line."""
  text = str(message)
  marker = 'Traceback (most recent call last):'
  if marker in text:
    head = text.split(marker)[0].strip()
    last = text.strip().splitlines()[-1].strip()
    text = f'{head} {last}' if head else last
  return ' '.join(text.split())


def _missing_field(error: BaseException) -> tuple[str, str]:
  """(field, suggestion) of ml_collections' error for a field it lacks.

  Its KeyError (wrapped in an AttributeError for attribute access) reads
  ``'name'`` or ``'name'\\nDid you mean "other" instead of "name"?``.
  """
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  first, _, rest = text.partition('\n')
  return first.strip('"\''), ' '.join(rest.split())


def _parse_flags(argv):
  """absl flag parsing with one-line errors for bad ``--config.*`` overrides."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    # A config file that raises comes with its traceback in the message.
    print(f'error: {_one_line(e)}', file=sys.stderr)
  except (AttributeError, KeyError) as e:
    field, hint = _missing_field(e)
    bad = [a for a in argv if a.startswith('--config.') and field in a.split('=')[0]]
    where = bad[0].split('=')[0][2:] if bad else field
    print(f'error: unknown config field {where!r} (no field {field!r}'
          f'{"; " + hint if hint else ""})', file=sys.stderr)
  except (OSError, ValueError, TypeError) as e:
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
  sys.exit(2)


def entry():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  entry()
