"""Shared pytest helpers."""
from __future__ import annotations

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def golden_dir() -> pathlib.Path:
  """The folder of golden PyTorch fixtures (``.pth``/``.npz``/``.json``).

  ``$HRSEG_GOLDEN`` if set, else ``../shared/golden`` relative to the repo
  root. The fixtures are required: a missing folder fails the test, it is
  never skipped.

  Returns:
    The folder's path.
  """
  env = os.environ.get('HRSEG_GOLDEN')
  path = pathlib.Path(env) if env else REPO_ROOT.parent / 'shared' / 'golden'
  if not path.is_dir():
    pytest.fail(f'golden fixtures not found at {path} (set HRSEG_GOLDEN to '
                'their folder)', pytrace=False)
  return path


@pytest.fixture(scope='session')
def golden() -> pathlib.Path:
  """Session fixture for :func:`golden_dir`."""
  return golden_dir()


def pytest_configure(config):
  # XLA:CPU spends most test time compiling; its optimisation passes buy
  # little on tiny test shapes (same semantics, ~3x faster compiles).
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_disable_most_optimizations', True)
