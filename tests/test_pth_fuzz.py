"""Fuzzing the .pth loader: random mutations of real torch files.

Mutations (byte flips, truncations, pickle-opcode swaps with a valid CRC,
record and storage-key renames, duplicated chunks) of both fixture formats
must each end in a loaded object or a one-line ``PthError``: no other
exception, no crash, bounded memory. A few mutants also go through the real
command line.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

import pth_fuzz

REPO = pathlib.Path(__file__).resolve().parents[1]
SEED = 20261130


def test_three_hundred_mutants_load_or_fail_in_one_line(tmp_path):
  # In a fresh interpreter, so that its peak RSS measures the loads alone.
  out = subprocess.run(
      [sys.executable, str(REPO / 'tests' / 'pth_fuzz.py'), '--seed', str(SEED),
       '--count', '300', '--out', str(tmp_path)],
      capture_output=True, text=True, timeout=300, check=True, cwd=REPO)
  report = json.loads(out.stdout)
  assert report['failures'] == []
  assert sum(report['outcomes'].values()) == 300
  assert report['outcomes']['refused'] > 200  # Most mutants are broken ...
  assert report['outcomes'].get('loaded', 0) > 0  # ... a few are harmless.
  assert report['peak_rss_mb'] < 600
  assert not list(tmp_path.iterdir())


def test_mutants_are_reproducible_and_cover_every_kind():
  first = list(pth_fuzz.mutants(SEED, 40))
  assert first == list(pth_fuzz.mutants(SEED, 40))
  assert {kind for _, kind, _, _ in first} == set(pth_fuzz.KINDS)
  assert {base for base, _, _, _ in first} == set(pth_fuzz.BASES)


def test_mutants_through_the_command_line(tmp_path):
  # Relative paths from the user's folder, as a user would type them.
  env = dict(os.environ, PYTHONPATH=str(REPO))
  rng = np.random.default_rng(SEED)
  picked = [m for m in pth_fuzz.mutants(SEED + 1, 60)
            if m[1] in ('truncate', 'opcode', 'rename')]
  for n in rng.choice(len(picked), 3, replace=False):
    base, kind, what, data = picked[int(n)]
    run_dir = tmp_path / f'run{n}'
    run_dir.mkdir()
    (run_dir / 'model.pth').write_bytes(data)
    proc = subprocess.run(
        [sys.executable, '-m', 'hrseg_jax.convert', 'model.pth', 'out'],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)
    where = f'{base} {kind} {what}'
    assert proc.returncode in (0, 2), (where, proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr, where
    if proc.returncode == 2:
      lines = proc.stderr.strip().splitlines()
      assert len(lines) == 1 and lines[0].startswith('error: '), (where, lines)
      assert 'model.pth' in lines[0], (where, lines)
      assert sorted(p.name for p in run_dir.iterdir()) == ['model.pth'], where
