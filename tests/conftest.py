"""Shared pytest helpers."""
from __future__ import annotations

import os
import pathlib

import pytest

# Tests (and the subprocesses they start, which inherit the environment)
# share a persistent XLA compilation cache: most test time on CPU is
# compilation of the same few programs.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(os.environ.get('TMPDIR', '/tmp'), 'hrseg_jax_test_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# XLA:CPU's fast-compile mode for the command lines the tests start too (they
# inherit the environment), as in the tests' own process (pytest_configure):
# one compiled program per shape for both, and ~3x faster compiles.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def in_ci() -> bool:
  """True when ``$CI`` is set to a true value (``.ci/run`` sets ``CI=true``)."""
  return os.environ.get('CI', '').strip().lower() in ('1', 'true', 'yes')


def golden_dir() -> pathlib.Path:
  """The folder of golden PyTorch fixtures (``.pth``/``.npz``/``.json``).

  ``$HRSEG_GOLDEN`` if set, else ``../shared/golden`` relative to the repo
  root.  When the folder is missing, a parity test is skipped with a
  one-line reason on a developer's clone, and fails under ``CI=true``, where
  the fixtures are required.

  Returns:
    The folder's path.
  """
  env = os.environ.get('HRSEG_GOLDEN')
  path = pathlib.Path(env) if env else REPO_ROOT.parent / 'shared' / 'golden'
  if not path.is_dir():
    reason = (f'golden fixtures not found at {path} (set HRSEG_GOLDEN to '
              'their folder)')
    if in_ci():
      pytest.fail(reason + '; CI=true requires them', pytrace=False)
    pytest.skip(reason)
  return path


@pytest.fixture(scope='session')
def golden() -> pathlib.Path:
  """Session fixture for :func:`golden_dir`."""
  return golden_dir()


@pytest.fixture
def x64():
  """Float64 JAX for the duration of one test."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_enable_x64', True)
  try:
    yield
  finally:
    jax.config.update('jax_enable_x64', False)


def pytest_configure(config):
  # XLA:CPU spends most test time compiling; its optimisation passes buy
  # little on tiny test shapes (same semantics, ~3x faster compiles).
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_disable_most_optimizations', True)


def pytest_terminal_summary(terminalreporter):
  """The fault-injection summary line of tests/test_faults.py, if it ran."""
  from fault_util import summary_line  # pylint: disable=g-import-not-at-top
  line = summary_line(r for reports in terminalreporter.stats.values() for r in reports)
  if line:
    terminalreporter.write_line(line)
