"""The training loop (big_vision style: one linear function in sections).

Reliability (tested by ``tests/test_faults.py``):

* SIGTERM or Ctrl-C (and, on multi-host runs, JAX's preemption sync point)
  stops the run within two steps with a checkpoint of the step it stops at (the
  same step on every process, see :class:`StopSignal`); the process exits
  normally and the same command resumes with the exact next batch, on any
  number of processes.  A second Ctrl-C exits at once.
* Between log, checkpoint and evaluation steps nothing fetches from the
  device (no per-step collective or metric fetch): the host runs at most
  ``QUEUED_STEPS`` steps ahead (after dispatching step N it waits for step
  N-2, so one step stays queued behind the running one while the host
  prepares the next; a stop signal then takes effect within two steps);
  ``train.transfer_guard='disallow'`` turns any other wait for the device in
  those steps into an error (:mod:`hrseg_jax.train.host_sync`).
* A crash loses only the steps after the last complete checkpoint, which the
  restarted run trains again with the same losses (see
  :mod:`hrseg_jax.checkpoints.training` for why no checkpoint is ever left
  half-written or half-deleted).
* A non-finite loss or gradient stops the run (``train.nonfinite='stop'``,
  :class:`NonFiniteLoss` names the step and the last good checkpoint; no
  non-finite state is ever checkpointed) or skips and counts the step
  (``'skip'``, the ``train/skipped_steps`` scalar).
* On any error, a checkpoint save in flight is allowed to commit first.

Every trained step's loss is appended to ``<workdir>/losses.txt`` (see
:class:`~hrseg_jax.train.hooks.LossLog`).  The loop calls hooks for progress,
evaluation, checkpoints and the fault injection of the tests
(``$HRSEG_FAULT``, :mod:`hrseg_jax.train.faults`): see :mod:`hrseg_jax.train.hooks`.
"""
from __future__ import annotations

import collections
import functools
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from hrseg_jax import console as console_lib
from hrseg_jax import paths
from hrseg_jax.models import layers, registry
from hrseg_jax.convert import mapping
from hrseg_jax.data import config as data_config
from hrseg_jax.data import pipeline
from hrseg_jax.data.errors import DataError
from hrseg_jax.eval import config as eval_config
from hrseg_jax.eval import evaluator as evaluator_lib
from hrseg_jax import files
from hrseg_jax.train import faults as faults_lib
from hrseg_jax.train import host_sync
from hrseg_jax.train import optim, pretrained, progress as progress_lib, sharding, step as step_lib
from hrseg_jax.train import tb_writer
from hrseg_jax.checkpoints.training import Checkpointer, abstract_with_shardings
from hrseg_jax.train.hooks import CheckpointHook, LossLog, NonFiniteLoss, ProgressHook
from hrseg_jax.train.state import TrainState

__all__ = ['NonFiniteLoss', 'StopSignal', 'train_and_evaluate']

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
NONFINITE = ('stop', 'skip')
TRANSFER_GUARDS = ('allow', 'disallow')
LOSSES_FILE = 'losses.txt'
CONFIG_FILE = 'config.json'
LOG_FILE = 'log.txt'
TRAINING_PROTOCOL = 'validation'   # evaluator of eval.protocol='' (eval/evaluator.py)
# Steps the host dispatches ahead of the one it waits for: one queued behind
# the running step while the host reads the next batch.
QUEUED_STEPS = 2


