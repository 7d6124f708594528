"""What --mode predict prints, from a user's folder with relative paths: the
converted model and its settings; one line for an image it cannot decode."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hrseg_jax.convert import __main__ as convert_cli, pth_write
from hrseg_jax import predict
from hrseg_jax.convert import convert
from hrseg_jax.models import registry
from test_deploy import unwritable_folder
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

REPO = pathlib.Path(__file__).resolve().parents[1]


def _predict(cwd, *args, cache: bool = True) -> subprocess.CompletedProcess:
  """``cache=False``: without the tests' persistent compilation cache (which
  the environment variable names even with --nocompilation_cache): every
  size compiles."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  env.pop('OPENCV_LOG_LEVEL', None)
  if not cache:
    env = {k: v for k, v in env.items() if not k.startswith('JAX_')}
    env['JAX_PLATFORMS'] = 'cpu'
    args = (*args, '--nocompilation_cache')
  return subprocess.run(
      [sys.executable, '-m', 'hrseg_jax.main', '--mode', 'predict', *args],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _convert_tiny_hrnet(folder) -> None:
  """A tiny HRNet's .pth (t.pth) converted into folder/converted."""
  cfg = registry.resolve(TINY_HRNET)
  pth_write.save_pth(convert.to_state_dict(tiny_hrnet_variables(cfg)), folder / 't.pth')
  assert convert_cli.main([str(folder / 't.pth'), str(folder / 'converted')]) == 0


def test_convert_and_predict_name_model_settings_and_dtype(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  cfg = registry.resolve(dict(TINY_HRNET, num_classes=19))
  # As PyTorch saves it (model. prefix, num_batches_tracked).
  pth_write.save_pth(convert.to_state_dict(tiny_hrnet_variables(cfg)),
                     tmp_path / 'ocr_like.pth')
  assert convert_cli.main(['ocr_like.pth', 'converted/cs', '--align-corners']) == 0
  out = capsys.readouterr().out
  assert out.startswith('converted ocr_like.pth -> converted/cs: hrnet custom, 19 classes, ')
  assert ', align_corners=True (cityscapes)' in out, out
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save('photo.png')
  r = _predict(tmp_path, '--checkpoint', 'converted/cs', '--input', 'photo.png',
               '--workdir', 'runs/p', '--dtype', 'bfloat16')
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  assert lines[0] == ('predict: checkpoint converted/cs (converted weights, step 0): '
                      'hrnet custom, 19 classes, align_corners=True'), r.stdout
  assert lines[1] == ("predict: palette cityscapes; whole image at each image's own size, "
                      'scales 1, no flip, bfloat16 compute'), r.stdout
  assert (tmp_path / 'runs/p/predictions/labels/photo.png').exists()


def test_truncated_png_is_one_line_without_opencv_warning(tmp_path):
  """OpenCV's own "[ WARN:0@…] … PNG input buffer is incomplete" is noise."""
  _convert_tiny_hrnet(tmp_path)
  (tmp_path / 'photos').mkdir()
  Image.fromarray(np.zeros((32, 64, 3), np.uint8) + 90).save(tmp_path / 'whole.png')
  data = (tmp_path / 'whole.png').read_bytes()
  (tmp_path / 'photos/cut.png').write_bytes(data[:len(data) // 2])
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photos',
               '--workdir', 'runs/p')
  assert r.returncode == 2, r.stderr[-3000:]
  assert r.stderr == ('error: photos/cut.png: cannot decode image (corrupt, '
                      'truncated or not an image)\n'), r.stderr
  assert not (tmp_path / 'runs/p/predictions/labels').exists()


def test_png_with_a_broken_header_is_one_line_without_opencv_error(tmp_path):
  """A .png whose header is not a PNG's: OpenCV logs '[ERROR:0@…] … readHeader
  IHDR chunk shall be first' (an ERROR, not a WARN), which reached the console
  before the one-line error naming the file."""
  _convert_tiny_hrnet(tmp_path)
  (tmp_path / 'photos').mkdir()
  (tmp_path / 'photos/bad.png').write_bytes(b'\x89PNG\r\n\x1a\nnot a png at all')
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photos',
               '--workdir', 'runs/p')
  assert r.returncode == 2, r.stderr[-3000:]
  assert r.stderr == ('error: photos/bad.png: cannot decode image (corrupt, '
                      'truncated or not an image)\n'), r.stderr
  assert not (tmp_path / 'runs/p/predictions').exists()


def test_unwritable_workdir_is_one_line_before_the_checkpoint_loads(tmp_path):
  """It failed after loading the checkpoint, as '[Errno 1] Operation not
  permitted: '/x/runs'' or '[Errno 20] Not a directory: '/abs/notes.txt/p''."""
  _convert_tiny_hrnet(tmp_path)
  Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / 'photo.png')
  folder = unwritable_folder(tmp_path)
  shown = 'readonly' if folder.parent == tmp_path else str(folder)
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photo.png',
               '--workdir', f'{shown}/runs/p')
  assert r.returncode == 2, r.stderr[-3000:]
  (line,) = r.stderr.strip().splitlines()
  assert line.startswith(f'error: cannot write {shown}/runs/p/predictions: {shown} is not '
                         'writable ('), line
  assert line.endswith('); choose another --workdir'), line
  assert r.stdout == ''   # before 'predict: checkpoint converted ...'
  (tmp_path / 'notes.txt').write_text('a file where a folder would go')
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photo.png',
               '--workdir', 'notes.txt/p')
  assert r.returncode == 2 and r.stdout == '', r.stderr[-3000:]
  assert r.stderr == ('error: cannot create notes.txt/p/predictions: '
                      'notes.txt is a file, not a folder; '
                      'choose another --workdir\n'), r.stderr


