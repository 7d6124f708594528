"""``config.data``: the input-pipeline configuration and per-dataset recipes.

:func:`default_data_config` returns the original HRNet-Semantic-Segmentation
recipe (HRNet-OCR branch yamls, spec sections 4.3-4.9 and 5.3-5.4) for one
dataset.  Sizes are ``(height, width)`` (the yamls write ``[width, height]``).

Fields
------
Dataset and source:
  name: dataset name ('cityscapes', 'lip', 'pascal_ctx', 'pascal_ctx60',
    'cocostuff', 'ade20k', 'synthetic').
  source: 'files' (list files + image/label files), 'tfds' (a TFDS
    ArrayRecord dataset read with ``tfds.data_source``) or 'synthetic'
    (procedural scenes generated in memory).
  root: dataset directory; the paths inside list files are relative to it
    (``data/cityscapes`` for ``leftImg8bit/...`` entries).
  train_list, val_list, test_list: list files in the original format
    (whitespace-separated columns: image, label, [ignored extra columns]; a
    one-column list has no labels).  Absolute, or relative to the working
    directory.  The original lists are not shipped: generate them with
    ``scripts/make_lists.py`` (sorted order, identical to the original lists
    for a complete dataset) or use your own.  '' = split not available.
  image_prefix, label_prefix: directories (relative to root) prepended to the
    image / label column; LIP's original lists are relative to
    ``TrainVal_images`` / ``TrainVal_parsing_annotations``.
  label_map: raw label value -> training id table, see
    :func:`hrseg_jax.data.label_maps.get_label_map` ('cocostuff164k' for
    COCO-Stuff-164k's stuffthingmaps, 'identity' for trainId PNGs).
  num_classes: K (training ids 0..K-1).
  ignore_label: always 255 in batches (PASCAL-Context's original -1 and
    COCO-Stuff/ADE20K's uint8 wrap-around all become 255).

Training augmentation (``gen_sample`` of the original, in its order):
  crop_size: (h, w) of training crops.
  base_size: the long side at scale 1 (``BASE_SIZE``).
  scale_factor: scales are 0.5 + randint(0, scale_factor) / 10.
  multi_scale: random rescale (if False: no rescale, only pad + crop).
  flip: random horizontal flip with p = 0.5 (LIP swaps left/right labels).
  pre_resize: applied before ``gen_sample``: 'none' (Cityscapes), 'fixed'
    (LIP: resize to pre_resize_size ignoring aspect; the flip happens before
    it, as in the original) or 'short_side' (PASCAL-Context, COCO-Stuff,
    ADE20K: short side -> base_size).
  pre_resize_size: (h, w) for pre_resize == 'fixed'.

Evaluation (``testval``/``val`` preprocessing of the original):
  eval_mode: 'full' (image as is), 'fixed' (image resized to eval_size) or
    'short_side_pad' (short side -> eval_base_size, then bottom/right padding
    with the mean colour to a multiple of eval_stride).
  eval_size: (h, w) of batched eval examples (``make_eval_iterator``):
    'full' pads up to it (error if an image is larger), 'fixed' resizes image
    and label to it, 'short_side_pad' takes a random (seeded per example)
    eval_size crop after the resize and padding, like the original's
    training-time validation.
  eval_base_size: ``TEST.BASE_SIZE``, the long side at scale 1 in
    multi-scale inference, and the short side for 'short_side_pad'.
  eval_stride: the padding multiple for 'short_side_pad' (8).
  eval_crop_size: ``TEST.IMAGE_SIZE`` (h, w), the sliding-window crop.
  readme_eval_scales, readme_eval_flip: the scales and flip of the
    original README's number for this recipe.  Not read by the evaluation
    (``eval.scales`` and ``eval.flip`` decide); ``--mode eval`` names them
    when they differ.
  eval_crop_padding: whether the evaluator crops the stride padding from the
    prediction before resizing it to the label (PASCAL-Context, COCO-Stuff:
    True; ADE20K: False, a quirk of the original kept for parity).
  val_num_samples: ``TEST.NUM_SAMPLES``; make_eval_iterator uses only the
    first val_num_samples examples (0 = all).  eval_examples ignores it.

Loading:
  with_rows: add ``'rows'`` (original-image row of every output row, -1 for
    padding) to every example, for height-driven attention.
  num_workers: Grain worker processes (0 = in the main process).
  read_threads: threads per process reading and transforming examples.
  prefetch_buffer: batches buffered per worker process.
  skip_bad_examples: False raises a DataError naming the file for a missing
    or corrupt file, a size mismatch or an undefined label value; True logs
    it, counts it (``hrseg_jax.data.errors.SKIPPED``) and substitutes the next
    example (training) or masks it out (evaluation).

TFDS (source == 'tfds'):
  tfds_name: dataset name, with config ('cityscapes/semantic_segmentation'
    for the TFDS Cityscapes builder; 'hrseg_<name>' for datasets written by
    ``scripts/prepare_tfds.py``).
  tfds_data_dir: TFDS data directory ('' = TFDS default).
  tfds_train_split, tfds_val_split, tfds_test_split: split names (TFDS split
    syntax, e.g. 'train+val' for trainval).
  tfds_image_key, tfds_label_key, tfds_id_key: feature names.

Synthetic (source == 'synthetic'):
  num_train, num_val: number of examples; image_size: (h, w); seed: the
  scene seed (num_classes is shared with the fields above).
"""
from __future__ import annotations

import ml_collections

DATASETS = ('cityscapes', 'lip', 'pascal_ctx', 'pascal_ctx60', 'cocostuff',
            'ade20k', 'synthetic')

