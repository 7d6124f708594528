"""What each ``--mode`` of ``python -m hrseg_jax.main`` runs.

:func:`run` takes the parsed command line (a config, a workdir, a mode and
the eval/predict options) and calls the layer below: the training loop
(``train/loop.py``), an evaluator (``eval/evaluator.py``) on a loaded
checkpoint, or ``predict.py`` / ``video.py``. Inputs and settings are
checked before a checkpoint is loaded, so a typo costs no loading time.
"""
from __future__ import annotations

import os

EVAL_PROTOCOL = 'test'   # --mode eval's evaluator for eval.protocol=''


def predict_options(**overrides) -> dict:
  """The predict flags' values (defaults), as :func:`run` takes them."""
  out = dict(dataset=None, cityscapes_test_format=False, sliding=False,
             crop_size=None, scales=(1.0,), flip=False, list_root=None, video=False)
  out.update(overrides)
  return out


def exit_code(mode: str, result) -> int:
  """The command's exit code after :func:`run` returned: 130 for a training
  run that Ctrl-C stopped before its first step (nothing trained, nothing
  saved, as a Ctrl-C before the training loop starts); else 0 (a run
  stopped with its checkpoint saved, or by SIGTERM, exits 0)."""
  if (mode == 'train' and isinstance(result, dict) and result.get('preempted')
      and result.get('stop_reason') == 'Ctrl-C'
      and result.get('final_step') == result.get('start_step')):
    return 130
  return 0


def _predict_eval_cfg(config, dataset, opts):
  """Test-time settings: the config's eval section when a config was given
  (flags override it: predict, and eval), else from the checkpoint's dataset
  and the image."""
  from hrseg_jax import predict  # pylint: disable=g-import-not-at-top
  if config is None:
    return predict.predict_settings(
        dataset, sliding=opts['sliding'], crop_size=opts['crop_size'],
        scales=opts['scales'], flip=opts['flip'])
  cfg = config.eval.to_dict()
  defaults = predict_options()
  if opts['sliding']:
    cfg['mode'] = 'sliding'
  for key in ('crop_size', 'scales', 'flip'):
    if opts[key] != defaults[key]:
      cfg[key] = opts[key]
  return cfg


