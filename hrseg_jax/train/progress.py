"""The training console: a start-up block and one line per log step.

A log line reads::

  step 150/300 (epoch 4.7) loss 0.534 lr 2.7e-2 grad 1.77 | 13.2 img/s,
  0.607 s/step, data 2% | ETA 1m31s [+ 2 evals] [| mem N GiB]

(one line on the console).  Speeds are measured on the host between two log
steps, when the loop fetches the metrics anyway (no extra device sync);
time spent evaluating and saving checkpoints is left out of them.  The
first window after start-up includes compilation, and says so (``incl.
compilation (read from the cache)`` when the persistent compilation cache
held the training step); its ETA
leaves compilation out (the time of the first training call, which traces
and compiles before it dispatches), so a resumed run's first line does not
spread one compilation over every remaining step.  The ETA counts the
evaluations still to come (``eval.every_steps``, and the one after the last
step; one due at the line's own step runs after it) at the time the latest
evaluation took, its compilation left out (the first evaluation compiles the
evaluator once for all); until one has been timed, the line says how many it
leaves out (``+ 2 evals``).  The same speeds go to TensorBoard
(:meth:`Window.scalars`) from the second log step on.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Mapping, Sequence

from hrseg_jax import console
from hrseg_jax.progress import format_duration, format_rate  # noqa: F401  (re-exported)


def format_lr(lr: float) -> str:
  """``9.9e-3`` (short exponent), ``0`` for zero."""
  if lr == 0:
    return '0'
  mantissa, exponent = f'{lr:.1e}'.split('e')
  return f'{mantissa}e{int(exponent)}'


def format_bytes(n: float) -> str:
  for unit, size in (('GiB', 2 ** 30), ('MiB', 2 ** 20)):
    if n >= size:
      return f'{n / size:.1f} {unit}'
  return f'{n / 1024:.1f} KiB'


def device_memory(devices: Sequence[Any]) -> int | None:
  """Peak bytes in use on the busiest device, if the backend reports it."""
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats:
      value = stats.get('peak_bytes_in_use', stats.get('bytes_in_use'))
      if value is not None:
        peaks.append(int(value))
  return max(peaks) if peaks else None


@dataclasses.dataclass(frozen=True)
class Window:
  """Training speed between two log steps (evaluations and saves left out)."""
  images_per_s: float
  seconds_per_step: float
  data_share: float           # of the time, spent waiting for input
  eta_s: float                # to the last step, at this speed, with timed evaluations
  includes_compilation: bool  # the first window after start-up
  compiled_from_cache: bool = False   # ... which read the compiled step from the cache
  evals_untimed: int = 0      # evaluations to come, left out of eta_s (none timed yet)

  def scalars(self) -> dict[str, float]:
    """TensorBoard's ``train/*`` speed scalars."""
    return {'train/images_per_sec': self.images_per_s,
            'train/seconds_per_step': self.seconds_per_step,
            'train/data_wait_share': self.data_share,
            'train/eta_seconds': self.eta_s}


