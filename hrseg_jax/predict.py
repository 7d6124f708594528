"""Predict class maps for images: PNG class maps, colour masks, overlays.

>>> predict(model_cfg, variables, 'photos/', 'out/', palette='cityscapes')

Inputs are a folder (searched recursively for ``*.png``, ``*.jpg``,
``*.jpeg``, ``*.bmp``, ``*.tif``, ``*.tiff``, ``*.webp``; its other files
are named in one line and left out), a list
file (``.txt``/``.lst``: the first whitespace-separated column of each line
is an image path, relative to ``list_root`` or the list file's folder -- the
original's list format), explicit image paths, or a list mixing these.  Per
image (``<rel>`` = the path relative to its folder or list root, without
extension; the file name for explicit paths)::

  out_dir/labels/<rel>.png       class ids (trainIds), uint8 grayscale
  out_dir/color/<rel>.png        colourised with the dataset palette (RGB)
  out_dir/overlay/<rel>.png      alpha blend of image and colours (RGB)
  out_dir/test_results/<name>.png  with cityscapes_test_format: labelIds in
                                   a VOC-palette PNG, named by the image's
                                   basename (the Cityscapes test server
                                   format of the original's ``save_pred``)

Images are decoded like the original (OpenCV, BGR -> RGB) and normalised
with the ImageNet mean/std.  Test-time settings (scales, flip, sliding
windows) come from ``eval_cfg``; without one (:func:`predict_settings`), an
image keeps its own resolution at scale 1, whole-image, no flip.  One
progress line per image (with the ETA) goes to ``log``.  Every file is
written atomically and an
image's files are only written once all of them are encoded, so a bad input
(missing, unreadable, corrupt) raises an error naming the file and leaves no
partial outputs for it.  Files already in ``out_dir`` stay (folder A, then
folder B, may go into one workdir): a line before the summary says how many
of them this run replaced and how many from an earlier run it kept.  A new
image size's line says whether the model compiled or was read from the
persistent compilation cache.

On several processes (``jax.distributed``) each process predicts every
``jax.process_count()``-th image, starting at its ``jax.process_index()``,
so the processes write disjoint files.  ``out_dir`` may be a URI
(``gs://bucket/...``, written through ``etils.epath``).
"""
from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from hrseg_jax import compile_cache, console, paths, pipes
from hrseg_jax.data import decode, label_maps
from hrseg_jax.data.errors import DataError
from hrseg_jax.data.transforms import normalize
from hrseg_jax.eval import config as eval_config
from hrseg_jax import files
from hrseg_jax.eval import palettes
from hrseg_jax.eval.inference import Predictor
from hrseg_jax.models import registry
from hrseg_jax.progress import Progress, format_duration

# What a folder is searched for (OpenCV decodes them all).
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
LIST_EXTENSIONS = ('.txt', '.lst')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v')   # video.py


@dataclasses.dataclass(frozen=True)
class ImageInput:
  """An image to predict: its path, its output name (no extension) and its
  (height, width), known once :func:`resolve_inputs` decoded it."""
  path: str
  rel: str
  size: tuple[int, int] | None = None


def _strip_ext(path: str) -> str:
  return os.path.splitext(path)[0]


@dataclasses.dataclass(frozen=True)
class _Unchecked:
  """An input image not yet decoded, with the ends of its error message
  (``where``: where it came from, ``hint``: what ``--input`` takes)."""
  image: ImageInput
  where: str = ''
  hint: str = ''


def _from_folder(folder: str) -> list[_Unchecked]:
  found = []
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    for name in sorted(names):
      if name.lower().endswith(IMAGE_EXTENSIONS):
        path = os.path.join(root, name)
        found.append(_Unchecked(
            ImageInput(path, _strip_ext(os.path.relpath(path, folder)))))
  if not found:
    others = other_files(folder)
    raise ValueError(f'{paths.shown(folder)}: no {"/".join(IMAGE_EXTENSIONS)} images found' + (
        f' (it holds {console.counted(len(others), "other file")}: {listed(others)})'
        if others else ''))
  return found


