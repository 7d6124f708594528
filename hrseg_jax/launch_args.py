"""What the cluster launchers (scripts/launch_*.py) check in the training flags.

The flags after ``--`` go to ``python -m hrseg_jax.main`` unchanged, on
machines the launcher cannot see.  Checked here, before a job is queued or
a slice starts: the ``--config`` file exists where the remote side will
look for it, its ``--config.a.b=V`` overrides name fields it has with values
they take (else every process would print the same error), and, for
training, ``train.batch_size`` divides over the job's devices.
Each check raises ``ValueError`` with a one-line message; a config that
cannot be evaluated by the launcher's Python is left to the job.
"""
from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from hrseg_jax import command_line
from hrseg_jax.command_line import DEFAULT_CONFIG  # hrseg_jax.main's default --config
from hrseg_jax.config_utils import load_config_file


def split(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the launcher's own flags, the training flags): ``argv`` cut at ``--``."""
  if '--' in argv:
    cut = argv.index('--')
    return argv[:cut], argv[cut + 1:]
  return argv, []


def flag_value(train_args: list[str], name: str) -> str | None:
  """The last value of ``--name V`` or ``--name=V`` (as absl reads it)."""
  value = None
  for i, a in enumerate(train_args):
    if a == name and i + 1 < len(train_args):
      value = train_args[i + 1]
    elif a.startswith(name + '='):
      value = a.split('=', 1)[1]
  return value


def workdir(train_args: list[str]) -> str:
  """``--workdir``, which ``hrseg_jax.main`` requires, given once.

  Raises:
    ValueError: one line, when it is missing, empty or given twice (every
      process would print its own error, or the processes would take the
      last one where the user meant another).
  """
  values = []
  for i, a in enumerate(train_args):
    if a == '--workdir':
      values.append(train_args[i + 1] if i + 1 < len(train_args) else '')
    elif a.startswith('--workdir='):
      values.append(a.split('=', 1)[1])
  if len(values) > 1:
    raise ValueError(f'--workdir is given {len(values)} times '
                     f'({", ".join(map(repr, values))}): pass it once')
  if not values or not values[0]:
    raise ValueError('--workdir is required after "--": the folder for checkpoints, '
                     'logs and results, e.g. -- --config configs/demo.py --workdir runs/demo')
  return values[0]


def mode(train_args: list[str]) -> str:
  """``--mode``: train (the default), eval or predict."""
  return flag_value(train_args, '--mode') or 'train'


def reads_config(train_args: list[str]) -> bool:
  """Whether the run reads a config file: training always (the default one
  if none is named); eval and predict when ``--config`` is given."""
  return mode(train_args) == 'train' or flag_value(train_args, '--config') is not None


def config_spec(train_args: list[str]) -> str:
  """The ``--config`` given (``path.py`` or ``path.py:arg``), or the default."""
  return flag_value(train_args, '--config') or DEFAULT_CONFIG


def config_file(train_args: list[str], base: str, where: str = '') -> str:
  """The config file as the remote side opens it, relative paths taken
  from ``base`` (its working directory, described by ``where`` in the
  message); ValueError if it is not there."""
  name = config_spec(train_args).partition(':')[0]
  path = os.path.join(base, os.path.expanduser(name))
  if not os.path.isfile(path):
    raise ValueError(f'--config {name}: no such file ({where or base})')
  return path


def config_overrides(train_args: list[str]) -> list[str]:
  """The ``--config.a.b=V`` and ``--config.a.b V`` flags of ``train_args``."""
  out = []
  for i, a in enumerate(train_args):
    if a.startswith('--config.'):
      out.append(a)
      if ('=' not in a and i + 1 < len(train_args)
          and not train_args[i + 1].startswith('--')):
        out.append(train_args[i + 1])
  return out


def check_overrides(train_args: list[str], path: str) -> None:
  """ValueError, in the line ``hrseg_jax.main`` would print, when an override
  names a field the config at ``path`` lacks or gives a value it does not
  take; nothing when the config cannot be evaluated here (left to the job)."""
  overrides = config_overrides(train_args)
  if not overrides:
    return
  arg = config_spec(train_args).partition(':')[2]
  spec = f'{path}:{arg}' if arg else path
  try:
    load_config_file(spec)
  except (Exception, SystemExit):  # pylint: disable=broad-except
    return
  values = flags.FlagValues()
  argv = ['hrseg_jax.main', f'--config={spec}', *overrides]
  try:
    # sys_argv: not the launcher's own command line (ml_collections reads its
    # --config.* flags when the flag is defined).
    config_flags.DEFINE_config_file('config', spec, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    command_line.check_repeated_overrides(values.config, argv)
  except command_line.FLAG_ERRORS as e:
    raise ValueError(command_line.flag_error(e, argv)) from None


def batch_size(train_args: list[str], path: str) -> int | None:
  """``train.batch_size``: the ``--config.train.batch_size`` override, else
  that of the config file at ``path``; None when the config cannot be
  evaluated here (the Python of the job may have what this one lacks)."""
  override = flag_value(train_args, '--config.train.batch_size')
  if override is not None:
    try:
      return int(override)
    except ValueError:
      raise ValueError(f'--config.train.batch_size={override}: not an integer') from None
  arg = config_spec(train_args).partition(':')[2]
  try:
    config = load_config_file(f'{path}:{arg}' if arg else path)
    return int(config.train.batch_size)
  except (Exception, SystemExit):  # pylint: disable=broad-except
    return None


def check_batch(batch: int | None, devices: int, where: str) -> None:
  """ValueError unless ``devices`` divide the global batch ``batch`` (None: unknown)."""
  if batch is not None and batch % devices:
    up = -(-batch // devices) * devices
    raise ValueError(f'train.batch_size={batch} is not a multiple of the {devices} '
                     f'devices of {where}: add --config.train.batch_size={up} '
                     'after "--" (or another multiple)')
