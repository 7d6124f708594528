"""Predict a video, a folder of frames or a camera: overlay video + class maps.

>>> predict_video(model_cfg, variables, 'clip.mp4', 'out/')

``python -m hrseg_jax.main --mode predict --input clip.mp4`` (any of
``.mp4 .avi .mov .mkv .webm .m4v``), ``--input 0`` (camera 0, where OpenCV
has one; Ctrl-C stops it cleanly, exit code 0), or ``--input frames/
--video`` (a folder of ``.png``/``.jpg`` frames in name order).  Ctrl-C on
a video file or a folder of frames keeps the video and the class maps of the
frames done and exits 130 (``pipes.Stopped``: one line naming them).  Per
clip ``<name>``::

  out_dir/<name>/overlay.mp4           the frames blended with the class colours
  out_dir/<name>/labels/000000.png ... class ids per frame (uint8 grayscale)

Frames are predicted in batches of ``batch_size`` (the last batch is padded,
so the network compiles once) with the test-time settings ``eval_cfg`` of
``--mode predict`` (scales, flip, sliding windows, a config's base size),
as an image would be; by default each frame whole at its own size, scale 1,
no flip, like ``Segmenter.predict``.  Progress and frames per second are
reported; the first batch's line says whether the model compiled or was
read from the persistent compilation cache.  The video is written to a
temporary file and renamed when
complete; a clip that fails (an unreadable frame, frames of another size, an
unwritable mp4) leaves none of the folders and class maps it made.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator, Mapping

import numpy as np

from hrseg_jax import compile_cache, console, paths, pipes
from hrseg_jax.data.transforms import normalize
from hrseg_jax.eval import config as eval_config
from hrseg_jax import files
from hrseg_jax.eval import palettes
from hrseg_jax.eval.inference import Predictor
from hrseg_jax.inference import Segmenter
from hrseg_jax.predict import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, listed,
                               predict_settings, read_image)
from hrseg_jax.progress import Progress


def is_camera(item) -> bool:
  """``'0'``, ``'1'``, ...: a camera index (unless such a file exists)."""
  item = os.fspath(item)
  return item.isdigit() and not os.path.exists(item)


def is_video_input(inputs, as_video: bool = False) -> bool:
  """True for one video file, one camera index, or (``as_video``) a folder."""
  if len(inputs) != 1:
    return False
  item = os.fspath(inputs[0])
  return (is_camera(item) or item.lower().endswith(VIDEO_EXTENSIONS)
          or (as_video and os.path.isdir(item)))


def _cv2():
  import cv2  # pylint: disable=g-import-not-at-top
  return cv2


def _open_capture(source: str | int):
  """(``cv2.VideoCapture``, whether it opened), without OpenCV's own lines.

  OpenCV and FFmpeg print their diagnostics of a capture that does not open
  (``[ WARN:0@1.2] ... can't open camera by index``, ``moov atom not
  found``) from C++ straight to file descriptor 2, so it is pointed at
  /dev/null while the capture opens; the caller reports the failure in one
  line of its own.
  """
  cv2 = _cv2()
  with console.stderr_to_devnull():
    cap = cv2.VideoCapture(source)
    return cap, cap.isOpened()


def _capture(source: str):
  """The opened ``cv2.VideoCapture`` of a camera index or a video file.

  Raises:
    OSError: a camera that does not open (one line naming ``--input``).
    FileNotFoundError, ValueError: a video file missing or unreadable.
  """
  if is_camera(source):
    cap, opened = _open_capture(int(source))
    if not opened:
      cap.release()
      raise OSError(f'--input {source}: OpenCV cannot open camera {source} '
                    '(no camera here?)')
    return cap
  if not os.path.isfile(source):
    raise FileNotFoundError(f'{paths.shown(source)}: no such file')
  cap, opened = _open_capture(source)
  if not opened:
    cap.release()
    raise ValueError(f'{paths.shown(source)}: OpenCV cannot read this video')
  return cap


def _other_files(folder: str) -> list[str]:
  """The files of a folder of frames that are no frames (a README, a .bmp),
  hidden ones not counted."""
  return [n for n in sorted(os.listdir(folder)) if not n.startswith('.')
          and not n.lower().endswith(IMAGE_EXTENSIONS)
          and os.path.isfile(os.path.join(folder, n))]


def _frame_names(folder: str) -> list[str]:
  """The frames of a folder in name order.

  Raises:
    ValueError: the folder holds none (one line naming it).
  """
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    others = _other_files(folder)
    held = (f' (it holds {console.counted(len(others), "other file")}: {listed(others)})'
            if others else '')
    raise ValueError(f'{paths.shown(folder)}: no {"/".join(IMAGE_EXTENSIONS)} frames found{held}')
  return names


def check_source(source: str):
  """Raises the error :func:`open_frames` would raise for a folder without
  frames or a camera or video file that does not open: checked before a
  checkpoint loads.  A video file is closed again; a camera's capture is
  returned open, for :func:`predict_video` (``capture``), as a camera closed
  and opened again at once may be slow to open or refuse to.  Returns the
  camera's capture, else None."""
  if os.path.isdir(source):
    _frame_names(source)
    return None
  cap = _capture(source)
  if is_camera(source):
    return cap
  cap.release()
  return None