class Progress:
  """Measures the steps between two log lines and formats the line.

  Args:
    num_steps: the last step of the run.
    steps_per_epoch: steps in one pass over the training set.
    global_batch: images per step (all processes).
    start_step: the step the run starts (or resumes) from.
    eval_every: ``eval.every_steps`` (<= 0: the run does not evaluate).
    images_at_start: training images of the steps before ``start_step``
      (a resumed run's may have come in other batches; default: as many
      steps of ``global_batch``).
    clock: a ``time.perf_counter``-like function (tests).
  """

  def __init__(self, num_steps: int, steps_per_epoch: int, global_batch: int,
               start_step: int, eval_every: int = -1,
               images_at_start: int | None = None, clock=time.perf_counter):
    self.num_steps = num_steps
    self.steps_per_epoch = max(steps_per_epoch, 1)
    self.global_batch = global_batch
    self.start_step = start_step
    self.images_at_start = (start_step * global_batch if images_at_start is None
                            else images_at_start)
    self.eval_every = eval_every
    self._eval_s = None   # the latest evaluation's time
    self._clock = clock
    self._first = True
    self._since_step = start_step
    self._since = clock()
    self._paused = 0.0
    self._data = 0.0
    self._compile = 0.0
    self._from_cache = False

  def add_compile_time(self, seconds: float, from_cache: bool = False) -> None:
    """Host time of the first training call (tracing and compilation;
    ``from_cache``: the compiled step was read from the persistent cache)."""
    self._compile += seconds
    self._from_cache = from_cache

  def add_data_time(self, seconds: float) -> None:
    """Time the loop waited for the input pipeline."""
    self._data += seconds

  def add_paused_time(self, seconds: float) -> None:
    """Time outside training (evaluation, checkpoint saves): not a speed."""
    self._paused += seconds

  def add_eval_time(self, seconds: float, compile_s: float = 0.0) -> None:
    """An evaluation's time (also paused time), ``compile_s`` of it spent
    compiling the evaluator: the ETA's evaluations take the rest (they
    reuse the compiled code, as the steps after the first do)."""
    self._eval_s = max(seconds - compile_s, 0.0)

  def images_seen(self, step: int) -> int:
    """Training images of steps 1..``step`` (those before ``start_step`` as
    given, whatever batches they came in)."""
    return self.images_at_start + (step - self.start_step) * self.global_batch

  def epoch(self, step: int) -> float:
    """Epochs trained after ``step``: the images seen over those an epoch
    reads (``steps_per_epoch`` batches; the remainder is dropped)."""
    return self.images_seen(step) / (self.steps_per_epoch * self.global_batch)

  def evals_left(self, step: int) -> int:
    """Evaluations from ``step`` on (the log line comes before the step's own
    evaluation), the one after the last step included."""
    every, last = self.eval_every, self.num_steps
    if every <= 0 or step > last:
      return 0
    return last // every - (step - 1) // every + (1 if last % every else 0)

  def window(self, step: int) -> Window:
    """The speeds since the previous log step; starts the next window."""
    now = self._clock()
    steps = max(step - self._since_step, 1)
    seconds = max(now - self._since - self._paused, 1e-9)
    training = max(seconds - self._compile, 1e-9)   # the steps alone
    evals = self.evals_left(step)
    timed = self._eval_s is not None
    w = Window(images_per_s=steps * self.global_batch / seconds,
               seconds_per_step=seconds / steps,
               data_share=min(self._data / seconds, 1.0),
               eta_s=((self.num_steps - step) * training / steps
                      + (evals * self._eval_s if timed else 0.0)),
               includes_compilation=self._first,
               compiled_from_cache=self._first and self._from_cache,
               evals_untimed=0 if timed else evals)
    self._first = False
    self._since_step, self._since = step, now
    self._paused = self._data = self._compile = 0.0
    return w

  def line(self, step: int, metrics: Mapping[str, float],
           memory: int | None = None, window: Window | None = None) -> str:
    """The log line of ``step``.

    Args:
      step: the step just trained (its metrics are on the host).
      metrics: ``loss``, ``lr`` and ``grad_norm`` (means over the window).
      memory: peak device bytes, or None if the backend does not say.
      window: this step's :meth:`window`; measured here (and the next
        window started) when not given.
    """
    w = window if window is not None else self.window(step)
    text = (f'step {step}/{self.num_steps} (epoch {self.epoch(step):.1f}) '
            f'loss {metrics["loss"]:.3f} lr {format_lr(metrics["lr"])} '
            f'grad {metrics["grad_norm"]:.2f} | '
            f'{format_rate(w.images_per_s)} img/s, {w.seconds_per_step:.3f} s/step'
            f'{_compilation_note(w)}, '
            f'data {100 * w.data_share:.0f}% | ETA {format_duration(w.eta_s)}')
    if w.evals_untimed:
      text += f' + {console.counted(w.evals_untimed, "eval")}'
    if metrics.get('skipped'):
      text += f' | skipped {int(metrics["skipped"])}'
    if memory is not None:
      text += f' | mem {format_bytes(memory)}'
    return text


def _compilation_note(w: Window) -> str:
  if not w.includes_compilation:
    return ''
  return (' incl. compilation (read from the cache)' if w.compiled_from_cache
          else ' incl. compilation')


