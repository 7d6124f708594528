"""Integrity manifests of checkpoint step directories (sizes + SHA-256).

Every checkpoint step this package writes gets a file :data:`NAME` listing
the size and SHA-256 digest of every other file of the step, written last
(after Orbax has finalised the step) and atomically (temporary file, fsync,
rename). :func:`verify` checks a step against it and names the first file
that is missing, of another size or of another digest, in one line.

Set ``HRSEG_VERIFY_CHECKSUMS=0`` to skip the digests (sizes are still
checked) when reading very large checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets

from hrseg_jax import paths

NAME = 'hrseg_manifest.json'
FORMAT = 'hrseg_jax checkpoint manifest'
_CHUNK = 1 << 20


class CorruptCheckpointError(ValueError):
  """A checkpoint's files do not match its manifest (one-line message)."""


def digests_enabled() -> bool:
  return os.environ.get('HRSEG_VERIFY_CHECKSUMS', '1').strip().lower() not in (
      '0', 'false', 'no', 'off')


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  out = []
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != NAME and not name.startswith(f'.{NAME}.'):
        out.append(rel.replace(os.sep, '/'))
  return out


def write(step_dir, step: int | None = None) -> str:
  """Writes the manifest of ``step_dir`` (a complete step); returns its path."""
  step_dir = os.fspath(step_dir)
  files = {}
  for rel in _files(step_dir):
    path = os.path.join(step_dir, rel)
    files[rel] = {'size': os.path.getsize(path), 'sha256': _sha256(path)}
  body = json.dumps({'format': FORMAT, 'version': 1, 'step': step,
                     'files': files}, indent=1, sort_keys=True)
  target = os.path.join(step_dir, NAME)
  tmp = os.path.join(step_dir, f'.{NAME}.{secrets.token_hex(4)}.tmp')
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(body)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, target)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return target


def exists(step_dir) -> bool:
  return os.path.isfile(os.path.join(os.fspath(step_dir), NAME))


def verify(step_dir, *, digests: bool | None = None,
           only: str | None = None) -> bool:
  """Checks ``step_dir`` against its manifest.

  Args:
    step_dir: a checkpoint step directory.
    digests: also compare SHA-256 digests (default: unless
      ``HRSEG_VERIFY_CHECKSUMS=0``); sizes are always compared.
    only: check only the files below this sub-directory (e.g. ``'model'``).

  Returns:
    False if the step has no manifest (written by an older version), True
    if every listed file matches.

  Raises:
    CorruptCheckpointError: naming the first file that does not match.
  """
  step_dir = os.fspath(step_dir)
  digests = digests_enabled() if digests is None else digests
  path = os.path.join(step_dir, NAME)
  if not os.path.exists(path):
    return False
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
    files = manifest['files']
    if manifest.get('format') != FORMAT or not isinstance(files, dict):
      raise ValueError('not a manifest')
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpointError(
        f'checkpoint {paths.shown(step_dir)} is corrupt: unreadable manifest '
        f'{paths.shown(path)} ({type(e).__name__})') from None
  for rel, want in sorted(files.items()):
    if only is not None and not rel.startswith(only.rstrip('/') + '/'):
      continue
    file = os.path.join(step_dir, *rel.split('/'))
    where = f'checkpoint {paths.shown(step_dir)} is corrupt: {paths.shown(file)}'
    if not os.path.isfile(file):
      raise CorruptCheckpointError(f'{where} is missing')
    size = os.path.getsize(file)
    if size != want.get('size'):
      raise CorruptCheckpointError(
          f'{where} has {size} bytes, its manifest says {want.get("size")}')
    if digests and _sha256(file) != want.get('sha256'):
      raise CorruptCheckpointError(
          f'{where} does not match its SHA-256 digest in the manifest')
  return True