def test_a_folders_other_files_are_named_not_silently_left_out(tmp_path):
  """A .gif or a README in the photo folder was skipped without a word
  ('predicted 1 image(s)' of a folder of three files); a .bmp or .tif is
  an image (it was left out)."""
  _convert_tiny_hrnet(tmp_path)
  (tmp_path / 'photos/sub').mkdir(parents=True)
  Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / 'photos/a.png')
  Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / 'photos/sub/b.gif')
  Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / 'photos/sub/c.bmp')
  Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / 'photos/sub/d.tif')
  (tmp_path / 'photos/notes.txt').write_text('where the photos come from')
  (tmp_path / 'photos/.DS_Store').write_bytes(b'\0')
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photos',
               '--workdir', 'runs/p')
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  assert lines[2] == ('predict: left out 2 files in photos/ (not '
                      '.png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp): notes.txt, sub/b.gif'), r.stdout
  assert lines[3].startswith('predict 1/3 (33%) photos/a.png (32x64)'), r.stdout
  # Rounded to the nearest (it read 66%).
  assert lines[4].startswith('predict 2/3 (67%) photos/sub/c.bmp (32x64)'), r.stdout
  assert lines[5].startswith('predict 3/3 (100%) photos/sub/d.tif (32x64)'), r.stdout
  assert (tmp_path / 'runs/p/predictions/labels/sub/d.png').is_file()
  for name in ('a.png', 'sub/c.bmp', 'sub/d.tif'):
    (tmp_path / 'photos' / name).unlink()
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photos',
               '--workdir', 'runs/p')
  assert r.returncode == 2 and r.stdout == '', r.stderr[-3000:]
  assert r.stderr == ('error: photos: no .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp images '
                      'found (it holds 2 other files: notes.txt, sub/b.gif)\n'), r.stderr


