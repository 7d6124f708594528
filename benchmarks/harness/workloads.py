"""The three measured workloads, built from the project's own code.

* ``train``: :func:`hrseg_jax.train.step.train_step` (forward in train mode,
  logits bilinearly upsampled to the crop, class-weighted cross-entropy with
  ignore 255, backward, BN statistics updated, SGD momentum 0.9 with coupled
  weight decay and the poly schedule from :mod:`hrseg_jax.train.optim`),
  jitted like the training loop: state and batch sharded over the device
  mesh, the state donated.
* ``infer``: one jitted call from normalised images to a full-size ``uint8``
  argmax: :func:`hrseg_jax.eval.inference.forward_exp` (the evaluation's
  forward, upsample and exp) then argmax.
* ``sliding``: fixed-shape sliding windows in one jitted call: the windows of
  :mod:`hrseg_jax.eval.windows` are cut with static slices, run as one batch,
  upsampled, summed into the canvas, averaged, cropped and argmaxed.

Inputs are random (normal images, uniform labels with ~10% ignored), never
zeros.  Each ``run_*`` returns one result record (see
:mod:`benchmarks.harness.schema`).
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import flops as flops_lib
from benchmarks.harness import models as models_lib
from benchmarks.harness import timing
from benchmarks.harness import cli
from benchmarks.harness.cli import Settings
from hrseg_jax.eval import inference as eval_inference
from hrseg_jax.eval import windows as windows_lib
from hrseg_jax.models import registry
from hrseg_jax.train import optim, sharding
from hrseg_jax.train import step as step_lib
from hrseg_jax.train.state import TrainState

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Parameters do not depend on the input size: initialise on a small image.
INIT_SIZE = (64, 64)
_IGNORE_FRACTION = 0.1


class Attrs(dict):
  """A dict with attribute access: the ``train``/``loss`` config sections
  that :mod:`hrseg_jax.train` reads (``cfg.base_lr``, ``cfg.get(...)``)."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


def random_batch(rng: np.random.Generator, batch: int, size, num_classes: int,
                 with_labels: bool = True) -> dict[str, np.ndarray]:
  """Normal float32 images (normalised-input statistics) and random labels."""
  h, w = size
  out = {'image': rng.standard_normal((batch, h, w, 3), np.float32)}
  if with_labels:
    label = rng.integers(0, num_classes, (batch, h, w), dtype=np.int32)
    label[rng.random((batch, h, w)) < _IGNORE_FRACTION] = models_lib.IGNORE_LABEL
    out['label'] = label
  return out


def init_variables(bench_model: models_lib.BenchModel, seed: int):
  """The model's variables (params, batch_stats, constants) on the device.

  Compiled and run once per model (parameters are float32 whatever the
  compute dtype); the runner records its wall time as ``init_s``.
  """
  model = registry.build_model(bench_model.config)
  keys = {'params': jax.random.PRNGKey(seed), 'dropout': jax.random.PRNGKey(seed + 1)}
  x = jnp.zeros((1, *INIT_SIZE, 3), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(keys, x)


def num_params(variables) -> int:
  """Number of trainable parameters."""
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(
      variables['params']))


def _record(bench_model, dtype: str, mode: str, *, batch: int, size,
            params: int, compiled: timing.Compiled, seconds: list[float],
            model_flops: int, settings: Settings) -> dict[str, Any]:
  """The fields every workload reports."""
  stats = timing.summary_ms(seconds)
  sec = stats['ms'] / 1e3
  cost = flops_lib.xla_cost(compiled.executable)
  rec = dict(model=bench_model.key, label=bench_model.label, dtype=dtype,
             mode=mode, status='ok', impl=cli.impl_label(settings.depthwise_grad),
             batch=int(batch), height=int(size[0]),
             width=int(size[1]), params=params,
             lower_s=compiled.lower_s, compile_s=compiled.compile_s,
             **stats, timings_ms=[1e3 * s for s in seconds],
             model_flops=float(model_flops),
             model_tflops_per_s=model_flops / sec / 1e12,
             mfu=model_flops / sec / (settings.peak_tflops * 1e12),
             **cost,
             xla_tflops_per_s=(cost['xla_flops'] / sec / 1e12
                               if cost['xla_flops'] else None),
             hbm_util=(cost['xla_bytes'] / sec / (settings.peak_tbps * 1e12)
                       if cost['xla_bytes'] else None),
             xla_memory_bytes=flops_lib.xla_memory(compiled.executable))
  return rec


