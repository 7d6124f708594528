"""The command line of ``python -m hrseg_jax.main``: its default config, and
one-line errors (exit 2) for a bad one.

A missing config file, an unknown ``--config.*`` field (with the fields it
was probably meant to be) and absl's parse errors become one line on stderr
instead of a traceback.  ``python -m hrseg_jax.browse``
(:func:`load_config_with_overrides`) and the cluster launchers
(:mod:`hrseg_jax.launch_args`) apply and check ``--config.a.b=V`` overrides
the same way.
"""
from __future__ import annotations

import os
import re
import sys

from absl import flags
from ml_collections import config_flags

from hrseg_jax.config_utils import load_config_file

FLAGS = flags.FLAGS
DEFAULT_CONFIG = 'configs/demo.py'


def config_filename(argv) -> str:
  """The ``--config`` file named on the command line (or the default)."""
  filename = DEFAULT_CONFIG
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith('--config='):
      filename = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      filename = argv[i + 1]
  return filename


def check_overridden_config(argv) -> None:
  """One line, exit 2, for ``--config.X=...`` without a config file to apply it to.

  ml_collections loads the config file as soon as the flag is defined when
  the command line overrides its fields, and a missing file would end in a
  traceback before any of this module's checks.
  """
  overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
  if not overrides:
    return
  filename = config_filename(argv)
  given = any(a == '--config' or a.startswith('--config=') for a in argv[1:])
  filename = filename.split(':')[0]
  if not os.path.isfile(os.path.expanduser(filename)):
    print(f'error: {overrides[0]} needs a config file, and {filename!r} '
          f'({"given" if given else "the default --config"}) is not found: pass --config '
          "with the path of one of the repository's configs/*.py files", file=sys.stderr)
    sys.exit(2)



def require_config_file():
  """One line, exit 2, when the ``--config`` file (or its default) is missing."""
  filename = config_flags.get_config_filename(FLAGS['config']).split(':')[0]
  if not os.path.isfile(os.path.expanduser(filename)):
    what = ('config file' if FLAGS['config'].present
            else 'the default config file (no --config given)')
    print(f'error: {what} {filename} not found: pass --config with the '
          'path of one of the repository\'s configs/*.py files', file=sys.stderr)
    sys.exit(2)


def one_line(message) -> str:
  """A message on one line; a traceback folded into it becomes its last line."""
  text = str(message)
  marker = 'Traceback (most recent call last):'
  if marker in text:
    head = text.split(marker)[0].strip()
    last = text.strip().splitlines()[-1].strip()
    text = f'{head} {last}' if head else last
  return ' '.join(text.split())


def missing_field(error: BaseException) -> tuple[str, str]:
  """(field, suggestion) of ml_collections' error for a field it lacks.

  Its KeyError (wrapped in an AttributeError for attribute access) reads
  ``'name'`` or ``'name'\\nDid you mean "other" instead of "name"?``.
  """
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  first, _, rest = text.partition('\n')
  return first.strip('"\''), ' '.join(rest.split())


def similar_fields(argv, where: str, limit: int = 2) -> list[str]:
  """Fields anywhere in the config whose path is like ``where``'s
  (``config.train.eval_every_steps`` -> ``eval.every_steps``)."""
  import difflib  # pylint: disable=g-import-not-at-top
  try:
    config = load_config_file(os.path.expanduser(config_filename(argv)))
  except Exception:  # pylint: disable=broad-except
    return []

  def paths(node, prefix=''):
    for key in node.keys():
      value = node[key]
      if hasattr(value, 'keys'):
        yield from paths(value, f'{prefix}{key}.')
      yield f'{prefix}{key}'

  fields = list(paths(config))
  asked = where.split('.', 1)[1] if where.startswith('config.') else where
  flat = lambda p: p.replace('.', '_')  # noqa: E731
  leaf = asked.rsplit('.', 1)[-1]
  exact = [f for f in fields if flat(f) in (flat(asked), flat(leaf))
           or flat(f).endswith('_' + flat(leaf))]
  if exact:
    return exact[:limit]
  by_flat = {flat(f): f for f in fields}
  return [by_flat[m] for m in difflib.get_close_matches(flat(asked), by_flat, n=limit,
                                                         cutoff=0.75)]


def load_config_with_overrides(spec: str, overrides) -> object:
  """``load_config_file(spec)`` with ``--config.a.b=value`` arguments applied
  as ``python -m hrseg_jax.main`` applies them (for ``python -m hrseg_jax.browse``).

  Raises:
    ValueError: one line naming the override that is not a field or whose
      value does not parse.
  """
  overrides = list(overrides)
  config = load_config_file(spec)
  if not overrides:
    return config
  argv = ['prog', '--config', spec, *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError) as e:
    # Training's message: an unknown field names the ones it was probably meant to be.
    raise ValueError(flag_error(e, argv)) from None
  check_repeated_overrides(values.config, argv)
  return values.config


# What parsing ``--config FILE --config.a.b=V`` raises for a bad override or file.
FLAG_ERRORS = (flags.Error, AttributeError, KeyError, OSError, ValueError, TypeError)


