"""What the commands print: our own lines, without the libraries' noise.

:func:`configure` keeps TensorFlow (never needed, but imported by TFDS and
etils' gfile when installed), Orbax and JAX start-up messages off the
console unless ``verbose``;
:class:`Console` prints a run's lines and appends them to its log file.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time

_ORBAX_DIR = f'{os.sep}orbax{os.sep}'
_TRACKER_WARNINGS = 'ignore::UserWarning:multiprocessing.resource_tracker'


def first_line(error: BaseException, limit: int = 300) -> str:
  """An error's first line (its type's name if it has none), at most ``limit``
  characters: for the commands' one-line error messages."""
  lines = str(error).strip().splitlines()
  text = lines[0].strip() if lines else type(error).__name__
  return text if len(text) <= limit else text[:limit] + ' …'


def counted(n: int, noun: str, plural: str | None = None, *,
            thousands: bool = False) -> str:
  """``1 key``, ``2 keys``, ``1200 tensors``; ``plural`` where adding an s
  does not make it (``counted(2, 'process', 'processes')``).  The number is
  written as the other numbers of its line are: plain, like the step and
  frame numbers that scripts read back, or with ``thousands`` separators
  (``1,200``) in a line that writes them so (the start-up block)."""
  number = f'{n:,}' if thousands else str(n)
  return f'{number} {noun if n == 1 else plural or noun + "s"}'


class _DropOrbaxChatter(logging.Filter):
  """Orbax logs through absl's logger; keep only its errors.

  Its warnings are about its own choices (e.g. "Given directory is read
  only" for every read-only restore), not about the user's run.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or _ORBAX_DIR not in (record.pathname or '')


class _OrbaxErrorsInOneLine(logging.Filter):
  """On the console, Orbax's failed writes are left to our own error line.

  A failed save (a full disk) makes each of Orbax's writer threads log its
  ``OSError`` with a traceback; the save then fails and the command prints
  one ``error:`` line naming the checkpoint and the cause.  Those records go
  to log.txt only; Orbax's other errors reach the console without traceback.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if _ORBAX_DIR not in (record.pathname or '') or not record.exc_info:
      return True
    if isinstance(record.exc_info[1], OSError):
      return False
    record.msg = f'{record.getMessage()}: {first_line(record.exc_info[1])}'
    record.args, record.exc_info, record.exc_text = (), None, None
    return True


def _quiet_unraisable(hook):
  """``sys.unraisablehook`` without TensorStore's "Event loop is closed".

  TensorStore hands a finished write to the asyncio loop that awaits it with
  ``loop.call_soon_threadsafe``; after a failed save, Orbax has already
  closed that loop, and each late write prints a traceback through
  ``sys.unraisablehook`` (hundreds on a full disk).  Nothing is lost: the
  save has failed and is reported once.
  """
  def unraisable(args):
    if (args.object is None and isinstance(args.exc_value, RuntimeError)
        and str(args.exc_value) == 'Event loop is closed'):
      return
    hook(args)
  unraisable.quiet = True
  return unraisable


_FILTER = _DropOrbaxChatter()
_CONSOLE_FILTER = _OrbaxErrorsInOneLine()
_verbose = False


def configure(verbose: bool = False) -> None:
  """Sets library log levels for a command line (call once, early).

  Args:
    verbose: show the libraries' messages (INFO and up) instead.
  """
  global _verbose
  _verbose = verbose
  if verbose:
    logging.getLogger('absl').removeFilter(_FILTER)
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.INFO)
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')
  # OpenCV logs on stderr about each file it cannot decode ("[ WARN:0@2.9]
  # ... PNG input buffer is incomplete", "[ERROR:0@1.9] ... readHeader IHDR
  # chunk shall be first") before our own one-line error naming the file.
  # The variable reaches processes started later (data workers); a cv2
  # imported already (by a config file) is told directly.
  os.environ.setdefault('OPENCV_LOG_LEVEL', 'FATAL')
  cv2 = sys.modules.get('cv2')
  if cv2 is not None and os.environ['OPENCV_LOG_LEVEL'] == 'FATAL':
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_FATAL)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  quiet_orbax()
  absl_logging.get_absl_handler().addFilter(_CONSOLE_FILTER)
  if not getattr(sys.unraisablehook, 'quiet', False):
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
  # A checkpoint write that an error (a full disk) cut short leaves Orbax
  # coroutines unawaited: Python names each at exit ('sys:1: RuntimeWarning:
  # coroutine ... was never awaited'), after the run's one error line.
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                          category=RuntimeWarning)
  # The ONNX writer's serialiser warns once per value it leaves untyped
  # (hundreds of lines for Lite-HRNet); the export is checked anyway.
  logging.getLogger('onnx_ir').setLevel(logging.ERROR)
  # Grain's worker processes hand batches over in shared memory; the blocks
  # still buffered when a run ends are unlinked by multiprocessing's resource
  # tracker, a process of its own that warns about each ("leaked
  # shared_memory objects").  It inherits its warning filters from here.
  given = os.environ.get('PYTHONWARNINGS', '')
  if _TRACKER_WARNINGS not in given.split(','):
    os.environ['PYTHONWARNINGS'] = ','.join(w for w in (given, _TRACKER_WARNINGS) if w)


