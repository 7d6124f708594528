"""Initialisation of Grain worker processes: keep them off the accelerator.

Grain starts workers with the ``spawn`` method and imports itself (and with
it JAX) in them before anything of ours runs.  Importing JAX does not touch a
device, but any later use would initialise the default backend and, on GPU,
preallocate memory (google/grain#820).  :func:`worker_init_fn` runs first in
every worker: it pins JAX to the CPU (environment and, since JAX is already
imported, its config), hides GPUs from TensorFlow and CUDA, and makes OpenCV
single-threaded so that ``num_workers`` processes do not oversubscribe cores.
Workers ignore SIGINT: a Ctrl-C in the terminal reaches the whole process
group, and the training process, which stops within two steps after a
checkpoint, still needs their batches until then.
"""
from __future__ import annotations

import os
import signal
import sys

WORKER_ENV = {
    'JAX_PLATFORMS': 'cpu',
    'CUDA_VISIBLE_DEVICES': '',
    'XLA_PYTHON_CLIENT_PREALLOCATE': 'false',
    'TF_CPP_MIN_LOG_LEVEL': '2',
}


def worker_init_fn(worker_index: int, worker_count: int) -> None:
  """Grain ``mp_prefetch`` worker initialiser (must stay import-light)."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  os.environ.update(WORKER_ENV)
  jax = sys.modules.get('jax')
  if jax is not None:
    jax.config.update('jax_platforms', 'cpu')
  tf = sys.modules.get('tensorflow')
  if tf is not None:
    try:
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:   # TF already initialised its devices.
      pass
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  # Bad examples skipped: named as the training process names them.
  from hrseg_jax.data import errors  # pylint: disable=g-import-not-at-top
  errors.log_to(os.environ.get(errors.LOG_FILE_ENV))
