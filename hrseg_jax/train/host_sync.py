"""A check that a block of code never makes the host wait for the device.

The training loop dispatches each step asynchronously; only log, checkpoint
and evaluation steps fetch values from the device.  Any other wait (a metric
read, ``block_until_ready``, a cross-process collective of host values) would
make the host wait for the previous step before it can enqueue the next one.
:func:`no_host_waits` turns such a wait into a :class:`HostWaitError` (the
loop uses it with ``train.transfer_guard='disallow'``):

* ``jax.transfer_guard_device_to_host('disallow')``: catches device-to-host
  copies on GPU and TPU (on the CPU backend arrays already live in host
  memory and JAX's guard sees nothing), and
* in the calling thread only: reading a ``jax.Array``'s value (``float``,
  ``int``, ``bool``, ``.tolist()``, ``.item()``, printing), ``jax.device_get``,
  ``block_until_ready`` and the host collectives of
  ``jax.experimental.multihost_utils`` (``process_allgather``,
  ``broadcast_one_to_all``, ``sync_global_devices``).  (``np.asarray`` of a
  single-device array is a C++ fast path this check does not see.)

The one wait allowed inside the block is :func:`wait_for_earlier_step`: the
loop's bound on how far the host dispatches ahead of the device (it waits for
the step two before the one just dispatched, which the device has run or is
running, with another step queued behind it).

Nothing is patched until the check is first used.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import jax

_LOCAL = threading.local()
_LOCK = threading.Lock()
_INSTALLED = False


class HostWaitError(RuntimeError):
  """The host waited for the device where it must not."""


def _check(what: str) -> None:
  where = getattr(_LOCAL, 'where', None)
  if where is not None:
    raise HostWaitError(f'{what} made the host wait for the device in {where}')


def _wrap(fn, what: str):
  def wrapped(*args, **kwargs):
    _check(what)
    return fn(*args, **kwargs)
  wrapped.__name__ = getattr(fn, '__name__', what)
  wrapped.__doc__ = getattr(fn, '__doc__', None)
  return wrapped


def _install() -> None:
  global _INSTALLED
  with _LOCK:
    if _INSTALLED:
      return
    from jax._src import array  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    cls = array.ArrayImpl
    value = cls.__dict__['_value']
    cls._value = property(_wrap(value.fget, 'reading a jax.Array value'))  # pylint: disable=protected-access
    cls.block_until_ready = _wrap(cls.block_until_ready, 'block_until_ready')
    jax.block_until_ready = _wrap(jax.block_until_ready, 'jax.block_until_ready')
    jax.device_get = _wrap(jax.device_get, 'jax.device_get')
    for name in ('process_allgather', 'broadcast_one_to_all',
                 'sync_global_devices'):
      setattr(multihost_utils, name,
              _wrap(getattr(multihost_utils, name), f'multihost_utils.{name}'))
    _INSTALLED = True


@contextlib.contextmanager
def no_host_waits(where: str, enabled: bool = True) -> Iterator[None]:
  """Within the block, a wait for the device raises :class:`HostWaitError`.

  Args:
    where: names the block in the error (e.g. ``'step 7'``).
    enabled: when False, does nothing.
  """
  if not enabled:
    yield
    return
  _install()
  previous = getattr(_LOCAL, 'where', None)
  _LOCAL.where = where
  try:
    with jax.transfer_guard_device_to_host('disallow'):
      yield
  finally:
    _LOCAL.where = previous


def wait_for_earlier_step(outputs) -> None:
  """Waits until ``outputs`` (an earlier step's arrays) are computed, without
  copying them to the host; allowed within :func:`no_host_waits`.

  The training loop calls it with the outputs of the step two before the
  one it has just dispatched: the device then has one step queued behind
  the running one while the host prepares the next, and a stop signal takes
  effect within two steps rather than after every step already queued up to
  the next log step.
  """
  previous = getattr(_LOCAL, 'where', None)
  _LOCAL.where = None
  try:
    jax.block_until_ready(outputs)
  finally:
    _LOCAL.where = previous
