"""A training run's workdir: made (and checked writable) once, and what it holds.

``<workdir>/config.json`` (the run's resolved config, rewritten by each run
in it), ``log.txt`` (the console), ``losses.txt`` (every step's loss,
:class:`~hrseg_jax.train.hooks.LossLog`), ``checkpoints/`` and the
evaluator's folder.
"""
from __future__ import annotations

import json
import os

from etils import epath

from hrseg_jax import files, paths

LOSSES_FILE = 'losses.txt'
CONFIG_FILE = 'config.json'
LOG_FILE = 'log.txt'


def check_workdir(workdir) -> None:
  """Fails, without making anything, when ``workdir`` cannot be made or
  written: a file where it (or a folder above it) would be, or a nearest
  existing folder this process cannot write (a read-only folder or file
  system).  Called before the start-up lines, so that the error is the run's
  first line; :func:`make_workdir` still tries the real write."""
  text = paths.shown(workdir)
  if paths.is_url(text):
    return
  # A file where the folder (or a folder above it) would be: say so, not
  # the system's "File exists" / "Not a directory".
  blocker = text if os.path.isfile(workdir) else paths.file_above(workdir)
  if blocker:
    raise NotADirectoryError(f'cannot write to --workdir {text}: {blocker} is a '
                             'file, not a folder; choose another --workdir')
  # A folder that takes no new file, in the words of the other commands.
  paths.check_writable(os.path.join(text, LOG_FILE), '--workdir')


def make_workdir(workdir) -> epath.Path:
  """Creates ``workdir`` and checks that files can be written in it."""
  check_workdir(workdir)
  workdir = epath.Path(workdir)
  probe = workdir / f'.write-test-{os.getpid()}'
  text = paths.shown(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise OSError(f'cannot write to --workdir {text}: {e.strerror or e}') from e
  return workdir


def write_run_config(config, workdir: epath.Path) -> None:
  """``<workdir>/config.json``: this run's resolved config (atomic)."""
  text = config.to_json_best_effort(indent=2) if hasattr(config, 'to_json_best_effort') \
      else json.dumps(dict(config), indent=2, default=str)
  files.write_bytes_atomic(os.fspath(workdir / CONFIG_FILE), (text + '\n').encode())


def read_run_config(workdir: epath.Path) -> dict | None:
  """The ``config.json`` an earlier run in ``workdir`` wrote (None when there
  is none, or it cannot be read)."""
  try:
    return json.loads((workdir / CONFIG_FILE).read_text())
  except (OSError, ValueError):
    return None