def _profile(settings: Settings, name: str, step, carry, compiled: timing.Compiled):
  """Traces a few more calls into ``settings.profile/name`` if asked.

  ``jax.profiler`` writes each trace into its own run folder,
  ``plugins/profile/<time>/`` (TensorBoard lists each one); traces of
  earlier runs in the same folder are kept.  Beside this run's trace:
  ``program.hlo.txt``, the compiled program's optimised HLO (whose
  instruction names the trace's ``hlo_op`` fields use, each with its source
  ``op_name``).  ``profile.json`` in ``settings.profile/name`` names the
  newest run's trace folder (``trace``), the calls traced and the HLO
  module.  The console names the new trace folder.  A profiler failure
  (no CUPTI, say) is reported and does not void the timings already taken.
  """
  if not settings.profile:
    return carry
  folder = os.path.join(settings.profile, name)
  runs = os.path.join(folder, 'plugins', 'profile')
  before = set(os.listdir(runs)) if os.path.isdir(runs) else set()
  try:
    with jax.profiler.trace(folder):
      carry = timing.warm(step, carry, settings.profile_steps)
  except Exception as e:  # pylint: disable=broad-except
    print(f'warning: profiling {name} failed: {type(e).__name__}: {e}',
          file=sys.stderr)
    return carry
  new = sorted(set(os.listdir(runs)) - before) if os.path.isdir(runs) else []
  trace = os.path.join('plugins', 'profile', new[-1]) if new else None
  run_dir = os.path.join(folder, trace) if trace else folder
  text = compiled.executable.as_text()
  with open(os.path.join(run_dir, 'program.hlo.txt'), 'w') as f:
    f.write(text)
  module = re.search(r'^HloModule\s+([\w.\-]+)', text, re.M)
  with open(os.path.join(folder, 'profile.json'), 'w') as f:
    json.dump({'calls': settings.profile_steps, 'trace': trace,
               'hlo_module': module.group(1) if module else None}, f)
  kept = len(before - set(new))
  print(f'profile {name}: {settings.profile_steps} calls traced into {run_dir}'
        + (f' ({kept} earlier trace{"s" if kept > 1 else ""} beside it kept)'
           if kept else ''), flush=True)
  return carry


# ---- training ---------------------------------------------------------------

def new_state(variables, tx) -> TrainState:
  """A fresh TrainState holding copies of ``variables`` (traceable)."""
  return TrainState.create(jax.tree_util.tree_map(jnp.copy, variables), tx,
                           jax.random.PRNGKey(1))


def make_state(variables, tx, mesh):
  """A fresh TrainState (copies of ``variables``) with the loop's shardings."""
  make = functools.partial(new_state, tx=tx)
  abstract = jax.eval_shape(make, variables)
  shardings = sharding.state_shardings(abstract, mesh)
  return jax.jit(make, out_shardings=shardings)(variables), shardings


def _first_stat(state) -> np.ndarray | None:
  stats = state.model_state.get('batch_stats')
  leaves = jax.tree_util.tree_leaves(stats) if stats else []
  return np.asarray(jax.device_get(leaves[0])) if leaves else None


