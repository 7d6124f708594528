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


def make_workdir(workdir) -> epath.Path:
  """Creates ``workdir`` and checks that files can be written in it."""
  workdir = epath.Path(workdir)
  probe = workdir / f'.write-test-{os.getpid()}'
  # A file where the folder (or a folder above it) would be: say so, not
  # the system's "File exists" / "Not a directory".
  text = paths.shown(workdir)
  blocker = None if paths.is_url(text) else (
      text if os.path.isfile(workdir) else paths.file_above(workdir))
  if blocker:
    raise NotADirectoryError(f'cannot write to --workdir {text}: {blocker} is a '
                             'file, not a folder; choose another --workdir')
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
