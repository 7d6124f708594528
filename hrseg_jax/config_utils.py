"""Loading ``configs/*.py`` files outside of absl flags."""
from __future__ import annotations

import importlib.util
import os


def load_config_file(spec: str):
  """``path.py`` or ``path.py:arg`` -> the ConfigDict of its ``get_config``."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file not found: {path}')
  module_spec = importlib.util.spec_from_file_location('_hrseg_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path}: no get_config() function')
  return module.get_config(arg) if arg else module.get_config()


def load_config_with_overrides(spec: str, overrides) -> object:
  """``load_config_file(spec)`` with ``--config.a.b=value`` arguments applied
  as ``python -m hrseg_jax.main`` applies them.

  Raises:
    ValueError: one line naming the override that is not a field or whose
      value does not parse.
  """
  overrides = list(overrides)
  config = load_config_file(spec)
  if not overrides:
    return config
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from hrseg_jax import command_line  # pylint: disable=g-import-not-at-top
  argv = ['prog', '--config', spec, *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    raise ValueError(command_line.one_line(e)) from None
  except (AttributeError, KeyError) as e:
    field, hint = command_line.missing_field(e)
    bad = [a.split('=')[0] for a in overrides if field in a.split('=')[0]]
    raise ValueError(f'unknown config field {(bad[0][2:] if bad else field)!r} '
                     f'(no field {field!r}{"; " + hint if hint else ""})') from None
  except TypeError as e:
    raise ValueError(command_line.one_line(e)) from None
  return values.config