def run_train(bench_model, dtype: str, variables, settings: Settings,
              rng: np.random.Generator) -> dict[str, Any]:
  """Times the training step at ``settings.batch`` x ``settings.crop``."""
  model = registry.build_model(bench_model.config, DTYPES[dtype])
  tx, _ = optim.make_optimizer(Attrs(models_lib.TRAIN_RECIPE),
                               models_lib.TOTAL_STEPS)
  loss_cfg = Attrs(models_lib.loss_config(bench_model, settings.batch))
  mesh = sharding.make_mesh(1)
  state, state_sh = make_state(variables, tx, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  batch = sharding.global_batch(random_batch(
      rng, settings.batch, settings.crop, models_lib.NUM_CLASSES), batch_sh)
  fn = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx,
                                 loss_cfg=loss_cfg,
                                 align_corners=bench_model.align_corners),
               in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None),
               donate_argnums=(0,))
  compiled = timing.compile_timed(fn, state, batch)
  step = lambda carry: compiled.executable(carry[0], batch)
  before, first_leaf = _first_stat(state), jax.tree_util.tree_leaves(state.params)[0]
  carry = timing.warm(step, (state, None), settings.warmup)
  checks = dict(donated=bool(first_leaf.is_deleted()),
                bn_stats_updated=(before is None or not np.array_equal(
                    before, _first_stat(carry[0]))))
  carry, seconds = timing.rounds(step, carry, repeats=settings.repeats,
                                 steps=settings.steps)
  carry = _profile(settings, f'{bench_model.key}_{dtype}_train', step, carry, compiled)
  loss = float(jax.device_get(carry[1]['loss']))
  checks.update(loss=loss, loss_finite=bool(np.isfinite(loss)),
                loss_chunks=loss_cfg['num_chunks'])
  h, w = settings.crop
  rec = _record(bench_model, dtype, 'train', batch=settings.batch,
                size=settings.crop, params=num_params(variables),
                compiled=compiled, seconds=seconds,
                model_flops=flops_lib.train_flops(bench_model.config, h, w,
                                                  settings.batch),
                settings=settings)
  rec['images_per_s'] = settings.batch / (rec['ms'] / 1e3)
  rec['peak_bytes_in_use'] = timing.peak_bytes()
  rec['checks'] = checks
  del carry
  return rec


# ---- inference --------------------------------------------------------------

def _rows(batch: int, height: int, canvas_h: int | None = None) -> jnp.ndarray:
  rows = eval_inference.source_rows(height, height, canvas_h or height)
  return jnp.asarray(np.broadcast_to(rows, (batch, rows.shape[0])), jnp.int32)


def whole_image_fn(model, align_corners: bool):
  """``f(variables, images) -> uint8 [B, H, W]``: forward, upsample, argmax."""
  apply_fn = eval_inference.model_apply_fn(model)

  def fn(variables, images):
    rows = _rows(images.shape[0], images.shape[1])
    probs = eval_inference.forward_exp(variables, images, rows,
                                       apply_fn=apply_fn,
                                       align_corners=align_corners)
    return jnp.argmax(probs, axis=-1).astype(jnp.uint8)
  return fn


def sliding_plan(settings: Settings) -> windows_lib.Plan:
  """The window plan of ``settings.infer_size`` (one scale, scale 1)."""
  if settings.sliding_rule == 'cityscapes':
    return windows_lib.cityscapes_windows(settings.infer_size, settings.window)
  return windows_lib.base_windows(settings.infer_size, settings.window)


