"""python -m hrseg_jax.main --config configs/X.py --workdir DIR [--mode train|eval|predict]

Trains (resuming from DIR's checkpoints), evaluates a checkpoint, or predicts
class maps for images, videos or a camera. Override any field of the config
with --config.a.b=value (after --config); see README.md.
"""
from __future__ import annotations

import math
import os
import sys

# TensorFlow is not needed here (TensorBoard files go through tensorboardX),
# but when installed TFDS and etils' gfile may import it: keep it quiet and
# off the accelerators (hrseg_jax.console).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags
from ml_collections import config_flags

from hrseg_jax import compile_cache

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'], 'What to run.')
flags.DEFINE_string('checkpoint', None, 'eval/predict: a checkpoint directory '
                    '(converted, or a training workdir), '
                    "or 'best' (highest validation mIoU) / 'latest' of the "
                    "--workdir's checkpoints (default: best when kept, else latest).")
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                  'eval/predict: network compute dtype.')
flags.DEFINE_multi_string('input', [], 'predict: image files, folders or list files; '
                          'a video file or camera index (0) writes an overlay video')
flags.DEFINE_bool('video', False, 'predict: treat a folder --input as the frames of '
                  'one clip (overlay video + class maps).')
flags.DEFINE_string('list_root', None, "predict: folder that a list file's "
                    "entries are relative to (default: the list file's folder).")
flags.DEFINE_string('dataset', None, 'predict: palette and class names (cityscapes, '
                    "lip, pascal_ctx, ...); default: the checkpoint's dataset.")
flags.DEFINE_bool('cityscapes_test_format', False, 'predict: also write labelId '
                  'PNGs for the Cityscapes test server (test_results/).')
flags.DEFINE_bool('sliding', False, "predict: sliding-window inference (the "
                  "dataset's rule and window, or --crop_size).")
flags.DEFINE_list('crop_size', None, 'predict: sliding window H,W.')
flags.DEFINE_list('scales', ['1.0'], 'predict: test scales, e.g. 0.5,0.75,1,1.25 '
                  '(1 = the image\'s own size).')
flags.DEFINE_bool('flip', False, 'predict: also predict the mirrored image (flip test).')
flags.DEFINE_bool('compilation_cache', True, 'Keep compiled XLA programs on disk '
                  'so a repeated or resumed run does not compile them again.')
flags.DEFINE_string('compilation_cache_dir', None, 'Folder of the compilation '
                    'cache (default: $JAX_COMPILATION_CACHE_DIR, else '
                    '~/.cache/hrseg_jax/xla).')
flags.DEFINE_bool('verbose', False, 'Show the libraries\' log messages (TensorFlow, '
                  'Orbax, JAX) too; as does --verbosity=0 (absl).')
DEFAULT_CONFIG = 'configs/demo.py'
EVAL_PROTOCOL = 'test'   # --mode eval's evaluator for eval.protocol=''


def _config_filename(argv) -> str:
  """The ``--config`` file named on the command line (or the default)."""
  filename = DEFAULT_CONFIG
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith('--config='):
      filename = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      filename = argv[i + 1]
  return filename


def _check_overridden_config(argv) -> None:
  """One line, exit 2, for ``--config.X=...`` without a config file to apply it to.

  ml_collections loads the config file as soon as the flag is defined when
  the command line overrides its fields, and a missing file would end in a
  traceback before any of this module's checks.
  """
  overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
  if not overrides:
    return
  filename = _config_filename(argv)
  given = any(a == '--config' or a.startswith('--config=') for a in argv[1:])
  filename = filename.split(':')[0]
  if not os.path.isfile(os.path.expanduser(filename)):
    print(f'error: {overrides[0]} needs a config file, and {filename!r} '
          f'({"given" if given else "the default --config"}) is not found: pass --config '
          "with the path of one of the repository's configs/*.py files", file=sys.stderr)
    sys.exit(2)


_check_overridden_config(sys.argv)
config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Experiment config file.',
                                lock_config=True)


