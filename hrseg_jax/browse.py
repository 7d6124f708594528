"""python -m hrseg_jax.browse --config configs/X.py [--split S] [--num 8] --out grid.png
    [--config.a.b=V ...]

Draws what the model will be trained and evaluated on, as one picture: for
each sample the image as the network sees it (after the training
augmentation for ``train``: rescale, crop, flip; the validation transform for
``val``) and its label overlaid in the dataset's colours, with ignored
pixels (255) hatched in black and white.  When the config feeds HANet row
positions (``data.with_rows``) a strip left of each image shows the frame
row of every image row (dark = top of the frame, light = bottom, red =
padding).  Check a dataset's layout, label mapping and augmentation before a
long run; it works on the built-in synthetic data out of the box.
``--config.a.b=V`` overrides a field as in training (e.g. the
``--config.data.root``, lists or ``label_map`` a training run is given).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from hrseg_jax import arguments

TILE_W = 320  # width of one image panel in the picture
STRIP_W = 10  # HANet row strip
GAP = 6
CAPTION_H = 18


def hatch_ignored(colors: np.ndarray, ignored: np.ndarray) -> np.ndarray:
  """Black/white diagonal stripes where ``ignored``."""
  h, w = ignored.shape
  yy, xx = np.mgrid[:h, :w]
  stripes = np.where(((xx + yy) // 4) % 2 == 0, 255, 0).astype(np.uint8)
  out = colors.copy()
  out[ignored] = stripes[ignored][:, None]
  return out


def rows_strip(rows: np.ndarray, height: int, frame_height: int) -> np.ndarray:
  """[H, STRIP_W, 3] grey ramp of frame rows; red for padding (-1)."""
  rows = np.asarray(rows)
  grey = np.clip(rows * 255.0 / max(frame_height - 1, 1), 0, 255).astype(np.uint8)
  strip = np.repeat(grey[:, None, None], 3, axis=2)
  strip[rows < 0] = (220, 0, 0)
  strip = np.repeat(strip, STRIP_W, axis=1)
  return strip[:height]


def _resize(img: np.ndarray, width: int, nearest: bool = False) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  h, w = img.shape[:2]
  height = max(1, round(h * width / w))
  interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
  return cv2.resize(img, (width, height), interpolation=interp)


def _caption(width: int, text: str) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  bar = np.full((CAPTION_H, width, 3), 255, np.uint8)
  cv2.putText(bar, text, (4, CAPTION_H - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
              (0, 0, 0), 1, cv2.LINE_AA)
  return bar


def sample_panel(example: dict, palette: np.ndarray, caption: str,
                 frame_height: int | None) -> np.ndarray:
  """[caption; (rows strip) | image | label overlay] of one example."""
  from hrseg_jax.eval import palettes  # pylint: disable=g-import-not-at-top
  image = np.asarray(example['image'], np.uint8)
  label = np.asarray(example['label'])
  ignored = label == 255
  colors = hatch_ignored(palettes.colorize(np.where(ignored, 0, label), palette), ignored)
  over = palettes.overlay(image, colors, 0.5)
  over[ignored] = colors[ignored]
  left, right = _resize(image, TILE_W), _resize(over, TILE_W, nearest=True)
  parts = [left, np.full((left.shape[0], GAP, 3), 255, np.uint8), right]
  if frame_height is not None and 'rows' in example:
    idx = np.floor(np.arange(left.shape[0]) * image.shape[0] / left.shape[0]).astype(int)
    strip = rows_strip(np.asarray(example['rows'])[idx], left.shape[0], frame_height)
    parts = [strip, np.full((left.shape[0], 2, 3), 255, np.uint8)] + parts
  body = np.concatenate(parts, axis=1)
  return np.concatenate([_caption(body.shape[1], caption), body], axis=0)


def draw_examples(data_cfg, split: str, num: int, seed: int) -> list[tuple[dict, str]]:
  """``num`` (example, caption) pairs of ``split`` as the pipeline makes them."""
  from hrseg_jax.data import augment, sources  # pylint: disable=g-import-not-at-top
  source = sources.make_source(data_cfg, split)
  if len(source) == 0:
    raise ValueError(f'data: the {split} split is empty')
  transform = (augment.TrainTransform(data_cfg, normalize=False) if split == 'train'
               else augment.ValTransform(data_cfg, normalize=False))
  order = np.random.default_rng(seed).permutation(len(source))[:num]
  out = []
  for i in order:
    example = source[int(i)]
    rng = np.random.default_rng([seed, int(i)])
    out.append((transform(example, rng), f'{split} #{int(i)} {example.get("id", "")}'))
  return out


def grid(panels: list[np.ndarray], columns: int) -> np.ndarray:
  """Panels in rows of ``columns``, each cell padded to the largest panel."""
  h = max(p.shape[0] for p in panels)
  w = max(p.shape[1] for p in panels)
  cells = [np.pad(p, ((0, h - p.shape[0] + GAP), (0, w - p.shape[1] + GAP), (0, 0)),
                  constant_values=255) for p in panels]
  cells += [np.full_like(cells[0], 255)] * (-len(cells) % columns)
  rows = [np.concatenate(cells[i:i + columns], axis=1) for i in range(0, len(cells), columns)]
  return np.concatenate(rows, axis=0)


def browse(config, splits: list[str], num: int, seed: int = 0, columns: int = 2
           ) -> np.ndarray:
  """The picture (uint8 RGB) of ``num`` samples of each split."""
  from hrseg_jax.eval import palettes  # pylint: disable=g-import-not-at-top
  data_cfg = config.data
  palette = palettes.get_palette(data_cfg.name)
  frame_height = None
  if bool(data_cfg.get('with_rows', False)):
    hanet = (config.get('model') or {}).get('hanet') or {}
    frame_height = int(hanet.get('frame_height', 1024))
  sections = []
  for split in splits:
    panels = [sample_panel(ex, palette, cap, frame_height)
              for ex, cap in draw_examples(data_cfg, split, num, seed)]
    body = grid(panels, columns)
    title = (f'{data_cfg.name} {split}: '
             + ('augmented training samples' if split == 'train' else 'validation samples')
             + ' (image | label; hatched = ignored'
             + ('; left strip = HANet frame rows, red = padding' if frame_height else '')
             + ')')
    sections.append(np.concatenate([_caption(body.shape[1], title), body], axis=0))
  w = max(s.shape[1] for s in sections)
  sections = [np.pad(s, ((0, GAP), (0, w - s.shape[1]), (0, 0)), constant_values=255)
              for s in sections]
  return np.concatenate(sections, axis=0)


def main(argv=None) -> int:
  p = arguments.ArgumentParser(prog='python -m hrseg_jax.browse', description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', required=True, help='configs/X.py[:arg]')
  p.add_argument('--split', choices=('train', 'val', 'both'), default='both')
  p.add_argument('--num', type=int, default=8, help='samples per split (default 8)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', required=True, help='PNG file to write')
  args, overrides = p.parse_known_args(argv)
  # --config.a.b=V, or --config.a.b V as absl (and training) also takes it.
  unknown = [a for i, a in enumerate(overrides) if not a.startswith('--config.') and not (
      i and overrides[i - 1].startswith('--config.') and '=' not in overrides[i - 1]
      and not a.startswith('-'))]
  if unknown:
    p.unrecognized(unknown)
  try:
    if args.num < 1:
      raise ValueError(f'--num {args.num}: must be positive')
    if not args.out.lower().endswith('.png'):
      raise ValueError(f'--out {args.out}: must be a .png file')
    from hrseg_jax import command_line  # pylint: disable=g-import-not-at-top
    from hrseg_jax import files, paths  # pylint: disable=g-import-not-at-top
    paths.check_writable(args.out, '--out')   # before the samples are drawn
    config = command_line.load_config_with_overrides(args.config, overrides)
    splits = ['train', 'val'] if args.split == 'both' else [args.split]
    picture = browse(config, splits, args.num, args.seed)
    files.write_bytes_atomic(args.out, files.encode_png(picture))
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {e}'.replace('\n', ' '), file=sys.stderr)
    return 2
  print(f'wrote {args.out}: {picture.shape[1]}x{picture.shape[0]}, '
        f'{args.num} samples of {" and ".join(splits)}')
  return 0


if __name__ == '__main__':
  from hrseg_jax import pipes  # pylint: disable=g-import-not-at-top
  pipes.run_command(main)