def other_files(folder: str) -> list[str]:
  """The files below ``folder`` that a folder input leaves out (not
  ``IMAGE_EXTENSIONS``; hidden files such as ``.DS_Store`` not counted),
  relative to it, in the order of :func:`_from_folder`."""
  out = []
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    out += [os.path.relpath(os.path.join(root, n), folder) for n in sorted(names)
            if not n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith('.')]
  return out


def listed(names: Sequence[str], limit: int = 5) -> str:
  """``names`` for a console line: the first ``limit``, then how many more."""
  return ', '.join(names[:limit]) + (f', … ({len(names) - limit} more)'
                                     if len(names) > limit else '')


def left_out_line(folder: str) -> str | None:
  """One console line naming the files of ``folder`` that are not predicted."""
  others = other_files(folder)
  if not others:
    return None
  return (f'predict: left out {console.counted(len(others), "file")} in '
          f'{paths.shown(folder)}{os.sep} (not {"/".join(IMAGE_EXTENSIONS)}): '
          f'{listed(others)}')


def _from_list(list_path: str, list_root: str | None) -> list[_Unchecked]:
  root = list_root if list_root is not None else os.path.dirname(list_path)
  out = []
  with open(list_path) as f:
    for line in f:
      parts = line.split()
      if not parts:
        continue
      entry = parts[0]
      path = entry if os.path.isabs(entry) else os.path.join(root, entry)
      if not os.path.isfile(path):
        raise FileNotFoundError(
            f'{paths.shown(path)}: image not found (listed in {paths.shown(list_path)}; '
            f'entries are relative to {paths.shown(root) or "."}, --list_root to change it)')
      rel = _strip_ext(os.path.basename(entry) if os.path.isabs(entry)
                       else os.path.normpath(entry))
      out.append(_Unchecked(ImageInput(path, rel),
                            where=f' (listed in {paths.shown(list_path)})'))
  if not out:
    raise ValueError(f'{paths.shown(list_path)}: empty list file')
  return out


# What --input takes (the line of a missing or wrong one).
INPUT_KINDS = (f'images, folders of {"/".join(IMAGE_EXTENSIONS)} images, '
               f'{"/".join(LIST_EXTENSIONS)} lists of them, videos '
               f'({"/".join(VIDEO_EXTENSIONS)}), a folder of frames with --video '
               'or a camera index (0)')
EXPLICIT = '; --input takes ' + INPUT_KINDS


def _check_image_file(path: str, where: str = '', hint: str = '') -> tuple[int, int]:
  """The (height, width) of the image ``path``, decoded as the prediction
  decodes it; DataError naming it if it cannot be: a wrong, truncated or
  corrupt file among the inputs (given, listed or in a folder) fails before
  the checkpoint loads and before the other inputs' files are written.
  Only the size is kept (one decoded image in memory at a time).  ``where``:
  the end of the message (where the file came from); ``hint``: the end of
  the message for a file that is no image (what ``--input`` takes)."""
  try:
    with open(path, 'rb') as f:
      empty = not f.read(1)
  except FileNotFoundError:   # os.walk lists a link to a missing file
    raise DataError(path, 'file not found (a link to a missing file?)' + where) from None
  except OSError as e:
    raise DataError(path, f'cannot read file ({e.strerror or e})' + where) from None
  if empty:
    raise DataError(path, 'empty file' + where)
  if not cv2.haveImageReader(path):
    raise DataError(path, 'not an image (OpenCV finds no image format in it)'
                    + where + hint)
  try:
    return tuple(read_image(path).shape[:2])
  except DataError as e:
    raise DataError(path, e.reason + where) from None