def distributed_mode(env) -> str | None:
  """How this process joins a multi-process run (docs/distributed.md).

  Returns:
    'explicit': ``HRSEG_COORDINATOR`` (host:port), ``HRSEG_NUM_PROCESSES``
      and ``HRSEG_PROCESS_ID`` are given (scripts/launch_local.py).
    'auto': ``jax.distributed.initialize()`` detects the cluster: asked for
      with ``HRSEG_DISTRIBUTED=1`` (TPU VM slices, detected through the GCE
      metadata server: scripts/launch_tpu_vm.py sets it), or inside an
      ``srun`` step with several tasks, an Open MPI job with several ranks,
      GKE TPU or multi-slice variables, or ``JAX_COORDINATOR_ADDRESS``.
    None: a single process (an ``salloc`` shell or a one-task job included);
      ``HRSEG_DISTRIBUTED=0`` forces this.
  """
  flag = env.get('HRSEG_DISTRIBUTED', '').strip().lower()
  if flag in ('0', 'false', 'no'):
    return None
  if 'HRSEG_COORDINATOR' in env:
    return 'explicit'
  if flag in ('1', 'true', 'yes', 'auto'):
    return 'auto'
  if any(k in env for k in ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES',
                            'MEGASCALE_COORDINATOR_ADDRESS')):
    return 'auto'
  if 'SLURM_STEP_NODELIST' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
    return 'auto'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1:
    return 'auto'
  return None


def _maybe_initialize_distributed():
  """jax.distributed on clusters (TPU pods, Slurm, MPI, explicit env vars)."""
  import jax  # pylint: disable=g-import-not-at-top
  env = os.environ
  mode = distributed_mode(env)
  if mode == 'explicit':
    jax.distributed.initialize(
        coordinator_address=env['HRSEG_COORDINATOR'],
        num_processes=int(env['HRSEG_NUM_PROCESSES']),
        process_id=int(env['HRSEG_PROCESS_ID']))
  elif mode == 'auto':
    jax.distributed.initialize()


def predict_options(**overrides) -> dict:
  """The predict flags' values (defaults), as :func:`run` takes them."""
  out = dict(dataset=None, cityscapes_test_format=False, sliding=False,
             crop_size=None, scales=(1.0,), flip=False, list_root=None, video=False)
  out.update(overrides)
  return out