class StopSignal:
  """SIGTERM or Ctrl-C -> checkpoint within two steps, then stop.

  A second Ctrl-C exits at once (the default SIGINT action), without a
  checkpoint.

  One process: the signal handler sets a flag that the loop reads after
  every step; since the host runs at most ``QUEUED_STEPS`` steps ahead of
  the device (:func:`host_sync.wait_for_earlier_step`), the run stops after
  the step the device is running and the ones queued behind it.  Several processes
  must agree on the step to save without a collective every step (it would
  make the host wait for the device and stall asynchronous dispatch), so:

  * with JAX's preemption service (``jax.distributed``, on by default),
    SIGTERM is left to JAX's own handler: the notice reaches every process
    in the background and :func:`multihost_utils.reached_preemption_sync_point`
    (a host-side check, called every step) turns true on all processes at
    the same step.  Ctrl-C is passed on to it as a SIGTERM to this process;
  * in any case the flag is also exchanged (``process_allgather``) at the
    steps that already wait for the device (``sync=True``: log, checkpoint
    and evaluation steps), so a flag is seen by all processes at the same
    step even without the preemption service.
  """

  def __init__(self):
    self.requested = False
    self.reason = None   # what asked to stop, for the run's last line
    # The run's console once it exists: the notices go to its log file too.
    self.console: console_lib.Console | None = None
    self._old = {}
    self._service = False
    self._first_check = True   # should_stop's call before the first step

  def __enter__(self):
    import signal  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    self._service = jax.process_count() > 1 and _sync_ok()
    if threading.current_thread() is threading.main_thread():
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
      if not self._service:
        self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._terminate)
    return self

  def _notice(self, text: str) -> None:
    # os.write, not print or logging: a handler may interrupt a print.
    if self.console is not None:
      self.console.notice(text)
    elif jax.process_index() == 0:
      os.write(sys.stderr.fileno(), (text + '\n').encode())

  def _sync_point_notice(self, step: int) -> None:
    """The notice of a SIGTERM that JAX's handler took (no line when it
    arrived): once every process has reached the preemption sync point.
    Process 0 writes it to the console and log.txt, the others to their
    stderr after ``process N:``, like their last line."""
    what = (f'stopping before step {step + 1}' if self._first_check else
            f'saving a checkpoint of step {step}, then stopping')
    text = f'{self.reason} reached every process: {what}'
    if jax.process_index() == 0:
      self._notice(text)
    else:
      os.write(sys.stderr.fileno(), f'process {jax.process_index()}: {text}\n'.encode())

  def _terminate(self, signum, frame):  # pylint: disable=unused-argument
    import signal  # pylint: disable=g-import-not-at-top
    if self.requested:   # already stopping (Ctrl-C, then launch_local's SIGTERM)
      return
    self.reason = signal.Signals(signum).name
    self._notice(f'{self.reason}: saving a checkpoint after the steps already '
                 'queued (two at most), then stopping')
    self.requested = True

  def _interrupt(self, signum, frame):  # pylint: disable=unused-argument
    import signal  # pylint: disable=g-import-not-at-top
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # the next Ctrl-C exits at once
    self.reason = 'Ctrl-C'
    self._notice('Ctrl-C: saving a checkpoint after the steps already queued (two '
                 'at most), then stopping (press Ctrl-C again to exit at once, '
                 'without saving)')
    self.requested = True
    if self._service:
      os.kill(os.getpid(), signal.SIGTERM)   # JAX's preemption notice

  def __exit__(self, *exc):
    import signal  # pylint: disable=g-import-not-at-top
    for sig, old in self._old.items():
      # None: the previous handler was not installed from Python.
      signal.signal(sig, signal.SIG_DFL if old is None else old)

  def should_stop(self, step: int, sync: bool = True) -> bool:
    """Whether to save and stop after ``step`` (the same on every process).

    Args:
      step: the global step just dispatched; every process calls this once
        per step, with the same ``sync``.
      sync: whether this step already waits for the device (the flag is then
        exchanged between processes); without it nothing here touches the
        device.
    """
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    preempted = (multihost_utils.reached_preemption_sync_point(step)
                 if self._service else False)
    if preempted and self.reason is None:
      self.reason = 'a preemption notice (SIGTERM)'
      self._sync_point_notice(step)
    self._first_check = False
    if sync:
      flags = multihost_utils.process_allgather(np.int32(self.requested))
      if np.any(flags) and self.reason is None:
        self.reason = "another process's stop signal"
      preempted = preempted or bool(np.any(flags))
    return preempted


def _sync_ok() -> bool:
  """Whether JAX's preemption service runs in this process."""
  try:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.reached_preemption_sync_point  # noqa: B018  pylint: disable=pointless-statement
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.preemption_sync_manager is not None
  except Exception:  # pylint: disable=broad-except
    return False


def check_stop_at_step(train_cfg, start: int, num_steps: int) -> None:
  """ValueError for a ``train.stop_at_step`` this run never reaches: at or
  before the step it starts (or resumes) at, it would stop before training
  anything, or be passed by and ignored."""
  stop_at = int(train_cfg.get('stop_at_step', -1))
  if stop_at < 0 or stop_at > start or start >= num_steps:
    return
  where = 'resumes from its checkpoint' if start else 'starts'
  raise ValueError(
      f'train.stop_at_step={stop_at} is not after step {start}, where this run {where} '
      f'(train.num_steps {num_steps}), so it would never stop there: give a step in '
      f'{start + 1}..{num_steps - 1}, or -1 (the default) to train to the end')


