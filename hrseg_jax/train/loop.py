"""The training loop (big_vision style: one linear function in sections).

Reliability (tested by ``tests/test_faults.py``):

* SIGTERM or Ctrl-C (and, on multi-host runs, JAX's preemption sync point)
  stops the run at the next step boundary with a checkpoint of that step (the
  same step on every process, see :class:`StopSignal`); the process exits
  normally and the same command resumes with the exact next batch, on any
  number of processes.  A second Ctrl-C exits at once.
* Between log, checkpoint and evaluation steps nothing waits for the device
  (no per-step collective or metric fetch), so the host keeps dispatching
  ahead; ``train.transfer_guard='disallow'`` turns any wait for the device
  in those steps into an error (:mod:`hrseg_jax.train.host_sync`).
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
:class:`LossLog`).  ``$HRSEG_FAULT`` injects faults for the tests
(:mod:`hrseg_jax.train.faults`).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from hrseg_jax import console as console_lib
from hrseg_jax import paths
from hrseg_jax.models import registry
from hrseg_jax.models.layers import resize_bilinear
from hrseg_jax.train import faults as faults_lib
from hrseg_jax.train import host_sync
from hrseg_jax.train import optim, pretrained, progress as progress_lib, sharding, step as step_lib
from hrseg_jax.train import tb_writer
from hrseg_jax.checkpoints.training import Checkpointer, abstract_with_shardings
from hrseg_jax.train.state import TrainState

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
NONFINITE = ('stop', 'skip')
TRANSFER_GUARDS = ('allow', 'disallow')
LOSSES_FILE = 'losses.txt'
CONFIG_FILE = 'config.json'
LOG_FILE = 'log.txt'
EVAL_DIR = 'eval'
NUM_OVERLAYS = 3


class NonFiniteLoss(RuntimeError):
  """Raised when the loss or gradient is not finite (train.nonfinite='stop')."""


class StopSignal:
  """SIGTERM or Ctrl-C -> checkpoint at the next step boundary, then stop.

  A second Ctrl-C exits at once (the default SIGINT action), without a
  checkpoint.

  One process: the signal handler sets a flag that the loop reads after
  every step.  Several processes must agree on the step to save without a
  collective every step (it would make the host wait for the device and
  stall asynchronous dispatch), so:

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
    self._old = {}
    self._service = False

  def __enter__(self):
    import signal  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    self._service = jax.process_count() > 1 and _sync_ok()
    if threading.current_thread() is threading.main_thread():
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
      if not self._service:
        self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._terminate)
    return self

  def _terminate(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('signal %d: saving a checkpoint at the next step boundary', signum)
    self.requested = True

  def _interrupt(self, signum, frame):  # pylint: disable=unused-argument
    import signal  # pylint: disable=g-import-not-at-top
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # the next Ctrl-C exits at once
    logging.warning('Ctrl-C: saving a checkpoint at the next step boundary, then '
                    'stopping (press Ctrl-C again to exit at once, without saving)')
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
    if sync:
      flags = multihost_utils.process_allgather(np.int32(self.requested))
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


class LossLog:
  """``<workdir>/losses.txt``: one ``step loss`` line per trained step.

  Process 0 appends the losses whenever the loop fetches metrics from the
  devices (every ``train.log_every_steps`` steps and before every
  checkpoint), in one ``write`` per fetch, so a crash never tears a line.
  The loss is ``repr(float)`` (exact; ``nan`` for a non-finite one).  A run
  that resumes after a crash appends the steps it trains again, so such a
  step has two lines, with the same loss since training is deterministic.
  """

  def __init__(self, path, enabled: bool = True):
    self.path = os.fspath(path)
    self.enabled = enabled

  def append(self, losses: list[tuple[int, float]]) -> None:
    if self.enabled and losses:
      with open(self.path, 'a') as f:
        f.write(''.join(f'{step} {loss!r}\n' for step, loss in losses))


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


def make_workdir(workdir) -> epath.Path:
  """Creates ``workdir`` and checks that files can be written in it."""
  workdir = epath.Path(workdir)
  probe = workdir / f'.write-test-{os.getpid()}'
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise OSError(f'cannot write to --workdir {workdir}: {e}') from e
  return workdir


def check_data_order(saved: dict | None, current: dict, where) -> None:
  """Warns when a resumed run will not read the examples the saver would have."""
  from hrseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if saved is None:
    return
  diffs = pipeline.data_order_differences(saved, current)
  if diffs:
    logging.warning('checkpoint %s was trained with another example order (%s): '
                    'from here on the run reads other examples than the '
                    'uninterrupted run would have', where, ', '.join(diffs))


def first_nonfinite(fetched: list[tuple[int, dict]]) -> tuple[int, dict] | None:
  """The first ``(step, metrics)`` whose loss or gradient is not finite."""
  return next(((s, m) for s, m in fetched if not bool(m['finite'])), None)


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
    params = variables['params']
    model_state = {k: v for k, v in variables.items() if k != 'params'}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state=model_state, opt_state=tx.init(params),
                      rng=state_rng, skipped=jnp.zeros((), jnp.int32))

  abstract = jax.eval_shape(make)
  shardings = sharding.state_shardings(abstract, mesh)
  return jax.jit(make, out_shardings=shardings)(), shardings


