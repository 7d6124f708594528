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
  if any(k in env for k in ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES',
                            'MEGASCALE_COORDINATOR_ADDRESS')):
    return 'auto'
  if 'SLURM_STEP_NODELIST' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
    return 'auto'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'auto'
  return None


def maybe_initialize():
  """jax.distributed on clusters (TPU pods, Slurm, MPI, explicit env vars)."""
  import jax  # pylint: disable=g-import-not-at-top
  env = os.environ
  mode = distributed_mode(env)
  if mode == 'explicit':
    jax.distributed.initialize(
        coordinator_address=env['HRSEG_COORDINATOR'],
        num_processes=int(env['HRSEG_NUM_PROCESSES']),
        process_id=int(env['HRSEG_PROCESS_ID']))
  elif mode == 'auto':
    jax.distributed.initialize()
  global _joined
  _joined = mode in ('explicit', 'auto') and jax.process_count() > 1


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
