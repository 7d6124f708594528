"""The training loop (big_vision style: one linear function in sections).

Reliability (tested by ``tests/test_faults.py``):

* SIGTERM or Ctrl-C (and, on multi-host runs, JAX's preemption sync point)
  stops the run within two steps with a checkpoint of the step it stops at (the
  same step on every process, see
  :class:`~hrseg_jax.train.stop_signal.StopSignal`); the process exits
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
  :class:`~hrseg_jax.train.hooks.NonFiniteLoss` names the step and the last
  good checkpoint; no non-finite state is ever checkpointed) or skips and
  counts the step (``'skip'``, the ``train/skipped_steps`` scalar).
* On any error, a checkpoint save in flight is allowed to commit first.

Every trained step's loss is appended to ``<workdir>/losses.txt``, once the
lines of steps after the one the run starts from are dropped (see
:class:`~hrseg_jax.train.hooks.LossLog`).  The loop calls hooks for progress,
evaluation, checkpoints and the fault injection of the tests
(``$HRSEG_FAULT``, :mod:`hrseg_jax.train.faults`): see :mod:`hrseg_jax.train.hooks`.
Before the workdir is made, the config is checked
(:mod:`~hrseg_jax.train.config_checks`) and ``train.init_from``'s weights read
(:mod:`~hrseg_jax.train.pretrained`); the workdir's files are
:mod:`~hrseg_jax.train.run_dir`'s, a resume's notes
:mod:`~hrseg_jax.train.resume`'s and :mod:`~hrseg_jax.train.run_length`'s.
"""
from __future__ import annotations

import collections
import functools
import os
import time

import jax
from etils import epath

from hrseg_jax import compile_cache, config_fields
from hrseg_jax import console as console_lib
from hrseg_jax import paths
from hrseg_jax.models import layers, registry
from hrseg_jax.data import pipeline
from hrseg_jax.data import errors as data_errors
from hrseg_jax.eval import evaluator as evaluator_lib
from hrseg_jax.train import config_checks, resume, run_dir, run_length
from hrseg_jax.train import faults as faults_lib
from hrseg_jax.train import host_sync
from hrseg_jax.train import optim, pretrained, progress as progress_lib, sharding, step as step_lib
from hrseg_jax.train import tb_writer
from hrseg_jax.checkpoints.training import Checkpointer, abstract_with_shardings
from hrseg_jax.train.hooks import CheckpointHook, LossLog, ProgressHook
from hrseg_jax.train.state import init_state
from hrseg_jax.train.stop_signal import StopSignal

__all__ = ['train_and_evaluate']

TRAINING_PROTOCOL = 'validation'   # evaluator of eval.protocol='' (eval/evaluator.py)
# Steps the host dispatches ahead of the one it waits for: one queued behind
# the running step while the host reads the next batch.
QUEUED_STEPS = 2


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
  config_checks.check_train_config(config.train)
  # eval.*, data.* and train.dtype values of the wrong kind (eval.scales=0.5,x).
  config_fields.check(config)
  config_checks.check_num_classes(config)
  config_checks.check_loss_chunks(config)
  config_checks.check_batch_sizes(config)
  registry.resolve(config.model)   # a bad model config, before the workdir is made
  sharding.make_mesh(config.mesh.fsdp)   # a mesh.fsdp the devices do not divide
  layers.depthwise_kernel_grad()   # a bad $HRSEG_DEPTHWISE_KERNEL_GRAD
  evaluator_lib.protocol_of(config, TRAINING_PROTOCOL)   # a bad eval.protocol, too
  evaluator_lib.progress_seconds(config)
  pretrained.check_init_from(config, workdir)  # the user's path in the message
  run_dir.check_workdir(workdir)   # read-only: the first line, not after the plan
  config = paths.resolve_config(config)
  # Missing, unreadable or too little data fails here, before the workdir is made.
  num_train = pipeline.num_train_examples(config.data)
  config_checks.check_num_train(num_train, config.train.batch_size,
                                config_checks.loss_chunks(config))
  config_checks.check_val_data(config)
  # What is known now, before the slow parts (init_from's weights, the model's
  # initialisation or restore): log.txt gets it once the workdir exists.
  printed = plan_lines(config, num_train).splitlines()
  if config.train.init_from and not pretrained.has_checkpoints(workdir):
    # A .pth is converted in memory: seconds to minutes for a big model.
    printed.append(f'reading train.init_from {paths.shown(config.train.init_from)}')
  console_lib.Console(enabled=jax.process_index() == 0).print('\n'.join(printed))
  printed_at = time.time()
  init = pretrained.read_init_weights(config, workdir)   # a file that does not fit, too
  faults = faults_lib.Faults.from_env()
  with StopSignal() as stop:
    return _train(config, run_dir.make_workdir(paths.resolve(os.fspath(workdir))), stop,
                  faults, num_train, init, printed=(printed_at, printed))