def check_train_config(train_cfg) -> None:
  """One-line errors for ``config.train`` values the loop cannot run with."""
  compute_dtype(train_cfg.dtype)
  if train_cfg.nonfinite not in NONFINITE:
    raise ValueError(f'train.nonfinite={train_cfg.nonfinite!r}: expected one of {NONFINITE}')
  guard = train_cfg.get('transfer_guard', 'allow')
  if guard not in TRANSFER_GUARDS:
    raise ValueError(f'train.transfer_guard={guard!r}: expected one of {TRANSFER_GUARDS}')
  for name in ('batch_size', 'log_every_steps', 'checkpoint_every_steps',
               'keep_checkpoints'):
    value = train_cfg[name]
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'train.{name}={value!r}: expected a positive integer')
  if not isinstance(train_cfg.get('grad_accum_steps', 1), int) or \
      train_cfg.get('grad_accum_steps', 1) < 1:
    raise ValueError(f'train.grad_accum_steps={train_cfg.grad_accum_steps!r}: expected a '
                     'positive integer')
  warmup = train_cfg.get('warmup_steps', 0)
  if not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f'train.warmup_steps={warmup!r}: expected an integer >= 0')
  # The original's SGD refuses negative ones; momentum 1 or more never forgets.
  for name, high in (('base_lr', math.inf), ('weight_decay', math.inf),
                     ('poly_power', math.inf), ('momentum', 1.0)):
    value = train_cfg.get(name, 0.0)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not 0 <= value < high):
      raise ValueError(f'train.{name}={value!r}: expected a number >= 0'
                       + (f' and < {high:g}' if high < math.inf else ''))


def loss_chunks(config) -> int:
  """``loss.num_chunks`` (1 when unset)."""
  return int((config.get('loss') or {}).get('num_chunks', 1) or 1)


def check_loss_chunks(config) -> None:
  """``loss.num_chunks`` must divide the batch (the loss is normalised per
  chunk, like the original's per-GPU losses)."""
  chunks = loss_chunks(config)
  batch = config.train.batch_size
  if chunks > 1 and batch % chunks:
    raise ValueError(
        f'loss.num_chunks={chunks} does not divide train.batch_size={batch} (the loss '
        'is averaged over that many equal parts of the batch, like the original\'s '
        'per-GPU losses): pass --config.loss.num_chunks=1 or a divisor of the batch')


def check_batch_sizes(config) -> None:
  """The global training batch must split evenly over the devices (the
  validation batch is rounded to whole images per device by the evaluator)."""
  sharding.check_splits_over_devices(int(config.train.batch_size), jax.device_count())


def check_num_train(num_train: int, global_batch: int, num_chunks: int = 1) -> None:
  """A training set must hold at least one global batch."""
  if num_train >= global_batch:
    return
  # The largest batch that fits and splits evenly over the devices and the
  # loss's chunks (check_loss_chunks).
  n = math.lcm(jax.device_count(), num_chunks)
  fit = num_train // n * n
  raise ValueError(
      f'{num_train} training example{" is" if num_train == 1 else "s are"} fewer than '
      f'one global batch (train.batch_size={global_batch}): '
      + (f'pass --config.train.batch_size={fit} or ' if fit else '')
      + 'use more training data')


def check_num_classes(config) -> None:
  """The model predicts the classes the labels are mapped to."""
  model_k, data_k = config.model.get('num_classes'), config.data.get('num_classes')
  if model_k is None or data_k is None or int(model_k) == int(data_k):
    return
  raise ValueError(f'model.num_classes={model_k} but data.num_classes={data_k} '
                   f'({config.data.name}, label map {config.data.get("label_map")!r}): '
                   'the model must predict the classes the labels are mapped to; set '
                   'both, or use the config of the dataset you mean')


def check_val_data(config) -> None:
  """A run that validates (``eval.every_steps`` > 0) must be able to read its
  validation split: a missing or empty list fails at start-up, not at the
  first evaluation hours later."""
  every = int(config.eval.get('every_steps', -1))
  if every <= 0:
    return
  hint = (f'; validation every {every} steps (eval.every_steps) reads it, '
          '--config.eval.every_steps=-1 trains without')
  try:
    pipeline.labelled_source(config.data, eval_config.split_of(config.eval))
  except DataError as e:
    raise DataError(e.path, e.reason + hint) from None
  except (OSError, ValueError) as e:
    raise ValueError(f'{e}{hint}') from None


