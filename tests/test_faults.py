"""Fault injection: preemption, crashes, numerics and bad input lose nothing
and explain themselves (issue 8).

Every test runs the real command, ``python -m hrseg_jax.main``, in
subprocesses, injects faults through ``$HRSEG_FAULT``
(:mod:`hrseg_jax.train.faults`) or broken inputs, and checks what is left:
the checkpoint directory holds only steps that restore completely, a resumed
run logs exactly the losses of an uninterrupted run for every step
(``losses.txt``), a failed run exits non-zero with one ``error:`` line naming
the file, field or step and changes nothing it had written before.  Each
fault is recorded in a ledger; ``tests/conftest.py`` prints the totals:
``faults injected: N, survived: N, steps lost: 0, files corrupted: 0``.
"""
import concurrent.futures
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import cv2
import portpicker
import pytest

import fault_util as fu

CKPT = 'checkpoints'


# The faults each test (each case of a parametrized one) injects.
FAULTS_PER_TEST = {
    'test_preemption_and_kill_9_lose_nothing': 4,
    'test_sigterm_on_one_host_stops_every_host': 1,
    'test_ctrl_c_saves_and_a_second_ctrl_c_exits_at_once': 2,
    'test_ctrl_c_between_log_steps_stops_at_the_next_step': 1,
    'test_a_run_killed_between_checkpoints_leaves_one_loss_line_per_step': 1,
    'test_nonfinite_loss_and_full_disk_lose_nothing': 3,
    'test_full_disk_on_one_of_two_hosts_ends_the_run': 1,
    'test_nonfinite_loss_skipped_and_counted': 1,
    'test_bad_data_is_one_line_naming_the_file': 1,
    'test_bad_validation_image_says_how_to_evaluate_without_it': 1,
    'test_a_skipped_bad_image_is_named_once_on_the_console_and_in_log_txt': 1,
    'test_bad_config_is_one_line_naming_the_field': 1,
    'test_unwritable_workdir_is_one_line': 1,
    'test_resuming_another_models_checkpoint_is_one_line': 1,
    'test_init_from_another_models_checkpoint_is_one_line': 1,
    'test_corrupt_latest_checkpoint_is_one_line': 1,
    'test_init_from_a_missing_checkpoint_is_one_line': 1,
}
FAULTS_IN_SUITE = 35


@pytest.fixture
def ledger(record_property, request):
  """The faults this test injects, attached to its report for the summary.

  A test that passes must have injected its ``FAULTS_PER_TEST`` faults.
  """
  led = fu.Ledger()
  record_property(fu.PROPERTY, led.records)
  failed_before = request.session.testsfailed
  yield led
  if request.session.testsfailed == failed_before:
    name = request.node.originalname
    assert len(led.records) == FAULTS_PER_TEST[name], (name, led.records)