def _predict_eval_cfg(config, dataset, opts):
  """Test-time settings: the config's eval section when a config was given
  (flags override it), else from the checkpoint's dataset and the image."""
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
        dtype: str = 'float32', options: dict | None = None):
  """Runs one mode.

  Args:
    config: the experiment config; ``None`` for predict without ``--config``
      (settings from the checkpoint and each image).
    workdir: checkpoints, eval results and predictions go here.
    mode: 'train', 'eval' or 'predict'.
    checkpoint: eval/predict: 'best', 'latest' or a path (default: best when
      kept, else latest, of the workdir).
    inputs: predict: image files, folders or list files.
    dtype: eval/predict compute dtype name.
    options: predict flags (:func:`predict_options`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from hrseg_jax import paths, video  # pylint: disable=g-import-not-at-top
  # Relative paths, ~ and symlinks become absolute here, once.
  config = None if config is None else paths.resolve_config(config)
  workdir = paths.resolve(workdir)
  # A camera index (--input 0) stays as it is.
  inputs = [p if video.is_camera(p) else paths.resolve(p) for p in inputs]
  if mode == 'train':
    from hrseg_jax.train import loop  # pylint: disable=g-import-not-at-top
    return loop.train_and_evaluate(config, workdir)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hrseg_jax import checkpoints
  from hrseg_jax.checkpoints import info as checkpoint_info  # pylint: disable=g-import-not-at-top
  opts = predict_options(**(options or {}))
  if mode == 'predict' and not inputs:
    raise ValueError('--mode predict needs --input (image files, folders or list files)')
  if mode == 'predict':   # missing or empty inputs fail before the checkpoint loads
    _check_inputs(inputs, opts)
  if mode == 'eval':   # a bad eval.protocol or data fails before the checkpoint loads
    from hrseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    from hrseg_jax.eval import evaluator  # pylint: disable=g-import-not-at-top
    evaluator.protocol_of(config, EVAL_PROTOCOL)
    # A missing or unlabelled list, a wrong data.root, trainId labels.
    pipeline.labelled_source(config.data, str(config.eval.get('split', 'val')))
  dataset = checkpoint_info.check_dataset(opts['dataset'])
  try:
    path, step, described = checkpoint_info.select(checkpoint, workdir)
  except FileNotFoundError as e:
    if checkpoint:
      raise
    # No --checkpoint: the workdir's own checkpoints were looked for.
    raise FileNotFoundError(
        f'--mode {mode} without --checkpoint uses the checkpoints of --workdir, and '
        f'{workdir} has none: pass --checkpoint (a converted checkpoint folder or '
        'a training workdir)' + (', --workdir being where predictions go'
                                 if mode == 'predict' else '')) from e
  model_cfg, variables, meta = checkpoints.load_model(path, step=step)
  dataset = checkpoint_info.check_dataset(dataset, model_cfg['num_classes'])
  if mode == 'eval':
    _check_eval_classes(config, int(model_cfg['num_classes']), described)
  main_process = jax.process_index() == 0
  if checkpoint not in (None, '', 'best', 'latest'):   # a path: which step of it
    shown = checkpoints.resolve_step(path, step)
    described += f' (step {shown})' if shown else ' (converted weights, step 0)'
  if main_process:   # what was loaded: the checkpoint's own model, whatever the config says
    print(f'{mode}: {described}: {_model_line(model_cfg)}', flush=True)
    if meta.get('initialised'):   # convert of a backbone: the head is random
      print(f'warning: {len(meta["initialised"])} tensors of this checkpoint (the '
            'segmentation head) were freshly initialised by convert, not trained: '
            f'its {"predictions" if mode == "predict" else "scores"} are those of an '
            'untrained head; train from it (train.init_from) first', flush=True)
  compute = jnp.dtype(dtype)
  if mode == 'eval':
    return _evaluate(config, workdir, model_cfg, variables, compute)
  from hrseg_jax import predict  # pylint: disable=g-import-not-at-top
  if dataset is None:
    dataset = (config.data.name if config is not None
               else checkpoint_info.dataset_of(meta))
  eval_cfg = _predict_eval_cfg(config, dataset, opts)
  if main_process:
    print(f'predict: palette {dataset or "generic (pass --dataset)"}; '
          + predict.describe_settings(eval_cfg) + f', {compute.name} compute', flush=True)
  if video.is_video_input(list(inputs), opts['video']):
    return video.predict_video(
        model_cfg, variables, inputs[0], os.path.join(workdir, 'predictions'),
        palette=dataset or '', dtype=compute, eval_cfg=eval_cfg,
        batch_size=int(config.eval.batch_size) if config is not None else 8,
        log=(lambda line: print(line, flush=True)) if main_process else (lambda _: None))
  return predict.predict(model_cfg, variables, list(inputs),
                         os.path.join(workdir, 'predictions'),
                         palette=dataset or '', eval_cfg=eval_cfg,
                         cityscapes_test_format=opts['cityscapes_test_format'],
                         list_root=paths.resolve(opts['list_root']), dtype=compute,
                         log=(lambda line: print(line, flush=True))
                         if main_process else None)


def _model_line(model_cfg) -> str:
  """``hrnet w48+OCR, 19 classes, align_corners=True``: the loaded model."""
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  return (f'{registry.model_name(model_cfg)}, {model_cfg["num_classes"]} classes'
          + (', align_corners=True' if model_cfg.get('align_corners') else ''))


def _check_inputs(inputs, opts) -> None:
  """Raises the error :mod:`hrseg_jax.predict` would raise for ``inputs``
  (a missing file, a folder without images, a bad list), or for a missing
  video file, without reading any image."""
  from hrseg_jax import paths, predict, video  # pylint: disable=g-import-not-at-top
  if video.is_video_input(list(inputs), opts['video']):
    if opts['cityscapes_test_format']:
      raise ValueError('--cityscapes_test_format writes the test server\'s PNGs of '
                       'images; a video has none (drop the flag)')
    source = os.fspath(inputs[0])
    if not video.is_camera(source) and not os.path.exists(source):
      raise FileNotFoundError(f'{source}: no such file or directory')
    return
  predict.resolve_inputs(list(inputs), paths.resolve(opts['list_root']),
                         cityscapes_test_format=opts['cityscapes_test_format'])


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


def _evaluate(config, workdir: str, model_cfg, variables, dtype) -> dict:
  """``--mode eval``: the evaluator of ``eval.protocol`` (default: test) on
  the devices' mesh; the IoU table and ``<workdir>/eval/metrics.json``."""
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
  ev.report(metrics)
  log(f'eval: wrote {paths.shown(os.path.join(out_dir, "metrics.json"))} and confusion.png')
  return metrics