def load_init_weights(state: TrainState, path, model_cfg) -> TrainState:
  """Initialises from a ``.pth`` (converted in memory) or a converted
  checkpoint (full model or ImageNet backbone; :mod:`.pretrained`).

  Leaves the conversion freshly initialised (a backbone file's head) keep
  this run's initialisation; every other leaf must exist with the same shape.
  """
  from hrseg_jax.convert import mapping  # pylint: disable=g-import-not-at-top
  loaded, meta = pretrained.load_init_variables(path, model_cfg)
  fresh = set(meta.get('initialised', []))
  src = traverse_util.flatten_dict(loaded)
  ours = traverse_util.flatten_dict(state.variables)
  out, problems = {}, []
  for k, v in ours.items():
    if mapping.flax_path_to_torch(k) in fresh:
      out[k] = v
    elif k not in src:
      problems.append(f'missing {"/".join(k)}')
    elif tuple(src[k].shape) != tuple(v.shape):
      problems.append(f'{"/".join(k)}: {tuple(src[k].shape)} vs {tuple(v.shape)}')
    else:
      out[k] = jax.device_put(np.asarray(src[k], v.dtype), v.sharding)
  if problems:
    raise ValueError(f'train.init_from={path}: does not fit model {model_cfg.get("variant", "")}: '
                     + '; '.join(problems[:8]) + (' …' if len(problems) > 8 else ''))
  v = traverse_util.unflatten_dict(out)
  return state.replace(params=v['params'],
                       model_state={k: x for k, x in v.items() if k != 'params'})


def make_eval_step(model, num_classes: int, ignore_label: int, align_corners: bool):
  from hrseg_jax.eval.metrics import confusion_matrix  # pylint: disable=g-import-not-at-top

  def eval_step(variables, batch):
    logits = step_lib.eval_logits(variables, batch['image'], batch.get('rows'),
                                  model=model)
    logits = resize_bilinear(logits, batch['label'].shape[1:3], align_corners)
    pred = jnp.argmax(logits, axis=-1)
    return confusion_matrix(pred, batch['label'], num_classes, ignore_label,
                            mask=batch['mask']), pred.astype(jnp.uint8)
  return eval_step


def _first_local_examples(batch, pred, count: int) -> dict:
  """Up to ``count`` of this process's examples: image, label, prediction."""
  from hrseg_jax.data.transforms import MEAN, STD  # pylint: disable=g-import-not-at-top

  def local(x):
    return np.asarray(x.addressable_shards[0].data)
  keep = local(batch['mask'])[:count]
  rgb = local(batch['image'])[:count][keep] * (255 * STD) + 255 * MEAN
  return {'image': rgb,
          'label': local(batch['label'])[:count][keep],
          'pred': local(pred)[:count][keep]}


def run_eval(eval_fn, variables, data_cfg, batch_size, batch_sh, num_classes,
             num_examples: int = 0):
  """Metrics of the validation split (confusion matrix included).

  With ``num_examples`` > 0, ``result['examples']`` holds that many of the
  first batch's examples (``image``, ``label``, ``pred``) for pictures.
  """
  from hrseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from hrseg_jax.eval.metrics import iou_metrics  # pylint: disable=g-import-not-at-top
  cm = np.zeros((num_classes, num_classes), np.int64)
  it = pipeline.make_eval_iterator(data_cfg, batch_size=batch_size,
                                   shard_index=jax.process_index(),
                                   shard_count=jax.process_count())
  examples = None
  for local in it:
    batch = sharding.global_batch(local, batch_sh)
    batch_cm, pred = eval_fn(variables, batch)
    cm += np.asarray(jax.device_get(batch_cm), np.int64)
    if examples is None and num_examples > 0:
      examples = _first_local_examples(batch, pred, num_examples)
  result = iou_metrics(cm)
  result['confusion_matrix'] = cm
  if examples is not None:
    result['examples'] = examples
  return result


