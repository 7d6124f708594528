"""Ctrl-C in the commands: one line and exit 130, nothing half-written, even
when it lands inside a callback whose exceptions Python ignores (JAX runs
one at every garbage collection)."""
import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from ctrl_c_util import WITH_CTRL_C, ctrl_c_when  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ctrl-C arrives while a __del__ runs: the KeyboardInterrupt raised there is
# "ignored" by Python, as in JAX's garbage-collection callback.
_LOST_IN_CALLBACK = r'''
import os, signal, sys, time
from hrseg_jax import pipes
if sys.argv[1] == 'kept':
  pipes.keep_ctrl_c()

class Callback:
  def __del__(self):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)   # the handler runs here, inside __del__

Callback()   # deleted at once
try:
  print('ran on past the Ctrl-C', flush=True)
  pipes.raise_if_ctrl_c()
  print('finished', flush=True)
except KeyboardInterrupt:
  print('stopped at the check', flush=True)
'''


def _run(mode):
  return subprocess.run([*WITH_CTRL_C, sys.executable, '-c', _LOST_IN_CALLBACK, mode],
                        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                        capture_output=True, text=True, timeout=60, check=False)


def test_python_alone_loses_it():
  """The situation the handler is for: without it the command runs on."""
  r = _run('plain')
  assert r.stdout == 'ran on past the Ctrl-C\nfinished\n', r.stdout + r.stderr
  assert 'KeyboardInterrupt' in r.stderr and 'Exception ignored' in r.stderr


def test_the_next_check_raises_it_and_the_lost_one_is_not_printed():
  r = _run('kept')
  assert r.stdout == 'ran on past the Ctrl-C\nstopped at the check\n', r.stdout + r.stderr
  assert r.stderr == ''


def test_a_handled_ctrl_c_is_not_raised_again():
  code = _LOST_IN_CALLBACK.replace("print('ran on", "pipes.ctrl_c_handled()\n  print('ran on")
  r = subprocess.run([*WITH_CTRL_C, sys.executable, '-c', code, 'kept'], cwd=REPO,
                     env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                     text=True, timeout=60, check=False)
  assert r.stdout == 'ran on past the Ctrl-C\nfinished\n', r.stdout + r.stderr


# convert, with Orbax's writing of the checkpoint slowed down: the Ctrl-C
# comes while its threads write the temporary folder.
_CONVERT_SAVING_SLOWLY = r'''
import pathlib, runpy, sys, time
import orbax.checkpoint as ocp
finish = ocp.CheckpointManager.wait_until_finished
def slowly(self):
  pathlib.Path('saving').touch()
  time.sleep(3)
  finish(self)
ocp.CheckpointManager.wait_until_finished = slowly
sys.argv = ['python -m hrseg_jax.convert', 'tiny.pth', 'converted/tiny']
runpy.run_module('hrseg_jax.convert', run_name='__main__', alter_sys=True)
'''


def test_ctrl_c_while_convert_writes_leaves_nothing(tmp_path):
  """It was a traceback (or two, from Orbax's threads), and the hidden
  temporary folder of the checkpoint stayed behind."""
  from hrseg_jax.convert import convert, pth_write  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  from test_eval_inference import TINY_HRNET, tiny_hrnet_variables  # pylint: disable=g-import-not-at-top
  variables = tiny_hrnet_variables(registry.resolve(TINY_HRNET))
  pth_write.save_pth(convert.to_state_dict(variables), tmp_path / 'tiny.pth')
  p = subprocess.Popen([*WITH_CTRL_C, sys.executable, '-c', _CONVERT_SAVING_SLOWLY],
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO,
                                              JAX_PLATFORMS='cpu'),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out, err = ctrl_c_when(p, (tmp_path / 'saving').exists)
  assert (p.returncode, err) == (130, 'stopped by Ctrl-C\n'), out + err
  assert 'converted ' not in out, out
  assert sorted(q.name for q in pathlib.Path(tmp_path).iterdir()) == ['saving', 'tiny.pth']


_WHILE_IMPORTING = r'''
import pathlib, time
from hrseg_jax import pipes
pipes.stop_at_once_on_ctrl_c()
pathlib.Path('importing').touch()
time.sleep(60)   # the command's imports (absl, JAX: a second or two)
'''


def test_ctrl_c_while_a_command_imports_is_one_line(tmp_path):
  """It was a KeyboardInterrupt traceback of 30 to 60 lines from inside
  whichever module was importing."""
  p = subprocess.Popen([*WITH_CTRL_C, sys.executable, '-c', _WHILE_IMPORTING],
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out, err = ctrl_c_when(p, (tmp_path / 'importing').exists)
  assert (p.returncode, out, err) == (130, '', 'stopped by Ctrl-C\n')


@pytest.mark.parametrize('module', ['main.py', 'summary.py'])
def test_the_commands_stop_at_once_before_their_imports(module):
  """The handler is installed before the first import that takes time."""
  text = (pathlib.Path(REPO) / 'hrseg_jax' / module).read_text()
  first_heavy = min(text.index(name) for name in ('\nfrom absl', '\nimport jax')
                    if name in text)
  assert 0 < text.find('pipes.stop_at_once_on_ctrl_c()') < first_heavy


# A Ctrl-C lost in a callback while convert read the .pth: nothing is written.
_LOST_BEFORE_WRITING = r'''
import os, signal, sys, time
from hrseg_jax import checkpoints, pipes
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables
from hrseg_jax.models import registry
cfg = registry.resolve(TINY_HRNET)
variables = tiny_hrnet_variables(cfg)

class Callback:
  def __del__(self):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)

def main():
  Callback()
  checkpoints.save_model('converted/tiny', variables, cfg)
  print('written')
  return 0

pipes.run_command(main)
'''


def test_a_ctrl_c_lost_before_a_checkpoint_is_written_stops_it(tmp_path):
  r = subprocess.run([*WITH_CTRL_C, sys.executable, '-c', _LOST_BEFORE_WRITING],
                     cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS='cpu',
                                            PYTHONPATH=f'{REPO}{os.pathsep}{REPO}/tests'),
                     capture_output=True, text=True, timeout=300, check=False)
  assert (r.returncode, r.stdout, r.stderr) == (130, '', 'stopped by Ctrl-C\n'), r.stderr
  assert list(tmp_path.iterdir()) == []
