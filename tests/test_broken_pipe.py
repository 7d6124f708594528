"""A command whose console is piped into a reader that goes away
(``... | head -1``) ends quietly, as ``cat`` does: exit 1 as Python's
documentation recommends, no error line, no traceback, nothing half-written."""
import os
import pathlib
import subprocess
import sys

import numpy as np

from hrseg_jax import checkpoints
from hrseg_jax.convert import pth_write
from test_convert import TINY, torch_state

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_with_reader_gone(argv, cwd):
  """Runs ``argv`` with its stdout piped into a reader that has already gone."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  read, write = os.pipe()
  os.close(read)      # the reader (head) has gone before the first line
  try:
    result = subprocess.run(argv, cwd=cwd, env=env, stdout=write, stderr=subprocess.PIPE,
                            text=True, timeout=300, check=False)
  finally:
    os.close(write)
  return result


def test_convert_piped_into_a_reader_that_goes_ends_quietly(tmp_path):
  state = torch_state(TINY)
  state['bn1.weight'] = np.abs(state['bn1.weight'])
  pth_write.save_pth(state, tmp_path / 'model.pth')
  result = _run_with_reader_gone(
      [sys.executable, '-m', 'hrseg_jax.convert', 'model.pth', 'ckpt', '--align-corners'],
      tmp_path)
  assert result.stderr == '' and result.returncode == 1, result
  # Its console line comes once the checkpoint is whole: nothing half-written.
  assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt', 'model.pth']
  assert checkpoints.load_model(tmp_path / 'ckpt')[0]['num_classes'] == TINY['num_classes']

