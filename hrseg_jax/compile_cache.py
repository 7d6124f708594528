"""The persistent XLA compilation cache of the command line.

A repeated or resumed run loads its compiled programs from disk instead of
compiling them again (minutes for the larger models).  The folder is, first
found: the ``--compilation_cache_dir`` flag, ``$JAX_COMPILATION_CACHE_DIR``,
then ``hrseg_jax/xla`` under the user's cache folder (``$XDG_CACHE_HOME`` or
``~/.cache``).  ``--nocompilation_cache`` turns it off.  Only programs that
took at least a second to compile are stored (JAX's default threshold).
"""
from __future__ import annotations

import os

ENV_DIR = 'JAX_COMPILATION_CACHE_DIR'


def default_dir(env=None) -> str:
  """``$XDG_CACHE_HOME/hrseg_jax/xla``, or ``~/.cache/hrseg_jax/xla``."""
  env = os.environ if env is None else env
  base = env.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'hrseg_jax', 'xla')


def resolve_dir(flag_value: str | None, env=None) -> str:
  """The cache folder: the flag, then ``$JAX_COMPILATION_CACHE_DIR``, then the default."""
  env = os.environ if env is None else env
  if flag_value:
    return os.path.abspath(os.path.expanduser(flag_value))
  return env.get(ENV_DIR) or default_dir(env)


def _check_folder(path: str, named: str) -> None:
  """ValueError (one line) when a file is where the folder (or one above
  it) would be: JAX would warn at every compilation and cache nothing."""
  from hrseg_jax import paths  # pylint: disable=g-import-not-at-top
  blocker = path if os.path.isfile(path) else paths.file_above(path)
  if blocker:
    raise ValueError(f'{named} {paths.shown(path)}: {paths.shown(blocker)} is a file, '
                     'not a folder (pass another folder, or --nocompilation_cache)')


def configure(enabled: bool, flag_value: str | None = None) -> str | None:
  """Turns the persistent cache on (returns its folder) or off (None)."""
  import jax  # pylint: disable=g-import-not-at-top
  if not enabled:
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  path = resolve_dir(flag_value)
  _check_folder(path, '--compilation_cache_dir' if flag_value else
                f'${ENV_DIR}' if os.environ.get(ENV_DIR) else 'the compilation cache')
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_enable_compilation_cache', True)
  return path


class Lookups:
  """Counts the persistent cache's hits and misses while open (JAX's
  monitoring events), to tell a compilation from a read of the cache:

  >>> with Lookups() as lookups:
  ...   train_fn(state, batch)   # the first call: traces, then compiles or reads
  >>> lookups.all_hits   # every program it needed came from the cache
  """
  HIT = '/jax/compilation_cache/cache_hits'
  MISS = '/jax/compilation_cache/cache_misses'

  def __init__(self):
    self.hits = self.misses = 0

  def _on_event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == self.HIT:
      self.hits += 1
    elif event == self.MISS:
      self.misses += 1

  def __enter__(self) -> 'Lookups':
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.register_event_listener(self._on_event)
    return self

  def __exit__(self, *exc) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.unregister_event_listener(self._on_event)

  @property
  def all_hits(self) -> bool:
    return self.hits > 0 and self.misses == 0