def _num_val(data_cfg) -> int | None:
  """Validation examples used by the evaluations (None: no labelled val split)."""
  from hrseg_jax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    n = len(sources.make_source(data_cfg, 'val'))
  except (OSError, ValueError):
    return None
  limit = int(data_cfg.get('val_num_samples', 0))
  return min(n, limit) if limit > 0 else n


def _model_name(model_cfg: dict) -> str:
  extras = ''.join(f'+{k.upper() if k == "ocr" else "HANet"}'
                   for k in ('ocr', 'hanet') if model_cfg.get(k))
  return f'{model_cfg.get("arch", "model")} {model_cfg.get("variant", "")}{extras}'


def write_run_config(config, workdir: epath.Path) -> None:
  """``<workdir>/config.json``: this run's resolved config (atomic)."""
  from hrseg_jax.eval import files  # pylint: disable=g-import-not-at-top
  text = config.to_json_best_effort(indent=2) if hasattr(config, 'to_json_best_effort') \
      else json.dumps(dict(config), indent=2, default=str)
  files.write_bytes_atomic(os.fspath(workdir / CONFIG_FILE), (text + '\n').encode())


def report_eval(ev: dict, step: int, *, names, palette, ignore_label: int,
                writer, console, workdir: epath.Path, is_main: bool) -> None:
  """An evaluation's table, TensorBoard summaries and files.

  Writes the scalars ``eval/miou``, ``eval/pixel_acc``, ``eval/mean_acc``
  and ``eval/iou/<class>``, the images ``eval/overlays`` (image | ground
  truth | prediction) and ``eval/confusion_matrix``, and (process 0)
  ``<workdir>/eval/step_<step>/{metrics.json,confusion.png}``.
  """
  from hrseg_jax.eval import files, visuals  # pylint: disable=g-import-not-at-top
  from hrseg_jax.eval.metrics import format_iou_table  # pylint: disable=g-import-not-at-top
  scalars = {f'eval/{k}': float(v) for k, v in ev.items() if np.isscalar(v)}
  scalars.update({f'eval/iou/{n}': float(v) for n, v in zip(names, ev['iou'])})
  writer.write_scalars(step, scalars)
  confusion = visuals.confusion_image(ev['confusion_matrix'], names)
  images = {'eval/confusion_matrix': confusion[None]}
  if 'examples' in ev and len(ev['examples']['image']):
    ex = ev['examples']
    images['eval/overlays'] = visuals.overlay_strips(
        ex['image'], ex['label'], ex['pred'], palette, ignore_label)
  writer.write_images(step, images)
  console.print(f'evaluation at step {step}:\n{format_iou_table(ev, names)}')
  if is_main:
    out = workdir / EVAL_DIR / f'step_{step}'
    saved = {k: v for k, v in ev.items() if k != 'examples'}
    saved['confusion_matrix'] = np.asarray(ev['confusion_matrix']).tolist()
    saved['iou'] = [float(x) for x in ev['iou']]
    saved['class_names'] = list(names)
    files.write_json_atomic(os.fspath(out / 'metrics.json'),
                            json.loads(json.dumps(saved, default=float)))
    files.write_bytes_atomic(os.fspath(out / visuals.CONFUSION_FILE),
                             files.encode_png(confusion))


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
  pretrained.check_init_from(config, workdir)  # the user's path in the message
  config = paths.resolve_config(config)
  faults = faults_lib.Faults.from_env()
  with StopSignal() as stop:
    return _train(config, make_workdir(paths.resolve(os.fspath(workdir))), stop, faults)


def _train(config, workdir: epath.Path, stop: StopSignal,
           faults: faults_lib.Faults) -> dict:
  """:func:`train_and_evaluate` once the workdir and the SIGTERM handler exist."""
  metric_writers = tb_writer.clu_metric_writers()  # TensorBoard without TensorFlow
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=True)
  loss_log = LossLog(workdir / LOSSES_FILE, enabled=is_main)
  console = console_lib.Console(workdir / LOG_FILE, enabled=is_main)
  try:
    return _train_logged(config, workdir, stop, faults, writer, loss_log, console)
  finally:
    console.close()


