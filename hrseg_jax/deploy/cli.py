"""``python -m hrseg_jax.export CKPT OUT --format onnx|savedmodel|stablehlo``.

Writes the export to a temporary path, runs it in its own runtime against
the JAX model on the same input (unless ``--no-verify``), and only then moves
it (and its JSON card) into place: a failed check leaves nothing behind.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
import uuid
import warnings
from typing import Callable

import numpy as np

from hrseg_jax import console, pipes

FORMATS = ('pytorch', 'onnx', 'savedmodel', 'stablehlo')
EXTENSIONS = {'.pth': 'pytorch', '.pt': 'pytorch', '.pth.tar': 'pytorch', '.onnx': 'onnx',
              '.stablehlo': 'stablehlo', '.savedmodel': 'savedmodel'}
PACKAGES = {'onnx': ('jax2onnx', 'onnx', 'onnxruntime'),
            'savedmodel': ('orbax-export', 'tensorflow-cpu', 'tensorflow'),
            'stablehlo': ()}


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The deployment flags of ``python -m hrseg_jax.export``."""
  p.add_argument('--format', choices=FORMATS, default=None,
                 help='output format (default: from the extension: .pth, .onnx, '
                 '.stablehlo, .savedmodel; none: pytorch; another one is refused)')
  p.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=(512, 1024),
                 help='input height and width of the exported graph (default 512 1024)')
  p.add_argument('--dynamic-size', action='store_true',
                 help='free height and width (multiples of 32): StableHLO exports '
                 '(ONNX where jax2onnx can express it); --size is then the size of '
                 'the check')
  p.add_argument('--with-pre-post', action='store_true',
                 help='fold normalisation (uint8 RGB in) and upsample + argmax '
                 '(int32 class maps out) into the graph')
  p.add_argument('--input-dtype', choices=('float32', 'uint8'), default=None,
                 help='float32: normalised images; uint8: RGB, normalised in the graph '
                 '(default: uint8 with --with-pre-post, else float32)')
  p.add_argument('--opset', type=int, default=18, help='ONNX opset (default 18; >= 17)')
  p.add_argument('--dataset', default=None,
                 help='dataset whose class names go into the card (default: the '
                 "checkpoint's, else cityscapes for 19 classes)")
  p.add_argument('--no-verify', action='store_true',
                 help='skip running the export against the JAX model')


def output_format(args) -> str:
  """``--format``, else the format of the output's extension (none: pytorch).

  Raises:
    ExportError: an extension that names no format (a typo such as
      ``.onx`` would otherwise write a PyTorch state dict), or one that
      names another format than ``--format``.
  """
  from hrseg_jax.deploy.errors import ExportError  # pylint: disable=g-import-not-at-top
  name = os.fspath(args.output).rstrip('/\\')
  ext = ('.pth.tar' if name.lower().endswith('.pth.tar')
         else os.path.splitext(name)[1].lower())
  implied = EXTENSIONS.get(ext, None if ext else 'pytorch')
  if args.format:
    if ext in EXTENSIONS and implied != args.format:
      raise ExportError(f'{name}: the extension {ext} says {implied}, --format says '
                        f'{args.format}; make them agree')
    return args.format
  if implied is None:
    raise ExportError(f'{name}: the extension {ext} names no export format; use '
                      '.pth, .onnx, .stablehlo or .savedmodel, or pass --format')
  return implied


def _dataset(args, cfg, meta) -> str | None:
  if args.dataset:
    return args.dataset
  from hrseg_jax.checkpoints import info as checkpoint_info  # pylint: disable=g-import-not-at-top
  # A training checkpoint records its config's dataset, a converted one its own.
  recorded = checkpoint_info.dataset_of(meta)
  if recorded:
    return recorded
  return 'cityscapes' if int(cfg['num_classes']) == 19 else None


def _readable(message: str) -> str:
  """jax2onnx's message with its placeholder for a free dimension shown as '?'."""
  return message.replace('JAX2ONNX_DYNAMIC_DIM_SENTINEL', '?')