def plan_lines(config, num_train: int) -> str:
  """The start-up block's devices, batch, steps and data lines."""
  mesh = sharding.make_mesh(config.mesh.fsdp)
  steps_per_epoch, num_steps = run_length.total_steps(config, num_train)
  evaluates = int(config.eval.get('every_steps', -1)) > 0
  return progress_lib.plan_block(
      devices=jax.devices(), mesh_shape=dict(mesh.shape),
      process_count=jax.process_count(), global_batch=config.train.batch_size,
      local_batch=sharding.check_batch_size(config.train.batch_size, mesh),
      num_steps=num_steps, steps_per_epoch=steps_per_epoch, num_train=num_train,
      num_val=(evaluator_lib.num_examples(config, TRAINING_PROTOCOL)
               if evaluates else None),
      data_from=progress_lib.data_origin(config.data, evaluates),
      eval_every=int(config.eval.get('every_steps', -1)))


def _train(config, workdir: epath.Path, stop: StopSignal,
           faults: faults_lib.Faults, num_train: int, init=None,
           printed=(None, ())) -> dict:
  """:func:`train_and_evaluate` once the workdir and the SIGTERM handler exist
  (``init``: :func:`pretrained.read_init_weights`; ``printed``: the time and
  the lines printed before the workdir existed)."""
  metric_writers = tb_writer.clu_metric_writers()  # TensorBoard without TensorFlow
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=True)
  loss_log = LossLog(workdir / run_dir.LOSSES_FILE, enabled=is_main)
  console = console_lib.Console(workdir / run_dir.LOG_FILE, enabled=is_main)
  printed_at, lines = printed
  for line in lines:
    console.log(line, at=printed_at)   # printed before the workdir existed
  for line in init[1].get('console_lines', []) if init else []:
    console.log(line)   # train.init_from's BN scale
  stop.console = console   # SIGTERM's and Ctrl-C's notices reach log.txt too
  # Bad examples skipped (data.skip_bad_examples): named once, on the console
  # and in log.txt, by this process and the data workers.
  log_path = (os.fspath(workdir / run_dir.LOG_FILE)
              if is_main and not paths.is_url(os.fspath(workdir)) else None)
  try:
    with data_errors.named_once(log_path):
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
  training set's size; ``init``: :func:`pretrained.read_init_weights`)."""
  metric_writers = tb_writer.clu_metric_writers()
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  is_main = jax.process_index() == 0
  previous_length = run_length.schedule_length(run_dir.read_run_config(workdir))

  # ---- Mesh and input pipeline -------------------------------------------
  mesh = sharding.make_mesh(config.mesh.fsdp)
  local_batch = sharding.check_batch_size(config.train.batch_size, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  steps_per_epoch, num_steps = run_length.total_steps(config, num_train)

  # ---- Model, optimizer and state ----------------------------------------
  model_cfg = registry.resolve(config.model)
  dtype = config_checks.compute_dtype(config.train.dtype)
  model = registry.build_model(model_cfg, dtype)
  tx, lr_fn = optim.make_optimizer(config.train, num_steps)
  crop = tuple(config.data.crop_size)

  def data_order(step, images_seen=None):
    return pipeline.data_order_state(step=step, seed=config.seed,
                                     global_batch=config.train.batch_size,
                                     num_examples=num_train, images_seen=images_seen)
  num_classes = model_cfg['num_classes']

  def shapes_known(abstract):   # the model's lines, before its initialisation compiles
    console.print(progress_lib.model_block(
        model=(registry.model_name(model_cfg)
               + f', {num_classes} classes ({config.data.name}), {config.train.dtype}'),
        num_params=progress_lib.count_parameters(abstract.params),
        workdir=paths.shown(workdir), checkpoints=paths.shown(workdir / 'checkpoints')))
  state, state_sh = init_state(model, tx, jax.random.PRNGKey(config.seed),
                               (*crop, 3), mesh, on_shapes=shapes_known)

  ckpt = Checkpointer(workdir / 'checkpoints',
                      max_to_keep=config.train.keep_checkpoints,
                      keep_best=config.train.keep_best,
                      async_save=config.train.async_checkpoints)
  stop.checkpointer = ckpt   # a second Ctrl-C names its latest checkpoint
  if faults:
    faults.install(ckpt.directory)
  order_warning = saved_order = None
  try:
    if ckpt.latest_step() is not None:
      saved_meta = ckpt.check_model(model_cfg, resolve=registry.resolve)
      saved_order = ckpt.data_order()
      order_warning = resume.check_data_order(
          saved_order, data_order(0),
          paths.shown(ckpt.directory / str(ckpt.latest_step())))
      state = ckpt.restore(abstract_with_shardings(state, state_sh))
      how = (f'resumed from step {int(state.step)} '
             f'({paths.shown(ckpt.directory / str(int(state.step)))})'
             + resume.topology_change(saved_meta.get('topology'), resume.topology())
             + run_length.change_note(previous_length, config.to_dict(), num_steps))
      if config.train.init_from:   # given, and silently unused before
        how += (f'; train.init_from {paths.shown(config.train.init_from)} not read '
                '(a resumed run restores its own weights)')
    elif config.train.init_from:
      state = pretrained.load_init_weights(state, config.train.init_from, model_cfg, init)
      how = (f'initialised from {paths.shown(config.train.init_from)}'
             + (pretrained.start_note(init[1], config.train.init_from) if init else ''))
    else:
      how = 'from scratch (random initialisation)'
    config_checks.check_stop_at_step(config.train, int(jax.device_get(state.step)), num_steps)
  except BaseException:
    ckpt.abandon()
    raise
  start = int(jax.device_get(state.step))
  if is_main:   # once the workdir's checkpoint (if any) fits this config
    run_dir.write_run_config(config, workdir)
    # The steps trained after the checkpoint are trained again: one line each.
    loss_log.keep_up_to(start)
  # Counted across resumes with another global batch (the epoch on the step lines).
  seen_at_start = pipeline.images_seen(saved_order, start, config.train.batch_size)
  if start < num_steps and seen_at_start != start * config.train.batch_size:
    # The steps line's epochs count steps of this batch; the step lines count images.
    per_epoch = steps_per_epoch * config.train.batch_size
    end = seen_at_start + (num_steps - start) * config.train.batch_size
    how += (f'; at epoch {seen_at_start / per_epoch:.1f}, ending at epoch '
            f'{end / per_epoch:.1f} (earlier steps had another train.batch_size)')
  evaluator = evaluator_lib.from_config(
      config, default_protocol=TRAINING_PROTOCOL, model_cfg=model_cfg,
      to_global=lambda local: sharding.global_batch(local, batch_sh), dtype=dtype,
      out_dir=workdir / evaluator_lib.EVAL_DIR, writer=writer, log=console.print)
  console.print(progress_lib.start_line(
      f'{how}; nothing left to train' if start >= num_steps else
      f'{how}; not training ({stop.reason} during start-up)' if stop.requested else
      f'{how}; compiling the training step (the first step line includes it)'))
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
            'topology': resume.topology()})

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
          if step == start + 1:   # traced and compiled (or read) before dispatching
            with compile_cache.Lookups() as lookups:
              state, metrics = train_fn(state, batch)
            progress.add_compile_time(time.perf_counter() - t_call,
                                      from_cache=lookups.all_hits)
          else:
            state, metrics = train_fn(state, batch)
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
          evaluator.announce(step)   # before the evaluation, which may take minutes
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
  what += f' in {progress_lib.format_duration(result["seconds"])}'
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
