"""Video prediction (--mode predict --input clip.mp4) and the dataset browser."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import cv2
import numpy as np
from PIL import Image

from hrseg_jax import Segmenter, checkpoints
from hrseg_jax.models import registry
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_clip(path, frames, fps=10):
  h, w = frames[0].shape[:2]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
  assert writer.isOpened()
  for f in frames:
    writer.write(f[..., ::-1])
  writer.release()


def read_clip(path):
  cap = cv2.VideoCapture(str(path))
  out = []
  while True:
    ok, bgr = cap.read()
    if not ok:
      return out
    out.append(bgr[..., ::-1])


def test_predict_video_file_and_frame_folder(tmp_path):
  cfg = registry.resolve(TINY_HRNET)
  variables = tiny_hrnet_variables(cfg, seed=1)
  checkpoints.save_model(tmp_path / 'ckpt', variables, cfg)
  rng = np.random.default_rng(0)
  frames = [np.repeat(np.repeat(rng.integers(0, 256, (8, 12, 3), np.uint8), 4, 0), 4, 1)
            for _ in range(5)]
  write_clip(tmp_path / 'clip.mp4', frames)
  os.makedirs(tmp_path / 'frames')
  for i, f in enumerate(frames):
    Image.fromarray(f).save(tmp_path / 'frames' / f'{i:03d}.png')
  config = os.path.join(REPO, 'configs', 'demo.py')
  base = [sys.executable, '-m', 'hrseg_jax.main', '--config', config, '--workdir', 'run',
          '--mode', 'predict', '--checkpoint', 'ckpt', '--config.eval.batch_size=2']
  # Test-time settings: the config's (the demo's: long side 256) and flags.
  tta = ['--scales=0.75,1', '--flip']
  r = subprocess.run(base + ['--input', 'clip.mp4'] + tta, cwd=tmp_path,
                     capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
  out = r.stdout + r.stderr
  # Frames, not images; progress with % and ETA (it was 'clip.mp4: frame 4/5,
  # 1.2 frames/s'), the first batch's compile out of the rate.
  assert 'whole frame at long side 256, scales 0.75,1, flip' in out
  # Compiled, or read from the tests' compilation cache (an earlier run's).
  compiled = r'(compiling|reading the compiled model) for 32x48( from the cache)?'
  assert re.search(r'^clip\.mp4: frame 2/5 \(40%\) \| \d+\.\d s incl\. ' + compiled + '$',
                   out, re.M), out
  assert re.search(r'^clip\.mp4: frame 4/5 \(80%\) \| [\d.]+ frames/s \| ETA \d+s$',
                   out, re.M), out
  assert re.search(r'^clip\.mp4: frame 5/5 \(100%\) \| [\d.]+ frames/s \| done in \d+s$',
                   out, re.M), out
  assert ('wrote run/predictions/clip/overlay.mp4 and 5 class maps in '
          'run/predictions/clip/labels: ') in out  # relative, as the user gave them
  # The model's speed leaves the first batch (compiling) out, as the progress
  # lines do: it read 10.6 frames/s beside lines of 140-175.
  assert re.search(r'labels: [\d.]+ frames/s overall, the first batch \((compiling|read '
                   r'from the cache)\) [\d.]+ s, then [\d.]+ frames/s in the model '
                   r'\(batch \d+\)$', out, re.M), out
  dest = tmp_path / 'run' / 'predictions' / 'clip'
  assert sorted(os.listdir(dest)) == ['labels', 'overlay.mp4']
  assert len(read_clip(dest / 'overlay.mp4')) == 5
  # Class maps: those of the decoded frames predicted as images with the same
  # settings (which the console names; frames once ignored them).  Likewise
  # for a folder of frames with --video.
  os.makedirs(tmp_path / 'decoded')
  for i, f in enumerate(read_clip(tmp_path / 'clip.mp4')):
    Image.fromarray(f).save(tmp_path / 'decoded' / f'{i:06d}.png')
  (tmp_path / 'frames' / 'notes.txt').write_text('where the frames come from')
  for args in (['--input', 'frames', '--video'], ['--input', 'decoded', '--input', 'frames']):
    r = subprocess.run(base + args + tta, cwd=tmp_path, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    # Named, not skipped silently.
    # '1 file', not '1 file(s)'.
    assert ('frames/: left out 1 file (not .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp frames): notes.txt'
            if '--video' in args else 'predict: left out 1 file in frames/ (not '
            '.png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp): notes.txt') in r.stdout.splitlines(), r.stdout
    if '--video' in args:   # the clip's compiled model, read from the cache: said
      # ('2.9 s incl. compiling for 32x48', 'the first batch (compiling)').
      assert re.search(r'^frames: frame 2/5 \(40%\) \| \d+\.\d s incl\. reading the '
                       r'compiled model for 32x48 from the cache$', r.stdout, re.M), r.stdout
      assert ', the first batch (read from the cache) ' in r.stdout, r.stdout
  preds = tmp_path / 'run' / 'predictions'
  assert sorted(os.listdir(preds / 'frames' / 'labels')) == [f'{i:06d}.png' for i in range(5)]
  for i in range(5):
    for video_map, image_map in ((f'clip/labels/{i:06d}.png', f'labels/{i:06d}.png'),
                                 (f'frames/labels/{i:06d}.png', f'labels/{i:03d}.png')):
      np.testing.assert_array_equal(np.asarray(Image.open(preds / video_map)),
                                    np.asarray(Image.open(preds / image_map)))
  # Without settings (no --config, no flags): one forward per frame at its
  # own size, Segmenter.predict's class maps.
  from hrseg_jax import video  # pylint: disable=g-import-not-at-top
  video.predict_video(cfg, variables, str(tmp_path / 'frames'), str(tmp_path / 'plain'),
                      batch_size=2, log=lambda _: None)
  expected = Segmenter(cfg, variables).predict(np.stack(frames))
  for i in range(5):
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / 'plain' / 'frames' / 'labels' / f'{i:06d}.png')),
        expected[i])
  # The test server's format is for images: one line, before any work.
  r = subprocess.run(base + ['--input', 'clip.mp4', '--cityscapes_test_format',
                             '--workdir', 'server'], cwd=tmp_path, capture_output=True,
                     text=True, check=False)
  assert r.returncode == 2 and not (tmp_path / 'server').exists()
  assert r.stderr.strip().splitlines() == [
      "error: --cityscapes_test_format writes the test server's PNGs of images; a video "
      'has none (drop the flag)']


def test_ctrl_c_on_a_video_file_exits_130_and_names_what_it_kept(tmp_path):
  """Ctrl-C on a clip wrote 'long.mp4: stopped after 8 frames' and the
  'wrote ...' line, exit code 0: a script could not tell it from a whole
  run.  Now one line with Ctrl-C in it, exit 130; the video and the class
  maps of the frames done are kept, complete, and named."""
  import signal  # pylint: disable=g-import-not-at-top
  from ctrl_c_util import WITH_CTRL_C  # pylint: disable=g-import-not-at-top
  cfg = registry.resolve(TINY_HRNET)
  checkpoints.save_model(tmp_path / 'ckpt', tiny_hrnet_variables(cfg, seed=1), cfg)
  rng = np.random.default_rng(0)
  frame = np.repeat(np.repeat(rng.integers(0, 256, (8, 12, 3), np.uint8), 4, 0), 4, 1)
  # Long enough that Ctrl-C after the first batch's line lands before the end.
  write_clip(tmp_path / 'long.mp4', [np.roll(frame, i, 1) for i in range(600)])
  # Compiled, not read from the tests' compilation cache.
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  p = subprocess.Popen(
      [*WITH_CTRL_C, sys.executable, '-m', 'hrseg_jax.main', '--mode', 'predict',
       '--checkpoint', 'ckpt', '--input', 'long.mp4', '--workdir', 'runs/v',
       '--nocompilation_cache'],
      cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  shown = []
  for line in p.stdout:
    shown.append(line)
    if line.startswith('long.mp4: frame '):
      break
  assert p.poll() is None, ''.join(shown) + p.communicate()[1]
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=120)
  out = ''.join(shown) + out
  assert re.search(r'^long\.mp4: frame 8/600 \(1%\) \| \d+\.\d s incl\. compiling for '
                   r'32x48$', out, re.M), out
  assert p.returncode == 130, (out, err)
  match = re.fullmatch(r'long\.mp4: stopped by Ctrl-C after (\d+) frames of 600; kept '
                       r'runs/v/predictions/long/overlay\.mp4 and (\d+) class maps in '
                       r'runs/v/predictions/long/labels\n', err)
  assert match and match[1] == match[2], (out, err)
  done = int(match[1])
  assert 8 <= done < 600 and 'wrote' not in out, (out, err)
  dest = tmp_path / 'runs/v/predictions/long'
  assert sorted(os.listdir(dest)) == ['labels', 'overlay.mp4']
  assert len(read_clip(dest / 'overlay.mp4')) == done
  assert sorted(os.listdir(dest / 'labels')) == [f'{i:06d}.png' for i in range(done)]


def test_camera_video_or_frames_that_cannot_be_read_stop_before_the_checkpoint_loads(
    tmp_path):
  """--input 0 without such a camera (none here), a file that is no video, or
  --video with a folder that holds no frames: one line naming the input, exit
  code 2, before the checkpoint loads (which prints its line) and before
  anything is written."""
  cfg = registry.resolve(TINY_HRNET)
  checkpoints.save_model(tmp_path / 'ckpt', tiny_hrnet_variables(cfg, seed=1), cfg)
  (tmp_path / 'notes.mp4').write_text('not a video')
  os.makedirs(tmp_path / 'frames')
  (tmp_path / 'frames' / 'notes.txt').write_text('the frames come later')
  for args, error in (
      (['--input', '7'], '--input 7: OpenCV cannot open camera 7 (no camera here?)'),
      (['--input', 'notes.mp4'], 'notes.mp4: OpenCV cannot read this video'),
      (['--input', 'frames', '--video'],
       'frames: no .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp frames found '
       '(it holds 1 other file: notes.txt)')):
    r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--mode', 'predict',
                        '--checkpoint', 'ckpt', *args, '--workdir', 'run'],
                       cwd=tmp_path, capture_output=True, text=True, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [f'error: {error}'], r.stderr
    assert r.stdout == '', r.stdout   # no 'predict: checkpoint ckpt ...' line
    assert sorted(os.listdir(tmp_path)) == ['ckpt', 'frames', 'notes.mp4']


def test_a_camera_is_opened_once_checked_and_read(tmp_path, monkeypatch):
  """--input 0: the camera opened to check it before the checkpoint loads is
  the one read; it was closed and opened again, which a camera may refuse
  (or take seconds to do) right after it was closed."""
  from hrseg_jax import modes, video  # pylint: disable=g-import-not-at-top
  cfg = registry.resolve(TINY_HRNET)
  checkpoints.save_model(tmp_path / 'ckpt', tiny_hrnet_variables(cfg, seed=1), cfg)
  opened = []

  class Camera:
    """Three 16x24 frames; refuses to open while another capture has it."""
    def __init__(self):
      self.frames, self.released = 3, False

    def get(self, prop):
      return 10.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
      if self.frames == 0:
        return False, None
      self.frames -= 1
      return True, np.zeros((16, 24, 3), np.uint8)

    def release(self):
      self.released = True

  def open_capture(source):
    assert source == 0, source
    opened.append(Camera())
    return opened[-1], len(opened) == 1
  monkeypatch.setattr(video, '_open_capture', open_capture)
  monkeypatch.setattr(video, '_batch_predictor',
                      lambda *a: lambda x: np.zeros(x.shape[:3], np.int32))
  monkeypatch.chdir(tmp_path)
  summary = modes.run(None, 'run', 'predict', checkpoint='ckpt', inputs=['0'])
  assert len(opened) == 1 and opened[0].released, opened
  assert summary['frames'] == 3
  assert sorted(os.listdir(tmp_path / 'run/predictions/camera0/labels')) == [
      '000000.png', '000001.png', '000002.png']


def test_browse_synthetic_hanet_grid(tmp_path):
  config = os.path.join(REPO, 'configs', 'synthetic_hanet_ablation.py') + ':rows'
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.browse', '--config', config,
                      '--num', '3', '--out', 'grid.png'], cwd=tmp_path,
                     capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith('wrote grid.png: ')
  picture = np.asarray(Image.open(tmp_path / 'grid.png'))
  assert picture.ndim == 3 and picture.shape[2] == 3
  # Two sections (train, val) of 2 rows of 2 panels each, each panel an image
  # and its overlay 320 px wide plus the HANet row strip.
  assert picture.shape[1] >= 2 * (2 * 320 + 10)
  # Ignored label pixels are hatched: pure black and pure white both present.
  flat = picture.reshape(-1, 3)
  assert (flat == 0).all(1).any() and (flat == 255).all(1).any()
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.browse', '--config', config,
                      '--num', '0', '--out', 'g.png'], cwd=tmp_path,
                     capture_output=True, text=True, check=False)
  assert r.returncode == 2 and r.stderr.strip() == 'error: --num 0: must be positive'
  assert not os.path.exists(tmp_path / 'g.png')


def test_predict_video_leaves_no_empty_folders_when_mp4_cannot_be_written(
    tmp_path, monkeypatch):
  """An OpenCV without an mp4 writer: one error, and the clip's folders made
  for it are gone again; a folder that was already there stays."""
  from hrseg_jax import video  # pylint: disable=g-import-not-at-top

  class NoWriter:
    def __init__(self, *args):
      del args

    def isOpened(self):  # noqa: N802 (OpenCV's name)
      return False

    def release(self):
      pass

  monkeypatch.setattr(video, '_batch_predictor',
                      lambda *a: lambda x: np.zeros(x.shape[:3], np.int32))
  monkeypatch.setattr(cv2, 'VideoWriter', NoWriter)
  frames = tmp_path / 'frames'
  os.makedirs(frames)
  for i in range(3):
    Image.fromarray(np.full((8, 12, 3), 40 * i, np.uint8)).save(frames / f'{i}.png')
  for out, kept in ((tmp_path / 'new', []), (tmp_path / 'old', ['frames'])):
    for name in kept:
      os.makedirs(out / name)
    try:
      video.predict_video({}, {}, str(frames), str(out), batch_size=2,
                          log=lambda _: None)
    except OSError as e:
      assert str(e).endswith('overlay.mp4: OpenCV cannot write mp4 video here')
    else:
      raise AssertionError('no error')
    assert out.exists() == bool(kept)
    assert (sorted(os.listdir(out)) if kept else []) == kept
    for name in kept:
      assert os.listdir(out / name) == []


def _frames_of_two_sizes(folder, heights=(16, 16, 20)):
  os.makedirs(folder)
  for i, h in enumerate(heights):
    Image.fromarray(np.full((h, 24, 3), 40 * i, np.uint8)).save(folder / f'{i}.png')


def test_failed_video_leaves_no_new_parent_folders(tmp_path):
  """--workdir new/run (neither exists) and a frame of another size: one line,
  exit 2, and no folder of new/run/predictions/frames/labels is left."""
  cfg = registry.resolve(TINY_HRNET)
  checkpoints.save_model(tmp_path / 'ckpt', tiny_hrnet_variables(cfg, seed=1), cfg)
  _frames_of_two_sizes(tmp_path / 'frames')
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.main', '--workdir', 'new/run',
                      '--mode', 'predict', '--checkpoint', 'ckpt', '--input', 'frames',
                      '--video'], cwd=tmp_path, capture_output=True, text=True,
                     check=False)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1] == (
      'error: frames: frame 2 is 20x24, the frames before it 16x24: a video has one '
      'frame size')
  assert sorted(os.listdir(tmp_path)) == ['ckpt', 'frames']


def test_video_failing_after_some_frames_removes_only_what_it_made(tmp_path, monkeypatch):
  """Frames of another size in a later batch (OpenCV's writer would drop them
  silently): an error, and the class maps and folders written before it are
  gone, while the folders and files that were there before stay."""
  from hrseg_jax import video  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(video, '_batch_predictor',
                      lambda *a: lambda x: np.zeros(x.shape[:3], np.int32))
  _frames_of_two_sizes(tmp_path / 'frames', (16, 16, 16, 20))
  old = tmp_path / 'old'
  os.makedirs(old / 'frames' / 'labels')
  (old / 'notes.txt').write_text('mine')
  (old / 'frames' / 'labels' / 'mine.png').write_bytes(b'x')
  for out in (tmp_path / 'new' / 'deeper', old):
    try:
      video.predict_video({}, {}, str(tmp_path / 'frames'), str(out), batch_size=2,
                          log=lambda _: None)
    except ValueError as e:
      assert str(e) == ('frames: frame 3 is 20x24, the frames before it 16x24: a video '
                        'has one frame size')
    else:
      raise AssertionError('no error')
  assert not (tmp_path / 'new').exists()
  assert sorted(str(p.relative_to(old)) for p in old.rglob('*')) == [
      'frames', 'frames/labels', 'frames/labels/mine.png', 'notes.txt']


def test_browse_names_a_mistyped_override_as_training_does(tmp_path):
  """The same mistyped --config.* field gives browse and training the same
  line, with the fields it was probably meant to be (browse repeated
  ml_collections' hint: 'Did you mean "log_every_steps"' for eval.every_steps)."""
  (tmp_path / 'configs').symlink_to(os.path.join(REPO, 'configs'))
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  mistakes = ('--config.train.eval_every_steps=5', '--config.train.num_step=3')
  for mistake in mistakes:
    commands = (['hrseg_jax.browse', '--out', 'grid.png'],
                ['hrseg_jax.main', '--workdir', 'runs/x'])
    errors = [subprocess.run([sys.executable, '-m', *command, '--config', 'configs/demo.py',
                              mistake], cwd=tmp_path, env=env, capture_output=True,
                             text=True, check=False) for command in commands]
    assert [r.returncode for r in errors] == [2, 2], errors
    assert errors[0].stderr == errors[1].stderr, errors
    assert errors[0].stderr.count('\n') == 1 and 'did you mean --config.' in errors[0].stderr
  assert os.listdir(tmp_path) == ['configs']
