"""The command line's persistent compilation cache: where it goes, how to turn it off."""
from __future__ import annotations

import os

import jax

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
