"""User paths, resolved once where they enter the program.

Every path a user gives (command-line flags, config fields, API arguments)
may be relative to the working directory, start with ``~`` or go through
symlinks.  :func:`resolve` turns it into the absolute, symlink-free path that
the rest of the program (Orbax in particular, which needs absolute paths)
works with, and remembers what was typed: messages name a path through
:func:`shown`, as the user typed it (``runs/demo/checkpoints/5``, not
``/home/me/runs/demo/checkpoints/5``).  URLs such as ``gs://bucket/run`` are
kept as they are.
"""
from __future__ import annotations

import os
import tempfile

# Config fields holding paths (``section.field``); '' means "not set".
CONFIG_PATH_FIELDS = ('data.root', 'data.train_list', 'data.val_list',
                      'data.test_list', 'data.tfds_data_dir', 'train.init_from')

# What the user typed, for each path resolve() changed (resolved -> typed).
_TYPED: dict[str, str] = {}


def is_url(path) -> bool:
  """Whether ``path`` names a remote location (``gs://``, ``s3://``, ...)."""
  return '://' in os.fspath(path)


def resolve(path):
  """An absolute local path (``~`` expanded, symlinks resolved) or the URL.

  ``None`` and ``''`` (unset) are returned unchanged.  The type follows the
  input: ``str`` for a ``str``, else the input's path class.
  """
  if path is None:
    return None
  text = os.fspath(path)
  if not text or is_url(text):
    return path
  absolute = os.path.realpath(os.path.expanduser(text))
  typed = text.rstrip(os.sep) or text
  if typed not in (absolute, os.curdir):   # (re-resolved paths change nothing)
    _TYPED.setdefault(absolute, typed)
  return absolute if isinstance(path, str) else type(path)(absolute)


def file_above(path) -> str | None:
  """The nearest existing folder-in-the-way above ``path`` that is a file.

  ``x.pth/out`` cannot exist while ``x.pth`` is a regular file; naming that
  file says why (instead of the system's "Not a directory").  It is named as
  :func:`shown` names ``path`` (``x.pth``, as typed).  ``None`` when no
  ancestor is a file, and for URLs.
  """
  text = os.fspath(path)
  if not text or is_url(text):
    return None
  parent = os.path.dirname(shown(text))
  while parent:
    found = os.path.expanduser(parent)
    if os.path.exists(found):
      return None if os.path.isdir(found) else parent
    up = os.path.dirname(parent)
    if up == parent:
      return None
    parent = up
  return None


def not_found(path, what: str = 'checkpoint') -> str:
  """``WHAT not found: PATH``, naming the file in the way if one is."""
  blocker = file_above(path)
  return f'{what} not found: {shown(path)}' + (
      f' ({blocker} is a file, not a folder)' if blocker else '')


def check_creatable(path, what: str) -> None:
  """NotADirectoryError, naming it, when a file lies where a folder above
  ``path`` would have to be created."""
  blocker = file_above(path)
  if blocker:
    raise NotADirectoryError(f'cannot create {shown(path)}: {blocker} is a file, '
                             f'not a folder; choose another {what}')


def check_writable(path, what: str) -> None:
  """Raises an OSError naming ``path`` when it cannot be written: a file in
  the way above it (:func:`check_creatable`), or a nearest existing folder
  that takes no new file (permissions, a read-only file system).

  Commands call it before their work, so that an output they cannot write
  fails at once, in words about the user's path rather than about a
  temporary file of their own.  The probe file is removed; no folder is
  created.  URLs are not checked.
  """
  check_creatable(path, what)
  text = os.fspath(path)
  if not text or is_url(text):
    return
  folder = os.path.dirname(os.path.abspath(text))
  while not os.path.isdir(folder):
    folder = os.path.dirname(folder)
  try:
    fd, probe = tempfile.mkstemp(dir=folder, prefix='.write-check-')
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise PermissionError(f'cannot write {shown(text)}: {shown(folder)} is not writable '
                          f'({reason.lower()}); choose another {what}') from None
  os.close(fd)
  os.unlink(probe)


def shown(path) -> str:
  """``path`` as the user typed it, for messages.

  A path :func:`resolve` made of what the user typed, or one below it, is
  named in the user's words (``runs/demo`` -> ``runs/demo/checkpoints/5``,
  ``~/w.pth``, a symlink by its own name); another absolute path relative to
  the working directory when it lies below it; relative paths and URLs as
  they are.
  """
  text = os.fspath(path)
  if not os.path.isabs(text) or is_url(text):
    return text
  head, tail = os.path.normpath(text), []
  while True:
    if head in _TYPED:
      return os.path.join(_TYPED[head], *reversed(tail))
    up, name = os.path.split(head)
    if up == head:
      break
    head = up
    tail.append(name)
  rel = os.path.relpath(text)
  return text if rel.startswith('..') else rel


def resolve_config(config):
  """A copy of ``config`` whose path fields (:data:`CONFIG_PATH_FIELDS`) are resolved.

  Fields a config does not have are skipped; values that are not paths
  (registry names, '') are left alone.
  """
  config = config.copy_and_resolve_references()
  for field in CONFIG_PATH_FIELDS:
    section, name = field.split('.')
    if section in config and name in config[section]:
      value = config[section][name]
      if isinstance(value, str) and value:
        config[section][name] = resolve(value)
  return config
