"""What an output may replace: never the user's files.

:func:`check_replaceable` is asked before a checkpoint directory is written:
an existing, non-empty directory is replaced only with ``--overwrite`` and
only if it is itself a checkpoint written by this package, holding neither
the input nor the current directory. No JAX here: the command lines ask
before reading their input.
"""
from __future__ import annotations

import os
from typing import Iterable

from etils import epath

from hrseg_jax import paths

MODEL = 'model'
# Entries of a checkpoint directory besides its step directories: Orbax's
# unfinished saves and trash (see hrseg_jax.checkpoints.training).
_ORBAX_TMP = '.orbax-checkpoint-tmp'
_ORBAX_TRASH = '.deleted'


def is_checkpoint_dir(path) -> bool:
  """True if ``path`` holds only checkpoint steps written by this package.

  That is: at least one step directory with a ``model`` item, and nothing
  else but Orbax's unfinished saves and trash. Anything a user may have put
  there (an input file, notes, another tool's output) makes it False.
  """
  path = epath.Path(path)
  if not path.is_dir():
    return False
  steps = 0
  for p in path.iterdir():
    if p.name.isdigit() and (p / MODEL).is_dir():
      steps += 1
    elif not (_ORBAX_TMP in p.name or p.name == _ORBAX_TRASH):
      return False
  return steps > 0


def _inside(path: str, folder: str) -> bool:
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_replaceable(directory, *, overwrite: bool,
                      keep: Iterable = ()) -> None:
  """Raises FileExistsError unless writing ``directory`` loses nothing
  (NotADirectoryError where a file lies in the way of creating it).

  A missing or empty directory may be written. An existing one is replaced
  only with ``overwrite`` and only if it is itself a checkpoint written by
  this package (:func:`is_checkpoint_dir`) holding none of ``keep`` (the
  input files), and not the current directory or one above it.
  """
  directory = epath.Path(directory)
  name = paths.shown(directory)   # in messages
  if not directory.exists():
    # A folder above it that cannot be made (/proc/x/y) fails here, in words,
    # not as '[Errno 2] No such file or directory: /proc/x' when it is made.
    paths.check_writable(directory, 'output directory')
    return
  if not directory.is_dir():
    raise FileExistsError(f'output path exists and is not a directory: {name}')
  if not any(directory.iterdir()):
    return
  refusal = _refusal(directory, keep)
  if not overwrite:
    # --overwrite is named only where it would replace the folder.
    raise FileExistsError(
        f'output directory is not empty: {name} '
        + ('(pass --overwrite to replace it)' if refusal is None else
           f'and --overwrite would not replace it either: {refusal}'))
  if refusal is not None:
    raise FileExistsError(f'refusing to replace {name}: {refusal}')


def _refusal(directory: epath.Path, keep: Iterable) -> str | None:
  """Why ``--overwrite`` may not replace the non-empty ``directory`` (None:
  it may): it holds an input or the current directory, or is not a
  checkpoint written by this package."""
  local = not str(directory).startswith(('gs://', 's3://'))
  for path in keep:
    if local and _inside(os.fspath(path), os.fspath(directory)):
      return f'it holds the input {paths.shown(path)}'
  if local and _inside(os.getcwd(), os.fspath(directory)):
    return 'it holds the current directory'
  if not is_checkpoint_dir(directory):
    names = sorted(p.name for p in directory.iterdir())
    shown = ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')
    return (f'it is not a checkpoint written by hrseg_jax (it holds {shown}); remove it '
            'yourself or choose another output directory')
  return None