def _temp_path(output: str) -> str:
  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  return os.path.join(parent, f'.{os.path.basename(output)}.tmp-{uuid.uuid4().hex[:8]}')


def _remove(path: str) -> None:
  if os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.exists(path):
    os.unlink(path)


# The lowered module's source locations name files from the package down
# (hrseg_jax/models/hrnet.py), other files by name: an export carries no
# folder of the machine that wrote it (its bytes then depend only on the
# model and the software versions, not on where they are installed).
SOURCE_PATH_PREFIX = r'^.*[/\\](?=hrseg_jax[/\\])|^.*[/\\]'


@contextlib.contextmanager
def _relative_source_paths():
  import jax  # pylint: disable=g-import-not-at-top
  name = 'jax_hlo_source_file_canonicalization_regex'
  before = getattr(jax.config, name)
  jax.config.update(name, SOURCE_PATH_PREFIX)
  try:
    yield
  finally:
    jax.config.update(name, before)


def _write(fmt: str, tmp: str, cfg, variables, shape, dtype, pre: bool, post: bool,
           opset: int) -> dict:
  """Writes the export to ``tmp``; returns card extras.

  ``shape`` is (H, W, C), H and W symbolic strings for a dynamic size.
  """
  with _relative_source_paths():
    return _write_export(fmt, tmp, cfg, variables, shape, dtype, pre, post, opset)


def _write_export(fmt: str, tmp: str, cfg, variables, shape, dtype, pre: bool, post: bool,
                  opset: int) -> dict:
  from hrseg_jax.deploy import graph  # pylint: disable=g-import-not-at-top
  from hrseg_jax import files  # pylint: disable=g-import-not-at-top
  if fmt == 'stablehlo':
    from hrseg_jax.deploy import stablehlo  # pylint: disable=g-import-not-at-top
    fn = graph.serving_fn(cfg, variables, pre=pre, post=post)
    files.write_bytes_atomic(tmp, stablehlo.export_bytes(fn, shape, dtype))
    return {'loader': 'hrseg_jax.deploy.stablehlo.load(path)(images)',
            'platforms': ['cpu', 'cuda']}
  if fmt == 'onnx':
    from hrseg_jax.deploy import onnx_export  # pylint: disable=g-import-not-at-top
    fn = graph.serving_fn(cfg, variables, pre=pre, post=post)
    proto = onnx_export.export_model(fn, shape, dtype, opset=opset)
    files.write_bytes_atomic(tmp, proto.SerializeToString())
    return {'opset': opset}
  from hrseg_jax.deploy import savedmodel  # pylint: disable=g-import-not-at-top
  fn = graph.apply_fn(cfg, pre=pre, post=post)
  with_bytes = pre and post
  savedmodel.write(tmp, fn, graph.float_variables(variables), shape, dtype,
                   with_bytes=with_bytes)
  sigs = {'serving_default': 'images -> output'}
  if with_bytes:
    sigs[savedmodel.BYTES_SIGNATURE] = ('images: encoded image strings -> output (class maps) '
                                        '(resized to the exported size first)')
  return {'signatures': sigs}


def sample_input(shape, dtype, batch: int = 2, seed: int = 0) -> np.ndarray:
  """A fixed pseudo-random batch: uint8 RGB, or its normalised float32.

  Each pixel is drawn so that the normalised image has mean 0 and standard
  deviation about 1 (clipped to 0..255) per channel, as photographs
  normalised with the ImageNet statistics have (and as models are trained
  on).  Uniform noise over
  0..255 would not: its normalised mean and spread are off, which drives a
  network's activations far from their training range, where float32 runs
  of the same graph differ by percents, whatever the runtime.
  """
  from hrseg_jax.data.imagenet_stats import MEAN, STD  # pylint: disable=g-import-not-at-top
  from hrseg_jax.inference import normalize  # pylint: disable=g-import-not-at-top
  z = np.random.default_rng(seed).standard_normal((batch, *shape))
  rgb = np.clip(np.rint(255 * (MEAN + STD * z)), 0, 255).astype(np.uint8)
  return rgb if np.dtype(dtype) == np.uint8 else normalize(rgb)