def test_an_input_that_is_not_an_image_fails_before_any_prediction(tmp_path):
  """--input photo.png --input notes.md predicted and wrote photo.png, then
  stopped at notes.md after the checkpoint had loaded."""
  _convert_tiny_hrnet(tmp_path)
  Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / 'photo.png')
  (tmp_path / 'notes.md').write_text('# not a photo')
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photo.png',
               '--input', 'notes.md', '--workdir', 'runs/p')
  assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr[-3000:])
  assert r.stderr == ('error: notes.md: not an image (OpenCV finds no image format '
                      'in it); --input takes images, folders of '
                      '.png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp images, '
                      '.txt/.lst lists of them, videos (.mp4/.avi/.mov/.mkv/.webm/.m4v), '
                      'a folder of frames with --video or a camera index (0)\n'), r.stderr
  # In a folder or a list (a.png was predicted and written, then it stopped at b.png).
  (tmp_path / 'photos').mkdir()
  (tmp_path / 'photo.png').rename(tmp_path / 'photos/a.png')
  (tmp_path / 'photos/b.png').write_text('a text file named .png')
  (tmp_path / 'photos.lst').write_text('photos/a.png\nphotos/b.png\n')
  for given, where in (('photos', ''), ('photos.lst', ' (listed in photos.lst)')):
    r = _predict(tmp_path, '--checkpoint', 'converted', '--input', given, '--workdir', 'runs/p')
    assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr[-3000:])
    assert r.stderr == (f'error: photos/b.png: not an image (OpenCV finds no image '
                        f'format in it){where}\n'), r.stderr
  # A link to a missing file ('[Errno 2] No such file or directory: ...').
  (tmp_path / 'photos/b.png').unlink()
  (tmp_path / 'photos/b.png').symlink_to(tmp_path / 'gone.png')
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photos', '--workdir', 'runs/p')
  assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr[-3000:])
  assert r.stderr == ('error: photos/b.png: file not found (a link to a missing '
                      'file?)\n'), r.stderr
  assert not (tmp_path / 'runs').exists()


def test_an_image_that_does_not_decode_fails_before_any_prediction(tmp_path):
  """photos/ with 8 images and g_corrupt.png (the first 200 bytes of a PNG):
  its header passed the check, so 6 images were predicted and written, then
  'error: photos/g_corrupt.png: cannot decode image' (exit code 2, no
  summary).  Every image is decoded before the checkpoint loads."""
  _convert_tiny_hrnet(tmp_path)
  (tmp_path / 'photos').mkdir()
  rng = np.random.default_rng(0)
  for name in 'abcdefgh':
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), np.uint8)).save(
        tmp_path / f'photos/{name}.png')
  data = (tmp_path / 'photos/a.png').read_bytes()
  (tmp_path / 'photos/g_corrupt.png').write_bytes(data[:200])
  (tmp_path / 'photos/h_corrupt.png').write_bytes(data[:300])   # the first one is named
  (tmp_path / 'photos.lst').write_text(''.join(
      f'photos/{n}.png\n' for n in ('a', 'b', 'g_corrupt', 'h')))
  for given, where in ((['photos/'], ''), (['photos.lst'], ' (listed in photos.lst)'),
                       (['photos/a.png', 'photos/g_corrupt.png'], '')):
    r = _predict(tmp_path, '--checkpoint', 'converted', '--workdir', 'runs/demo',
                 *(a for g in given for a in ('--input', g)))
    assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr[-3000:])
    assert r.stderr == ('error: photos/g_corrupt.png: cannot decode image (corrupt, '
                        f'truncated or not an image){where}\n'), r.stderr
    assert not (tmp_path / 'runs').exists()