def make_workdir(workdir) -> epath.Path:
  """Creates ``workdir`` and checks that files can be written in it."""
  workdir = epath.Path(workdir)
  probe = workdir / f'.write-test-{os.getpid()}'
  # A file where the folder (or a folder above it) would be: say so, not
  # the system's "File exists" / "Not a directory".
  text = paths.shown(workdir)
  blocker = None if paths.is_url(text) else (
      text if os.path.isfile(workdir) else paths.file_above(workdir))
  if blocker:
    raise NotADirectoryError(f'cannot write to --workdir {text}: {blocker} is a '
                             'file, not a folder; choose another --workdir')
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise OSError(f'cannot write to --workdir {text}: {e.strerror or e}') from e
  return workdir


def topology() -> dict[str, int]:
  """The processes and devices this run trains on (saved with checkpoints)."""
  return {'processes': jax.process_count(), 'devices': jax.device_count()}


def topology_change(saved: dict | None, now: dict) -> str:
  """``'; saved on 2 processes, 8 devices, now 1 process, 4 devices'``, or ''.

  Empty when the topology is the same or the checkpoint predates the record.
  The batch order and the global batch do not depend on it.
  """
  if not saved or dict(saved) == dict(now):
    return ''
  def text(t):
    p, d = int(t['processes']), int(t['devices'])
    return (f'{console_lib.counted(p, "process", "processes")}, '
            f'{console_lib.counted(d, "device")}')
  return f'; saved on {text(saved)}, now {text(now)}'


def check_data_order(saved: dict | None, current: dict, where) -> str | None:
  """The warning for a resumed run that will not read the examples the saver
  would have (None when it will)."""
  if saved is None:
    return None
  diffs = pipeline.data_order_differences(saved, current)
  if not diffs:
    return None
  return (f'warning: checkpoint {where} was trained with another example order '
          f'({", ".join(diffs)}): from here on the run reads other examples than '
          'the uninterrupted run would have')


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f'train.dtype={name!r}: expected one of {sorted(DTYPES)}')
  return DTYPES[name]