_README_MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _common() -> dict:
  return dict(
      source='files',
      root='',
      train_list='',
      val_list='',
      test_list='',
      image_prefix='',
      label_prefix='',
      ignore_label=255,
      multi_scale=True,
      flip=True,
      pre_resize='none',
      pre_resize_size=(0, 0),
      eval_stride=8,
      readme_eval_scales=(1.0,),
      readme_eval_flip=False,
      eval_crop_padding=True,
      val_num_samples=0,
      with_rows=False,
      num_workers=4,
      read_threads=2,
      prefetch_buffer=2,
      skip_bad_examples=False,
      tfds_data_dir='',
      tfds_train_split='train',
      tfds_val_split='val',
      tfds_test_split='test',
      tfds_image_key='image',
      tfds_label_key='label',
      tfds_id_key='id',
      num_train=0,
      num_val=0,
      image_size=(0, 0),
      seed=0,
  )


def _cityscapes() -> dict:
  return dict(
      root='data/cityscapes',
      train_list='data/list/cityscapes/train.lst',
      val_list='data/list/cityscapes/val.lst',
      test_list='data/list/cityscapes/test.lst',
      label_map='cityscapes',
      num_classes=19,
      crop_size=(512, 1024),
      base_size=2048,
      scale_factor=16,
      eval_mode='full',
      eval_size=(1024, 2048),
      eval_base_size=2048,
      eval_crop_size=(1024, 2048),
      # README multi-scale + flip: (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
      tfds_name='cityscapes/semantic_segmentation',
      tfds_val_split='validation',
      tfds_image_key='image_left',
      tfds_label_key='segmentation_label',
      tfds_id_key='image_id',
  )


def _lip() -> dict:
  return dict(
      root='data/lip',
      train_list='data/list/lip/trainList.txt',
      val_list='data/list/lip/valList.txt',
      image_prefix='TrainVal_images',
      label_prefix='TrainVal_parsing_annotations',
      label_map='lip',
      num_classes=20,
      crop_size=(473, 473),
      base_size=473,
      scale_factor=11,
      pre_resize='fixed',
      pre_resize_size=(473, 473),
      eval_mode='fixed',
      eval_size=(473, 473),
      eval_base_size=473,
      eval_crop_size=(473, 473),
      readme_eval_flip=True,
      val_num_samples=2000,
      tfds_name='hrseg_lip',
  )


def _ocr_520(name: str, label_map: str, num_classes: int) -> dict:
  return dict(
      root=f'data/{name}',
      train_list=f'data/list/{name}/train.lst',
      val_list=f'data/list/{name}/val.lst',
      label_map=label_map,
      num_classes=num_classes,
      crop_size=(520, 520),
      base_size=520,
      scale_factor=16,
      pre_resize='short_side',
      eval_mode='short_side_pad',
      eval_size=(520, 520),
      eval_base_size=520,
      eval_crop_size=(520, 520),
      tfds_name=f'hrseg_{name}',
  )


def _synthetic() -> dict:
  return dict(
      source='synthetic',
      label_map='identity',
      num_classes=19,
      num_train=512,
      num_val=64,
      image_size=(256, 512),
      seed=0,
      crop_size=(128, 256),
      base_size=512,
      scale_factor=16,
      eval_mode='full',
      eval_size=(256, 512),
      eval_base_size=512,
      eval_crop_size=(256, 512),
      num_workers=0,
      tfds_name='hrseg_synthetic',
  )


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """Returns the original training/evaluation recipe for dataset ``name``.

  Args:
    name: one of :data:`DATASETS`.

  Returns:
    A ConfigDict with the fields documented in this module.
  """
  if name == 'cityscapes':
    recipe = _cityscapes()
  elif name == 'lip':
    recipe = _lip()
  elif name == 'pascal_ctx':
    recipe = _ocr_520('pascal_ctx', 'pascal_ctx', 59)
    recipe.update(readme_eval_scales=_README_MS_SCALES, readme_eval_flip=True)
  elif name == 'pascal_ctx60':
    recipe = _ocr_520('pascal_ctx', 'pascal_ctx60', 60)
    recipe.update(readme_eval_scales=_README_MS_SCALES, readme_eval_flip=True)
  elif name == 'cocostuff':
    # README also reports multi-scale + flip (scales 0.5 .. 2.0).
    recipe = _ocr_520('cocostuff', 'cocostuff', 171)
    recipe.update(val_num_samples=200)
  elif name == 'ade20k':
    # SCALE_FACTOR 16 is the OCR yaml; the seg_hrnet yaml uses 11.
    recipe = _ocr_520('ade20k', 'ade20k', 150)
    recipe.update(val_num_samples=200, eval_crop_padding=False)
  elif name == 'synthetic':
    recipe = _synthetic()
  else:
    raise ValueError(f'unknown dataset {name!r}; expected one of {DATASETS}')
  fields = _common()
  fields.update(recipe)
  fields['name'] = name
  return ml_collections.ConfigDict(fields)


def size_field(data_cfg, name: str) -> tuple[int, int]:
  """``data.<name>`` as (height, width); the one-line ValueError of
  :mod:`hrseg_jax.config_fields` unless it is two integers > 0 (a field not
  read, e.g. ``pre_resize_size`` without ``pre_resize='fixed'``, passes and
  reads as (0, 0) when it is not two integers)."""
  from hrseg_jax import config_fields  # pylint: disable=g-import-not-at-top
  config_fields.check_field({'data': data_cfg}, f'data.{name}')
  try:
    h, w = (int(v) for v in data_cfg[name])
  except (TypeError, ValueError):
    return 0, 0
  return h, w