def run(config, workdir: str, mode: str, checkpoint=None, inputs=(), *,
        dtype: str = 'float32', options: dict | None = None,
        config_given: bool = True):
  """Runs one mode.

  Args:
    config: the experiment config; ``None`` for predict without ``--config``
      (settings from the checkpoint and each image).
    workdir: checkpoints, eval results and predictions go here.
    mode: 'train', 'eval' or 'predict'.
    checkpoint: eval/predict: 'best', 'latest' or a path (default: best when
      kept, else latest, of the workdir).
    inputs: predict: image files, folders, list files, a video or a camera.
    dtype: eval/predict compute dtype name.
    options: predict flags (:func:`predict_options`).
    config_given: False when ``config`` is the default one (no ``--config``):
      eval then refuses a checkpoint of another dataset than the config's.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from hrseg_jax import config_fields, console, paths, video  # pylint: disable=g-import-not-at-top
  # Relative paths, ~ and symlinks become absolute here, once.
  config = None if config is None else paths.resolve_config(config)
  workdir = paths.resolve(workdir)
  # A camera index (--input 0) stays as it is.
  inputs = [p if video.is_camera(p) else paths.resolve(p) for p in inputs]
  if mode == 'train' and checkpoint not in (None, '', 'latest'):   # ignored without a word
    raise ValueError(f'--checkpoint {checkpoint}: --mode train resumes from the '
                     "checkpoints of --workdir; to start from other weights, pass "
                     '--config.train.init_from=PATH (a .pth or a converted checkpoint)')
  if mode == 'train' and inputs:
    raise ValueError(f'--input {paths.shown(inputs[0])}: --input is for --mode predict')
  if mode == 'train':
    from hrseg_jax.train import loop  # pylint: disable=g-import-not-at-top
    return loop.train_and_evaluate(config, workdir)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hrseg_jax import checkpoints
  from hrseg_jax.checkpoints import info as checkpoint_info  # pylint: disable=g-import-not-at-top
  opts = predict_options(**(options or {}))
  if mode == 'predict' and config is not None:   # its eval section is read
    config_fields.check(config, config_fields.EVAL_FIELDS)
  if mode == 'predict' and not inputs:
    from hrseg_jax import predict  # pylint: disable=g-import-not-at-top
    raise ValueError(f'--mode predict needs --input: {predict.INPUT_KINDS}')
  if mode == 'predict':   # missing, empty or undecodable inputs fail before the checkpoint loads
    # A camera stays open from this check on (None for any other input); the
    # images, decoded once, with their sizes.
    camera, images = _check_inputs(inputs, opts)   # and a --workdir that cannot be written
    paths.check_writable(os.path.join(paths.shown(workdir), 'predictions'), '--workdir')
  if mode == 'eval':   # --scales, --flip, --sliding, --crop_size: as predict takes them
    with config.unlocked():
      config.eval.update(_predict_eval_cfg(config, None, opts))
  if mode == 'eval':   # a bad eval.protocol or data fails before the checkpoint loads
    from hrseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    from hrseg_jax.eval import config as eval_config  # pylint: disable=g-import-not-at-top
    from hrseg_jax.eval import evaluator  # pylint: disable=g-import-not-at-top
    # eval.* and data.* values of the wrong kind (eval.scales=abc).
    config_fields.check(config, {**config_fields.EVAL_FIELDS, **config_fields.DATA_FIELDS})
    evaluator.protocol_of(config, EVAL_PROTOCOL)
    # A missing or unlabelled list, a wrong data.root, trainId labels.
    pipeline.labelled_source(config.data, eval_config.split_of(config.eval))
  dataset = checkpoint_info.check_dataset(opts['dataset'])
  try:
    path, step, described = checkpoint_info.select(checkpoint, workdir)
  except FileNotFoundError as e:
    # A path, or checkpoints without a best one (no evaluation ran): as said.
    if checkpoint not in (None, '', 'best', 'latest') or str(e).startswith('--checkpoint best:'):
      raise
    # No --checkpoint, best or latest: the workdir's own checkpoints were looked for.
    how = f'--checkpoint {checkpoint}' if checkpoint else 'without --checkpoint'
    raise FileNotFoundError(
        f'--mode {mode} {how} uses the checkpoints of --workdir, and '
        f'{paths.shown(workdir)} has none: pass --checkpoint PATH (a converted checkpoint '
        'folder or a training workdir)' + (', --workdir being where predictions go'
                                 if mode == 'predict' else '')) from e
  if mode == 'eval' and not config_given:
    _check_default_config_dataset(config, checkpoints.load_model_config(path)[1], described)
  model_cfg, variables, meta = checkpoints.load_model(path, step=step)
  loaded_step = checkpoints.resolve_step(path, step)   # 0: converted weights
  dataset = checkpoint_info.check_dataset(dataset, model_cfg['num_classes'])
  if mode == 'eval':
    _check_eval_classes(config, int(model_cfg['num_classes']), described)
  main_process = jax.process_index() == 0
  if checkpoint not in (None, '', 'best', 'latest'):   # a path: which step of it
    root, _ = checkpoints.find_checkpoint(path)
    if not loaded_step:
      described += ' (converted weights, step 0)'
    elif step is None and os.fspath(root / str(loaded_step)) != paths.resolve(os.fspath(path)):
      # A training workdir (or its checkpoints/): not its best step, say so.
      described += f' (its latest step, {loaded_step})'
    else:
      described += f' (step {loaded_step})'
  if main_process:   # what was loaded: the checkpoint's own model, whatever the config says
    print(f'{mode}: {described}: {_model_line(model_cfg)}', flush=True)
    if mode == 'eval' and config_given:
      _warn_other_model(config.model, model_cfg)
    if meta.get('initialised'):   # convert of a backbone: the head is random
      n = len(meta['initialised'])
      print(f'warning: {console.counted(n, "tensor")} of this checkpoint (the '
            f'segmentation head) {"was" if n == 1 else "were"} freshly initialised by '
            'convert, not trained: '
            f'its {"predictions" if mode == "predict" else "scores"} are those of an '
            'untrained head; train from it (train.init_from) first', flush=True)
  compute = jnp.dtype(dtype)
  if mode == 'eval':   # metrics.json says which weights it scored
    evaluated = {'checkpoint': paths.resolve(os.fspath(path)),
                 'checkpoint_step': loaded_step or 0}
    return _evaluate(config, workdir, model_cfg, variables, compute, evaluated)
  from hrseg_jax import predict  # pylint: disable=g-import-not-at-top
  if dataset is None:
    dataset = (config.data.name if config is not None
               else checkpoint_info.dataset_of(meta))
  eval_cfg = _predict_eval_cfg(config, dataset, opts)
  is_video = video.is_video_input(list(inputs), opts['video'])
  if main_process:
    sizes = '' if is_video else predict.sizes_line(images)
    print(f'predict: palette {dataset or "generic (pass --dataset)"}; '
          + predict.describe_settings(eval_cfg, 'frame' if is_video else 'image')
          + f', {compute.name} compute' + (f'; {sizes}' if sizes else ''), flush=True)
  if is_video:
    return video.predict_video(
        model_cfg, variables, inputs[0], os.path.join(workdir, 'predictions'),
        palette=dataset or '', dtype=compute, eval_cfg=eval_cfg,
        batch_size=int(config.eval.batch_size) if config is not None else 8,
        log=(lambda line: print(line, flush=True)) if main_process else (lambda _: None),
        capture=camera)
  return predict.predict(model_cfg, variables, list(inputs),
                         os.path.join(workdir, 'predictions'),
                         palette=dataset or '', eval_cfg=eval_cfg,
                         cityscapes_test_format=opts['cityscapes_test_format'],
                         list_root=paths.resolve(opts['list_root']), dtype=compute,
                         resolved=images,
                         log=(lambda line: print(line, flush=True))
                         if main_process else None)


def _model_line(model_cfg) -> str:
  """``hrnet w48+OCR, 19 classes, align_corners=True``: the loaded model."""
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  return (f'{registry.model_name(model_cfg)}, {model_cfg["num_classes"]} classes'
          + (', align_corners=True' if model_cfg.get('align_corners') else ''))


# The model fields whose difference makes another network: (field, default).
MODEL_FIELDS = (('arch', 'hrnet'), ('variant', None), ('ocr', None), ('num_classes', None))


def _warn_other_model(config_model, model_cfg) -> None:
  """A ``warning:`` line when ``--config``'s model clearly is another one
  than the checkpoint's (arch, variant, OCR or classes differ; two ``custom``
  variants: their stages): the checkpoint's is the one evaluated."""
  import json  # pylint: disable=g-import-not-at-top
  plain = lambda v: json.loads(json.dumps(v, default=list))  # noqa: E731  tuples as lists
  differ = []
  for name, default in MODEL_FIELDS:
    ours, theirs = config_model.get(name, default), model_cfg.get(name, default)
    if name == 'ocr':
      ours, theirs = ours is not None, theirs is not None
    elif name == 'variant' and ours == theirs == 'custom':
      name, ours, theirs = 'stages', *(plain([c.get('stage1'), c.get('stages')])
                                       for c in (config_model, model_cfg))
    if ours is not None and theirs is not None and ours != theirs:
      differ.append(f'model.{name}')
  if differ:
    print(f'warning: the checkpoint\'s model ({_model_line(model_cfg)}) differs from '
          f'the config\'s ({_model_line(config_model)}; {", ".join(differ)}): the '
          'checkpoint\'s is evaluated', flush=True)