@pytest.fixture(scope='session')
def shared_dir(tmp_path_factory):
  """A folder shared by the xdist workers of this session."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def reference(shared_dir):
  """The uninterrupted run (started in the background, once per session)."""
  directory = shared_dir / 'faults_reference'
  directory.mkdir(parents=True, exist_ok=True)
  config = directory / 'config.py'
  os.replace(fu.write_config(directory / f'config-{os.getpid()}.py'), config)
  run = fu.SharedRun(directory, fu.main_command(config, directory / 'work'),
                     fu.environment())
  return run.start()


def reference_losses(reference) -> dict[int, float]:
  """{step: loss} of the uninterrupted run (waits for it)."""
  result = reference.result()
  assert result.returncode == 0, result.tail()
  losses = dict(fu.read_losses(reference.dir / 'work'))
  assert sorted(losses) == list(range(1, fu.NUM_STEPS + 1))
  assert all(math.isfinite(v) for v in losses.values())
  return losses


def _finish_chain(chain, faults, reference, poisoned=()):
  """Checks a finished chain against the reference; the faults survived.

  The steps lost over the whole chain and what its last run left damaged
  are recorded once, on the last fault.
  """
  lost = chain.steps_lost(reference_losses(reference), poisoned)
  damaged = list(fu.broken_steps(chain.ckpt_dir)) + fu.partial_entries(chain.ckpt_dir)
  faults[-1].measure(steps_lost=len(lost), files_corrupted=len(damaged))
  assert not lost, ('steps lost', lost, [a.losses for a in chain.attempts])
  assert not damaged, damaged
  for f in faults:
    f.survive()


def _only_complete_steps(fault, attempt, ckpt_dir, half_written=()):
  """Every step directory left by ``attempt`` restores completely.

  ``half_written``: other damage found by the caller (counted as well).
  """
  broken = fu.broken_steps(ckpt_dir)
  fault.measure(files_corrupted=len(broken) + len(half_written))
  assert not broken and not half_written, (attempt.fault, broken, half_written)


# ---- 1. Preemption and 2. crashes -------------------------------------------

def test_preemption_and_kill_9_lose_nothing(tmp_path, reference, ledger):
  """SIGTERM -> checkpoint + exit 0; SIGKILL between checkpoints, inside the
  asynchronous commit and in the middle of deleting an old checkpoint; every
  restart resumes from the last complete checkpoint with identical losses."""
  chain = fu.Chain(fu.write_config(tmp_path / 'config.py'), tmp_path / 'w')

  sigterm = ledger.inject('SIGTERM (preemption) after step 3')
  a = chain.run(fault='sigterm:3')
  _only_complete_steps(sigterm, a, chain.ckpt_dir, a.partial_after)
  assert a.result.returncode == 0, a.result.tail()
  assert ('SIGTERM: saving a checkpoint after the steps already queued (two at most)'
          in a.result.stderr)
  assert (f'stopped by SIGTERM at step 3 of {fu.NUM_STEPS}, checkpoint saved'
          in a.result.stdout), a.result.tail()
  assert a.complete_after[-1] == 3
  assert [s for s, _ in a.losses] == [1, 2, 3]

  kill = ledger.inject('kill -9 between checkpoints (step 5)')
  # Synchronous saves here, so that step 4 is committed when the kill lands.
  b = chain.run('--config.train.async_checkpoints=False', fault='kill:5')
  _only_complete_steps(kill, b, chain.ckpt_dir)
  assert b.result.returncode == -9, b.result.tail()
  assert b.resumed_from == 3 and b.complete_after[-1] == 4

  in_save = ledger.inject('kill -9 inside the asynchronous save of step 6')
  c = chain.run(fault='kill_in_save:6')
  _only_complete_steps(in_save, c, chain.ckpt_dir)
  assert c.result.returncode == -9, c.result.tail()
  assert 'before the rename that commits checkpoint 6 (thread async_save)' in c.result.stderr
  assert '6' + fu.TMP_SUFFIX in c.partial_after      # the save was cut short ...
  assert c.complete_after[-1] == 4                    # ... and is not a step

  in_delete = ledger.inject('kill -9 while deleting an old checkpoint')
  doomed = c.complete_after[0]
  d = chain.run(fault=f'kill_in_delete:{doomed}')
  _only_complete_steps(in_delete, d, chain.ckpt_dir)
  assert d.result.returncode == -9, d.result.tail()
  assert f'while deleting checkpoint {doomed}' in d.result.stderr
  assert doomed not in d.complete_after and f'.deleted/{doomed}' in d.partial_after
  assert d.resumed_from == 4 and 6 in d.complete_after

  e = chain.run()
  assert e.result.returncode == 0, e.result.tail()
  assert e.resumed_from == 6 and e.complete_after[-1] == fu.NUM_STEPS
  _finish_chain(chain, [sigterm, kill, in_save, in_delete], reference)


def test_sigterm_on_one_host_stops_every_host(tmp_path, ledger):
  """Two jax.distributed processes; only process 1 gets SIGTERM.  JAX's
  preemption service agrees on a step (>= 3): both say so, stop after it,
  with one complete checkpoint of it, and exit 0."""
  fault = ledger.inject('SIGTERM on one of two hosts')
  config = fu.write_config(tmp_path / 'config.py')
  port = portpicker.pick_unused_port()
  procs = [fu.start(config, tmp_path / 'w', env=fu.environment(
      'sigterm@1:3', HRSEG_COORDINATOR=f'localhost:{port}',
      HRSEG_NUM_PROCESSES='2', HRSEG_PROCESS_ID=str(i))) for i in range(2)]
  # Drain both processes' pipes at once: a full stderr pipe of the one not
  # being read would block it, and with it the other at the next collective.
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(fu.finish, procs))
  stops = []
  for r in results:
    assert r.returncode == 0, r.tail()
    stops += [int(m) for m in re.findall(r'at step (\d+) of \d+, checkpoint saved',
                                         r.stdout)]
  assert len(stops) == 2 and stops[0] == stops[1], stops
  stop = stops[0]
  assert 3 <= stop < fu.NUM_STEPS
  # JAX's handler took the SIGTERM: the notice comes at the sync point, once.
  notice = ('a preemption notice (SIGTERM) reached every process: saving a '
            f'checkpoint of step {stop}, then stopping')
  assert results[0].stderr.count(notice) == 1, results[0].tail()
  assert results[1].stderr.count(f'process 1: {notice}') == 1, results[1].tail()
  assert (tmp_path / 'w' / 'log.txt').read_text().count(notice) == 1
  ckpt_dir = tmp_path / 'w' / CKPT
  trained = [s for s, _ in fu.read_losses(tmp_path / 'w')]
  lost = trained[-1] - fu.step_dirs(ckpt_dir)[-1]
  damaged = list(fu.broken_steps(ckpt_dir)) + fu.partial_entries(ckpt_dir)
  fault.measure(steps_lost=lost, files_corrupted=len(damaged))
  assert trained == list(range(1, stop + 1)) and lost == 0
  # One input state for all processes (it does not depend on their number).
  assert not (ckpt_dir / str(stop) / 'data').exists()
  assert not damaged
  fault.survive()


def test_ctrl_c_saves_and_a_second_ctrl_c_exits_at_once(tmp_path, reference, ledger):
  """Ctrl-C: checkpoint at the step boundary, exit 0, resume exactly; a second
  Ctrl-C right after the first exits at once (130) without it, saying which
  checkpoint is the latest."""
  chain = fu.Chain(fu.write_config(tmp_path / 'config.py'), tmp_path / 'w')
  once = ledger.inject('Ctrl-C after step 3')
  a = chain.run(fault='sigint:3')
  _only_complete_steps(once, a, chain.ckpt_dir, a.partial_after)
  assert a.result.returncode == 0, a.result.tail()
  assert ('Ctrl-C: saving a checkpoint after the steps already queued (two at most)'
          in a.result.stderr)
  assert (f'stopped by Ctrl-C at step 3 of {fu.NUM_STEPS}, checkpoint saved'
          in a.result.stdout), a.result.tail()
  assert a.complete_after[-1] == 3 and [s for s, _ in a.losses] == [1, 2, 3]

  twice = ledger.inject('Ctrl-C twice after step 5')
  # Synchronous saves here, so that step 4 is committed when Ctrl-C lands.
  b = chain.run('--config.train.async_checkpoints=False', fault='sigint2:5')
  # Like kill -9: an old step may be left in .deleted/ (the next run purges it).
  _only_complete_steps(twice, b, chain.ckpt_dir)
  assert b.result.returncode == 130, b.result.tail()
  assert b.resumed_from == 3 and b.complete_after[-1] == 4
  assert b.result.stderr.splitlines()[-1] == ('second Ctrl-C: exiting without saving; '
                                              'the latest checkpoint is step 4'), b.result.tail()
  assert 'checkpoint saved' not in b.result.stdout

  c = chain.run()
  assert c.result.returncode == 0, c.result.tail()
  assert c.resumed_from == 4 and c.complete_after[-1] == fu.NUM_STEPS
  _finish_chain(chain, [once, twice], reference)


@pytest.mark.parametrize('fault,why,code', [('sigterm:0', 'SIGTERM', 0),
                                            ('sigint:0', 'Ctrl-C', 130)])
def test_a_signal_during_start_up_is_not_followed_by_compiling(tmp_path, fault, why, code):
  """A signal while the model initialised: its notice, then a start line
  that said 'compiling the training step' although no step was to run.
  Ctrl-C exits 130 (it exited 0, and 130 a moment earlier in start-up)."""
  r = fu.run(fu.write_config(tmp_path / 'config.py'), tmp_path / 'w', fault=fault)
  assert r.returncode == code, r.tail()
  assert f'{why}: stopping before the first step' in r.stderr, r.tail()
  start = [l for l in r.stdout.splitlines() if l.startswith('start ')]
  assert len(start) == 1 and start[0].endswith(
      f'from scratch (random initialisation); not training ({why} during start-up)'), start
  assert 'compiling' not in r.stdout and not r.stdout.count('\nstep '), r.tail()
  assert r.stdout.splitlines()[-1].startswith(
      f'stopped by {why} before step 1 of {fu.NUM_STEPS}: no step trained, nothing saved'
  ), r.tail()


def test_ctrl_c_between_log_steps_stops_at_the_next_step(tmp_path, ledger):
  """Ctrl-C while the device trains step 2 of 8, with no log, checkpoint or
  evaluation step before step 8: the run stops at the step queued behind it,
  not after every step the host could dispatch ahead (here: all of them)."""
  config = fu.write_config(tmp_path / 'config.py', train__log_every_steps=fu.NUM_STEPS,
                           train__checkpoint_every_steps=fu.NUM_STEPS)
  chain = fu.Chain(config, tmp_path / 'w')
  fault = ledger.inject('Ctrl-C once the device has computed step 2')
  a = chain.run(fault='sigint_computed:2')
  _only_complete_steps(fault, a, chain.ckpt_dir, a.partial_after)
  assert a.result.returncode == 0, a.result.tail()
  stopped = re.search(rf'stopped by Ctrl-C at step (\d+) of {fu.NUM_STEPS}, checkpoint saved',
                      a.result.stdout)
  assert stopped, a.result.tail()
  # The host runs at most two steps ahead (loop.QUEUED_STEPS): steps 3 and
  # 4 may be dispatched when step 2 finishes, 5 at most if the signal reached
  # the main thread only after it had dispatched the next step.
  step = int(stopped[1])
  assert step in (3, 4, 5), a.result.tail()
  assert a.complete_after == [step]
  assert [s for s, _ in a.losses] == list(range(1, step + 1))   # resumes from there
  fault.survive()


def test_a_run_killed_between_checkpoints_leaves_one_loss_line_per_step(tmp_path, ledger):
  """kill -9 at step 5 with the checkpoint of step 4: the same command, run
  from the user's folder, resumes from step 4 and trains step 5 again;
  losses.txt has one line per step (step 5's line was in it twice)."""
  fu.write_config(tmp_path / 'config.py', train__async_checkpoints=False)
  fault = ledger.inject('kill -9 between checkpoints (step 5), then resumed')

  def run(fault=None):
    return subprocess.run(fu.main_command('config.py', 'runs/w'), cwd=tmp_path,
                          env=fu.environment(fault), capture_output=True, text=True,
                          timeout=900)
  killed = run('kill:5')
  assert killed.returncode == -9, killed.stderr[-3000:]
  losses = tmp_path / 'runs' / 'w' / 'losses.txt'
  assert [l.split()[0] for l in losses.read_text().splitlines()] == [
      '1', '2', '3', '4', '5']
  assert fu.step_dirs(tmp_path / 'runs' / 'w' / CKPT)[-1] == 4
  resumed = run()
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from step 4' in resumed.stdout, resumed.stdout
  steps = [int(l.split()[0]) for l in losses.read_text().splitlines()]
  fault.measure(steps_lost=len(set(range(1, fu.NUM_STEPS + 1)) - set(steps)))
  assert steps == list(range(1, fu.NUM_STEPS + 1)), losses.read_text()
  fault.survive()


# ---- 3. Numerics and the full disk ---------------------------------------------

def test_nonfinite_loss_and_full_disk_lose_nothing(tmp_path, reference, ledger):
  """NaN at step 3 stops with the step and the last good checkpoint; a full
  disk when a save starts and one during its background commit fail in one
  line, remove the partial step and leave step 2 byte for byte; the run then
  resumes from step 2 with identical losses."""
  chain = fu.Chain(fu.write_config(tmp_path / 'config.py'), tmp_path / 'w')
  step2 = chain.ckpt_dir / '2'

  nan = ledger.inject('non-finite loss at step 3 (stop)')
  a = chain.run(fault='nan:3')
  _only_complete_steps(nan, a, chain.ckpt_dir, a.partial_after)
  line = fu.assert_one_line_error(a.result, 'step 3', f'step 2 in {chain.ckpt_dir}')
  assert line.startswith('error: non-finite loss or gradient at step 3'), line
  assert a.complete_after == [2]
  assert [s for s, _ in a.losses] == [1, 2, 3] and math.isnan(a.losses[-1][1])
  digest = fu.tree_digest(step2)

  faults = [nan]
  for kind, when in (('enospc', 'when the save of step 4 starts'),
                     ('enospc_commit', 'during the commit of step 4')):
    full = ledger.inject(f'disk full {when}')
    faults.append(full)
    r = chain.run(fault=f'{kind}:4')
    changed = ['checkpoint 2 changed'] if fu.tree_digest(step2) != digest else []
    _only_complete_steps(full, r, chain.ckpt_dir, r.partial_after + changed)
    line = fu.assert_one_line_error(
        r.result, 'saving checkpoint 4', 'No space left on device',
        f"{chain.ckpt_dir / ('4' + fu.TMP_SUFFIX)}/", 'last complete checkpoint: step 2')
    # Orbax's writers log each failed write with its traceback, and TensorStore
    # one "Event loop is closed" traceback per late write (hundreds): none of
    # it reaches the console, only the error line and at most a few others.
    after = r.result.stderr.split('] fault: ', 1)[-1].splitlines()[1:]
    noise = [l for l in after if '] fault: ' not in l and not l.startswith('step ')]
    assert len(noise) <= 3, r.result.tail()
    assert r.resumed_from == 2 and r.complete_after == [2], line

  done = chain.run()
  assert done.result.returncode == 0, done.result.tail()
  assert done.resumed_from == 2 and done.complete_after[-1] == fu.NUM_STEPS
  _finish_chain(chain, faults, reference, poisoned=[(0, 3)])


def test_full_disk_on_one_of_two_hosts_ends_the_run(tmp_path, ledger):
  """Two processes through scripts/launch_local.py; only process 0's writes
  of checkpoint 4 fail (ENOSPC), so process 1 waits for it at Orbax's
  barrier after its own writes.  Process 0 prints the one-line error and
  exits 2 once its writes have ended; the launcher stops process 1 (one
  line, not JAX's fatal-error block) and exits 2; step 2 is intact and
  nothing partial is left.  (Process 0 used to wait at Orbax's next barrier
  for ever: the run never ended.)"""
  fault = ledger.inject('disk full on one of two hosts (step 4)')
  fu.write_config(tmp_path / 'config.py')
  launcher = subprocess.Popen(
      [sys.executable, str(fu.REPO / 'scripts' / 'launch_local.py'), '--num_processes', '2',
       '--cpu_devices', '1', '--', '--config', 'config.py', '--workdir', 'w'],
      cwd=tmp_path, env=fu.environment('enospc@0:4'), text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
  try:
    _, err = launcher.communicate(timeout=600)
  except subprocess.TimeoutExpired:
    os.killpg(launcher.pid, signal.SIGKILL)
    _, err = launcher.communicate()
    pytest.fail('the run did not end:\n' + err[-3000:])
  ckpt_dir = tmp_path / 'w' / CKPT
  damaged = list(fu.broken_steps(ckpt_dir)) + fu.partial_entries(ckpt_dir)
  fault.measure(files_corrupted=len(damaged))
  assert launcher.returncode == 2, err[-3000:]
  lines = err.splitlines()
  errors = [l for l in lines if l.startswith('error: ')]
  assert len(errors) == 2 and lines[-1] == errors[-1], err[-3000:]
  assert errors[0].startswith('error: saving checkpoint 4 in w/checkpoints failed: '), err
  assert 'No space left on device' in errors[0], errors[0]
  assert errors[0].endswith('; last complete checkpoint: step 2'), errors[0]
  assert errors[1] == 'error: a process exited with status 2', err[-3000:]
  # Process 1 says why it stopped, or (when its barrier fails first) that
  # its save failed.
  ones = [l for l in lines if l.startswith('process 1: ')]
  assert ones and all(l == 'process 1: stopped because process 0 failed' or l.startswith(
      'process 1: error: saving checkpoint 4 in w/checkpoints failed: ') for l in ones), err
  assert 'Traceback' not in err and 'JAX distributed service' not in err, err[-3000:]
  assert fu.step_dirs(ckpt_dir) == [2] and not damaged, damaged
  fault.survive()


def test_nonfinite_loss_skipped_and_counted(tmp_path, reference, ledger):
  """train.nonfinite='skip': the NaN step leaves the state alone, is counted
  in the checkpoint, and training goes on with finite losses."""
  fault = ledger.inject("non-finite loss at step 3 (train.nonfinite='skip')")
  config = fu.write_config(tmp_path / 'config.py', train__nonfinite='skip')
  r = fu.run(config, tmp_path / 'w', fault='nan:3')
  assert r.returncode == 0, r.tail()
  losses = dict(fu.read_losses(tmp_path / 'w'))
  ref = reference_losses(reference)
  ckpt_dir = tmp_path / 'w' / CKPT
  broken = fu.broken_steps(ckpt_dir)
  lost = [s for s in (1, 2) if losses.get(s) != ref[s]]
  fault.measure(steps_lost=len(lost), files_corrupted=len(broken))
  assert not lost and not broken
  assert math.isnan(losses[3])
  assert all(math.isfinite(losses[s]) for s in range(4, fu.NUM_STEPS + 1))
  train = _restored_train_item(ckpt_dir / str(fu.NUM_STEPS))
  assert int(train['skipped']) == 1 and int(train['step']) == fu.NUM_STEPS
  fault.survive()


def _restored_train_item(step_dir):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(step_dir / 'train')


# ---- 4. Bad input: data --------------------------------------------------------

def _write_dataset(root: pathlib.Path, n: int = 8) -> pathlib.Path:
  """``n`` synthetic examples as PNG files and a train list (one batch)."""
  from hrseg_jax.data.synthetic import SyntheticSource  # pylint: disable=g-import-not-at-top
  source = SyntheticSource(n, (64, 128), 6, 0, 'train')
  (root / 'img').mkdir(parents=True)
  (root / 'lbl').mkdir()
  lines = []
  for i in range(n):
    ex = source[i]
    ext = 'jpg' if i == 3 else 'png'
    cv2.imwrite(str(root / 'img' / f'{i}.{ext}'), cv2.cvtColor(ex['image'], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / 'lbl' / f'{i}.png'), ex['label'])
    lines.append(f'img/{i}.{ext} lbl/{i}.png')
  (root / 'train.lst').write_text('\n'.join(lines) + '\n')
  return root / 'train.lst'


def _truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _break(root: pathlib.Path, case: str) -> str:
  """Breaks the dataset; returns the text the error must contain."""
  if case == 'corrupt image' or case == 'corrupt image, Grain worker process':
    (root / 'img' / '5.png').write_bytes(os.urandom(600))
    return f'{root / "img" / "5.png"}: cannot decode image'
  if case == 'truncated JPEG image':
    _truncate(root / 'img' / '3.jpg')
    return f'{root / "img" / "3.jpg"}: truncated JPEG'
  if case == 'truncated label':
    _truncate(root / 'lbl' / '2.png')
    return f'{root / "lbl" / "2.png"}: cannot decode label'
  if case == 'missing label':
    (root / 'lbl' / '6.png').unlink()
    return f'{root / "lbl" / "6.png"}: file not found'
  if case == 'label outside the class map':
    label = cv2.imread(str(root / 'lbl' / '1.png'), cv2.IMREAD_UNCHANGED)
    label[:4, :4] = 9
    cv2.imwrite(str(root / 'lbl' / '1.png'), label)
    return f"{root / 'lbl' / '1.png'}: label values [9] outside the 'identity' label map"
  if case == 'image/label size mismatch':
    label = cv2.imread(str(root / 'lbl' / '4.png'), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(root / 'lbl' / '4.png'), label[:32])
    return (f'{root / "img" / "4.png"} / {root / "lbl" / "4.png"}: '
            'image size (64, 128) != label size (32, 128)')
  if case == 'empty list file':
    (root / 'train.lst').write_text('\n')
    return f'{root / "train.lst"}: list file is empty'
  raise ValueError(case)


BAD_DATA_CASES = [
    'corrupt image', 'truncated JPEG image', 'truncated label', 'missing label',
    'label outside the class map', 'image/label size mismatch', 'empty list file',
    'corrupt image, Grain worker process']


@pytest.mark.parametrize('case', BAD_DATA_CASES)
def test_bad_data_is_one_line_naming_the_file(tmp_path, case, ledger):
  fault = ledger.inject(f'data: {case}')
  root = tmp_path / 'data'
  train_list = _write_dataset(root)
  expected = _break(root, case)
  config = fu.write_config(
      tmp_path / 'config.py', data__source='files', data__root=str(root),
      data__train_list=str(train_list),
      data__num_workers=1 if 'worker' in case else 0)
  r = fu.run(config, tmp_path / 'w')
  fault.measure(files_corrupted=len(fu.step_dirs(tmp_path / 'w' / CKPT))
                + len(fu.partial_entries(tmp_path / 'w' / CKPT)))
  fu.assert_one_line_error(r, expected)
  if case != 'empty list file':   # a bad example: how to train on without it
    assert r.stderr.endswith('; pass --config.data.skip_bad_examples=True to train on '
                             'without it (each file skipped is named once)\n'), r.stderr
  assert not fu.step_dirs(tmp_path / 'w' / CKPT)      # nothing trained or saved
  fault.survive()


def test_bad_validation_image_says_how_to_evaluate_without_it(tmp_path, ledger):
  """A corrupt validation image during training's evaluation was a bare
  'cannot decode image', without the hint a bad training image gives."""
  fault = ledger.inject('data: corrupt validation image')
  root = tmp_path / 'data'
  train_list = _write_dataset(root)
  (root / 'img' / 'v5.png').write_bytes(os.urandom(600))
  (root / 'val.lst').write_text('img/4.png lbl/4.png\nimg/v5.png lbl/5.png\n')
  config = fu.write_config(
      tmp_path / 'config.py', num_steps=2, data__source='files', data__root=str(root),
      data__train_list=str(train_list), data__val_list=str(root / 'val.lst'),
      data__num_workers=0, eval__every_steps=2)
  r = fu.run(config, tmp_path / 'w')
  fault.measure(files_corrupted=0)
  fu.assert_one_line_error(r, f'{root / "img" / "v5.png"}: cannot decode image')
  assert r.stderr.endswith('; pass --config.data.skip_bad_examples=True to evaluate '
                           'without it (each file skipped is named once, and counted '
                           'in the results)\n'), r.stderr
  fault.survive()


@pytest.mark.parametrize('num_workers', [0, 2])
def test_a_skipped_bad_image_is_named_once_on_the_console_and_in_log_txt(
    tmp_path, ledger, num_workers):
  """One bad file gave 17-24 lines 'WARNING:hrseg_jax.data.errors:Skipping bad
  train example (N skipped so far in this process)' (N restarting in each
  data worker, the pipeline reading ahead), and none in log.txt."""
  fault = ledger.inject('data: corrupt image, skipped')
  root = tmp_path / 'data'
  train_list = _write_dataset(root)
  (root / 'img' / '5.png').write_bytes(os.urandom(600))
  config = fu.write_config(
      tmp_path / 'config.py', num_steps=4, data__source='files', data__root=str(root),
      data__train_list=str(train_list), data__num_workers=num_workers,
      data__skip_bad_examples=True)
  r = fu.run(config, tmp_path / 'w')
  assert r.returncode == 0, r.stderr[-3000:]
  fault.measure(files_corrupted=0)
  named = f'skipping bad train example {root / "img" / "5.png"}: cannot decode image'
  lines = [l for l in r.stderr.splitlines() if 'skipping' in l.lower()]
  assert len(lines) == 1 and lines[0].startswith(f'warning: {named}'), r.stderr
  assert lines[0].endswith('; skipped each time it comes (data.skip_bad_examples)')
  logged = [l for l in (tmp_path / 'w' / 'log.txt').read_text().splitlines() if named in l]
  assert len(logged) == 1 and logged[0][19:] == '  ' + lines[0], logged
  fault.survive()


# ---- 4. Bad input: configuration, output path ---------------------------------

CONFIG_CASES = {
    'unknown field': (['--config.train.num_stepz=3'], "'config.train.num_stepz'"),
    'wrong type on the command line': (['--config.train.num_steps=ten'],
                                       "--config.train.num_steps=ten"),
    'wrong type in the config file': ({'train__batch_size': 'eight'},
                                      "field 'batch_size'"),
    'unknown value': (['--config.train.nonfinite=ignore'], 'train.nonfinite='),
    'loss chunks that do not divide the batch': (['--config.loss.num_chunks=3'],
                                                 'loss.num_chunks=3 does not divide'),
}


@pytest.mark.parametrize('case', sorted(CONFIG_CASES))
def test_bad_config_is_one_line_naming_the_field(tmp_path, case, ledger):
  fault = ledger.inject(f'config: {case}')
  change, expected = CONFIG_CASES[case]
  fields = change if isinstance(change, dict) else {}
  flags = change if isinstance(change, list) else []
  config = fu.write_config(tmp_path / 'config.py', **fields)
  r = fu.run(config, tmp_path / 'w', *flags)
  fault.measure(files_corrupted=len(fu.step_dirs(tmp_path / 'w' / CKPT)))
  fu.assert_one_line_error(r, expected)
  fault.survive()


def test_unwritable_workdir_is_one_line(tmp_path, ledger):
  fault = ledger.inject('output path that cannot be written')
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  r = fu.run(fu.write_config(tmp_path / 'config.py'), blocker / 'w')
  fault.measure(files_corrupted=int(blocker.read_text() != 'not a directory'))
  fu.assert_one_line_error(r, f'cannot write to --workdir {blocker / "w"}: {blocker} is '
                           'a file, not a folder')
  # --workdir naming the file itself.
  r = fu.run(fu.write_config(tmp_path / 'config.py'), blocker)
  fault.measure(files_corrupted=int(blocker.read_text() != 'not a directory'))
  fu.assert_one_line_error(r, f'cannot write to --workdir {blocker}: {blocker} is a '
                           'file, not a folder')
  fault.survive()


# ---- 4. Bad input: checkpoints ---------------------------------------------------

@pytest.fixture
def finished_workdir(tmp_path, reference):
  """A copy of the reference run's workdir (checkpoints of steps 6 and 8)."""
  reference_losses(reference)
  workdir = tmp_path / 'w'
  shutil.copytree(reference.dir / 'work', workdir)
  return workdir


FIVE_CLASSES = ['--config.model.num_classes=5', '--config.data.num_classes=5']


def test_resuming_another_models_checkpoint_is_one_line(tmp_path, finished_workdir, ledger):
  fault = ledger.inject('workdir holds a checkpoint of another model')
  before = fu.tree_digest(finished_workdir / CKPT)
  r = fu.run(fu.write_config(tmp_path / 'config.py', num_steps=10),
             finished_workdir, *FIVE_CLASSES)
  changed = before != fu.tree_digest(finished_workdir / CKPT)
  fault.measure(files_corrupted=int(changed))
  line = fu.assert_one_line_error(
      r, f'{finished_workdir / CKPT / "8"} is a checkpoint of another model',
      'model.num_classes: 6 in the checkpoint, 5 in the config')
  assert not changed
  # An error after start-up ends the run's log.txt too (what a cluster user reads).
  log = (finished_workdir / 'log.txt').read_text().strip().splitlines()
  assert log[-1].endswith(line), log[-3:]
  fault.survive()


def test_init_from_another_models_checkpoint_is_one_line(tmp_path, finished_workdir, ledger):
  fault = ledger.inject('train.init_from: a checkpoint of another model')
  before = fu.tree_digest(finished_workdir / CKPT)
  r = fu.run(fu.write_config(tmp_path / 'config.py'), tmp_path / 'new',
             *FIVE_CLASSES, f'--config.train.init_from={finished_workdir}')
  changed = before != fu.tree_digest(finished_workdir / CKPT)
  fault.measure(files_corrupted=int(changed) + len(fu.step_dirs(tmp_path / 'new' / CKPT)))
  fu.assert_one_line_error(r, f'train.init_from={finished_workdir}: does not fit model',
                           '(6,) vs (5,)')
  assert not changed
  fault.survive()


def test_corrupt_latest_checkpoint_is_one_line(tmp_path, finished_workdir, ledger):
  fault = ledger.inject('latest checkpoint corrupted on disk')
  state = finished_workdir / CKPT / '8' / 'data_order' / 'metadata'
  state.write_text(state.read_text()[:10])
  before = fu.tree_digest(finished_workdir / CKPT)
  r = fu.run(fu.write_config(tmp_path / 'config.py', num_steps=10), finished_workdir)
  changed = before != fu.tree_digest(finished_workdir / CKPT)
  fault.measure(files_corrupted=int(changed))
  fu.assert_one_line_error(r, f'cannot restore checkpoint {finished_workdir / CKPT / "8"}',
                           'resume from step 6')
  assert not changed
  fault.survive()


def test_init_from_a_missing_checkpoint_is_one_line(tmp_path, ledger):
  fault = ledger.inject('train.init_from: not a checkpoint')
  pth = tmp_path / 'hrnet_w48_cityscapes.pth'
  pth.write_bytes(b'PK\x03\x04 not converted')
  r = fu.run(fu.write_config(tmp_path / 'config.py'), tmp_path / 'w',
             f'--config.train.init_from={pth}')
  fault.measure(files_corrupted=len(fu.step_dirs(tmp_path / 'w' / CKPT)))
  fu.assert_one_line_error(r, str(pth))
  fault.survive()


def test_the_suite_injects_its_count_of_faults():
  """Every test that injects faults is counted, and they add up to the suite's."""
  import inspect  # pylint: disable=g-import-not-at-top
  users = {name for name, fn in globals().items() if name.startswith('test_')
           and callable(fn) and 'ledger' in inspect.signature(fn).parameters}
  assert users == set(FAULTS_PER_TEST)
  cases = {'test_bad_data_is_one_line_naming_the_file': len(BAD_DATA_CASES),
           'test_bad_config_is_one_line_naming_the_field': len(CONFIG_CASES),
           'test_a_skipped_bad_image_is_named_once_on_the_console_and_in_log_txt': 2}
  total = sum(n * cases.get(name, 1) for name, n in FAULTS_PER_TEST.items())
  assert total == FAULTS_IN_SUITE


def test_grain_worker_processes_end_quietly(tmp_path):
  """A run reading files through Grain worker processes ends without the
  multiprocessing resource tracker's "leaked shared_memory objects" lines
  (batches still buffered in shared memory when the run ends)."""
  root = tmp_path / 'data'
  train_list = _write_dataset(root)
  config = fu.write_config(
      tmp_path / 'config.py', num_steps=2, data__source='files',
      data__root=str(root), data__train_list=str(train_list), data__num_workers=2)
  r = fu.run(config, tmp_path / 'w')
  assert r.returncode == 0, r.tail()
  assert 'resource_tracker' not in r.stderr and 'leaked' not in r.stderr, r.stderr[-2000:]