def _decoded(unchecked: Sequence[_Unchecked]) -> list[ImageInput]:
  """The images with their sizes, every one decoded (:func:`_check_image_file`)
  on a pool of threads, one per core (OpenCV decodes without holding the
  GIL: 40 PNGs of 1024x2048 took 1.6 s one after the other, 0.85 s on two
  cores); the error is the first bad image's in input order, and the decodes
  not yet started are cancelled."""
  workers = max(1, min(len(unchecked), os.cpu_count() or 1, 16))
  pool = concurrent.futures.ThreadPoolExecutor(workers)
  try:
    futures = [pool.submit(_check_image_file, u.image.path, u.where, u.hint)
               for u in unchecked]
    return [dataclasses.replace(u.image, size=f.result())
            for u, f in zip(unchecked, futures)]
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def resolve_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                   list_root: str | None = None, *,
                   cityscapes_test_format: bool = False) -> list[ImageInput]:
  """Expands folders and list files into images; checks that all exist and
  decode, and records their sizes (:attr:`ImageInput.size`).

  Decodes every image once and keeps only its size: the command line calls
  it before loading a checkpoint, so that a bad image stops the run before
  anything is written.

  Raises:
    FileNotFoundError: a path (given or listed) does not exist.
    ValueError: no images, an empty file, one of no image format or one
      that does not decode (``DataError``), a video among other inputs, or
      two inputs would write the same output file (with
      ``cityscapes_test_format``, also the same ``test_results`` file).
  """
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  found: list[_Unchecked] = []
  for item in inputs:
    path = os.fspath(item)
    if os.path.isdir(path):
      found += _from_folder(path)
    elif not os.path.exists(path):
      raise FileNotFoundError(f'{paths.shown(path)}: no such file or directory')
    elif path.lower().endswith(LIST_EXTENSIONS):
      found += _from_list(path, list_root)
    elif path.lower().endswith(VIDEO_EXTENSIONS):
      raise ValueError(f'{paths.shown(path)}: a video is predicted on its own; '
                       'give it as the only --input, and the images in another run')
    else:
      found.append(_Unchecked(ImageInput(path, _strip_ext(os.path.basename(path))),
                              hint=EXPLICIT))
  if not found:
    raise ValueError('predict: no input images')
  found = _decoded(found)
  check_unique([f.rel for f in found], found, 'output name')
  if cityscapes_test_format:
    check_unique([os.path.basename(f.rel) for f in found], found, 'test_results name')
  return found


def check_unique(keys: Sequence[str], found: Sequence[ImageInput], what: str
                 ) -> None:
  """Raises ValueError if two inputs have the same output ``key``."""
  seen = {}
  for key, f in zip(keys, found):
    if key in seen and os.path.realpath(seen[key]) == os.path.realpath(f.path):
      raise ValueError(f'{paths.shown(f.path)}: given twice (as an image, in a '
                       'folder or in a list); give it once')
    if key in seen:
      raise ValueError(f'{paths.shown(seen[key])} and {paths.shown(f.path)} map to the '
                       f'same {what} {key!r}; rename one or predict them separately')
    seen[key] = f.path


def read_image(path: str) -> np.ndarray:
  """RGB uint8 [H, W, 3] decoded like the original (cv2, BGR -> RGB).

  Raises:
    ValueError (``DataError``): missing, unreadable, truncated or corrupt;
      the message starts with the path.
  """
  return decode.decode_image(decode.read_bytes(path), path)


def output_paths(rel: str, out_dir: str, *, overlay: bool, test_format: bool
                 ) -> dict[str, str]:
  """The files one image writes, by kind: ``labels``, ``color``, and
  ``overlay`` and ``test_results`` when written."""
  out = {kind: os.path.join(out_dir, kind, rel + '.png') for kind in ('labels', 'color')}
  if overlay:
    out['overlay'] = os.path.join(out_dir, 'overlay', rel + '.png')
  if test_format:
    out['test_results'] = os.path.join(out_dir, 'test_results',
                                       os.path.basename(rel) + '.png')
  return out