def total_steps(config, num_train: int) -> tuple[int, int]:
  """(steps per epoch, total steps): epochs become steps from the data size."""
  steps_per_epoch = max(num_train // config.train.batch_size, 1)
  if config.train.num_steps > 0:
    return steps_per_epoch, int(config.train.num_steps)
  return steps_per_epoch, int(config.train.num_epochs * steps_per_epoch)


def init_state(model, tx, rng, image_shape, mesh) -> tuple[TrainState, Any]:
  """Initialises the state directly with its shardings (no host copy)."""
  init_rng, state_rng = jax.random.split(rng)

  def make():
    variables = model.init({'params': init_rng, 'dropout': init_rng},
                           jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return TrainState.create(variables, tx, state_rng)

  abstract = jax.eval_shape(make)
  shardings = sharding.state_shardings(abstract, mesh)
  return jax.jit(make, out_shardings=shardings)(), shardings


def init_weight_problems(loaded: tuple[dict, dict], variables) -> list[str]:
  """What keeps ``loaded`` (:func:`pretrained.load_init_variables`) from
  initialising a model with ``variables`` (arrays or their shapes): its
  missing leaves and those of another shape, freshly converted ones apart."""
  src = traverse_util.flatten_dict(loaded[0])
  fresh = set(loaded[1].get('initialised', []))
  problems = []
  for k, v in traverse_util.flatten_dict(variables).items():
    if mapping.flax_path_to_torch(k) in fresh:
      continue
    if k not in src:
      problems.append(f'missing {"/".join(k)}')
    elif tuple(src[k].shape) != tuple(v.shape):
      problems.append(f'{"/".join(k)}: {tuple(src[k].shape)} vs {tuple(v.shape)}')
  return problems


def check_init_weights(loaded: tuple[dict, dict], path, model_cfg, variables) -> None:
  """ValueError (one line naming ``train.init_from``) unless ``loaded`` fits."""
  problems = init_weight_problems(loaded, variables)
  if problems:
    raise ValueError(f'train.init_from={paths.shown(path)}: does not fit model '
                     f'{model_cfg.get("variant", "")}: '
                     + '; '.join(problems[:8]) + (' …' if len(problems) > 8 else ''))


def load_init_weights(state: TrainState, path, model_cfg,
                      loaded: tuple[dict, dict] | None = None) -> TrainState:
  """Initialises from a ``.pth`` (converted in memory) or a converted
  checkpoint (full model or ImageNet backbone; :mod:`.pretrained`);
  ``loaded``: what :func:`pretrained.load_init_variables` returned for it,
  if read already.

  Leaves the conversion freshly initialised (a backbone file's head) keep
  this run's initialisation; every other leaf must exist with the same shape.
  """
  if loaded is None:
    loaded = pretrained.load_init_variables(path, model_cfg)
  check_init_weights(loaded, path, model_cfg, state.variables)
  fresh = set(loaded[1].get('initialised', []))
  src = traverse_util.flatten_dict(loaded[0])
  out = {}
  for k, v in traverse_util.flatten_dict(state.variables).items():
    out[k] = (v if mapping.flax_path_to_torch(k) in fresh
              else jax.device_put(np.asarray(src[k], v.dtype), v.sharding))
  v = traverse_util.unflatten_dict(out)
  return state.replace(params=v['params'],
                       model_state={k: x for k, x in v.items() if k != 'params'})


def read_init_weights(config, workdir) -> tuple[dict, dict] | None:
  """``train.init_from``'s weights, checked against the model before the
  workdir is made (a file that does not fit leaves nothing behind); None
  without ``init_from`` or when ``workdir`` has checkpoints to resume."""
  path = config.train.init_from
  if not path or pretrained.has_checkpoints(workdir):
    return None
  model_cfg = registry.resolve(config.model)
  lines = []   # printed now (no workdir yet); log.txt gets them once it exists

  def log(line):
    if jax.process_index() == 0:
      print(line, flush=True)
      lines.append(line)
  variables, meta = pretrained.load_init_variables(
      path, model_cfg, inplace_abn=config.train.get('init_from_inplace_abn'), log=log)
  loaded = (variables, dict(meta, console_lines=lines))
  check_init_weights(loaded, path, model_cfg, registry.abstract_variables(
      model_cfg, tuple(config.data.crop_size)))
  return loaded


def _read_json(path: epath.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def schedule_length(config: dict | None) -> dict | None:
  """The fields that set the learning-rate schedule's length."""
  train = (config or {}).get('train')
  if not isinstance(train, dict):
    return None
  return {k: train.get(k) for k in ('num_steps', 'num_epochs')}


def write_run_config(config, workdir: epath.Path) -> None:
  """``<workdir>/config.json``: this run's resolved config (atomic)."""
  text = config.to_json_best_effort(indent=2) if hasattr(config, 'to_json_best_effort') \
      else json.dumps(dict(config), indent=2, default=str)
  files.write_bytes_atomic(os.fspath(workdir / CONFIG_FILE), (text + '\n').encode())


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from ``workdir`` if it has checkpoints) and evaluates.

  Returns:
    ``{'steps', 'start_step', 'final_step', 'losses' (this run's, one per
    step), 'losses_from_step', 'preempted', 'seconds'}`` and ``'eval'`` if it
    evaluated.

  Raises:
    NonFiniteLoss: a non-finite loss or gradient with train.nonfinite='stop'.
    ValueError, OSError: bad configuration, data, checkpoint or workdir; a
      checkpoint that could not be saved (the message is one line naming the
      field, file or step).
  """
  check_train_config(config.train)
  check_num_classes(config)
  data_config.check_sizes(config.data)
  check_loss_chunks(config)
  check_batch_sizes(config)
  registry.resolve(config.model)   # a bad model config, before the workdir is made
  sharding.make_mesh(config.mesh.fsdp)   # a mesh.fsdp the devices do not divide
  layers.depthwise_kernel_grad()   # a bad $HRSEG_DEPTHWISE_KERNEL_GRAD
  evaluator_lib.protocol_of(config, TRAINING_PROTOCOL)   # a bad eval.protocol, too
  pretrained.check_init_from(config, workdir)  # the user's path in the message
  config = paths.resolve_config(config)
  # Missing, unreadable or too little data fails here, before the workdir is made.
  num_train = pipeline.num_train_examples(config.data)
  check_num_train(num_train, config.train.batch_size, loss_chunks(config))
  check_val_data(config)
  init = read_init_weights(config, workdir)   # a file that does not fit, too
  faults = faults_lib.Faults.from_env()
  with StopSignal() as stop:
    return _train(config, make_workdir(paths.resolve(os.fspath(workdir))), stop, faults,
                  num_train, init)


def _train(config, workdir: epath.Path, stop: StopSignal,
           faults: faults_lib.Faults, num_train: int, init=None) -> dict:
  """:func:`train_and_evaluate` once the workdir and the SIGTERM handler exist
  (``init``: :func:`read_init_weights`)."""
  metric_writers = tb_writer.clu_metric_writers()  # TensorBoard without TensorFlow
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=True)
  loss_log = LossLog(workdir / LOSSES_FILE, enabled=is_main)
  console = console_lib.Console(workdir / LOG_FILE, enabled=is_main)
  for line in (init[1].get('console_lines', []) if init else []):
    console.log(line)   # printed before the workdir existed (train.init_from's BN scale)
  stop.console = console   # SIGTERM's and Ctrl-C's notices reach log.txt too
  try:
    return _train_logged(config, workdir, stop, faults, num_train, writer, loss_log,
                         console, init)
  except Exception as e:
    console.log(f'error: {console_lib.first_line(e)}')   # the console gets it from main
    raise
  finally:
    stop.console = None
    console.close()


def _train_logged(config, workdir: epath.Path, stop: StopSignal,
                  faults: faults_lib.Faults, num_train: int, writer, loss_log: LossLog,
                  console: console_lib.Console, init=None) -> dict:
  """:func:`_train` with its writers and console (``num_train``: the
  training set's size; ``init``: :func:`read_init_weights`)."""
  metric_writers = tb_writer.clu_metric_writers()
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  is_main = jax.process_index() == 0
  previous_length = schedule_length(_read_json(workdir / CONFIG_FILE))

  # ---- Mesh and input pipeline -------------------------------------------
  mesh = sharding.make_mesh(config.mesh.fsdp)
  local_batch = sharding.check_batch_size(config.train.batch_size, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  steps_per_epoch, num_steps = total_steps(config, num_train)

  # ---- Model, optimizer and state ----------------------------------------
  model_cfg = registry.resolve(config.model)
  dtype = compute_dtype(config.train.dtype)
  model = registry.build_model(model_cfg, dtype)
  tx, lr_fn = optim.make_optimizer(config.train, num_steps)
  crop = tuple(config.data.crop_size)

  def data_order(step, images_seen=None):
    return pipeline.data_order_state(step=step, seed=config.seed,
                                     global_batch=config.train.batch_size,
                                     num_examples=num_train, images_seen=images_seen)
  state, state_sh = init_state(model, tx, jax.random.PRNGKey(config.seed),
                               (*crop, 3), mesh)

  ckpt = Checkpointer(workdir / 'checkpoints',
                      max_to_keep=config.train.keep_checkpoints,
                      keep_best=config.train.keep_best,
                      async_save=config.train.async_checkpoints)
  if faults:
    faults.install(ckpt.directory)
  order_warning = saved_order = None
  try:
    if ckpt.latest_step() is not None:
      saved_meta = ckpt.check_model(model_cfg, resolve=registry.resolve)
      saved_order = ckpt.data_order()
      order_warning = check_data_order(
          saved_order, data_order(0),
          paths.shown(ckpt.directory / str(ckpt.latest_step())))
      state = ckpt.restore(abstract_with_shardings(state, state_sh))
      how = (f'resumed from step {int(state.step)} '
             f'({paths.shown(ckpt.directory / str(int(state.step)))})'
             + topology_change(saved_meta.get('topology'), topology()))
      length = schedule_length(config.to_dict())
      if previous_length and previous_length != length:
        how += ('; the run length changed (' + ', '.join(
            f'train.{k} {previous_length[k]} -> {length[k]}' for k in length
            if previous_length.get(k) != length[k])
            + f'): the learning-rate schedule now ends at step {num_steps}')
    elif config.train.init_from:
      state = load_init_weights(state, config.train.init_from, model_cfg, init)
      how = (f'initialised from {paths.shown(config.train.init_from)}'
             + (pretrained.start_note(init[1], config.train.init_from) if init else ''))
    else:
      how = 'from scratch (random initialisation)'
    check_stop_at_step(config.train, int(jax.device_get(state.step)), num_steps)
  except BaseException:
    ckpt.abandon()
    raise
  if is_main:   # once the workdir's checkpoint (if any) fits this config
    write_run_config(config, workdir)
  start = int(jax.device_get(state.step))
  # Counted across resumes with another global batch (the epoch on the step lines).
  seen_at_start = pipeline.images_seen(saved_order, start, config.train.batch_size)
  num_classes = model_cfg['num_classes']
  evaluator = evaluator_lib.from_config(
      config, default_protocol=TRAINING_PROTOCOL, model_cfg=model_cfg,
      to_global=lambda local: sharding.global_batch(local, batch_sh), dtype=dtype,
      out_dir=workdir / evaluator_lib.EVAL_DIR, writer=writer, log=console.print)
  console.print(progress_lib.startup_block(
      devices=jax.devices(), mesh_shape=dict(mesh.shape),
      process_count=jax.process_count(), global_batch=config.train.batch_size,
      local_batch=local_batch, num_steps=num_steps, steps_per_epoch=steps_per_epoch,
      num_train=num_train,
      num_val=evaluator.num_examples() if evaluator.every_steps > 0 else None,
      model=(registry.model_name(model_cfg)
             + f', {num_classes} classes ({config.data.name}), {config.train.dtype}'),
      num_params=progress_lib.count_parameters(state.params),
      workdir=paths.shown(workdir), checkpoints=paths.shown(ckpt.directory),
      start=(f'{how}; compiling the training step (the first step line includes it)'
             if start < num_steps else f'{how}; nothing left to train'),
      data_from=progress_lib.data_origin(config.data, evaluator.every_steps > 0)))
  if order_warning:
    console.print(order_warning)
  # The example order is a function of the global step: any process count
  # continues with the batches an uninterrupted run reads next.
  train_iter = pipeline.make_train_iterator(
      config.data, batch_size=local_batch, seed=config.seed,
      shard_index=jax.process_index(), shard_count=jax.process_count(),
      start_step=start)

  align = bool(model_cfg.get('align_corners', False))
  train_fn = jax.jit(
      functools.partial(step_lib.train_step, model=model, tx=tx,
                        loss_cfg=config.loss, align_corners=align,
                        skip_nonfinite=config.train.nonfinite == 'skip'),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None),
      donate_argnums=(0,))

  # ---- Hooks: progress, checkpoints, fault injection (evaluator above) -----
  report = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                           writer=writer, every_steps=config.train.log_every_steps)
  progress = ProgressHook(
      log_every_steps=config.train.log_every_steps, nonfinite=config.train.nonfinite,
      loss_log=loss_log, writer=writer, console=console, lr_fn=lr_fn, checkpointer=ckpt,
      progress=progress_lib.Progress(num_steps, steps_per_epoch,
                                     config.train.batch_size, start,
                                     eval_every=evaluator.every_steps,
                                     images_at_start=seen_at_start))
  saver = CheckpointHook(
      ckpt, every_steps=config.train.checkpoint_every_steps, model_cfg=model_cfg,
      data_order=lambda step: data_order(step, progress.progress.images_seen(step)),
      meta={'config': config.to_dict() if hasattr(config, 'to_dict') else {},
            'topology': topology()})

  # ---- Train loop ----------------------------------------------------------
  result = {'steps': num_steps, 'start_step': start, 'preempted': False}
  t0 = time.time()
  stop_at = int(config.train.get('stop_at_step', -1))
  guard = str(config.train.get('transfer_guard', 'allow'))

  steps = range(start + 1, num_steps + 1)
  in_flight = collections.deque()   # metrics of the steps not waited for yet
  try:
    with metric_writers.ensure_flushes(writer):
      if start < num_steps and stop.should_stop(start):
        result['preempted'] = True
        steps = range(0)
      for step in steps:
        last = step == num_steps
        log_now = progress.due(step, last)
        evaluate_now = evaluator.due(step, last)
        # Only these steps wait for the device; the others only dispatch work
        # (train.transfer_guard='disallow' checks this: host_sync).
        sync = log_now or evaluate_now or saver.periodic(step)
        with host_sync.no_host_waits(f'step {step}',
                                     enabled=guard == 'disallow' and not sync):
          t_data = time.perf_counter()
          with report.timed('data', wait_jax_async_dispatch=False):
            local = next(train_iter)
          progress.add_data_time(time.perf_counter() - t_data)
          batch = sharding.global_batch(faults.on_batch(step, local), batch_sh)
          t_call = time.perf_counter()
          state, metrics = train_fn(state, batch)
          if step == start + 1:   # traced and compiled before dispatching
            progress.add_compile_time(time.perf_counter() - t_call)
          progress.add(step, metrics)
          report(step)
          if log_now:
            progress.fetch()
          faults.on_step_end(step, metrics)
          # At most QUEUED_STEPS steps ahead: a stop signal then stops within
          # two steps, not after all the steps the host could dispatch ahead
          # up to the next log step (StopSignal).
          in_flight.append(metrics)
          if len(in_flight) > QUEUED_STEPS:
            host_sync.wait_for_earlier_step(in_flight.popleft())
          halt = step == stop_at or stop.should_stop(step, sync=sync)
        save_now = saver.periodic(step) or last or evaluate_now or halt
        if save_now and progress.has_pending:
          progress.fetch()   # a non-finite state is never checkpointed
        if log_now:
          progress.write(step, state)
        ev = None
        t_pause = time.perf_counter()
        if evaluate_now:
          with report.timed('eval'):
            ev = evaluator.run(state.variables)
          progress.add_eval_time(time.perf_counter() - t_pause, evaluator.compile_s)
          evaluator.report(ev, step)
          result['eval'] = {k: v for k, v in ev.items() if k != 'examples'}
          result['eval_step'] = step
        if save_now:
          saver.save(step, state, ev)
        progress.add_paused_time(time.perf_counter() - t_pause)
        if halt and not last:
          result['preempted'] = True
          break
  except BaseException:
    ckpt.abandon()
    raise
  finally:
    # Grain's worker processes (data.num_workers) end now, not at exit; a
    # failure to close them must not hide the run's own error.
    close = getattr(train_iter, 'close', None)
    if close is not None:
      try:
        close()
      except Exception as e:  # pylint: disable=broad-except
        console.print(f'warning: closing the input pipeline: {e}')
  ckpt.close()
  result['losses'] = progress.history
  result['seconds'] = time.time() - t0
  result['final_step'] = int(jax.device_get(state.step))
  result['losses_from_step'] = start + 1
  result['stop_reason'] = stop.reason
  if start >= num_steps:   # a finished run, rerun: what its evaluations gave
    try:
      result['best_eval'] = evaluator_lib.best_so_far(
          workdir / evaluator_lib.EVAL_DIR, start)
    except ValueError:   # never evaluated
      pass
  line = summary_line(result)
  if console.enabled:
    console.print(line)
  elif result['preempted']:   # each host's own log says where it stopped
    print(f'process {jax.process_index()}: {line}', flush=True)
  return result


def summary_line(result: dict) -> str:
  """The run's last console line: what this run trained (not the global
  step), whether it stopped early and why, the last evaluation."""
  start, end, total = result['start_step'], result['final_step'], result['steps']
  trained = end - start
  what = f'trained {console_lib.counted(trained, "step")}'
  if start and trained:
    span = f'step {end}' if trained == 1 else f'steps {start + 1}-{end}'
    what += f' ({span} of {total}, resumed from step {start})'
  elif not trained:
    what = f'trained no step (the run was at step {start} of {total})'
  what += f' in {result["seconds"]:.0f} s'
  ev = result.get('eval')
  if result['preempted'] and not trained:   # stopped before its first step
    why = result.get('stop_reason') or 'train.stop_at_step'
    kept = (f'the checkpoint of step {start} is kept; rerun the same command to resume'
            if start else 'nothing saved; rerun the same command to start')
    return f'stopped by {why} before step {start + 1} of {total}: no step trained, {kept}'
  if result['preempted']:
    why = result.get('stop_reason') or 'train.stop_at_step'
    rerun = ('the command without train.stop_at_step (or with a later one)'
             if why == 'train.stop_at_step' else 'the same command')
    line = (f'stopped by {why} at step {end} of {total}, checkpoint saved; rerun '
            f'{rerun} to resume. {what[0].upper()}{what[1:]}')
    if ev:
      line += (f'; mIoU {100 * ev["miou"]:.2f}% at step {result["eval_step"]}')
    return line
  if not ev and not trained and result.get('best_eval'):
    best_step, best = result['best_eval']
    return what + f'; its best mIoU was {100 * best:.2f}% at step {best_step}'
  if not ev:
    return what + '; no evaluation'
  return what + (f'; final mIoU {100 * ev["miou"]:.2f}% (pixel acc '
                 f'{100 * ev["pixel_acc"]:.2f}%)')