def verify(fmt: str, path: str, cfg, variables, shape, dtype, pre: bool,
           post: bool) -> dict:
  """Runs the export and the JAX model on the same batch; returns compare()."""
  import jax  # pylint: disable=g-import-not-at-top
  from hrseg_jax.deploy import graph, runtime  # pylint: disable=g-import-not-at-top
  from hrseg_jax.deploy.errors import ExportError  # pylint: disable=g-import-not-at-top
  x = sample_input(shape, dtype)
  reference = np.asarray(jax.jit(graph.serving_fn(cfg, variables, pre=pre, post=post))(x))
  try:
    output = runtime.load(fmt, path)(x)
  except ExportError:
    raise
  except Exception as e:  # a runtime that rejects the graph: report, write nothing
    raise ExportError(f'{runtime.runtime_version(fmt)} cannot run the {fmt} export '
                      f'({console.first_line(e)}); nothing was written') from None
  result = runtime.compare(reference, output)
  if not result['ok'] and 'expected_shape' not in result:
    # Says whether the model itself amplifies float32 rounding on this batch.
    logits = graph.UPSAMPLED_LOGITS if post else False
    float32 = (np.asarray(jax.jit(graph.serving_fn(cfg, variables, pre=pre, post=logits))(x))
               if post else reference)
    with jax.enable_x64(True):
      exact = np.asarray(jax.jit(graph.serving_fn(
          cfg, variables, pre=pre, post=logits, dtype=np.float64))(x))
    result.update(runtime.float32_error(float32, exact))
  result['runtime'] = runtime.runtime_version(fmt)
  result['batch'] = int(x.shape[0])
  return result


