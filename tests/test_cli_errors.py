"""Bad paths and flags as a new user types them, through the real command lines
from a temporary folder with relative paths: one ``error:`` line, exit 2,
nothing written."""
from __future__ import annotations

import os
import shutil
import pathlib
import subprocess
import sys

from PIL import Image
import pytest

from hrseg_jax import checkpoints
from hrseg_jax import export as export_cli
from hrseg_jax import video
from hrseg_jax.convert import __main__ as convert_cli, pth_write
from hrseg_jax.convert import convert
from hrseg_jax.models import registry
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

REPO = pathlib.Path(__file__).resolve().parents[1]


def _listing(folder: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


def _one_error(capsys, main, argv) -> str:
  code = main(argv)
  err = capsys.readouterr().err
  assert code == 2, err
  assert len(err.splitlines()) == 1 and err.startswith('error: '), err
  return err.strip()


def _run_main(cwd, *args) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=f'{REPO}{os.pathsep}{REPO / "tests"}',
             JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'hrseg_jax.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
  """A folder with a tiny 5-class .pth, a text file and a converted checkpoint."""
  monkeypatch.chdir(tmp_path)
  cfg = registry.resolve(TINY_HRNET)
  variables = tiny_hrnet_variables(cfg)
  pth_write.save_pth(convert.to_state_dict(variables), tmp_path / 'tiny.pth')
  (tmp_path / 'notes.txt').write_text('hello\n')
  checkpoints.save_model(tmp_path / 'converted' / 'tiny', variables, cfg)
  return tmp_path


def test_a_file_given_as_checkpoint_folder(user_folder, capsys):
  """export / deploy export of a .pth or another file: convert it first."""
  before = _listing(user_folder)
  err = _one_error(capsys, export_cli.main, ['tiny.pth', 'out.pth'])
  assert err == ('error: tiny.pth is a file, not a checkpoint folder; a PyTorch '
                 '.pth must be converted first: python -m hrseg_jax.convert tiny.pth '
                 'converted/tiny')
  err = _one_error(capsys, export_cli.main, ['tiny.pth', 'out.stablehlo'])
  assert err.startswith('error: tiny.pth is a file, not a checkpoint folder; '
                        'a PyTorch .pth must be converted first')
  err = _one_error(capsys, export_cli.main, ['notes.txt', 'out.pth'])
  assert err == ('error: notes.txt is a file, not a checkpoint folder; pass a '
                 'folder written by python -m hrseg_jax.convert or a training --workdir')
  # A path below a regular file: not found, and which file is in the way.
  err = _one_error(capsys, export_cli.main, ['tiny.pth/out', 'out.pth'])
  assert err == ('error: checkpoint not found: tiny.pth/out (tiny.pth '
                 'is a file, not a folder)')
  err = _one_error(capsys, convert_cli.main, ['tiny.pth/out', 'out9'])
  assert err == ('error: checkpoint not found: tiny.pth/out (tiny.pth '
                 'is a file, not a folder)')
  assert _listing(user_folder) == before


def test_an_output_below_a_file(user_folder, capsys):
  before = _listing(user_folder)
  err = _one_error(capsys, convert_cli.main, ['tiny.pth', 'notes.txt/a/b'])
  assert err == ('error: cannot create notes.txt/a/b: notes.txt is a file, '
                 'not a folder; choose another output directory')
  err = _one_error(capsys, export_cli.main, ['converted/tiny', 'notes.txt/x.pth'])
  assert err == ('error: cannot create notes.txt/x.pth: notes.txt is a '
                 'file, not a folder; choose another output path')   # as typed, like .stablehlo
  err = _one_error(capsys, export_cli.main, ['converted/tiny', 'notes.txt/x.stablehlo'])
  assert err == ('error: cannot create notes.txt/x.stablehlo: notes.txt is a '
                 'file, not a folder; choose another output path')
  assert _listing(user_folder) == before


def test_dataset_of_another_class_count(user_folder, capsys):
  """--dataset lip (20 classes) on a 5-class model: names and colours would be wrong."""
  before = _listing(user_folder)
  err = _one_error(capsys, convert_cli.main, ['tiny.pth', 'out', '--dataset', 'lip'])
  assert err == ('error: tiny.pth: --dataset lip has 20 classes, the model has 5 '
                 '(datasets that fit: synthetic)')
  err = _one_error(capsys, export_cli.main, ['converted/tiny', 'out.stablehlo',
                                            '--dataset', 'cityscapes'])
  assert err == ('error: --dataset cityscapes has 19 classes, the model has 5 '
                 '(datasets that fit: synthetic)')
  assert _listing(user_folder) == before


def test_eval_with_a_config_of_another_class_count(user_folder):
  """--mode eval of a 5-class model with the Cityscapes config (19 classes):
  its labels would be scored against the wrong classes."""
  from hrseg_jax import modes  # pylint: disable=g-import-not-at-top
  from hrseg_jax import recipes  # pylint: disable=g-import-not-at-top
  from hrseg_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  # The val list and tree are there (they are checked first).
  synthetic.write_cityscapes_layout('data/cityscapes', num_train=0, num_val=1,
                                    image_size=(16, 32), list_dir='data/list/cityscapes')
  before = _listing(user_folder)
  with pytest.raises(ValueError) as info:
    modes.run(recipes.recipe('cityscapes', 'w18_small_v1'), 'runs/eval', 'eval',
              checkpoint='converted/tiny')
  assert str(info.value) == (
      'checkpoint converted/tiny has 5 classes, the config\'s dataset cityscapes has 19 '
      '(data.num_classes): evaluate it with the config of a 5-class dataset')
  assert _listing(user_folder) == before


def test_predict_pth_checkpoint_and_unreadable_video(user_folder):
  """--mode predict: a .pth as --checkpoint; a text file named .mp4 (no
  OpenCV/FFmpeg lines above ours)."""
  (user_folder / 'photos').mkdir()
  Image.new('RGB', (8, 8)).save(user_folder / 'photos' / 'a.png')   # (an empty one: refused first)
  (user_folder / 'bad.mp4').write_text('not a video\n')
  before = _listing(user_folder)
  r = _run_main(user_folder, '--mode', 'predict', '--checkpoint', 'tiny.pth',
                '--input', 'photos/a.png', '--workdir', 'runs/p')
  assert r.returncode == 2
  assert r.stderr == ('error: tiny.pth is a file, not a checkpoint folder; a '
                      'PyTorch .pth must be converted first: python -m hrseg_jax.convert '
                      'tiny.pth converted/tiny\n')
  r = _run_main(user_folder, '--mode', 'predict', '--checkpoint', 'converted/tiny',
                '--input', 'bad.mp4', '--workdir', 'runs/v')
  assert r.returncode == 2
  assert r.stderr == 'error: bad.mp4: OpenCV cannot read this video\n'
  # A palette of another class count than the model's.
  r = _run_main(user_folder, '--mode', 'predict', '--checkpoint', 'converted/tiny',
                '--input', 'photos/a.png', '--workdir', 'runs/v', '--dataset', 'lip')
  assert r.returncode == 2
  assert r.stderr == ('error: --dataset lip has 20 classes, the model has 5 '
                      '(datasets that fit: synthetic)\n')
  # Inputs are checked before any checkpoint is read (here: one that is not one).
  r = _run_main(user_folder, '--mode', 'predict', '--checkpoint', 'tiny.pth',
                '--input', 'photos/b.png', '--workdir', 'runs/p')
  assert r.returncode == 2
  assert r.stderr == 'error: photos/b.png: no such file or directory\n'
  (user_folder / 'empty').mkdir()
  before = _listing(user_folder)
  r = _run_main(user_folder, '--mode', 'predict', '--checkpoint', 'tiny.pth',
                '--input', 'empty', '--workdir', 'runs/p')
  assert r.returncode == 2
  assert r.stderr == 'error: empty: no .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp images found\n'
  assert _listing(user_folder) == before


def test_eval_data_checked_before_the_checkpoint(user_folder):
  """--mode eval with a val list it cannot use: one line before anything is
  loaded or printed (it printed the checkpoint, "eval: ? val images" and then
  the error); here the checkpoint is not even one."""
  config = str(REPO / 'configs/hrnet_w18_small_v2_cityscapes.py')
  before = _listing(user_folder)
  r = _run_main(user_folder, '--mode', 'eval', '--config', config, '--checkpoint', 'tiny.pth',
                '--workdir', 'runs/e', '--config.data.val_list=nope.lst')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == ('error: nope.lst: list file not found (generate it with '
                      'scripts/make_lists.py; for PASCAL-Context with '
                      'scripts/prepare_pascal_ctx.py)\n')
  (user_folder / 'test.lst').write_text('leftImg8bit/val/a.png\tgtFine/val/a.png\n')
  r = _run_main(user_folder, '--mode', 'eval', '--config', config, '--checkpoint', 'tiny.pth',
                '--workdir', 'runs/e', '--config.data.val_list=test.lst')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == ('error: data/cityscapes: data.root folder not found (the '
                      'paths in test.lst are relative to it)\n')
  assert _listing(user_folder) == sorted(before + ['test.lst'])


def test_predict_scales_checked_as_typed(user_folder):
  """--scales=0,1 was 'eval.scales must be positive', after the checkpoint
  had loaded and its line was printed; now one line naming the flag."""
  before = _listing(user_folder)
  r = _run_main(user_folder, '--mode', 'predict', '--checkpoint', 'converted/tiny',
                '--input', 'notes.txt', '--workdir', 'runs/p', '--scales=0,1')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == 'error: --scales=0,1: expected positive numbers\n'
  assert _listing(user_folder) == before


def test_predict_without_config_refuses_config_overrides(user_folder):
  """--mode predict without --config reads no config: a --config.* override
  (here of the default config, found in the working folder) changed
  nothing, silently."""
  (user_folder / 'configs').mkdir()
  shutil.copy(REPO / 'configs' / 'demo.py', user_folder / 'configs' / 'demo.py')
  before = _listing(user_folder)
  r = _run_main(user_folder, '--mode', 'predict', '--checkpoint', 'converted/tiny',
                '--input', 'notes.txt', '--workdir', 'runs/p', '--config.eval.flip=True')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == ('error: --config.eval.flip needs --config: predict without --config '
                      'takes its settings from the checkpoint and the images (--scales, '
                      '--flip, --sliding and --crop_size change them)\n')
  assert _listing(user_folder) == before


def test_training_refuses_the_flags_of_eval_and_predict(user_folder):
  """`--checkpoint latest` (or --input) given to a training run was ignored
  without a word: it resumed from --workdir whatever --checkpoint said."""
  (user_folder / 'configs').mkdir()
  shutil.copy(REPO / 'configs' / 'demo.py', user_folder / 'configs' / 'demo.py')
  before = _listing(user_folder)
  r = _run_main(user_folder, '--config', 'configs/demo.py', '--workdir', 'runs/t',
                '--checkpoint', 'converted/tiny')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == ('error: --checkpoint converted/tiny: --mode train resumes from the '
                      'checkpoints of --workdir; to start from other weights, pass '
                      '--config.train.init_from=PATH (a .pth or a converted checkpoint)\n')
  r = _run_main(user_folder, '--config', 'configs/demo.py', '--workdir', 'runs/t',
                '--input', 'notes.txt')
  assert r.stderr == 'error: --input notes.txt: --input is for --mode predict\n', r.stderr
  assert _listing(user_folder) == before


def test_no_camera_is_one_line_of_ours(capfd):
  """OpenCV's own warnings of a camera that does not open stay off the console."""
  with pytest.raises(OSError, match='--input 7: OpenCV cannot open camera 7'):
    video.open_frames('7')
  captured = capfd.readouterr()
  assert captured.err == '' and captured.out == ''


def test_eval_without_config_refuses_a_checkpoint_of_another_dataset(user_folder):
  """`--mode eval --checkpoint converted/cs` without --config scored a
  Cityscapes model on the default config's synthetic scenes and wrote their
  mIoU as its result; now one line naming the config to pass."""
  (user_folder / 'configs').symlink_to(REPO / 'configs')
  cfg = registry.resolve(dict(TINY_HRNET, num_classes=19))
  pth_write.save_pth(convert.to_state_dict(tiny_hrnet_variables(cfg)), user_folder / 'cs.pth')
  convert.convert('cs.pth', 'converted/cs', log=lambda *_: None)   # records cityscapes
  before = _listing(user_folder)
  r = _run_main(user_folder, '--mode', 'eval', '--checkpoint', 'converted/cs',
                '--workdir', 'runs/e')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == (
      'error: checkpoint converted/cs is a cityscapes model, and --mode eval without '
      '--config evaluates on the data of the default config (configs/demo.py: '
      'synthetic): pass --config with a cityscapes config, e.g. --config '
      "configs/hrnet_w48_cityscapes.py (the model is the checkpoint's whatever the "
      'config)\n')
  assert _listing(user_folder) == before


def test_eval_split_testval_names_the_field(user_folder):
  """The original's TEST_SET is a testval list; --config.eval.split=testval
  said "split must be one of ('train', 'val', 'test'), got 'testval'",
  naming no field and no way to evaluate testval."""
  before = _listing(user_folder)
  r = _run_main(user_folder, '--mode', 'eval', '--config',
                str(REPO / 'configs/hrnet_w48_lip.py'), '--checkpoint', 'tiny.pth',
                '--workdir', 'runs/e', '--config.eval.split=testval')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == (
      "error: eval.split='testval': expected one of 'train', 'val', 'test' (the "
      "original's testval is the val images at their own size, which the test protocol "
      "evaluates: keep eval.split='val', or read another list with "
      '--config.data.val_list=PATH)\n')
  assert _listing(user_folder) == before


def test_config_override_of_the_wrong_type_names_the_field(tmp_path):
  """--config.train.num_steps=abc gave Python's "invalid literal for int()
  with base 10: 'abc'": the field and the type it takes, exit 2, nothing
  written."""
  (tmp_path / 'configs').mkdir()
  shutil.copy(REPO / 'configs' / 'demo.py', tmp_path / 'configs' / 'demo.py')
  cases = (('train.num_steps=abc', "train.num_steps takes an integer, not 'abc'"),
           ('train.batch_size=1.5', "train.batch_size takes an integer, not '1.5'"),
           ('train.base_lr=fast', "train.base_lr takes a number, not 'fast'"),
           ('eval.flip=maybe', "eval.flip takes true or false, not 'maybe'"))
  for override, expected in cases:
    r = _run_main(tmp_path, '--config', 'configs/demo.py', '--workdir', 'runs/demo',
                  f'--config.{override}')
    assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
    assert r.stderr == f'error: --config.{override}: {expected}\n', r.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['configs']


_BROKEN_CONFIGS = {
    'syntax.py': ('def get_config(:\n', 'syntax.py, line 1: SyntaxError: invalid syntax'),
    'raises.py': ('def get_config():\n  return 1 / 0\n',
                  'raises.py, line 2: ZeroDivisionError: division by zero'),
    'checks.py': ('def get_config():\n  raise ValueError("crop larger than the images")\n',
                  'checks.py, line 2: ValueError: crop larger than the images'),
    'no_function.py': ('x = 1\n', 'no_function.py: no get_config() function'),
    'returns_dict.py': ('def get_config():\n  return {"seed": 1}\n',
                        'returns_dict.py: get_config() returned a dict, not an '
                        'ml_collections.ConfigDict'),
    'folder': (None, '--config folder is a folder: pass one of its configs, e.g. '
               'folder/a.py'),
    'config.json': ('{"seed": 1, "eval": {"flip": true}}\n',
                    "--config config.json: not a Python config file; a run's config.json"),
    'seg_hrnet_w48.yaml': ('MODEL:\n  NAME: seg_hrnet\n',
                           "--config seg_hrnet_w48.yaml: not a Python config file; the "
                           "original's experiments/*.yaml are configs/*.py here"),
}


@pytest.mark.parametrize('name', sorted(_BROKEN_CONFIGS))
def test_a_config_file_that_does_not_run_is_one_line_with_its_line(tmp_path, name):
  """A config file with a bug, a run's config.json or the original's YAML
  ended in a Python traceback (exit 1), from absl's flag parsing."""
  text, expected = _BROKEN_CONFIGS[name]
  if text is None:   # a folder of configs
    (tmp_path / name).mkdir()
    (tmp_path / name / 'a.py').write_text('x = 1\n')
  else:
    (tmp_path / name).write_text(text)
  r = _run_main(tmp_path, '--config', name, '--workdir', 'runs/x')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr.startswith(f'error: {expected}') and r.stderr.count('\n') == 1, r.stderr
  assert not (tmp_path / 'runs').exists()
  # The other commands that read a config file say the same.
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.summary', '--config', name],
                     cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                     capture_output=True, text=True, timeout=300, check=False)
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr.startswith(f'error: {expected}') and r.stderr.count('\n') == 1, r.stderr