def _train_logged(config, workdir: epath.Path, stop: StopSignal,
                  faults: faults_lib.Faults, writer, loss_log: LossLog,
                  console: console_lib.Console) -> dict:
  """:func:`_train` with its writers and console."""
  metric_writers = tb_writer.clu_metric_writers()
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  from hrseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from hrseg_jax.eval import classes, palettes  # pylint: disable=g-import-not-at-top
  is_main = jax.process_index() == 0
  if is_main:
    write_run_config(config, workdir)

  # ---- Mesh and input pipeline -------------------------------------------
  mesh = sharding.make_mesh(config.mesh.fsdp)
  local_batch = sharding.check_batch_size(config.train.batch_size, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  num_train = pipeline.num_train_examples(config.data)
  steps_per_epoch, num_steps = total_steps(config, num_train)

  # ---- Model, optimizer and state ----------------------------------------
  model_cfg = registry.resolve(config.model)
  dtype = compute_dtype(config.train.dtype)
  model = registry.build_model(model_cfg, dtype)
  tx, lr_fn = optim.make_optimizer(config.train, num_steps)
  crop = tuple(config.data.crop_size)

  def data_order(step):
    return pipeline.data_order_state(step=step, seed=config.seed,
                                     global_batch=config.train.batch_size,
                                     num_examples=num_train)
  state, state_sh = init_state(model, tx, jax.random.PRNGKey(config.seed),
                               (*crop, 3), mesh)

  ckpt = Checkpointer(workdir / 'checkpoints',
                      max_to_keep=config.train.keep_checkpoints,
                      keep_best=config.train.keep_best,
                      async_save=config.train.async_checkpoints)
  if faults:
    faults.install(ckpt.directory)
  try:
    if ckpt.latest_step() is not None:
      ckpt.check_model(model_cfg, resolve=registry.resolve)
      check_data_order(ckpt.data_order(), data_order(0),
                       ckpt.directory / str(ckpt.latest_step()))
      state = ckpt.restore(abstract_with_shardings(state, state_sh))
      how = f'resumed from step {int(state.step)} ({ckpt.directory / str(int(state.step))})'
    elif config.train.init_from:
      state = load_init_weights(state, config.train.init_from, model_cfg)
      how = f'initialised from {config.train.init_from}'
    else:
      how = 'from scratch (random initialisation)'
  except BaseException:
    ckpt.abandon()
    raise
  start = int(jax.device_get(state.step))
  num_classes = model_cfg['num_classes']
  names = classes.class_names(config.data.name, num_classes)
  console.print(progress_lib.startup_block(
      devices=jax.devices(), mesh_shape=dict(mesh.shape),
      process_count=jax.process_count(), global_batch=config.train.batch_size,
      local_batch=local_batch, num_steps=num_steps, steps_per_epoch=steps_per_epoch,
      num_train=num_train,
      num_val=_num_val(config.data) if config.eval.every_steps > 0 else None,
      model=(_model_name(model_cfg)
             + f', {num_classes} classes ({config.data.name}), {config.train.dtype}'),
      num_params=progress_lib.count_parameters(state.params),
      workdir=os.fspath(workdir), checkpoints=os.fspath(ckpt.directory),
      start=how if start < num_steps else f'{how}; nothing left to train'))
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
  eval_fn = jax.jit(make_eval_step(model, num_classes,
                                   config.loss.ignore_label, align))
  eval_batch = max(config.eval.batch_size // jax.process_count(), 1)

  def evaluate(state):
    return run_eval(eval_fn, state.variables, config.data, eval_batch, batch_sh,
                    num_classes, num_examples=NUM_OVERLAYS if is_main else 0)

  # ---- Train loop ----------------------------------------------------------
  meta = {'config': config.to_dict() if hasattr(config, 'to_dict') else {}}
  report = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                           writer=writer, every_steps=config.train.log_every_steps)
  progress = progress_lib.Progress(num_steps, steps_per_epoch, config.train.batch_size,
                                   start)
  palette = palettes.get_palette(config.data.name)
  history = []
  pending = []   # (step, device metrics) not fetched yet
  window = []    # fetched host metrics not written to the writer yet
  result = {'steps': num_steps, 'start_step': start, 'preempted': False}
  t0 = time.time()
  stop_at = int(config.train.get('stop_at_step', -1))
  log_every = config.train.log_every_steps
  guard = str(config.train.get('transfer_guard', 'allow'))

  def fetch():
    """Fetches pending metrics; logs losses; stops on a non-finite step."""
    fetched = list(zip([s for s, _ in pending], jax.device_get([m for _, m in pending])))
    pending.clear()
    losses = [(s, float(m['loss'])) for s, m in fetched]
    history.extend(loss for _, loss in losses)
    loss_log.append(losses)
    window.extend(m for _, m in fetched)
    bad = first_nonfinite(fetched)
    if bad is not None and config.train.nonfinite == 'stop':
      ckpt.wait()
      good = ckpt.latest_step()
      raise NonFiniteLoss(
          f'non-finite loss or gradient at step {bad[0]} (loss {float(bad[1]["loss"])}, '
          f'gradient norm {float(bad[1]["grad_norm"])}); stopped. Last good checkpoint: '
          + (f'step {good} in {ckpt.directory}' if good is not None else 'none')
          + "; rerun to resume from it, or set train.nonfinite='skip'")

  steps = range(start + 1, num_steps + 1)
  try:
    with metric_writers.ensure_flushes(writer):
      if start < num_steps and stop.should_stop(start):
        logging.warning('stop requested before step %d: nothing new to save', start + 1)
        result['preempted'] = True
        steps = range(0)
      for step in steps:
        last = step == num_steps
        log_now = step % log_every == 0 or last
        evaluate_now = config.eval.every_steps > 0 and (
            step % config.eval.every_steps == 0 or last)
        # Only these steps wait for the device; the others only dispatch work
        # (train.transfer_guard='disallow' checks this: host_sync).
        sync = (log_now or evaluate_now
                or step % config.train.checkpoint_every_steps == 0)
        with host_sync.no_host_waits(f'step {step}',
                                     enabled=guard == 'disallow' and not sync):
          t_data = time.perf_counter()
          with report.timed('data', wait_jax_async_dispatch=False):
            local = next(train_iter)
          progress.add_data_time(time.perf_counter() - t_data)
          batch = sharding.global_batch(faults.on_batch(step, local), batch_sh)
          state, metrics = train_fn(state, batch)
          pending.append((step, metrics))
          report(step)
          if log_now:
            fetch()
          faults.on_step_end(step)
          halt = step == stop_at or stop.should_stop(step, sync=sync)
        save_now = (step % config.train.checkpoint_every_steps == 0 or last
                    or evaluate_now or halt)
        if save_now and pending:
          fetch()   # a non-finite state is never checkpointed
        if log_now:
          scalars = {
              'train/loss': float(np.mean([m['loss'] for m in window])),
              'train/grad_norm': float(np.mean([m['grad_norm'] for m in window])),
              'train/lr': float(lr_fn(step - 1)),
              'train/skipped_steps': int(jax.device_get(state.skipped))}
          writer.write_scalars(step, scalars)
          window.clear()
          console.print(progress.line(step, {
              'loss': scalars['train/loss'], 'lr': scalars['train/lr'],
              'grad_norm': scalars['train/grad_norm'],
              'skipped': scalars['train/skipped_steps']},
              memory=progress_lib.device_memory(jax.local_devices())))
        ev = None
        t_pause = time.perf_counter()
        if evaluate_now:
          with report.timed('eval'):
            ev = evaluate(state)
          report_eval(ev, step, names=names, palette=palette,
                      ignore_label=config.loss.ignore_label, writer=writer,
                      console=console, workdir=workdir, is_main=is_main)
          result['eval'] = {k: v for k, v in ev.items() if k != 'examples'}
        if save_now:
          ckpt.save(state, data_order(step), model_cfg, force=True,
                    metrics={'miou': float(ev['miou'])} if ev else None,
                    meta=dict(meta, eval={'miou': float(ev['miou'])}) if ev else meta)
        progress.add_paused_time(time.perf_counter() - t_pause)
        if halt and not last:
          logging.warning('stopping at step %d (checkpoint saved); rerun the same '
                          'command to resume', step)
          result['preempted'] = True
          break
  except BaseException:
    ckpt.abandon()
    raise
  ckpt.close()
  result['losses'] = history
  result['seconds'] = time.time() - t0
  result['final_step'] = int(jax.device_get(state.step))
  result['losses_from_step'] = start + 1
  console.log(f'run ended at step {result["final_step"]}/{num_steps} after '
              f'{result["seconds"]:.0f} s' + (' (stopped early; rerun to resume)'
                                             if result['preempted'] else ''))
  return result