def image_outputs(image: np.ndarray, class_map: np.ndarray, rel: str,
                  out_dir: str, *, palette: np.ndarray, overlay: bool,
                  alpha: float, test_labels: np.ndarray | None
                  ) -> dict[str, bytes]:
  """Encoded output files of one image, keyed by destination path."""
  where = output_paths(rel, out_dir, overlay=overlay,
                       test_format=test_labels is not None)
  colors = palettes.colorize(class_map, palette)
  out = {where['labels']: files.encode_png(class_map),
         where['color']: files.encode_png(colors)}
  if overlay:
    out[where['overlay']] = files.encode_png(palettes.overlay(image, colors, alpha))
  if test_labels is not None:
    out[where['test_results']] = files.encode_png(
        test_labels[class_map], palettes.voc_palette(256))
  return out


def files_under(folder: str) -> set[str]:
  """The files below ``folder`` (none if it does not exist), relative to it;
  hidden ones (a temporary file of an atomic write) not counted."""
  out = set()
  for root, dirs, names in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    out.update(os.path.relpath(os.path.join(root, n), folder)
               for n in names if not n.startswith('.'))
  return out


def earlier_files_line(before: set[str], written: set[str], out_dir: str) -> str | None:
  """One console line on the files that were in ``out_dir`` before this run
  (``before``, relative to it): how many of them this run's files
  (``written``, likewise) replaced, and how many from an earlier run are
  left in place (the first three named).  None when it was empty.  Earlier
  files stay: a user may predict folder A, then folder B into one workdir."""
  if not before:
    return None
  replaced = before & written
  left = sorted(before - written)
  parts = []
  if replaced:
    parts.append(f'{console.counted(len(replaced), "file")} replaced '
                 f'{"an earlier one" if len(replaced) == 1 else "earlier ones"}')
  if left:
    parts.append(f'{console.counted(len(left), "file")} of an earlier run kept in '
                 f'{paths.shown(out_dir)}{os.sep}: {listed(left, 3)}')
  return 'predict: ' + '; '.join(parts)


def predict_settings(dataset: str | None = None, *, sliding: bool = False,
                     crop_size: Sequence[int] | None = None,
                     scales: Sequence[float] = (1.0,), flip: bool = False,
                     batch_size: int = 1) -> dict[str, Any]:
  """Test-time settings without a dataset config (an ``eval`` section dict).

  Every image keeps its own resolution at scale 1 (``base_size`` unset);
  whole-image inference unless ``sliding``, which uses the dataset's rule
  and window (:func:`hrseg_jax.eval.config.default_eval_config`; the
  Cityscapes rule predicts scales <= 1 whole, as the original) or
  ``crop_size``.  ``flip`` swaps the dataset's left/right classes (LIP).
  """
  preset = eval_config.default_eval_config(dataset)
  out = eval_config.default_eval_config().to_dict()
  out.update(scales=tuple(float(x) for x in scales), flip=bool(flip),
             flip_pairs=tuple(preset.flip_pairs), batch_size=int(batch_size))
  if sliding:
    window = crop_size if crop_size is not None else preset.crop_size
    if window is None:
      raise ValueError('--sliding needs --crop_size H,W (no dataset preset for '
                       f'{dataset or "this checkpoint"})')
    out.update(mode='sliding', crop_size=tuple(int(v) for v in window),
               sliding_rule=preset.sliding_rule if dataset else 'base')
  elif crop_size is not None:
    out['crop_size'] = tuple(int(v) for v in crop_size)
  return out


def describe_settings(eval_cfg: Mapping[str, Any], what: str = 'image') -> str:
  """One line: how images (``what``: or frames) are predicted (mode, size,
  scales, flip)."""
  kw = eval_config.predictor_kwargs(eval_cfg)
  size = (f"each {what}'s own size" if kw['base_size'] is None
          else f'long side {kw["base_size"]}')
  mode = (f'whole {what}' if kw['mode'] == 'whole' else
          f'sliding {kw["crop_size"][0]}x{kw["crop_size"][1]} windows '
          f'({kw["sliding_rule"]} rule'
          + (': whole image at scales <= 1)' if kw['sliding_rule'] == 'cityscapes' else ')'))
  return (f'{mode} at {size}, scales {",".join(f"{x:g}" for x in kw["scales"])}'
          f', {"flip" if kw["flip"] else "no flip"}')