def open_frames(source: str, capture=None
                ) -> tuple[Iterator[np.ndarray], float, int | None]:
  """(RGB uint8 frames, frames per second, frame count or None) of a source;
  ``capture``: its capture, already opened by :func:`check_source`."""
  cv2 = _cv2()
  if os.path.isdir(source):
    names = _frame_names(source)
    return (read_image(os.path.join(source, n)) for n in names), 25.0, len(names)
  cap = capture if capture is not None else _capture(source)
  fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
  count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not source.isdigit() else None

  def frames():
    try:
      while True:
        ok, bgr = cap.read()
        if not ok:
          return
        yield np.ascontiguousarray(bgr[..., ::-1])
    finally:
      cap.release()

  return frames(), float(fps if fps > 0 else 25.0), (count or None)


def _batches(frames: Iterator[np.ndarray], size: int, name: str):
  """Lists of ``size`` frames (the last may be shorter), all of one size: the
  video's (a frame of another size would be dropped by OpenCV's writer)."""
  batch, first = [], None
  for i, f in enumerate(frames):
    first = f.shape if first is None else first
    if f.shape != first:
      raise ValueError(f'{name}: frame {i} is {f.shape[0]}x{f.shape[1]}, the frames '
                       f'before it {first[0]}x{first[1]}: a video has one frame size')
    batch.append(f)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def clip_name(source: str) -> str:
  if source.isdigit():
    return f'camera{source}'
  return os.path.splitext(os.path.basename(os.path.normpath(source)))[0] or 'clip'


def _batch_predictor(model_cfg, variables, eval_cfg, batch_size: int, dtype):
  """RGB uint8 (B, H, W, 3) -> class maps (B, H, W) under the test-time settings."""
  import jax  # pylint: disable=g-import-not-at-top
  settings = dict(eval_cfg if eval_cfg is not None else predict_settings(),
                  batch_size=batch_size)
  kw = eval_config.predictor_kwargs(settings)
  if (kw['mode'] == 'whole' and tuple(kw['scales']) == (1.0,) and not kw['flip']
      and kw['base_size'] is None):   # one forward at the frame's size
    return Segmenter(model_cfg, variables, dtype=dtype).predict
  predictor = Predictor.from_config(model_cfg, variables, settings, dtype=dtype,
                                    devices=jax.local_devices()[:1])
  return lambda frames: predictor.predict(normalize(frames))


