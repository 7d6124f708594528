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

# The training run's log.txt: the workers' lines about bad examples go there
# too (set by the training loop; workers inherit the environment).
LOG_FILE_ENV = 'HRSEG_LOG_FILE'

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
  log_bad_examples(os.environ.get(LOG_FILE_ENV))


def log_bad_examples(log_path: str | None) -> list:
  """Sends the lines of :mod:`hrseg_jax.data.errors` to stderr as the console
  has them (``warning: ...``, not logging's ``WARNING:name:...`` or absl's
  ``W1202 ... errors.py:66]``) and to ``log_path`` (the training run's
  log.txt, stamped like its other lines).  Returns the handlers added (the
  training loop removes them at its end; a data worker keeps them)."""
  import logging  # pylint: disable=g-import-not-at-top
  logger = logging.getLogger('hrseg_jax.data.errors')
  logger.setLevel(logging.WARNING)
  logger.propagate = False
  console = logging.StreamHandler(sys.stderr)
  console.setFormatter(logging.Formatter('warning: %(message)s'))
  added = [console]
  if log_path:
    try:
      log_file = logging.FileHandler(log_path, encoding='utf-8')   # appends
    except OSError:
      log_file = None   # the console has them
    if log_file is not None:
      log_file.setFormatter(logging.Formatter('%(asctime)s  warning: %(message)s',
                                              '%Y-%m-%d %H:%M:%S'))
      added.append(log_file)
  for handler in added:
    logger.addHandler(handler)
  return added


def stop_logging_bad_examples(handlers: list) -> None:
  import logging  # pylint: disable=g-import-not-at-top
  logger = logging.getLogger('hrseg_jax.data.errors')
  for handler in handlers:
    logger.removeHandler(handler)
    handler.close()
  if not logger.handlers:
    logger.propagate = True