def first_of_each_size(sizes: Sequence[tuple[int, int] | None]) -> list[int]:
  """The index of each size's first image, ascending (unknown sizes left out)."""
  firsts: dict[tuple[int, int], int] = {}
  for n, size in enumerate(sizes):
    if size is not None:
      firsts.setdefault(tuple(size), n)
  return sorted(firsts.values())


def sizes_line(items: Sequence[ImageInput]) -> str:
  """'9 images in 8 sizes: each size compiles once', or '' for one size."""
  sizes = {item.size for item in items if item.size is not None}
  if len(sizes) < 2:
    return ''
  return (f'{console.counted(len(items), "image")} in {len(sizes)} sizes: '
          'each size compiles once')


def read_inputs(items: Iterable[ImageInput]
                ) -> Iterator[tuple[ImageInput, np.ndarray]]:
  """(input, RGB uint8 image) per input, decoded lazily.

  The loop of :func:`predict` only needs such pairs, so another source of
  frames (a video) can be plugged in with the same outputs.
  """
  for item in items:
    yield item, read_image(item.path)


def predict(model_cfg: Mapping[str, Any], variables, inputs, out_dir: str, *,
            palette: str = 'cityscapes', eval_cfg=None,
            cityscapes_test_format: bool = False, overlay: bool = True,
            alpha: float = 0.5, list_root: str | None = None,
            dtype=jnp.float32, log: Callable[[str], None] | None = None,
            frames: Iterable[tuple[ImageInput, np.ndarray]] | None = None,
            num_frames: int | None = None,
            shard: tuple[int, int] | None = None,
            resolved: Sequence[ImageInput] | None = None) -> list[dict[str, Any]]:
  """Predicts every input image and writes its files (module docstring).

  Args:
    model_cfg: model config.
    variables: model variables.
    inputs: folder, list file, image path, or a sequence of them.
    out_dir: output folder.
    palette: dataset name for the colours (:mod:`hrseg_jax.eval.palettes`).
    eval_cfg: test-time settings (scales, flip, mode, ...); default
      :func:`predict_settings` (single-scale whole-image at the image's own
      size).
    cityscapes_test_format: also write labelId PNGs under ``test_results/``
      (needs a 19-class model).
    overlay: also write the overlay images.
    alpha: overlay opacity of the colours.
    list_root: folder that list-file entries are relative to.
    dtype: network compute dtype.
    log: optional callback receiving one progress line per image (with the
      ETA) and a final summary line.
    frames: instead of ``inputs``, (input, RGB uint8 image) pairs (e.g. the
      frames of a video); ``num_frames`` is their count for the ETA.
    num_frames: number of ``frames`` (``None``: unknown, no ETA).
    shard: ``(index, count)``: predict images (or frames) ``index, index +
      count, ...``; default ``(jax.process_index(), jax.process_count())``,
      so that the processes of a multi-host job write disjoint files.
    resolved: :func:`resolve_inputs` of ``inputs`` when already called (the
      command line checks the inputs before the checkpoint loads): every
      image is then not decoded once more to check it.

  Returns:
    One dict per image of this shard: ``input`` and the written ``files``.

  Raises:
    FileNotFoundError: an input does not exist (before anything is written).
    ValueError: an image cannot be decoded (its path is in the message), or
      bad settings.
  """
  cfg = registry.resolve(model_cfg)
  pal = palettes.get_palette(palette)
  test_labels = None
  if cityscapes_test_format:
    if cfg['num_classes'] != 19:
      raise ValueError('cityscapes_test_format needs a 19-class model, got '
                       f'{cfg["num_classes"]} classes')
    test_labels = np.asarray(label_maps.CITYSCAPES_TRAIN_TO_LABEL, np.uint8)
  index, count = shard if shard is not None else (jax.process_index(),
                                                  jax.process_count())
  if frames is None:
    items = list(resolved) if resolved is not None else resolve_inputs(
        inputs, list_root, cityscapes_test_format=cityscapes_test_format)
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    for folder in (g for g in given if log is not None and os.path.isdir(g)):
      line = left_out_line(os.fspath(folder))   # a .bmp, a README: said, not silent
      if line:
        log(line)
    # Every process's files (not only this shard's) are this run's.
    planned = {os.path.relpath(f, out_dir) for item in items for f in output_paths(
        item.rel, out_dir, overlay=overlay, test_format=cityscapes_test_format).values()}
    items = items[index::count]
    frames, num_frames = read_inputs(items), len(items)
    firsts = first_of_each_size([item.size for item in items])
  elif count > 1:
    frames = (f for n, f in enumerate(frames) if n % count == index)
    num_frames = None if num_frames is None else len(range(index, num_frames, count))
    planned = set()
  else:
    firsts, planned = [], set()   # sizes to come unknown
  # What an earlier run left here is kept, and said (it mixed in silently).
  before = files_under(out_dir) if log is not None else set()
  if eval_cfg is None:
    eval_cfg = predict_settings()
  predictor = Predictor.from_config(cfg, variables, eval_cfg, dtype=dtype)
  progress = Progress(num_frames or 0, 'predict')
  # Each new image size compiles the model (exact-size inference): said on
  # its line, and out of the rate; the sizes still to come are in the ETA.
  seen: set[tuple[int, int]] = set()
  results = []
  for item, image in frames:
    try:
      pipes.raise_if_ctrl_c()
      size = image.shape[:2]
      new_size = size not in seen
      # A new size compiles, or reads the compiled model from the persistent cache.
      with compile_cache.Lookups() if new_size else contextlib.nullcontext() as lookups:
        class_map = predictor.predict(normalize(image))[0]
      encoded = image_outputs(image, class_map, item.rel, out_dir, palette=pal,
                              overlay=overlay, alpha=alpha, test_labels=test_labels)
      files.write_files_atomic(encoded)
    except KeyboardInterrupt:   # what is written stays, complete: say so
      if not results:
        raise
      of = f' of {num_frames}' if num_frames else ''
      raise pipes.Stopped(
          f'stopped by Ctrl-C after {console.counted(len(results), "image")}{of}, '
          f'written under {paths.shown(out_dir)}') from None
    results.append({'input': item.path, 'files': sorted(encoded)})
    seen.add(size)
    if log is not None:
      name = f'{paths.shown(item.path)} ({size[0]}x{size[1]})'
      if num_frames:
        log(progress.line(len(results), name, compiled=(
            f'{size[0]}x{size[1]}' if new_size else ''),
            compiles_left=len(firsts) - bisect.bisect_left(firsts, len(results)),
            from_cache=new_size and lookups.all_hits))
      else:
        log(f'predict {len(results)} {name}')
  if log is not None:
    written = {os.path.relpath(f, out_dir) for r in results for f in r['files']}
    line = earlier_files_line(before, planned | written, out_dir)
    if line:
      log(line)
    folders = sorted({f.split(os.sep)[0] for f in written})
    # Durations as the progress lines write them ('done in 9s' above).
    how = ('read from the cache' if progress.cached == progress.compiles else
           'compiled' if not progress.cached else
           'compiled or read from the cache')
    compiled = (f' ({console.counted(progress.compiles, "size")} {how} in '
                f'{format_duration(progress.compile_seconds)})'
                if progress.compiles > 1 else '')
    log(f'predicted {console.counted(len(results), "image")} in '
        f'{format_duration(progress.elapsed())}'
        f'{compiled} -> '
        f'{paths.shown(out_dir)} ({", ".join(f + "/" for f in folders)})')
  return results


if __name__ == '__main__':   # a library module: it ran nothing and exited 0
  import sys  # pylint: disable=g-import-not-at-top
  print('error: images are predicted by python -m hrseg_jax.main --mode predict '
        '--checkpoint CKPT --input PHOTOS --workdir DIR (--help for the options)',
        file=sys.stderr)
  sys.exit(2)