def sliding_fn(model, align_corners: bool, plan: windows_lib.Plan,
               num_classes: int):
  """``f(variables, images) -> uint8 [B, H, W]`` over the windows of ``plan``.

  Every window of every image goes through the network in one batch
  (window-major order); shapes are static, so one compilation serves all
  calls.
  """
  apply_fn = eval_inference.model_apply_fn(model)
  (wh, ww), (ch, cw) = plan.window, plan.canvas
  counts = windows_lib.window_counts(plan).astype(np.float32)

  def fn(variables, images):
    b, h, w, _ = images.shape
    canvas = jnp.broadcast_to(jnp.asarray(eval_inference.PAD_VALUE),
                              (b, ch, cw, 3)).at[:, :h, :w].set(images)
    rows = _rows(b, h, ch)
    wins = jnp.concatenate([canvas[:, y:y + wh, x:x + ww] for y, x in plan.offsets])
    win_rows = jnp.concatenate([rows[:, y:y + wh] for y, _ in plan.offsets])
    probs = eval_inference.forward_exp(variables, wins, win_rows,
                                       apply_fn=apply_fn,
                                       align_corners=align_corners)
    buf = jnp.zeros((b, ch, cw, num_classes), jnp.float32)
    for i, (y, x) in enumerate(plan.offsets):
      buf = buf.at[:, y:y + wh, x:x + ww].add(probs[i * b:(i + 1) * b])
    buf = buf / counts[None, :, :, None]
    return jnp.argmax(buf[:, :h, :w], axis=-1).astype(jnp.uint8)
  return fn


def _run_inference(bench_model, dtype: str, mode: str, fn, variables,
                   settings: Settings, rng: np.random.Generator,
                   model_flops: int, extra: dict[str, Any]) -> dict[str, Any]:
  """Compiles and times an inference function (latency and pipelined)."""
  b = settings.infer_batch
  images = jax.device_put(random_batch(rng, b, settings.infer_size, 0,
                                       with_labels=False)['image'])
  compiled = timing.compile_timed(jax.jit(fn), variables, images)
  call = lambda: compiled.executable(variables, images)
  step = lambda _: call()
  out = timing.warm(step, None, settings.warmup)
  out_np = np.asarray(jax.device_get(out))
  checks = dict(shape_ok=out_np.shape == (b, *settings.infer_size),
                classes_in_range=bool(out_np.max() < models_lib.NUM_CLASSES))
  latency = timing.latency(call, settings.latency_runs)
  _, pipelined = timing.rounds(step, None, repeats=settings.repeats,
                               steps=settings.steps)
  _profile(settings, f'{bench_model.key}_{dtype}_{mode}', step, None, compiled)
  rec = _record(bench_model, dtype, mode, batch=b, size=settings.infer_size,
                params=num_params(variables), compiled=compiled,
                seconds=latency, model_flops=model_flops, settings=settings)
  ms_pipelined = timing.summary_ms(pipelined)['ms']
  rec.update(ms_pipelined=ms_pipelined, images_per_s=b / (ms_pipelined / 1e3),
             pipelined_ms=[1e3 * s for s in pipelined],
             peak_bytes_in_use=timing.peak_bytes(), checks=checks, **extra)
  return rec


def run_infer(bench_model, dtype: str, variables, settings: Settings,
              rng: np.random.Generator) -> dict[str, Any]:
  """Whole-image inference of ``infer_batch`` images at ``infer_size``."""
  model = registry.build_model(bench_model.config, DTYPES[dtype])
  fn = whole_image_fn(model, bench_model.align_corners)
  h, w = settings.infer_size
  flops = flops_lib.forward_flops(bench_model.config, h, w, settings.infer_batch)
  return _run_inference(bench_model, dtype, 'infer', fn, variables, settings,
                        rng, flops, {})


def run_sliding(bench_model, dtype: str, variables, settings: Settings,
                rng: np.random.Generator) -> dict[str, Any]:
  """Sliding-window inference of ``infer_batch`` images at ``infer_size``."""
  model = registry.build_model(bench_model.config, DTYPES[dtype])
  plan = sliding_plan(settings)
  fn = sliding_fn(model, bench_model.align_corners, plan, models_lib.NUM_CLASSES)
  n = len(plan.offsets) * settings.infer_batch
  flops = flops_lib.forward_flops(bench_model.config, *plan.window, n)
  extra = dict(windows=len(plan.offsets), window=list(plan.window),
               canvas=list(plan.canvas), sliding_rule=settings.sliding_rule)
  return _run_inference(bench_model, dtype, 'sliding', fn, variables, settings,
                        rng, flops, extra)


RUNNERS = {'train': run_train, 'infer': run_infer, 'sliding': run_sliding}
