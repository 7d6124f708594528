"""How a process of ``python -m hrseg_jax.main`` joins a multi-process run.

One process per host (or per GPU with ``scripts/launch_local.py``); see
docs/distributed.md.
"""
from __future__ import annotations

import os
import sys

_joined = False   # this process called jax.distributed.initialize


def distributed_mode(env) -> str | None:
  """How this process joins a multi-process run (docs/distributed.md).

  Returns:
    'explicit': ``HRSEG_COORDINATOR`` (host:port), ``HRSEG_NUM_PROCESSES``
      and ``HRSEG_PROCESS_ID`` are given (scripts/launch_local.py).
    'auto': ``jax.distributed.initialize()`` detects the cluster: asked for
      with ``HRSEG_DISTRIBUTED=1`` (TPU VM slices, detected through the GCE
      metadata server: scripts/launch_tpu_vm.py sets it), or inside an
      ``srun`` step with several tasks, an Open MPI job with several ranks,
      GKE TPU or multi-slice variables, or ``JAX_COORDINATOR_ADDRESS``.
    None: a single process (an ``salloc`` shell or a one-task job included);
      ``HRSEG_DISTRIBUTED=0`` forces this.
  """
  flag = env.get('HRSEG_DISTRIBUTED', '').strip().lower()
  if flag in ('0', 'false', 'no'):
    return None
  if 'HRSEG_COORDINATOR' in env:
    return 'explicit'
  if flag in ('1', 'true', 'yes', 'auto'):
    return 'auto'
  if flag:
    raise ValueError(f'environment variable HRSEG_DISTRIBUTED={env["HRSEG_DISTRIBUTED"]!r}: '
                     'expected 1 (join a multi-process run) or 0 (run alone)')
  if any(k in env for k in ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES',
                            'MEGASCALE_COORDINATOR_ADDRESS')):
    return 'auto'
  if 'SLURM_STEP_NODELIST' in env and _count(env, 'SLURM_NTASKS') > 1:
    return 'auto'
  if _count(env, 'OMPI_COMM_WORLD_SIZE') > 1:
    return 'auto'
  return None


def _count(env, name: str, default: str = '1') -> int:
  """``env[name]`` as a whole number >= 1 (``default`` when unset).

  Raises:
    ValueError: one line naming the variable and what it holds.
  """
  value = env.get(name, default).strip()
  try:
    number = int(value)
  except ValueError:
    number = 0
  if number < 1:
    raise ValueError(f'environment variable {name}={env.get(name)!r}: expected a '
                     'whole number of processes, 1 or more')
  return number


def explicit_settings(env) -> tuple[str, int, int]:
  """``HRSEG_COORDINATOR``, ``HRSEG_NUM_PROCESSES`` and ``HRSEG_PROCESS_ID``,
  checked: (address, number of processes, this process's index).

  Raises:
    ValueError: one line naming the variable that is missing or wrong.
  """
  address = env['HRSEG_COORDINATOR'].strip()
  if not address:
    raise ValueError('environment variable HRSEG_COORDINATOR is empty: expected '
                     'host:port of process 0')
  for name in ('HRSEG_NUM_PROCESSES', 'HRSEG_PROCESS_ID'):
    if name not in env:
      raise ValueError(f'environment variable {name} is not set: HRSEG_COORDINATOR '
                       'needs HRSEG_NUM_PROCESSES and HRSEG_PROCESS_ID too '
                       '(docs/distributed.md)')
  count = _count(env, 'HRSEG_NUM_PROCESSES')
  value = env['HRSEG_PROCESS_ID'].strip()
  if not (value.isdigit() and int(value) < count):
    raise ValueError(f'environment variable HRSEG_PROCESS_ID={env["HRSEG_PROCESS_ID"]!r}: '
                     f'expected a process index from 0 to {count - 1} '
                     f'(HRSEG_NUM_PROCESSES={count})')
  return address, count, int(value)


def maybe_initialize():
  """jax.distributed on clusters (TPU pods, Slurm, MPI, explicit env vars)."""
  env = os.environ
  mode = distributed_mode(env)   # bad variables: ValueError before JAX starts
  if mode == 'explicit':
    address, count, index = explicit_settings(env)
  import jax  # pylint: disable=g-import-not-at-top
  if mode == 'explicit':
    jax.distributed.initialize(coordinator_address=address,
                               num_processes=count, process_id=index)
  elif mode == 'auto':
    jax.distributed.initialize()
  global _joined
  _joined = mode in ('explicit', 'auto') and jax.process_count() > 1


def joined() -> bool:
  """This process is one of several of a ``jax.distributed`` run."""
  return _joined


def error_prefix() -> str:
  """``'process N: '`` on the processes other than 0 of a multi-process run
  (their lines share the launcher's terminal), else ``''``."""
  if not _joined:
    return ''
  import jax  # pylint: disable=g-import-not-at-top
  index = jax.process_index()
  return f'process {index}: ' if index else ''


def exit_after_error(code: int) -> None:
  """Exits with ``code`` once the error line is printed.

  In a multi-process run it exits at once: ``jax.distributed``'s exit
  handler waits, up to 5 minutes, until every process reaches it, and a
  process that failed alone (a collective that timed out on it) would wait
  there for peers blocked in a collective that waits for it.  The launcher
  or the cluster then stops the others.
  """
  if _joined:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)
