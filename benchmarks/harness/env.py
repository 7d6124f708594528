"""What a benchmark figure depends on: software, device, flags, command."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from typing import Any

import jax

# Distributions whose versions are recorded when installed.
_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'ml_dtypes',
             'jax-cuda13-plugin', 'jax-cuda13-pjrt', 'jax-cuda12-plugin',
             'jax-cuda12-pjrt', 'nvidia-cudnn-cu13', 'nvidia-cudnn-cu12',
             'nvidia-cublas', 'nvidia-cublas-cu12', 'nvidia-cuda-runtime',
             'nvidia-cuda-runtime-cu12', 'grain')
_CUDA_GETTERS = ('cuda_runtime_get_version', 'cuda_driver_get_version',
                 'cudnn_get_version', 'cublas_get_version',
                 'cufft_get_version', 'cusolver_get_version',
                 'cusparse_get_version')
_SMI_FIELDS = 'name,driver_version,memory.total,clocks.max.sm,power.limit'


def package_versions() -> dict[str, str]:
  """Installed versions of the packages in :data:`_PACKAGES`."""
  out = {}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return out


def cuda_versions() -> dict[str, Any] | None:
  """CUDA library versions as jaxlib's CUDA plugin reports them, or None."""
  try:
    from jax._src.lib import cuda_versions as cv  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if cv is None:
    return None
  out = {}
  for getter in _CUDA_GETTERS:
    fn = getattr(cv, getter, None)
    if fn is None:
      continue
    try:
      out[getter.replace('_get_version', '')] = fn()
    except Exception as e:  # pylint: disable=broad-except
      out[getter.replace('_get_version', '')] = f'error: {e}'
  return out or None


def nvidia_smi() -> str | None:
  """``nvidia-smi --query-gpu`` of the GPUs (name, driver, clocks), or None."""
  try:
    done = subprocess.run(
        ['nvidia-smi', f'--query-gpu={_SMI_FIELDS}', '--format=csv,noheader'],
        capture_output=True, text=True, timeout=20, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def device_info() -> dict[str, Any]:
  """Platform, kind and count of the default backend's devices."""
  devices = jax.devices()
  return dict(platform=devices[0].platform, kind=devices[0].device_kind,
              count=len(devices), process_count=jax.process_count())


def git_commit(repo_root: str) -> str | None:
  """HEAD of the repository (``+dirty`` if modified), or None without git."""
  try:
    head = subprocess.run(['git', '-C', repo_root, 'rev-parse', 'HEAD'],
                          capture_output=True, text=True, timeout=10,
                          check=False)
    if head.returncode != 0:
      return None
    dirty = subprocess.run(['git', '-C', repo_root, 'status', '--porcelain'],
                           capture_output=True, text=True, timeout=10,
                           check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return head.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')


def jax_env() -> dict[str, str]:
  """The ``JAX_*`` and ``XLA_*`` environment variables in effect."""
  return {k: v for k, v in sorted(os.environ.items())
          if k.startswith(('JAX_', 'XLA_'))}


def collect(repo_root: str, argv: list[str], extra_xla_flags: str) -> dict[str, Any]:
  """The ``meta`` section of the benchmark JSON."""
  return dict(
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      command=shlex.join([os.path.basename(sys.executable)] + argv),
      python=platform.python_version(),
      host=platform.node(),
      cpu_count=os.cpu_count(),
      versions=package_versions(),
      cuda=cuda_versions(),
      nvidia_smi=nvidia_smi(),
      device=device_info(),
      xla_flags_extra=extra_xla_flags,
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      env=jax_env(),
      matmul_precision=str(jax.config.jax_default_matmul_precision),
      # With a persistent cache, compile_s may be a cache load.
      compilation_cache_dir=jax.config.jax_compilation_cache_dir or None,
      git_commit=git_commit(repo_root))