def _flag_options() -> dict:
  def floats(values, name):
    try:
      out = tuple(float(v) for v in values)
    except ValueError as e:
      raise ValueError(f'--{name}={",".join(values)}: expected numbers') from e
    # Named as typed (the checks of eval.scales / eval.crop_size name the config).
    if not all(math.isfinite(v) and v > 0 for v in out):
      raise ValueError(f'--{name}={",".join(values)}: expected positive numbers')
    return out
  crop = None
  if FLAGS.crop_size:
    crop = tuple(int(v) for v in floats(FLAGS.crop_size, 'crop_size'))
    if len(crop) != 2 or min(crop) < 1:
      raise ValueError(f'--crop_size={",".join(FLAGS.crop_size)}: expected H,W')
  return predict_options(
      dataset=FLAGS.dataset, cityscapes_test_format=FLAGS.cityscapes_test_format,
      sliding=FLAGS.sliding, crop_size=crop, list_root=FLAGS.list_root,
      scales=floats(FLAGS.scales, 'scales'), flip=FLAGS.flip, video=FLAGS.video)


def main(argv):
  if len(argv) > 1:
    # --input photos/*.png: the shell's second file onwards arrive here.
    files = all(os.path.exists(a) for a in argv[1:])
    print(f'error: unexpected arguments {argv[1:]} (flags are --name=value; '
          'see --help)' + ('; --input takes one path: repeat it (--input a.png '
                           '--input b.png) or give the folder' if files else ''),
          file=sys.stderr)
    sys.exit(2)
  if not FLAGS.workdir:
    print('error: --workdir is required: the folder for checkpoints, logs and '
          'results (see --help)', file=sys.stderr)
    sys.exit(2)
  from hrseg_jax import console  # pylint: disable=g-import-not-at-top
  console.configure(verbose=FLAGS.verbose or (FLAGS['verbosity'].present
                                              and FLAGS.verbosity >= 0))
  try:
    compile_cache.configure(FLAGS.compilation_cache, FLAGS.compilation_cache_dir)
    _maybe_initialize_distributed()
    # predict without --config: settings from the checkpoint and the images.
    without_config = FLAGS.mode == 'predict' and not FLAGS['config'].present
    if not without_config:
      _require_config_file()
    config = None if without_config else FLAGS.config
    _prepare_tensorflow_if_used(config)
    run(config, FLAGS.workdir, FLAGS.mode, FLAGS.checkpoint, FLAGS.input,
        dtype=FLAGS.dtype, options=_flag_options())
  except (OSError, ValueError, KeyError, RuntimeError) as e:
    msg = str(e).strip().replace('\n', ' ') or type(e).__name__
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(2)


def _prepare_tensorflow_if_used(config) -> None:
  """Imports TensorFlow first, quietly and off the GPUs, if this run may use it.

  It is not needed otherwise (its import takes seconds), but when installed
  etils reads ``gs://`` paths through its gfile, and ``data.source='tfds'``
  reads through TFDS: imported here, it prints nothing and leaves the GPUs'
  memory to JAX (:func:`hrseg_jax.console.import_tensorflow_quietly`).
  """
  from hrseg_jax import paths  # pylint: disable=g-import-not-at-top
  tree = config.to_dict() if config is not None else {}
  values = [FLAGS.workdir, FLAGS.checkpoint or '', *(FLAGS.input or [])]
  for field in paths.CONFIG_PATH_FIELDS:   # the config's paths
    section, name = field.split('.')
    values.append(str(tree.get(section, {}).get(name) or ''))
  if (any(paths.is_url(v) for v in values)
      or tree.get('data', {}).get('source') == 'tfds'):
    from hrseg_jax import console  # pylint: disable=g-import-not-at-top
    try:
      console.import_tensorflow_quietly()
    except Exception:  # pylint: disable=broad-except
      pass   # a broken TensorFlow: whatever needs it reports it


