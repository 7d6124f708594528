"""Helpers of tests/test_faults.py: the real command in subprocesses, checks
of checkpoint directories and loss logs, and the ledger of injected faults
behind the suite's summary line."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Iterable, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'
PROPERTY = 'hrseg_faults'
TMP_SUFFIX = '.orbax-checkpoint-tmp'
NUM_STEPS = 8

CONFIG = '''"""Fault-suite config: tests/train_util.tiny_config with async checkpoints."""
from train_util import tiny_config


def get_config():
  c = tiny_config(num_steps={num_steps})
  c.train.async_checkpoints = True
  c.train.checkpoint_every_steps = 2
  c.train.keep_checkpoints = 2
  c.train.keep_best = False
{extra}  return c
'''


def write_config(path: pathlib.Path, num_steps: int = NUM_STEPS,
                 **fields: Any) -> pathlib.Path:
  """Writes a config file; ``fields`` are ``section__name=value`` overrides."""
  extra = ''.join(f'  c.{k.replace("__", ".")} = {v!r}\n' for k, v in fields.items())
  path.write_text(CONFIG.format(num_steps=num_steps, extra=extra))
  return path


def environment(fault: str | None = None, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != 'HRSEG_FAULT'}
  env.update(PYTHONPATH=os.pathsep.join(map(str, (REPO, TESTS))),
             JAX_PLATFORMS='cpu',
             JAX_DISABLE_MOST_OPTIMIZATIONS='1', **extra)
  if fault:
    env['HRSEG_FAULT'] = fault
  return env


def main_command(config: os.PathLike, workdir: os.PathLike, *flags: str) -> list[str]:
  return [sys.executable, '-m', 'hrseg_jax.main', '--config', os.fspath(config),
          *flags, '--workdir', os.fspath(workdir)]


@dataclasses.dataclass
class Result:
  """A finished command: exit status and output."""
  returncode: int
  stdout: str
  stderr: str

  @property
  def error_lines(self) -> list[str]:
    return [l for l in self.stderr.splitlines() if l.startswith('error: ')]

  def tail(self, n: int = 3000) -> str:
    return f'rc={self.returncode}\n{self.stdout[-n:]}\n{self.stderr[-n:]}'


def start(config, workdir, *flags: str, fault: str | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen:
  """Starts ``python -m hrseg_jax.main`` (train mode) in the background."""
  return subprocess.Popen(main_command(config, workdir, *flags), cwd=REPO,
                          env=env or environment(fault), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 900) -> Result:
  out, err = proc.communicate(timeout=timeout)
  return Result(proc.returncode, out, err)


def run(config, workdir, *flags: str, fault: str | None = None,
        env: dict[str, str] | None = None) -> Result:
  return finish(start(config, workdir, *flags, fault=fault, env=env))


def assert_one_line_error(result: Result, *names: str, traceback: bool = False) -> str:
  """The run failed with exit 2 and a single ``error:`` line naming ``names``.

  Other stderr lines are logs (input threads still running may log after
  the error line); ``traceback=False``: none of them is a Python traceback.
  """
  assert result.returncode == 2, result.tail()
  assert len(result.error_lines) == 1, result.tail()
  line = result.error_lines[0]
  for name in names:
    assert os.fspath(name) in line, (name, line)
  assert traceback or 'Traceback' not in result.stderr, result.tail()
  return line


# ---- Loss logs ---------------------------------------------------------------

def read_losses(workdir: pathlib.Path) -> list[tuple[int, float]]:
  path = workdir / 'losses.txt'
  if not path.exists():
    return []
  return [(int(a), float(b)) for a, b in
          (l.split() for l in path.read_text().splitlines() if l.strip())]


def start_step(stdout: str) -> int | None:
  """The step a run started from, as its start-up block's ``start`` line
  says (0 from scratch; None: no such line, the run did not start)."""
  m = re.search(r'^start +(?:resumed from step (\d+))?', stdout, re.M)
  return None if m is None else int(m[1] or 0)


def appended_losses(old, new, stdout: str) -> list[tuple[int, float]]:
  """The loss lines a run added: those after the lines it kept of ``old``
  (the steps up to the one it started from)."""
  start = start_step(stdout)
  if start is None:
    return new[len(old):]
  kept = [(s, loss) for s, loss in old if s <= start]
  assert [s for s, _ in new[:len(kept)]] == [s for s, _ in kept], (kept, new)
  return new[len(kept):]


# ---- Checkpoint directories ---------------------------------------------------

def step_dirs(ckpt_dir: pathlib.Path) -> list[int]:
  if not ckpt_dir.is_dir():
    return []
  return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def partial_entries(ckpt_dir: pathlib.Path) -> list[str]:
  """Orbax temporary steps and not yet purged deleted steps."""
  if not ckpt_dir.is_dir():
    return []
  tmp = [p.name for p in ckpt_dir.iterdir() if TMP_SUFFIX in p.name]
  trash = ckpt_dir / '.deleted'
  deleted = [f'.deleted/{p.name}' for p in trash.iterdir()] if trash.is_dir() else []
  return sorted(tmp + deleted)


def restore_error(step_dir: pathlib.Path) -> str | None:
  """Restores every item of a training checkpoint step; the error, if any.

  Arrays are restored onto this process's first device whatever topology
  saved them; parameters and statistics must be finite.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  try:
    with ocp.StandardCheckpointer() as ckptr:
      for item in ('variables', 'train'):
        meta = ckptr.metadata(step_dir / item)
        tree = getattr(meta, 'item_metadata', meta)
        tree = getattr(tree, 'tree', tree)
        target = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
        leaves = jax.tree_util.tree_leaves(ckptr.restore(step_dir / item, target))
        if not all(np.isfinite(np.asarray(x)).all() for x in leaves
                   if np.issubdtype(np.asarray(x).dtype, np.floating)):
          return f'{step_dir / item}: non-finite values'
    json.loads((step_dir / 'model' / 'metadata').read_text())['model']
    order = json.loads((step_dir / 'data_order' / 'metadata').read_text())
    if order['step'] != int(step_dir.name):
      return f'{step_dir / "data_order"}: step {order["step"]}'
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {str(e)[:300]}'
  return None