def flag_error(error: BaseException, argv) -> str:
  """The one line for ``error`` (one of :data:`FLAG_ERRORS`), raised by absl
  while parsing ``argv``: an unknown field is named with the fields of the
  config it was probably meant to be."""
  if isinstance(error, flags.Error):
    # A config file that raises comes with its traceback in the message.
    text = one_line(error)
    return _wrong_type(text) or _not_a_choice(text) or _unknown_flag(text) or text
  if isinstance(error, (AttributeError, KeyError)):
    field, hint = missing_field(error)
    bad = [a for a in argv if a.startswith('--config.') and field in a.split('=')[0]]
    where = bad[0].split('=')[0][2:] if bad else field
    close = similar_fields(argv, where)
    if close:
      hint = 'did you mean ' + ' or '.join(f'--config.{c}' for c in close) + '?'
    return (f'unknown config field {where!r} (no field {field!r}'
            f'{"; " + hint if hint else ""})')
  return str(error).replace('\n', ' ')


# What Python says of a value that does not parse, and the type it expected.
_TYPE_ERRORS = (('invalid literal for int()', 'an integer'),
                ('could not convert string to float', 'a number'),
                ('Non-boolean argument to boolean flag', 'true or false'))


def _unknown_flag(message: str) -> str | None:
  """absl's ``Unknown command line flag 'workdr'. Did you mean: workdir ?``
  in the other commands' words: ``unrecognized arguments: --workdr; did you
  mean --workdir? (see --help)``; None for another message."""
  found = re.match(r"Unknown command line flag '([^']+)'(?:\. Did you mean: (.+?) \?)?$",
                   message)
  if not found:
    return None
  meant = ' or '.join(f'--{m.strip()}' for m in found[2].split(',')) if found[2] else ''
  return (f'unrecognized arguments: --{found[1]}'
          + (f'; did you mean {meant}?' if meant else '') + ' (see --help)')


def _not_a_choice(message: str) -> str | None:
  """absl's ``flag --mode=bogus: value should be one of <train|eval|predict>``
  as ``--mode=bogus: expected one of train, eval, predict``; None for
  another message."""
  found = re.match(r'flag (--[\w.]+=.*?): value should be one of <(.*)>$', message)
  if not found:
    return None
  return f'{found[1]}: expected one of {", ".join(found[2].split("|"))}'


def _wrong_type(message: str) -> str | None:
  """absl's ``flag --config.train.num_steps=abc: invalid literal for int()
  with base 10: 'abc'`` as ``--config.train.num_steps=abc: train.num_steps
  takes an integer``; None for another message."""
  found = re.match(r'flag --config\.([\w.]+)=(.*?): (.*)$', message)
  if not found:
    return None
  field, value, why = found.groups()
  for text, expected in _TYPE_ERRORS:
    if why.lstrip("('").startswith(text):   # the boolean's is a tuple's repr
      return f'--config.{field}={value}: {field} takes {expected}, not {value!r}'
  return None


def check_repeated_overrides(config, argv) -> None:
  """ValueError for a list or tuple field given whole more than once: absl
  joins the values (``--config.data.crop_size=(32,64)`` twice gives
  ``(32, 64, 32, 64)``) where a scalar's last value wins.  One element per
  flag is the repeated-flag form of a tuple and is left alone."""
  args = list(argv[1:])
  given = []
  for i, a in enumerate(args):
    if a.startswith('--config.'):
      name, eq, text = a[len('--config.'):].partition('=')
      if not eq and i + 1 < len(args):   # the two-word form: --config.a.b V
        text = args[i + 1]
      given.append((name, eq, text))
  names = [name for name, _, _ in given]
  for name in dict.fromkeys(n for n in names if names.count(n) > 1):
    # One element per flag (--config.eval.scales=0.5 --config.eval.scales=1)
    # is ml_collections' repeated-flag form of a tuple: left alone.
    if not any(',' in text for n, _, text in given if n == name):
      continue
    value = config
    try:
      for part in name.split('.'):
        value = value[part]
    except (KeyError, TypeError, AttributeError):
      continue
    if isinstance(value, (tuple, list)):
      raise ValueError(f'--config.{name} is given {names.count(name)} times, and absl joins '
                       f'the values into {tuple(value)!r}: give the tuple once, or one '
                       'element per flag')


def parse_flags(argv):
  """absl flag parsing with one-line errors for bad ``--config.*`` overrides
  and for a config file that is not Python or does not run (its line)."""
  spec = os.path.expanduser(config_filename(argv))
  if os.path.exists(spec.split(':')[0]):
    try:   # absl would end in a traceback, or a message without the line
      load_config_file(spec)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  try:
    rest = FLAGS(argv)
    # Overrides apply to the default config too (--config not given).
    if 'config' in FLAGS and any(a.startswith('--config.') for a in argv[1:]):
      check_repeated_overrides(FLAGS.config, argv)
    return rest
  except FLAG_ERRORS as e:
    print(f'error: {flag_error(e, argv)}', file=sys.stderr)
  sys.exit(2)