def quiet_orbax() -> None:
  """Drops Orbax's INFO/WARNING records (not after ``configure(verbose=True)``)."""
  if not _verbose:
    logging.getLogger('absl').addFilter(_FILTER)


@contextlib.contextmanager
def stderr_to_devnull():
  """Silences file descriptor 2 (C++ logging of native libraries)."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, 'w') as null:
      os.dup2(null.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def import_tensorflow_quietly():
  """Imports TensorFlow (if installed) without its start-up lines, CPU only.

  Only what needs TensorFlow calls this (TFDS sources, the SavedModel
  export, and :func:`import_tensorflow_if_used` for a run that may read
  through it); nothing else imports it, so runs that do not need it do not
  pay its import time.  TensorFlow prints its oneDNN and CPU-feature notes from
  C++ before any log level applies, so the import runs with stderr closed.
  Python errors of the import are not hidden: they are raised after stderr
  is restored.  TensorFlow is then kept off the GPUs, which belong to JAX
  (it would otherwise reserve their memory).  Returns the module, or None
  when TensorFlow is not installed.
  """
  if 'tensorflow' in sys.modules:
    return _cpu_only(sys.modules['tensorflow'])
  if importlib.util.find_spec('tensorflow') is None:
    return None
  if _verbose:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return _cpu_only(tf)
  with stderr_to_devnull():
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except Exception as e:  # pylint: disable=broad-except
      error = e
    else:
      error = None
  if error is not None:
    raise error
  return _cpu_only(tf)


def import_tensorflow_if_used(config, given_paths) -> None:
  """Imports TensorFlow first, quietly and off the GPUs, if this run may use it.

  It is not needed otherwise (its import takes seconds), but when installed
  etils reads ``gs://`` paths through its gfile, and ``data.source='tfds'``
  reads through TFDS: imported here, it prints nothing and leaves the GPUs'
  memory to JAX (:func:`import_tensorflow_quietly`).

  Args:
    config: the run's config (``None``: predict without one).
    given_paths: the paths of the command line (workdir, checkpoint, inputs).
  """
  from hrseg_jax import paths  # pylint: disable=g-import-not-at-top
  tree = config.to_dict() if config is not None else {}
  values = [str(v) for v in given_paths]
  for field in paths.CONFIG_PATH_FIELDS:   # the config's paths
    section, name = field.split('.')
    values.append(str(tree.get(section, {}).get(name) or ''))
  if (any(paths.is_url(v) for v in values)
      or tree.get('data', {}).get('source') == 'tfds'):
    try:
      import_tensorflow_quietly()
    except Exception:  # pylint: disable=broad-except
      pass   # a broken TensorFlow: whatever needs it reports it


def _cpu_only(tf):
  try:
    tf.config.set_visible_devices([], 'GPU')
  except Exception:  # pylint: disable=broad-except
    pass   # TensorFlow already set up its devices (someone used it first).
  return tf


def _stamped(text: str, at: float | None = None) -> str:
  """``text``'s lines as the log file holds them, each after the time
  (``at``, seconds since the epoch; default: now)."""
  stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))
  return ''.join(f'{stamp}  {line}\n' for line in str(text).splitlines() or [''])


class Console:
  """Prints lines (process 0 only) and appends them to a log file.

  Args:
    log_path: the plain-text log file ('' or None: no file).
    enabled: whether this process prints (multi-host runs: process 0).
  """

  def __init__(self, log_path=None, enabled: bool = True):
    self.enabled = enabled
    self._file = None
    if enabled and log_path:
      self._file = open(os.fspath(log_path), 'a', encoding='utf-8')  # pylint: disable=consider-using-with
      self._fd = self._file.fileno()
      self._handler = logging.StreamHandler(self._file)
      self._handler.setLevel(logging.WARNING)
      self._handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))
      self._handler.addFilter(_FILTER)
      logging.getLogger().addHandler(self._handler)

  def print(self, text: str = '') -> None:
    if self.enabled:
      print(text, flush=True)
      self.log(text)

  def log(self, text: str, at: float | None = None) -> None:
    """Appends ``text`` to the log file only, stamped with the time ``at``
    (``time.time()``'s; default: now): a line printed before the file existed
    keeps the time it was printed."""
    if self._file is not None:
      self._file.write(_stamped(text, at))
      self._file.flush()

  def notice(self, text: str) -> None:
    """Prints ``text`` on stderr and appends it to the log file from a signal
    handler: one ``os.write`` each, past Python's buffered files, which a
    handler must not write to (it may have interrupted a write to them)."""
    if not self.enabled:
      return
    os.write(sys.stderr.fileno(), (text + '\n').encode())
    if self._file is not None:
      try:
        os.write(self._fd, _stamped(text).encode())
      except OSError:
        pass   # the console has it; a full disk is reported by what writes next

  def close(self) -> None:
    if self._file is not None:
      logging.getLogger().removeHandler(self._handler)
      f, self._file = self._file, None   # a signal's notice no longer writes to it
      f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