def export(args, log: Callable[[str], None] = print) -> int:
  """Writes a non-PyTorch export (``args`` from :func:`add_arguments`)."""
  from hrseg_jax import paths  # pylint: disable=g-import-not-at-top
  from hrseg_jax.deploy import card as cards  # pylint: disable=g-import-not-at-top
  from hrseg_jax.deploy.errors import ExportError  # pylint: disable=g-import-not-at-top
  from hrseg_jax.deploy import runtime  # pylint: disable=g-import-not-at-top
  from hrseg_jax import files  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  fmt = output_format(args)
  output = os.fspath(args.output).rstrip('/\\')
  card_file = cards.card_path(output)
  for path in (output, card_file):
    if os.path.lexists(path) and not args.overwrite:
      raise ExportError(f'output exists: {path} (pass --overwrite to replace it)')
  if os.path.isdir(output) and not os.path.isfile(os.path.join(output, 'saved_model.pb')):
    raise ExportError(f'output is a directory that is not a SavedModel: {output}')
  paths.check_writable(output, 'output path')
  h, w = args.size
  if h < 1 or w < 1:
    raise ExportError(f'--size {h} {w}: height and width must be positive')
  dynamic = bool(getattr(args, 'dynamic_size', False))
  if dynamic and fmt == 'savedmodel':
    raise ExportError('--dynamic-size: SavedModel exports take a fixed --size H W; '
                      'a StableHLO export keeps the height and width free')
  if dynamic and (h % 32 or w % 32):
    raise ExportError(f'--size {h} {w}: with --dynamic-size the check size must be '
                      'multiples of 32')
  if fmt == 'onnx' and args.opset < 17:   # before the checkpoint loads
    raise ExportError(f'--opset {args.opset}: ONNX exports need opset 17 or newer')
  from hrseg_jax.deploy.errors import FORMAT_MODULES, require  # pylint: disable=g-import-not-at-top
  for module in FORMAT_MODULES[fmt]:  # before any work: a missing extra is one line
    if module != 'onnxruntime' or not args.no_verify:
      require(module, f'{fmt} export')
  pre = args.with_pre_post or args.input_dtype == 'uint8'
  if args.with_pre_post and args.input_dtype == 'float32':
    raise ExportError('--with-pre-post takes uint8 images; drop --input-dtype float32')
  post = args.with_pre_post
  from hrseg_jax.checkpoints import info as checkpoint_info  # pylint: disable=g-import-not-at-top
  cfg, variables, meta, step = checkpoint_info.load_step(paths.resolve(args.checkpoint),
                                                         args.step)
  cfg = registry.resolve(cfg)
  checkpoint_info.check_dataset(args.dataset, cfg['num_classes'])
  from hrseg_jax.deploy import graph  # pylint: disable=g-import-not-at-top
  if dynamic:
    problem = graph.dynamic_size_problem(cfg, variables, pre=pre, post=post)
    if problem:
      raise ExportError(f'--dynamic-size: this {cfg["arch"]} model cannot take a free '
                        f'height and width: {problem}; export a fixed --size H W instead')
  shape, dtype = (h, w, 3), (np.uint8 if pre else np.float32)
  # The folders made for the output go again if the export fails.
  made = files.missing_folders(os.path.dirname(os.path.abspath(output)))
  tmp = _temp_path(output)
  t0 = time.perf_counter()
  try:
    try:
      with warnings.catch_warnings():
        if dynamic:   # jax2onnx's symbolic sizes warn about float64 dims
          warnings.simplefilter('ignore', UserWarning)
        extra = _write(fmt, tmp, cfg, variables, graph.symbolic_image_shape(shape, dynamic),
                       dtype, pre, post, args.opset)
    except (TypeError, ValueError, AttributeError) as e:
      if not (dynamic and fmt == 'onnx'):
        raise
      raise ExportError(
          f'--dynamic-size: jax2onnx cannot keep the height and width of this '
          f'{cfg["arch"]} model free ({_readable(console.first_line(e))}); export ONNX '
          'with a fixed --size H W, or StableHLO with --dynamic-size') from None
    # Which weights: a workdir's latest step unless --step (predict takes its best).
    source = f'{args.checkpoint} ' + (f'(step {step})' if step else '(converted weights)')
    log(f'exported {fmt} of {source} in {time.perf_counter() - t0:.1f} s')
    if not args.no_verify:
      check = verify(fmt, tmp, cfg, variables, shape, dtype, pre, post)
      log(f'checked with {check["runtime"]} against JAX (batch {check["batch"]}): '
          f'{runtime.describe(check)}')
      if not check['ok']:
        raise ExportError(f'{fmt} export does not match the JAX model '
                          f'({runtime.describe(check)}); nothing was written '
                          '(--no-verify writes it unchecked)')
      extra['verification'] = check
    else:   # said on the console and in the card (verification: null)
      log('not checked against the JAX model (--no-verify)')
      extra['verification'] = None
    card = cards.make_card(
        fmt=fmt, output=output, model_cfg=cfg, dataset=_dataset(args, cfg, meta),
        height=graph.SYMBOLIC_SIZE[0] if dynamic else h,
        width=graph.SYMBOLIC_SIZE[1] if dynamic else w,
        pre=pre, post=post, checkpoint=os.fspath(args.checkpoint), checkpoint_step=step,
        variables=variables, extra=extra, packages=PACKAGES[fmt])
    pipes.raise_if_ctrl_c()   # one pressed during it, that a callback lost
    if os.path.isdir(output):  # --overwrite of an earlier SavedModel
      shutil.rmtree(output)
    os.replace(tmp, output)
  except BaseException:
    _remove(tmp)
    files.remove_empty_folders(made)
    raise
  files.write_json_atomic(card_file, card)
  log(f'wrote {paths.shown(output)} and {paths.shown(card_file)}')
  return 0
