"""The processes of one multi-process CPU run share compiled programs.

Put this folder on ``PYTHONPATH`` of a test's subprocesses (Python imports
``sitecustomize`` at start-up).  JAX keys its persistent compilation cache
(``JAX_COMPILATION_CACHE_DIR``, set by tests/conftest.py) partly by a
fingerprint of the local devices' topology, which on the CPU differs from one
process of a ``jax.distributed`` run to the next, and only process 0 writes
entries: processes 1..N-1 never find an entry and compile every program
themselves, however often the test suite runs the same program.  Here the
key of a program over the CPU devices of several processes is made from the
global device ids instead, the same in every process, so every process reads
the entry that process 0 wrote.  The compiled program is the same either way
(same module, same options, same global device assignment); single-process
keys are unchanged.  Without ``jax._src.cache_key._hash_accelerator_config``
(another JAX version) nothing is changed.
"""
import importlib.abc
import importlib.machinery
import sys

_MODULE = 'jax._src.cache_key'


def _patch(module):
  original = getattr(module, '_hash_accelerator_config', None)
  if original is None:
    return

  def hash_accelerator_config(hash_obj, accelerators):
    devices = list(accelerators.flat)
    if (devices and all(d.platform == 'cpu' for d in devices)
        and len({d.process_index for d in devices}) > 1):
      hash_obj.update(repr(sorted((d.id, d.process_index) for d in devices)).encode())
      return
    original(hash_obj, accelerators)

  module._hash_accelerator_config = hash_accelerator_config  # pylint: disable=protected-access


class _PatchOnImport(importlib.abc.MetaPathFinder):
  """Patches ``jax._src.cache_key`` when JAX imports it (not before: a
  process that never imports JAX does not pay for it)."""

  def find_spec(self, name, path, target=None):  # pylint: disable=unused-argument
    if name != _MODULE:
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_and_patch(module):
      exec_module(module)
      _patch(module)

    spec.loader.exec_module = exec_and_patch
    return spec


sys.meta_path.insert(0, _PatchOnImport())
