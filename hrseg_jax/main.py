"""python -m hrseg_jax.main --config configs/X.py --workdir DIR [--mode train|eval|predict]

Trains (resuming from DIR's checkpoints), evaluates a checkpoint, or predicts
class maps for images, videos or a camera. Override any field of the config
with --config.a.b=value (after --config); see README.md.
"""
from __future__ import annotations

import math
import os
import sys

if __name__ == '__main__':   # Ctrl-C while the modules below import: one line
  from hrseg_jax import pipes
  pipes.stop_at_once_on_ctrl_c()

# TensorFlow is not needed here (TensorBoard files go through tensorboardX),
# but when installed TFDS and etils' gfile may import it: keep it quiet and
# off the accelerators (hrseg_jax.console).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags
from ml_collections import config_flags

from hrseg_jax import command_line, compile_cache, distributed, modes

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
flags.DEFINE_bool('sliding', False, "eval/predict: sliding-window inference (the "
                  "dataset's rule and window, or --crop_size).")
flags.DEFINE_list('crop_size', None, 'eval/predict: sliding window H,W.')
flags.DEFINE_list('scales', ['1.0'], 'eval/predict: test scales, e.g. 0.5,0.75,1,1.25 '
                  '(eval: of eval.base_size; predict without --config: 1 = the '
                  'image\'s own size).')
flags.DEFINE_bool('flip', False, 'eval/predict: also predict the mirrored image (flip '
                  'test).')
flags.DEFINE_bool('compilation_cache', True, 'Keep compiled XLA programs on disk '
                  'so a repeated or resumed run does not compile them again.')
flags.DEFINE_string('compilation_cache_dir', None, 'Folder of the compilation '
                    'cache (default: $JAX_COMPILATION_CACHE_DIR, else '
                    '~/.cache/hrseg_jax/xla).')
flags.DEFINE_bool('verbose', False, 'Show the libraries\' log messages (TensorFlow, '
                  'Orbax, JAX) too; as does --verbosity=0 (absl).')

# --config.X=... overrides load the config file while the flag is defined:
# a missing file is one line, before ml_collections' traceback.
command_line.check_overridden_config(sys.argv)
config_flags.DEFINE_config_file('config', command_line.DEFAULT_CONFIG,
                                'Experiment config file.', lock_config=True)


def _flag_options() -> dict:
  """The eval/predict flags as :func:`hrseg_jax.modes.run` takes them."""
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
  return modes.predict_options(
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
    distributed.maybe_initialize()
    compile_cache.share_between_processes(distributed.joined())
    # predict without --config: settings from the checkpoint and the images.
    without_config = FLAGS.mode == 'predict' and not FLAGS['config'].present
    overrides = [a.split('=')[0] for a in sys.argv[1:] if a.startswith('--config.')]
    if without_config and overrides:   # they would change a config nobody reads
      raise ValueError(f'{overrides[0]} needs --config: predict without --config takes '
                       'its settings from the checkpoint and the images (--scales, '
                       '--flip, --sliding and --crop_size change them)')
    if not without_config:
      command_line.require_config_file()
    config = None if without_config else FLAGS.config
    console.import_tensorflow_if_used(
        config, [FLAGS.workdir, FLAGS.checkpoint or '', *(FLAGS.input or [])])
    result = modes.run(config, FLAGS.workdir, FLAGS.mode, FLAGS.checkpoint, FLAGS.input,
                       dtype=FLAGS.dtype, options=_flag_options(),
                       config_given=FLAGS['config'].present)
    if modes.exit_code(FLAGS.mode, result):   # Ctrl-C before the first step
      sys.exit(modes.exit_code(FLAGS.mode, result))
  except (OSError, ValueError, KeyError, RuntimeError) as e:
    msg = str(e).strip().replace('\n', ' ') or type(e).__name__
    print(f'{distributed.error_prefix()}error: {msg}', file=sys.stderr)
    distributed.exit_after_error(2)   # not held by jax.distributed's exit barrier


def entry():
  # Ctrl-C where the training loop's own handler is not installed (start-up,
  # --mode eval/predict): one line and exit 130, as the other commands.
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(lambda: app.run(main, flags_parser=command_line.parse_flags))


if __name__ == '__main__':
  entry()