def _require_config_file():
  """One line, exit 2, when the ``--config`` file (or its default) is missing."""
  filename = config_flags.get_config_filename(FLAGS['config']).split(':')[0]
  if not os.path.isfile(os.path.expanduser(filename)):
    given = 'given' if FLAGS['config'].present else 'default'
    print(f'error: config file {filename!r} ({given}) not found: pass --config with the '
          'path of one of the repository\'s configs/*.py files', file=sys.stderr)
    sys.exit(2)


def _one_line(message) -> str:
  """A message on one line; a traceback folded into it becomes its last line."""
  text = str(message)
  marker = 'Traceback (most recent call last):'
  if marker in text:
    head = text.split(marker)[0].strip()
    last = text.strip().splitlines()[-1].strip()
    text = f'{head} {last}' if head else last
  return ' '.join(text.split())


def _missing_field(error: BaseException) -> tuple[str, str]:
  """(field, suggestion) of ml_collections' error for a field it lacks.

  Its KeyError (wrapped in an AttributeError for attribute access) reads
  ``'name'`` or ``'name'\\nDid you mean "other" instead of "name"?``.
  """
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  first, _, rest = text.partition('\n')
  return first.strip('"\''), ' '.join(rest.split())


def _similar_fields(argv, where: str, limit: int = 2) -> list[str]:
  """Fields anywhere in the config whose path is like ``where``'s
  (``config.train.eval_every_steps`` -> ``eval.every_steps``)."""
  import difflib  # pylint: disable=g-import-not-at-top
  from hrseg_jax.config_utils import load_config_file  # pylint: disable=g-import-not-at-top
  try:
    config = load_config_file(os.path.expanduser(_config_filename(argv)))
  except Exception:  # pylint: disable=broad-except
    return []

  def paths(node, prefix=''):
    for key in node.keys():
      value = node[key]
      if hasattr(value, 'keys'):
        yield from paths(value, f'{prefix}{key}.')
      yield f'{prefix}{key}'

  fields = list(paths(config))
  asked = where.split('.', 1)[1] if where.startswith('config.') else where
  flat = lambda p: p.replace('.', '_')  # noqa: E731
  leaf = asked.rsplit('.', 1)[-1]
  exact = [f for f in fields if flat(f) in (flat(asked), flat(leaf))
           or flat(f).endswith('_' + flat(leaf))]
  if exact:
    return exact[:limit]
  by_flat = {flat(f): f for f in fields}
  return [by_flat[m] for m in difflib.get_close_matches(flat(asked), by_flat, n=limit,
                                                         cutoff=0.75)]


def _parse_flags(argv):
  """absl flag parsing with one-line errors for bad ``--config.*`` overrides."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    # A config file that raises comes with its traceback in the message.
    print(f'error: {_one_line(e)}', file=sys.stderr)
  except (AttributeError, KeyError) as e:
    field, hint = _missing_field(e)
    bad = [a for a in argv if a.startswith('--config.') and field in a.split('=')[0]]
    where = bad[0].split('=')[0][2:] if bad else field
    close = _similar_fields(argv, where)
    if close:
      hint = 'did you mean ' + ' or '.join(f'--config.{c}' for c in close) + '?'
    print(f'error: unknown config field {where!r} (no field {field!r}'
          f'{"; " + hint if hint else ""})', file=sys.stderr)
  except (OSError, ValueError, TypeError) as e:
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
  sys.exit(2)


def entry():
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    # Ctrl-C where the training loop's own handler is not installed (start-up,
    # --mode eval/predict): nothing to save, and no traceback.
    print('stopped by Ctrl-C', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  entry()
