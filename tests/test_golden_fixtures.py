"""Missing golden fixtures: skipped on a fresh clone, an error under CI=true."""
from __future__ import annotations

import pytest

import conftest


def test_missing_fixtures_skip_outside_ci(monkeypatch, tmp_path):
  monkeypatch.delenv('CI', raising=False)
  monkeypatch.setenv('HRSEG_GOLDEN', str(tmp_path / 'absent'))
  with pytest.raises(pytest.skip.Exception) as e:
    conftest.golden_dir()
  assert str(tmp_path / 'absent') in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('value', ['true', '1'])
def test_missing_fixtures_fail_in_ci(monkeypatch, tmp_path, value):
  monkeypatch.setenv('CI', value)
  monkeypatch.setenv('HRSEG_GOLDEN', str(tmp_path / 'absent'))
  with pytest.raises(pytest.fail.Exception, match='CI=true requires them'):
    conftest.golden_dir()


def test_present_fixtures_are_used(monkeypatch, tmp_path):
  monkeypatch.setenv('CI', 'true')
  monkeypatch.setenv('HRSEG_GOLDEN', str(tmp_path))
  assert conftest.golden_dir() == tmp_path
