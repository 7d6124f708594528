"""Loading ``configs/*.py`` files outside of absl flags, and the one line
that says why one cannot be used."""
from __future__ import annotations

import importlib.util
import os
import traceback

# What --config is sometimes given instead of a configs/*.py file.
_YAML = ("the original's experiments/*.yaml are configs/*.py here, e.g. "
         'configs/hrnet_w48_cityscapes.py')
_NOT_PYTHON = {
    '.json': ("a run's config.json is a record of that run: pass the configs/*.py "
              'file it came from (eval and predict take the model from the checkpoint)'),
    '.yaml': _YAML,
    '.yml': _YAML,
}


def check_python_config(path: str) -> None:
  """ValueError (one line) when ``path`` is not a Python file: a run's
  config.json or the original's YAML would be run as Python."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix != '.py':
    why = _NOT_PYTHON.get(suffix, 'give one of configs/*.py, a Python file with get_config()')
    raise ValueError(f'--config {path}: not a Python config file; {why}')


def config_error(path: str, error: BaseException) -> str:
  """One line for ``error``, raised while ``path`` was read or its
  ``get_config`` ran: the file, the line in it, and what went wrong."""
  where = os.path.realpath(path)
  line = None
  seen = error
  while seen is not None and line is None:
    if isinstance(seen, SyntaxError) and seen.filename and (
        os.path.realpath(seen.filename) == where):
      line = seen.lineno
    for frame in traceback.extract_tb(seen.__traceback__):
      if os.path.realpath(frame.filename) == where:
        line = frame.lineno   # the innermost one in the config file
    seen = seen.__cause__ or seen.__context__
  text = error.msg if isinstance(error, SyntaxError) else str(error)
  text = ' '.join(text.split()) or 'raised'
  return (f'{path}{f", line {line}" if line else ""}: {type(error).__name__}: {text}')


def load_config_file(spec: str):
  """``path.py`` or ``path.py:arg`` -> the ConfigDict of its ``get_config``.

  Raises:
    FileNotFoundError: the file is not there.
    ValueError: one line, for a file that is not Python, and for one that
      does not run (its line and the error).
  """
  path, _, arg = spec.partition(':')
  if os.path.isdir(path):
    example = sorted(n for n in os.listdir(path) if n.endswith('.py'))[:1]
    raise ValueError(f'--config {path} is a folder: pass one of its configs'
                     + (f', e.g. {os.path.join(path, example[0])}' if example else ''))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file not found: {path}')
  check_python_config(path)
  try:
    module_spec = importlib.util.spec_from_file_location('_hrseg_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(config_error(path, e)) from None
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path}: no get_config() function')
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(config_error(path, e)) from None
  if not hasattr(config, 'to_dict'):
    raise ValueError(f'{path}: get_config() returned a {type(config).__name__}, not an '
                     'ml_collections.ConfigDict')
  return config
