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