def broken_steps(ckpt_dir: pathlib.Path) -> dict[int, str]:
  """Step directories that do not restore completely: {step: error}."""
  return {s: e for s in step_dirs(ckpt_dir)
          if (e := restore_error(ckpt_dir / str(s))) is not None}


def tree_digest(root: pathlib.Path) -> dict[str, str]:
  """{relative path: sha1} of every file under ``root`` (to prove it unchanged)."""
  if not root.exists():
    return {}
  return {os.fspath(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


# ---- A run resumed again and again in one workdir -------------------------------

@dataclasses.dataclass
class Attempt:
  """One command of a :class:`Chain` and what it found and left."""
  fault: str | None
  result: Result
  complete_before: list[int]
  complete_after: list[int]
  partial_after: list[str]
  losses: list[tuple[int, float]]   # the lines this run appended

  @property
  def resumed_from(self) -> int | None:
    return self.losses[0][0] - 1 if self.losses else None


class Chain:
  """Runs the same training command repeatedly in one workdir, with faults."""

  def __init__(self, config: pathlib.Path, workdir: pathlib.Path):
    self.config, self.workdir = config, workdir
    self.ckpt_dir = workdir / 'checkpoints'
    self.attempts: list[Attempt] = []

  def run(self, *flags: str, fault: str | None = None) -> Attempt:
    before = step_dirs(self.ckpt_dir)
    old = read_losses(self.workdir)
    result = run(self.config, self.workdir, *flags, fault=fault)
    attempt = Attempt(fault, result, before, step_dirs(self.ckpt_dir),
                      partial_entries(self.ckpt_dir),
                      appended_losses(old, read_losses(self.workdir), result.stdout))
    self.attempts.append(attempt)
    return attempt

  def steps_lost(self, reference: dict[int, float],
                 poisoned: Iterable[tuple[int, int]] = ()) -> list[int]:
    """Steps lost over the chain, compared with an uninterrupted run.

    A step is lost if it is never trained, if any run logged a loss for it
    different from ``reference`` (except ``poisoned`` (attempt, step) pairs,
    where a fault made the loss non-finite on purpose), or if a run resumed
    from an earlier step than the last complete checkpoint it found.
    """
    skip = set(poisoned)
    lost = set(reference) - {s for a in self.attempts for s, _ in a.losses}
    for i, a in enumerate(self.attempts):
      lost |= {s for s, loss in a.losses
               if (i, s) not in skip and loss != reference.get(s)}
      found = a.complete_before[-1] if a.complete_before else 0
      if a.resumed_from is not None and a.resumed_from != found:
        lo, hi = sorted((a.resumed_from, found))
        lost |= set(range(lo + 1, hi + 1))
    return sorted(lost)


# ---- A run shared by the tests of a session (and xdist workers) -----------------

class SharedRun:
  """A command started once per test session, whichever worker asks first.

  Its exit status lands in ``<dir>/rc`` when it ends, so workers that did not
  start it can wait for it too.
  """

  def __init__(self, directory: pathlib.Path, argv: Sequence[str],
               env: dict[str, str]):
    self.dir, self.argv, self.env = directory, list(argv), env

  def start(self) -> 'SharedRun':
    self.dir.mkdir(parents=True, exist_ok=True)
    try:
      os.close(os.open(self.dir / 'started', os.O_CREAT | os.O_EXCL))
    except FileExistsError:
      return self
    script = ('"$@" >"$D/stdout" 2>"$D/stderr"; echo $? >"$D/rc.tmp"; '
              'mv "$D/rc.tmp" "$D/rc"')
    subprocess.Popen(['sh', '-c', script, 'sh', *self.argv], cwd=REPO,
                     env=dict(self.env, D=os.fspath(self.dir)),
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    return self

  def result(self, timeout: float = 900) -> Result:
    deadline = time.monotonic() + timeout
    rc = self.dir / 'rc'
    while not rc.exists():
      if time.monotonic() > deadline:
        raise TimeoutError(f'{self.argv} did not finish within {timeout} s')
      time.sleep(0.25)
    return Result(int(rc.read_text()), (self.dir / 'stdout').read_text(),
                  (self.dir / 'stderr').read_text())


# ---- The ledger behind the summary line ----------------------------------------

class Fault:
  """One injected fault; ``survive()`` once every check of it has passed."""

  def __init__(self, record: dict):
    self.record = record

  def measure(self, *, steps_lost: int | None = None,
              files_corrupted: int | None = None) -> None:
    if steps_lost is not None:
      self.record['steps_lost'] = int(steps_lost)
    if files_corrupted is not None:
      self.record['files_corrupted'] = int(files_corrupted)

  def survive(self) -> None:
    self.record['survived'] = True


class Ledger:
  """The faults a test injects; reported through its user properties."""

  def __init__(self):
    self.records: list[dict] = []

  def inject(self, name: str) -> Fault:
    record = {'fault': name, 'survived': False, 'steps_lost': 0, 'files_corrupted': 0}
    self.records.append(record)
    return Fault(record)


def summary_line(reports: Iterable[Any]) -> str | None:
  """``faults injected: N, survived: N, steps lost: 0, files corrupted: 0``.

  Computed from the ledgers attached to the test reports (None if none).
  """
  records = [r for rep in reports if getattr(rep, 'when', None) == 'call'
             for key, value in getattr(rep, 'user_properties', ()) if key == PROPERTY
             for r in value]
  if not records:
    return None
  return (f'faults injected: {len(records)}, '
          f'survived: {sum(bool(r["survived"]) for r in records)}, '
          f'steps lost: {sum(r["steps_lost"] for r in records)}, '
          f'files corrupted: {sum(r["files_corrupted"] for r in records)}')