def test_each_image_size_compiles_once_and_the_console_says_so(tmp_path):
  """Images of several sizes: each size compiles the model again; the lines
  said nothing of it and the rate and ETA counted the compiles as images
  (8 images of 8 sizes: 0.15 img/s)."""
  _convert_tiny_hrnet(tmp_path)
  (tmp_path / 'photos').mkdir()
  for name, size in (('a', (32, 48)), ('b', (32, 48)), ('c', (40, 24)), ('d', (32, 48))):
    Image.fromarray(np.zeros((*size, 3), np.uint8) + 60).save(tmp_path / f'photos/{name}.png')
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photos',
               '--workdir', 'runs/p', cache=False)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  assert lines[1] == ("predict: palette generic (pass --dataset); whole image at each "
                      "image's own size, scales 1, no flip, float32 compute; "
                      '4 images in 2 sizes: each size compiles once'), r.stdout
  s, rate = r'\d+\.\d s', r'\d+\.?\d* img/s'
  expected = [
      rf'predict 1/4 \(25%\) photos/a\.png \(32x48\) \| {s} incl\. compiling for 32x48 '
      r'\| ETA at most \d+s',
      rf'predict 2/4 \(50%\) photos/b\.png \(32x48\) \| {rate} \| ETA \d+s',
      rf'predict 3/4 \(75%\) photos/c\.png \(40x24\) \| {s} incl\. compiling for 40x24 '
      rf'\| {rate} \| ETA \d+s',
      rf'predict 4/4 \(100%\) photos/d\.png \(32x48\) \| {rate} \| done in \d+s',
      # Durations written as on the progress lines ('done in 9s', not '9.5 s').
      r'predicted 4 images in \d+s \(2 sizes compiled in \d+s\) -> runs/p/predictions '
      r'\(color/, labels/, overlay/\)']
  assert len(lines) == 7, r.stdout
  for line, pattern in zip(lines[2:], expected):
    assert re.fullmatch(pattern, line), (line, pattern)
  # One size: no word of sizes on the settings line.
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photos/a.png',
               '--input', 'photos/b.png', '--workdir', 'runs/p')
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.splitlines()[1].endswith(', float32 compute'), r.stdout


def test_predict_without_input_names_every_kind_of_input(tmp_path):
  """The line named 'image files, folders or list files', not videos and cameras."""
  r = _predict(tmp_path, '--checkpoint', 'converted', '--workdir', 'runs/p')
  assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr[-3000:])
  assert r.stderr == ('error: --mode predict needs --input: images, folders of '
                      '.png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp images, .txt/.lst lists of '
                      'them, videos '
                      '(.mp4/.avi/.mov/.mkv/.webm/.m4v), a folder of frames with --video '
                      'or a camera index (0)\n'), r.stderr


def test_converted_backbone_warns_that_its_head_is_untrained(tmp_path, monkeypatch, capsys):
  """An ImageNet-style backbone converted with --num-classes gets a random
  head: predicting with it says so (it printed nothing about it)."""
  monkeypatch.chdir(tmp_path)
  cfg = registry.resolve(TINY_HRNET)
  state = {k: v for k, v in convert.to_state_dict(tiny_hrnet_variables(cfg),
                                                  prefix='').items()
           if not k.startswith('last_layer.')}
  pth_write.save_pth(state, tmp_path / 'backbone.pth')
  assert convert_cli.main(['backbone.pth', 'converted', '--num-classes', '5']) == 0
  assert 'freshly initialised: ' in capsys.readouterr().out
  Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / 'photo.png')
  r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photo.png',
               '--workdir', 'runs/p')
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  assert lines[1].startswith('warning: ') and 'freshly initialised by convert, not trained' in (
      lines[1]), r.stdout


