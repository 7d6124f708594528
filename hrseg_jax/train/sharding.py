"""Device mesh, shardings and global batches (jit + NamedSharding, no pmap).

The mesh has two axes, ``data`` and ``fsdp`` (both ``AxisType.Auto``).  The
batch is sharded over both; the state is replicated, or with ``fsdp > 1``
each parameter's last axis is sharded over ``fsdp`` when it divides (XLA then
inserts the all-gathers).  BatchNorm needs no axis name: its mean over the
sharded batch is a global reduction, i.e. SyncBatchNorm.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def make_mesh(fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f'mesh.fsdp={fsdp} does not divide the number of devices ({n})')
  return jax.make_mesh((n // fsdp, fsdp), ('data', 'fsdp'),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(('data', 'fsdp')))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(abstract_state, mesh):
  fsdp = mesh.shape['fsdp']

  def rule(x):
    shape = getattr(x, 'shape', ())
    if fsdp > 1 and len(shape) >= 1 and shape[-1] % fsdp == 0 and shape[-1] >= fsdp:
      return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), 'fsdp'))
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map(rule, abstract_state)


def global_batch(local: dict, sharding: NamedSharding) -> dict:
  """Per-process NumPy batch -> global jax.Arrays sharded over the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items() if not isinstance(v, (str, bytes, list))}


def check_batch_size(global_batch_size: int, mesh) -> int:
  """Returns the per-process batch; errors name the config field."""
  check_splits_over_devices(global_batch_size, mesh.devices.size)
  return global_batch_size // jax.process_count()


def check_splits_over_devices(global_batch_size: int, num_devices: int) -> None:
  """``train.batch_size`` must be a multiple of ``num_devices`` (one error
  line naming the field and the next size that splits)."""
  n = num_devices
  if global_batch_size % n:
    raise ValueError(f'train.batch_size={global_batch_size} is not a multiple of the {n} '
                     'devices (the batch is split evenly over them): pass '
                     f'--config.train.batch_size={-(-global_batch_size // n) * n} or '
                     f'another multiple of {n}')