def count_parameters(params) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return sum(int(math.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def startup_block(*, devices: Sequence[Any], mesh_shape: Mapping[str, int],
                  process_count: int, global_batch: int, local_batch: int,
                  num_steps: int, steps_per_epoch: int, num_train: int,
                  num_val: int | None, model: str, num_params: int,
                  workdir: str, checkpoints: str, start: str,
                  data_from: str = '') -> str:
  """The lines printed once before training starts: :func:`plan_block`'s,
  :func:`model_block`'s, :func:`start_line`."""
  return '\n'.join([
      plan_block(devices=devices, mesh_shape=mesh_shape, process_count=process_count,
                 global_batch=global_batch, local_batch=local_batch,
                 num_steps=num_steps, steps_per_epoch=steps_per_epoch,
                 num_train=num_train, num_val=num_val, data_from=data_from),
      model_block(model=model, num_params=num_params, workdir=workdir,
                  checkpoints=checkpoints),
      start_line(start)])


def plan_block(*, devices: Sequence[Any], mesh_shape: Mapping[str, int],
               process_count: int, global_batch: int, local_batch: int,
               num_steps: int, steps_per_epoch: int, num_train: int,
               num_val: int | None, data_from: str = '',
               eval_every: int | None = None) -> str:
  """The start-up lines known once the config and data are checked
  (devices, batch, steps, data), printed before the model is built, its
  ``train.init_from`` weights read or its checkpoint restored (``data_from``:
  where the examples come from, see :func:`data_origin`; ``eval_every``:
  ``eval.every_steps``, named on the steps line when it turns evaluation off)."""
  kinds = sorted({getattr(d, 'device_kind', d.platform) for d in devices})
  mesh = ' x '.join(f'{k} {v}' for k, v in mesh_shape.items())
  epochs = num_steps / max(steps_per_epoch, 1)
  val = f', {num_val:,} val' if num_val is not None else ''
  return '\n'.join([
      f'devices     {len(devices)} x {", ".join(kinds)} ({devices[0].platform}), '
      f'{console.counted(process_count, "process", "processes")}; mesh {mesh}',
      f'batch       {global_batch} global, {local_batch} per process',
      f'steps       {num_steps:,} ({epochs:.1f} epochs of '
      f'{console.counted(steps_per_epoch, "step", thousands=True)})'
      + (f'; no evaluation during training (eval.every_steps={eval_every})'
         if eval_every is not None and eval_every <= 0 else ''),
      f'data        {num_train:,} train{val} examples{" " + data_from if data_from else ""}',
  ])


def model_block(*, model: str, num_params: int, workdir: str, checkpoints: str) -> str:
  """The start-up lines known once the model's shapes are (model, workdir,
  checkpoints), printed before its initialisation compiles."""
  return '\n'.join([
      f'model       {model}, {num_params:,} parameters',
      f'workdir     {workdir} (config.json, log.txt, TensorBoard events)',
      f'checkpoints {checkpoints}',
  ])


def start_line(start: str) -> str:
  """The start-up block's last line: how the state was made (from scratch,
  ``train.init_from``, resumed), once it is."""
  return f'start       {start}'


def data_origin(data_cfg, with_val: bool) -> str:
  """``(data/list/x/train.lst, val.lst; data.root data/x)``: the lists and
  folder of file data, the TFDS name or 'synthetic', for the data line."""
  from hrseg_jax import paths  # pylint: disable=g-import-not-at-top
  source = data_cfg.get('source', 'files')
  if source == 'synthetic':
    return '(synthetic scenes)'
  if source == 'tfds':
    splits = data_cfg.tfds_train_split + (f', {data_cfg.tfds_val_split}' if with_val else '')
    where = (paths.shown(data_cfg.tfds_data_dir) if data_cfg.get('tfds_data_dir')
             else "TFDS's default")
    return f'(TFDS {data_cfg.tfds_name} {splits}; data_dir {where})'
  train = paths.shown(data_cfg.train_list)
  lists = train
  if with_val and data_cfg.get('val_list'):
    val = paths.shown(data_cfg.val_list)
    same_dir = os.path.dirname(val) == os.path.dirname(train)
    lists += ', ' + (os.path.basename(val) if same_dir else val)
  return f'({lists}; data.root {paths.shown(data_cfg.root or ".")})'