def test_predict_and_video_modules_point_to_the_command(tmp_path):
  """python -m hrseg_jax.predict photos/ ran nothing and exited 0."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  for module, what in (('predict', 'images'), ('video', 'videos')):
    r = subprocess.run([sys.executable, '-m', f'hrseg_jax.{module}', 'photos'], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 2 and r.stdout == '', r.stderr[-3000:]
    (line,) = r.stderr.splitlines()
    assert line.startswith(f'error: {what} are predicted by python -m hrseg_jax.main '
                           '--mode predict --checkpoint CKPT --input '), line


def test_a_folder_without_images_names_its_first_other_files_and_how_many_more(tmp_path):
  """The line of a folder without images lists five of the files it holds,
  then how many more, like the 'left out' line (it ended in a bare '…')."""
  (tmp_path / 'photos').mkdir()
  for i in range(7):
    (tmp_path / f'photos/notes{i}.txt').write_text('x')
  with pytest.raises(ValueError) as e:
    predict.resolve_inputs(str(tmp_path / 'photos'))
  assert str(e.value).endswith(
      'photos: no .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp images found (it holds 7 other '
      'files: notes0.txt, '
      'notes1.txt, notes2.txt, notes3.txt, notes4.txt, … (2 more))'), str(e.value)


def test_a_size_read_from_the_compilation_cache_is_not_called_compiling(tmp_path):
  """A second identical run reads each size's compiled model from the
  persistent compilation cache (the tests share one): its line said '3.3 s
  incl. compiling for 32x48' all the same (compiling: above)."""
  _convert_tiny_hrnet(tmp_path)
  (tmp_path / 'photos').mkdir()
  for name, size in (('a', (32, 48)), ('b', (40, 24)), ('c', (32, 48))):
    Image.fromarray(np.zeros((*size, 3), np.uint8) + 70).save(tmp_path / f'photos/{name}.png')
  for run in ('first', 'second'):   # the first compiles, or reads an earlier test's
    r = _predict(tmp_path, '--checkpoint', 'converted', '--input', 'photos',
                 '--workdir', f'runs/{run}')
    assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  s = r'\d+\.\d s'
  expected = [
      rf'predict 1/3 \(33%\) photos/a\.png \(32x48\) \| {s} incl\. reading the compiled '
      r'model for 32x48 from the cache \| ETA at most \d+s',
      rf'predict 2/3 \(67%\) photos/b\.png \(40x24\) \| {s} incl\. reading the compiled '
      r'model for 40x24 from the cache',   # no size left to compile: no bound
      r'predict 3/3 \(100%\) photos/c\.png \(32x48\) \| [\d.]+ img/s \| done in \d+s',
      r'predicted 3 images in \d+s \(2 sizes read from the cache in \d+s\) -> '
      r'runs/second/predictions \(color/, labels/, overlay/\)']
  assert len(lines) == 6, r.stdout
  for line, pattern in zip(lines[2:], expected):
    assert re.fullmatch(pattern, line), (line, pattern)


def test_a_rerun_into_a_used_workdir_says_what_it_replaced_and_kept(tmp_path):
  """A run stopped after m0, m1, then a run on other photos into the same
  --workdir: 'predicted 3 images ... -> runs/pc/predictions' while labels/
  held img0..2 and m0, m1 without a word; a rerun replaced files silently.
  Earlier files stay (photos/ then more/ into one workdir is a use): said."""
  _convert_tiny_hrnet(tmp_path)
  for folder, names in (('stopped', ('m0', 'm1')), ('photos', ('img0', 'img1', 'img2'))):
    (tmp_path / folder).mkdir()
    for name in names:
      Image.fromarray(np.zeros((32, 48, 3), np.uint8) + 50).save(
          tmp_path / f'{folder}/{name}.png')
  closing = ('predicted {} images in ', 's -> runs/pc/predictions (color/, labels/, overlay/)')
  for given, said in (
      ('stopped', None),   # an empty folder: nothing said
      ('photos', 'predict: 6 files of an earlier run kept in runs/pc/predictions/: '
                 'color/m0.png, color/m1.png, labels/m0.png, … (3 more)'),
      ('photos', 'predict: 9 files replaced earlier ones; 6 files of an earlier run '
                 'kept in runs/pc/predictions/: color/m0.png, color/m1.png, '
                 'labels/m0.png, … (3 more)')):
    r = _predict(tmp_path, '--checkpoint', 'converted', '--input', given,
                 '--workdir', 'runs/pc')
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    count = len(os.listdir(tmp_path / given))
    assert lines[-1].startswith(closing[0].format(count)), r.stdout
    assert lines[-1].endswith(closing[1]), r.stdout
    if said:   # the line before the closing one
      assert lines[-2] == said, r.stdout
    assert lines[-3 if said else -2].startswith(f'predict {count}/{count} (100%) '), r.stdout
  # Nothing was deleted.
  assert sorted(os.listdir(tmp_path / 'runs/pc/predictions/labels')) == [
      'img0.png', 'img1.png', 'img2.png', 'm0.png', 'm1.png']
