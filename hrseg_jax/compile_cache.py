"""The persistent XLA compilation cache of the command line.

A repeated or resumed run loads its compiled programs from disk instead of
compiling them again (minutes for the larger models).  The folder is, first
found: the ``--compilation_cache_dir`` flag, ``$JAX_COMPILATION_CACHE_DIR``,
then ``hrseg_jax/xla`` under the user's cache folder (``$XDG_CACHE_HOME`` or
``~/.cache``).  ``--nocompilation_cache`` turns it off.  Only programs that
took at least a second to compile are stored (JAX's default threshold).

In a run of several processes on the CPU (``scripts/launch_local.py
--num_processes N --cpu_devices K``) JAX writes entries from process 0 only
and keys them partly by a fingerprint of the local devices, which differs
from one process to the next on the CPU: process 0 would read every program
while the others compile them all, and wait for them in its first collective
past XLA's fixed 30 s rendezvous timeout.  :func:`share_between_processes`
keys such programs by their global device ids instead, the same in every
process; where this JAX lacks the hook, it turns the cache off for the run.
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


_KEY_MODULE = 'jax._src.cache_key'
_KEY_HOOK = '_hash_accelerator_config'


def _hash_global_cpu_devices(original):
  """``original`` (JAX's hash of the devices' topology), except for a program
  over the CPU devices of several processes: their global ids and process
  indices, the same in every process of the run.  The compiled program is
  the same either way (same module, options and global device assignment)."""
  def hash_accelerator_config(hash_obj, accelerators):
    devices = list(accelerators.flat)
    if (devices and all(d.platform == 'cpu' for d in devices)
        and len({d.process_index for d in devices}) > 1):
      hash_obj.update(repr(sorted((d.id, d.process_index) for d in devices)).encode())
      return
    original(hash_obj, accelerators)
  hash_accelerator_config.hrseg_shared = True
  return hash_accelerator_config


def _share_cpu_keys(module_name: str = _KEY_MODULE) -> bool:
  """Installs :func:`_hash_global_cpu_devices` in JAX's cache-key module;
  False (nothing changed) where that module or its hook is missing."""
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    module = importlib.import_module(module_name)
  except ImportError:
    return False
  original = getattr(module, _KEY_HOOK, None)
  if not callable(original):
    return False
  if not getattr(original, 'hrseg_shared', False):
    setattr(module, _KEY_HOOK, _hash_global_cpu_devices(original))
  return True


def share_between_processes(joined: bool, module_name: str = _KEY_MODULE) -> str | None:
  """After ``jax.distributed`` is initialized, before the first compilation.

  Args:
    joined: this process is one of several of a ``jax.distributed`` run.
    module_name: JAX's cache-key module (another name in tests).

  Returns:
    None (nothing changed: one process, a GPU or TPU, or the cache off),
    'shared' (every process of a multi-process CPU run reads the entries
    process 0 writes) or 'off' (this JAX lacks the hook: the cache is turned
    off, so that every process compiles every program, as alike as they can).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if not (joined and jax.config.jax_enable_compilation_cache
          and jax.default_backend() == 'cpu'):
    return None
  if _share_cpu_keys(module_name):
    return 'shared'
  jax.config.update('jax_enable_compilation_cache', False)
  return 'off'


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