def predict_video(model_cfg: Mapping, variables, source: str, out_dir: str, *,
                  palette: str = 'cityscapes', batch_size: int = 8, alpha: float = 0.5,
                  log: Callable[[str], None] = print, dtype=None,
                  eval_cfg: Mapping | None = None, capture=None) -> dict:
  """Writes ``overlay.mp4`` and ``labels/*.png`` for ``source``; returns a summary.

  ``eval_cfg``: test-time settings (:func:`hrseg_jax.predict.predict_settings`,
  the default, or a config's ``eval`` section); its batch size is ``batch_size``.
  ``capture``: the camera's capture that :func:`check_source` opened.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  cv2 = _cv2()
  source = os.fspath(source)
  if batch_size < 1:
    raise ValueError(f'batch size must be positive, got {batch_size}')
  pal = palettes.get_palette(palette)
  frames, fps, count = open_frames(source, capture)
  if os.path.isdir(source):   # a README, a .bmp among the frames: said, not silent
    others = _other_files(source)
    if others:
      log(f'{paths.shown(source)}{os.sep}: left out {console.counted(len(others), "file")} '
          f'(not {"/".join(IMAGE_EXTENSIONS)} frames): {listed(others)}')
  predict_batch = _batch_predictor(model_cfg, variables, eval_cfg, batch_size,
                                   dtype or jnp.float32)
  dest = os.path.join(out_dir, clip_name(source))
  video_path = os.path.join(dest, 'overlay.mp4')
  labels_dir = os.path.join(dest, 'labels')
  # What is made here (folders, parents of out_dir included, and class maps)
  # is removed again when the clip fails; what was there before stays.
  made = files.missing_folders(labels_dir)
  os.makedirs(labels_dir, exist_ok=True)
  tmp = os.path.join(dest, '.overlay.tmp.mp4')
  writer, new_maps, complete, stopped = None, [], False, False
  done, model_seconds, start = 0, 0.0, time.perf_counter()
  first_batch = None   # (frames, seconds) of the batch that compiled
  from_cache = False   # ... or read the compiled model from the persistent cache
  name = source if source.isdigit() else os.path.basename(paths.shown(source))
  # A known frame count: % and ETA; the first batch compiles (one frame size).
  progress = Progress(count, f'{name}: frame', unit='frames') if count else None
  try:
    try:
      for batch in _batches(frames, batch_size, name):
        pipes.raise_if_ctrl_c()
        n = len(batch)
        x = np.stack(batch + [batch[-1]] * (batch_size - n))
        t = time.perf_counter()
        with (compile_cache.Lookups() if first_batch is None
              else contextlib.nullcontext()) as lookups:
          maps = predict_batch(x)[:n]
        model_seconds += time.perf_counter() - t
        if first_batch is None:   # it compiles: out of the model's speed
          first_batch = (n, model_seconds)
          from_cache = lookups.all_hits
        if writer is None:
          h, w = batch[0].shape[:2]
          writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
          if not writer.isOpened():
            raise OSError(f'{paths.shown(video_path)}: OpenCV cannot write mp4 video here')
        # A batch's frames and class maps are written whole: Ctrl-C waits for
        # them (a video stopped early has as many frames as class maps).
        with pipes.ctrl_c_deferred():
          for frame, class_map in zip(batch, maps):
            mixed = palettes.overlay(frame, palettes.colorize(class_map, pal), alpha)
            writer.write(np.ascontiguousarray(mixed[..., ::-1]))
            map_path = os.path.join(labels_dir, f'{done:06d}.png')
            if not os.path.exists(map_path):
              new_maps.append(map_path)
            files.write_bytes_atomic(map_path, files.encode_png(class_map.astype(np.uint8)))
            done += 1
        if progress is not None:
          log(progress.line(done, compiled='' if done > n else
                            f'{batch[0].shape[0]}x{batch[0].shape[1]}',
                            from_cache=from_cache))
        else:
          log(f'{name}: frame {done}, {done / (time.perf_counter() - start):.1f} frames/s')
    except KeyboardInterrupt:
      if not done:   # nothing written: what was made goes (finally)
        raise
      pipes.ctrl_c_handled()
      # A camera is stopped by Ctrl-C (exit 0); a file or a folder of frames
      # stopped early is no complete run (exit 130, said below).
      stopped = True
      if is_camera(source):
        log(f'{name}: stopped after {console.counted(done, "frame")}')
    if writer is None:
      raise ValueError(f'{paths.shown(source)}: no frames')
    writer.release()
    writer = None
    os.replace(tmp, video_path)
    complete = True
  finally:
    if writer is not None:
      writer.release()
    if os.path.exists(tmp):
      os.unlink(tmp)
    if not complete:
      for path in new_maps:
        if os.path.exists(path):
          os.unlink(path)
      files.remove_empty_folders(made)
  if stopped and not is_camera(source):   # what was written is kept, and named
    of = f' of {count}' if count else ''
    raise pipes.Stopped(
        f'{name}: stopped by Ctrl-C after {console.counted(done, "frame")}{of}; '
        f'kept {paths.shown(video_path)} and {console.counted(done, "class map")} in '
        f'{paths.shown(labels_dir)}')
  elapsed = time.perf_counter() - start
  first_n, first_s = first_batch or (0, 0.0)
  later = done > first_n   # more than one batch: the model's speed after compiling
  model_fps = ((done - first_n) / max(model_seconds - first_s, 1e-9) if later
               else done / max(model_seconds, 1e-9))
  summary = {'input': source, 'frames': done, 'video': video_path,
             'labels': labels_dir, 'seconds': elapsed, 'fps': done / elapsed,
             'model_fps': model_fps, 'compile_seconds': first_s}
  how = 'read from the cache' if from_cache else 'compiling'
  log(f'wrote {paths.shown(video_path)} and {console.counted(done, "class map")} in '
      f'{paths.shown(labels_dir)}: {summary["fps"]:.1f} frames/s overall, the first '
      f'batch ({how}) {first_s:.1f} s, ' + (
          f'then {model_fps:.1f} frames/s in the model (batch {batch_size})' if later
          else f'the only one (batch {batch_size})'))
  return summary


if __name__ == '__main__':   # a library module: it ran nothing and exited 0
  import sys  # pylint: disable=g-import-not-at-top
  print('error: videos are predicted by python -m hrseg_jax.main --mode predict '
        '--checkpoint CKPT --input CLIP.mp4 --workdir DIR (--help for the options)',
        file=sys.stderr)
  sys.exit(2)
