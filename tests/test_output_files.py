"""Outputs (metrics, predictions, pictures) are written atomically and get the
permissions any new file gets under the user's umask, not the private 0600
of the temporary file they are written through."""
import os

import pytest

from hrseg_jax import files


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
  old = os.umask(request.param)
  yield request.param
  os.umask(old)


def test_outputs_follow_the_umask(tmp_path, umask):
  files.write_bytes_atomic(str(tmp_path / 'a' / 'metrics.json'), b'{}')
  files.write_files_atomic({str(tmp_path / 'b.png'): b'x', str(tmp_path / 'c' / 'd.png'): b'y'})
  for name in ('a/metrics.json', 'b.png', 'c/d.png'):
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
  assert sorted(p.name for p in tmp_path.rglob('*') if p.name.startswith('.tmp-')) == []