def _check_inputs(inputs, opts):
  """Raises the error :mod:`hrseg_jax.predict` would raise for ``inputs``
  (a missing file, a folder without images, a bad list), or for a missing
  video file, a folder of frames without any, or a camera or video that does
  not open, or an image that does not decode.  Returns (a camera's capture,
  opened once here and read by the prediction
  (:func:`hrseg_jax.video.check_source`), else None; the images
  (:func:`hrseg_jax.predict.resolve_inputs`, with their sizes), else None)."""
  from hrseg_jax import paths, predict, video  # pylint: disable=g-import-not-at-top
  if video.is_video_input(list(inputs), opts['video']):
    if opts['cityscapes_test_format']:
      raise ValueError('--cityscapes_test_format writes the test server\'s PNGs of '
                       'images; a video has none (drop the flag)')
    source = os.fspath(inputs[0])
    if not video.is_camera(source) and not os.path.exists(source):
      raise FileNotFoundError(f'{paths.shown(source)}: no such file or directory')
    # No frames, or a camera or video that does not open.
    return video.check_source(source), None
  return None, predict.resolve_inputs(
      list(inputs), paths.resolve(opts['list_root']),
      cityscapes_test_format=opts['cityscapes_test_format'])


def _check_default_config_dataset(config, meta, described: str) -> None:
  """``--mode eval`` without ``--config`` reads the default config's data
  (the demo's synthetic scenes): a checkpoint of another dataset would be
  scored on those, not on its own dataset."""
  from hrseg_jax import command_line  # pylint: disable=g-import-not-at-top
  from hrseg_jax.checkpoints import info  # pylint: disable=g-import-not-at-top
  trained_on = info.dataset_of(meta)
  if not trained_on or trained_on == config.data.name:
    return
  raise ValueError(
      f'{described} is a {trained_on} model, and --mode eval without --config '
      f'evaluates on the data of the default config ({command_line.DEFAULT_CONFIG}: '
      f'{config.data.name}): pass --config with a {trained_on} config, e.g. '
      f'--config configs/hrnet_w48_{trained_on}.py (the model is the checkpoint\'s '
      'whatever the config)')