@pytest.mark.parametrize('where', ['flag', 'below a file', 'environment'])
def test_a_file_as_the_compilation_cache_folder_is_one_line(tmp_path, where):
  """JAX warned at every compilation (a raw UserWarning with its source
  line) and trained on without a cache."""
  (tmp_path / 'configs').mkdir()
  shutil.copy(REPO / 'configs' / 'demo.py', tmp_path / 'configs' / 'demo.py')
  (tmp_path / 'a.png').write_bytes(b'not a folder')
  args = ['--config', 'configs/demo.py', '--workdir', 'runs/demo']
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  named = {'flag': '--compilation_cache_dir a.png', 'below a file':
           '--compilation_cache_dir a.png/xla', 'environment': '$JAX_COMPILATION_CACHE_DIR a.png'}
  if where == 'environment':
    env['JAX_COMPILATION_CACHE_DIR'] = 'a.png'
  else:
    args += ['--compilation_cache_dir', named[where].split()[1]]
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', *args], cwd=tmp_path,
                     env=env, capture_output=True, text=True, timeout=300, check=False)
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == (f'error: {named[where]}: a.png is a file, not a folder (pass another '
                      'folder, or --nocompilation_cache)\n'), r.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.png', 'configs']


def test_a_bad_mode_and_a_missing_config_file_are_one_line_each(tmp_path):
  """absl's 'flag --mode=bogus: value should be one of <train|eval|predict>',
  and "config file 'x' (given) not found"."""
  r = _run_main(tmp_path, '--mode', 'bogus', '--workdir', 'runs/x')
  assert (r.returncode, r.stdout) == (2, '') and r.stderr == (
      'error: --mode=bogus: expected one of train, eval, predict\n'), r.stderr
  # A misspelt flag, in the words of the argparse commands (was absl's
  # "Unknown command line flag 'workdr'. Did you mean: workdir ?").
  r = _run_main(tmp_path, '--workdr', 'runs/x')
  assert (r.returncode, r.stdout) == (2, '') and r.stderr == (
      'error: unrecognized arguments: --workdr; did you mean --workdir? (see --help)\n'
  ), r.stderr
  r = _run_main(tmp_path, '--config', 'configs/nope.py', '--workdir', 'runs/x')
  assert (r.returncode, r.stdout) == (2, '') and r.stderr == (
      'error: config file configs/nope.py not found: pass --config with the path of one '
      "of the repository's configs/*.py files\n"), r.stderr
  r = _run_main(tmp_path, '--workdir', 'runs/x')   # no configs/demo.py here
  assert r.stderr.startswith('error: the default config file (no --config given) '
                             'configs/demo.py not found: '), r.stderr
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('mode_args, checkpoint, line', [
    (['--mode', 'predict', '--input', 'a.png'], 'latests',
     'error: checkpoint not found: latests; did you mean latest?'),
    (['--mode', 'eval', '--config', 'configs/demo.py'], 'Best',
     'error: checkpoint not found: Best; did you mean best?'),
    (['--mode', 'predict', '--input', 'a.png'], 'w18s',
     'error: checkpoint not found: w18s'),   # no name like best or latest: as it was
])
def test_a_checkpoint_spelt_like_best_or_latest_is_named(tmp_path, mode_args, checkpoint,
                                                        line):
  """``--checkpoint latests`` was only 'checkpoint not found: latests'."""
  Image.new('RGB', (8, 8)).save(tmp_path / 'a.png')
  (tmp_path / 'configs').symlink_to(REPO / 'configs')
  r = _run_main(tmp_path, *mode_args, '--checkpoint', checkpoint, '--workdir', 'w')
  assert r.returncode == 2 and r.stderr.splitlines() == [line], r.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a.png', 'configs']
