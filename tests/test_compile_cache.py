"""The command line's persistent compilation cache: where it goes, how to turn it off."""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np

from hrseg_jax import compile_cache


def test_cache_folder_flag_then_env_then_user_cache():
  env = {'HOME': '/home/u'}
  assert compile_cache.resolve_dir(None, env) == os.path.join(
      os.path.expanduser('~'), '.cache', 'hrseg_jax', 'xla')
  env = {'XDG_CACHE_HOME': '/xdg'}
  assert compile_cache.resolve_dir(None, env) == '/xdg/hrseg_jax/xla'
  env['JAX_COMPILATION_CACHE_DIR'] = '/env/cache'
  assert compile_cache.resolve_dir(None, env) == '/env/cache'
  assert compile_cache.resolve_dir('rel/cache', env) == os.path.abspath('rel/cache')


def test_configure_turns_the_cache_on_and_off(tmp_path):
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_enable_compilation_cache)
  try:
    path = compile_cache.configure(True, str(tmp_path / 'xla'))
    assert path == str(tmp_path / 'xla')
    assert jax.config.jax_compilation_cache_dir == path
    assert jax.config.jax_enable_compilation_cache
    assert compile_cache.configure(False) is None
    assert not jax.config.jax_enable_compilation_cache
  finally:
    jax.config.update('jax_compilation_cache_dir', before[0])
    jax.config.update('jax_enable_compilation_cache', before[1])


def test_multiprocess_cpu_keys_shared_or_the_cache_off(monkeypatch):
  """One process: nothing changes.  Several CPU processes: the key hook is
  replaced (single-process keys unchanged) or, where this JAX lacks it, the
  cache is turned off for the run."""
  from jax._src import cache_key  # pylint: disable=g-import-not-at-top
  original = cache_key._hash_accelerator_config  # pylint: disable=protected-access
  monkeypatch.setattr(cache_key, '_hash_accelerator_config', original)
  before = jax.config.jax_enable_compilation_cache
  try:
    jax.config.update('jax_enable_compilation_cache', True)
    assert compile_cache.share_between_processes(False) is None
    assert cache_key._hash_accelerator_config is original  # pylint: disable=protected-access
    assert compile_cache.share_between_processes(True) == 'shared'
    hook = cache_key._hash_accelerator_config  # pylint: disable=protected-access
    assert hook is not original
    assert compile_cache.share_between_processes(True) == 'shared'   # not wrapped twice
    assert cache_key._hash_accelerator_config is hook  # pylint: disable=protected-access
    devices = np.array(jax.devices())
    want, got = hashlib.sha256(), hashlib.sha256()
    original(want, devices)
    hook(got, devices)
    assert got.digest() == want.digest()
    assert jax.config.jax_enable_compilation_cache
    assert compile_cache.share_between_processes(True, 'no_such_jax_module') == 'off'
    assert not jax.config.jax_enable_compilation_cache
  finally:
    jax.config.update('jax_enable_compilation_cache', before)


# ---- a run of two processes on the CPU (scripts/launch_local.py) -------------

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = '''
from train_util import tiny_config


def get_config():
  c = tiny_config(num_steps=3, batch_size=4)
  c.data.multi_scale = False
  return c
'''
# XLA's CPU collectives give up when one process reaches a collective ~30 s
# after the other; two processes both compiling on a busy machine can drift
# that far apart (docs/distributed.md).
GLOO_TIMEOUT = 'Gloo context initialization failed'


def launch_two_processes(cwd, *train_flags, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'HRSEG_FAULT')}
  # JAX_LOG_COMPILES: each process logs its persistent cache hits.
  env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests')]),
             JAX_DISABLE_MOST_OPTIMIZATIONS='1', JAX_LOG_COMPILES='1', **(env_extra or {}))
  return subprocess.run(
      [sys.executable, str(REPO / 'scripts' / 'launch_local.py'), '--num_processes', '2',
       '--cpu_devices', '1', '--log_dir', 'logs', '--', '--config', 'tiny.py',
       '--workdir', 'run', '--compilation_cache_dir', 'cache', *train_flags],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)


def test_two_cpu_processes_read_the_cache_when_resumed(tmp_path):
  """A resumed 2-process CPU run: process 1 reads the training step that
  process 0 wrote into the cache, as process 0 does (it compiled every
  program while process 0 read them, and process 0 gave up in its first
  collective after 30 s).  With --log_dir, process 0's lines reach the
  terminal too."""
  (tmp_path / 'tiny.py').write_text(TINY)
  for _ in range(2):   # a fresh run (empty cache) started again once after a Gloo timeout
    # SIGTERM to process 1 after step 1: both save a checkpoint and exit 0.
    r = launch_two_processes(tmp_path, env_extra={'HRSEG_FAULT': 'sigterm@1:1'})
    logs = ''.join(p.read_text() for p in sorted((tmp_path / 'logs').glob('*.log')))
    if r.returncode == 0 or GLOO_TIMEOUT not in logs:
      break
    shutil.rmtree(tmp_path / 'run')
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + logs[-3000:]
  # Process 0's lines on the terminal, not only in logs/process_0.log.
  assert 'step 1/3' in r.stdout and 'checkpoint saved' in r.stdout, r.stdout[-3000:]
  assert 'step 1/3' in (tmp_path / 'logs' / 'process_0.log').read_text()

  r = launch_two_processes(tmp_path)
  log1 = (tmp_path / 'logs' / 'process_1.log').read_text()
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + log1[-3000:]
  assert 'resumed from step' in r.stdout, r.stdout[-3000:]
  hit = "Persistent compilation cache hit for 'jit_train_step'"
  assert hit in log1, log1[-3000:]
  assert hit in (tmp_path / 'logs' / 'process_0.log').read_text()
