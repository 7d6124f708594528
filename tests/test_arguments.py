"""Bad flags of the argparse commands (hrseg_jax.arguments), typed as a user
types them, from a temporary folder: one ``error:`` line (with the flag
that was probably meant), exit 2, no usage block, no abbreviated flags."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(cwd, *argv) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300, check=False)


def _script(name: str) -> str:
  return str(REPO / 'scripts' / name)


@pytest.mark.parametrize('argv, line', [
    (['-m', 'hrseg_jax.export', 'w18s', 'out.pth', '--formt', 'onnx'],
     'error: unrecognized arguments: --formt onnx; did you mean --format? (see --help)'),
    (['-m', 'hrseg_jax.convert', 'w.pth', 'out', '--num-classe', '3'],
     'error: unrecognized arguments: --num-classe 3; did you mean --num-classes? '
     '(see --help)'),
    (['-m', 'hrseg_jax.summary', '--varient=w18'],
     'error: unrecognized arguments: --varient=w18; did you mean --variant? (see --help)'),
    (['-m', 'hrseg_jax.browse', '--config', 'c.py', '--out', 'g.png', '--nmu', '3'],
     'error: unrecognized arguments: --nmu 3; did you mean --num? (see --help)'),
    (['-m', 'hrseg_jax.deploy.latency', 'm.onnx', '--repeat', '3'],
     'error: unrecognized arguments: --repeat 3; did you mean --repeats? (see --help)'),
    ([_script('make_lists.py'), 'lip', '--root', 'data/lip', '--out', 'lists', '--verbose'],
     'error: unrecognized arguments: --verbose (see --help)'),
    ([_script('prepare_synthetic.py'), '--root', 'syn', '--num_trian', '2'],
     'error: unrecognized arguments: --num_trian 2; did you mean --num_train? '
     '(see --help)'),
    ([_script('make_lists.py'), 'lip', '--root', 'data/lip'],
     'error: the following arguments are required: --out (see --help)'),
    # The launchers name themselves among the lines of the processes they start.
    ([_script('launch_local.py'), '--num_process', '2', '--', '--workdir', 'w'],
     'launch_local.py: error: unrecognized arguments: --num_process 2; did you mean '
     '--num_processes? (see --help)'),
])
def test_a_bad_flag_is_one_line_with_the_flag_meant(tmp_path, argv, line):
  """argparse printed its usage block, then ``python -m hrseg_jax.export:
  error: unrecognized arguments: --formt onnx`` with no suggestion."""
  r = _run(tmp_path, *argv)
  assert r.returncode == 2, r.stderr
  assert r.stderr.splitlines() == [line], r.stderr
  assert r.stdout == '' and list(tmp_path.iterdir()) == []


def test_flags_are_never_abbreviated(tmp_path):
  """``--overw`` overwrote the output as --overwrite does; as with
  hrseg_jax.main, a flag is taken only as spelt in full."""
  (tmp_path / 'w18s.pth').write_bytes(b'the user\'s file')
  r = _run(tmp_path, '-m', 'hrseg_jax.export', 'w18s', 'w18s.pth', '--overw')
  assert r.returncode == 2 and r.stderr.splitlines() == [
      'error: unrecognized arguments: --overw; did you mean --overwrite? (see --help)']
  assert (tmp_path / 'w18s.pth').read_bytes() == b'the user\'s file'
  r = _run(tmp_path, _script('make_lists.py'), 'lip', '--ro', 'data/lip', '--out', 'l')
  assert r.returncode == 2 and r.stderr.splitlines() == [
      'error: unrecognized arguments: --ro; did you mean --root? (see --help)']


def test_help_is_argparse_help(tmp_path):
  r = _run(tmp_path, '-m', 'hrseg_jax.convert', '--help')
  assert r.returncode == 0 and r.stderr == ''
  assert r.stdout.startswith('usage: python -m hrseg_jax.convert [-h]')
  assert '--num-classes NUM_CLASSES' in r.stdout and 'Converts an official' in r.stdout