def _check_eval_classes(config, num_classes: int, described: str) -> None:
  """The model must predict the classes the config's labels are mapped to
  (a 60-class PASCAL-Context model on the 59-class labels would be scored
  against classes shifted by one)."""
  data_classes = int(config.data.num_classes)
  if data_classes == num_classes:
    return
  from hrseg_jax.checkpoints import info  # pylint: disable=g-import-not-at-top
  fits = [d for d in info.datasets_with(num_classes) if d != 'synthetic']
  raise ValueError(
      f'{described} has {num_classes} classes, the config\'s dataset '
      f'{config.data.name} has {data_classes} (data.num_classes): evaluate it with the '
      f'config of a {num_classes}-class dataset'
      + (f' ({", ".join(fits)})' if fits else ''))


def _evaluate(config, workdir: str, model_cfg, variables, dtype, evaluated) -> dict:
  """``--mode eval``: the evaluator of ``eval.protocol`` (default: test) on
  the devices' mesh; the IoU table and ``<workdir>/eval/metrics.json``
  (``evaluated``, the checkpoint and its step, added to its settings)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hrseg_jax import paths  # pylint: disable=g-import-not-at-top
  from hrseg_jax.eval import evaluator  # pylint: disable=g-import-not-at-top
  from hrseg_jax.train import sharding  # pylint: disable=g-import-not-at-top
  batches = sharding.batch_sharding(sharding.make_mesh(config.mesh.fsdp))
  main_process = jax.process_index() == 0
  log = (lambda line: print(line, flush=True)) if main_process else (lambda _: None)
  out_dir = os.path.join(workdir, evaluator.EVAL_DIR)
  ev = evaluator.from_config(
      config, default_protocol=EVAL_PROTOCOL, model_cfg=model_cfg,
      to_global=lambda local: sharding.global_batch(local, batches), dtype=dtype,
      out_dir=out_dir, log=log, progress=True)
  log(f'eval: {ev.protocol} protocol (eval.protocol), {jnp.dtype(dtype).name} compute')
  log(f'eval: {ev.settings_line()}')
  metrics = ev.run(variables)
  metrics['settings'] = dict(metrics['settings'], **evaluated)
  ev.report(metrics)
  log(f'eval: wrote {paths.shown(os.path.join(out_dir, "metrics.json"))} and confusion.png')
  return metrics
