"""eval.* / data.* / train.dtype values of the wrong kind, as a new user types
them: one ``error:`` line naming the field and what it takes, exit 2, before
the workdir is made (training) or the checkpoint is loaded (--mode eval,
--mode predict with --config), and nothing written; and --mode eval's warning
when --config's model is another one than the checkpoint's."""
from __future__ import annotations

import shutil

import pytest

from hrseg_jax import checkpoints
from hrseg_jax.models import registry
from test_cli_errors import REPO, _listing, _run_main
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

# A short run: without the checks, a bad value that is not used at start-up
# trains two steps (and float16 trains them without loss scaling).
SHORT = ('--config.train.num_steps=2', '--config.eval.every_steps=-1')
TAKES_SCALES = 'eval.scales takes numbers > 0, e.g. 0.5,0.75,1.0'
TAKES_SIZE = 'takes (height,width), two integers > 0, e.g. (512,1024)'


@pytest.fixture
def user_folder(tmp_path):
  """A folder with the repository's configs and a tiny 19-class checkpoint."""
  shutil.copytree(REPO / 'configs', tmp_path / 'configs')
  cfg = registry.resolve(dict(TINY_HRNET, num_classes=19))
  checkpoints.save_model(tmp_path / 'converted' / 'tiny19', tiny_hrnet_variables(cfg), cfg)
  return tmp_path


@pytest.mark.parametrize('args, line', [
    # The trial's: an evaluation two steps in read the scales.
    (('--config.eval.scales=0.5,x', '--config.eval.protocol=test',
      '--config.train.num_steps=4', '--config.eval.every_steps=2'),
     f'--config.eval.scales=0.5,x: {TAKES_SCALES}'),
    (('--config.data.image_size=(128,)', *SHORT),
     f'--config.data.image_size=(128,): data.image_size {TAKES_SIZE}'),
    (('--config.eval.crop_size', '(64,)', *SHORT),   # the two-word form
     '--config.eval.crop_size=(64,): eval.crop_size takes (height,width), two integers > 0, '
     'or None, e.g. (512,1024)'),
    (('--config.eval.mode=slide', *SHORT),
     '--config.eval.mode=slide: eval.mode takes one of whole, sliding, e.g. whole'),
    (('--config.data.eval_mode=short_side', *SHORT),
     '--config.data.eval_mode=short_side: data.eval_mode takes one of full, fixed, '
     'short_side_pad, e.g. full'),
    (('--config.data.eval_stride=0', *SHORT),
     '--config.data.eval_stride=0: data.eval_stride takes an integer > 0, e.g. 8'),
    (('--config.train.dtype=float16', *SHORT),
     '--config.train.dtype=float16: train.dtype takes float32 or bfloat16 (float16 would '
     'need loss scaling, which training does not do), e.g. bfloat16'),
    # --mode eval: before the checkpoint loads (or its missing one is reported).
    (('--mode', 'eval', '--config.eval.scales=abc'), f'--config.eval.scales=abc: {TAKES_SCALES}'),
    (('--mode', 'eval', '--checkpoint', 'converted/tiny19', '--config.eval.scales=0.5,-1'),
     f'--config.eval.scales=0.5,-1: {TAKES_SCALES}'),
    # --mode predict with --config reads its eval section: before the inputs.
    (('--mode', 'predict', '--input', 'photo.png', '--config.eval.scales=abc'),
     f'--config.eval.scales=abc: {TAKES_SCALES}'),
], ids=['scales-train', 'image_size', 'eval-crop_size', 'eval-mode', 'data-eval_mode',
        'eval_stride', 'float16', 'scales-eval', 'scales-eval-checkpoint', 'scales-predict'])
def test_a_bad_value_is_one_line_at_start(user_folder, args, line):
  before = _listing(user_folder)
  r = _run_main(user_folder, '--config', 'configs/demo.py', '--workdir', 'runs/x3', *args)
  assert r.returncode == 2, r.stderr
  assert r.stderr == f'error: {line}\n'
  assert r.stdout == ''
  assert _listing(user_folder) == before


def test_eval_warns_when_the_config_model_is_another(user_folder):
  """The demo config's model is not the checkpoint's (another custom layout):
  the checkpoint's is evaluated, and a warning says so."""
  r = _run_main(user_folder, '--config', 'configs/demo.py', '--workdir', 'runs/e',
                '--mode', 'eval', '--checkpoint', 'converted/tiny19',
                '--config.eval.num_examples=2', '--scales=1,1.5', '--flip')
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  # --scales and --flip change the config's eval settings (they were ignored).
  settings = [x for x in lines if x.startswith('eval: ') and 'scales ' in x]
  assert len(settings) == 1 and 'scales 1,1.5, flip' in settings[0], r.stdout
  warnings = [x for x in lines if x.startswith('warning:')]
  assert warnings == [
      "warning: the checkpoint's model (hrnet custom, 19 classes) differs from the "
      "config's (hrnet custom, 19 classes; model.stages): the checkpoint's is evaluated"]
  assert lines.index(warnings[0]) == 1   # right after the line of what was loaded
