"""--mode eval of a converted official checkpoint as its user runs it: the
dataset in its download layout, lists made by scripts/make_lists.py, the
README's commands with relative paths from a fresh folder; the protocol line
says what the original's testval does to each image."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image

import console_checks
from hrseg_jax import recipes
from hrseg_jax.eval import classes, evaluator
from hrseg_jax.models import registry
from test_eval_inference import TINY_HRNET
from test_readme_commands import REPO, run, write_tiny_pth


def _lip_download(root):
  """LIP as downloaded (TrainVal_images/, TrainVal_parsing_annotations/)."""
  rng = np.random.default_rng(0)
  for split in ('train', 'val'):
    for name in ('100_7', '101_8'):
      image = root / f'TrainVal_images/{split}_images/{name}.jpg'
      label = root / f'TrainVal_parsing_annotations/{split}_segmentations/{name}.png'
      os.makedirs(image.parent, exist_ok=True)
      os.makedirs(label.parent, exist_ok=True)
      Image.fromarray(rng.integers(0, 255, (30, 20, 3), np.uint8)).save(image)
      Image.fromarray(rng.choice([0, 2, 14, 15, 255], (30, 20)).astype(np.uint8)).save(label)


def test_lip_eval_says_the_resize_and_the_flip_swap(tmp_path):
  """LIP's testval stretches each image to 473x473 and its flip test swaps
  the left/right classes: the line said neither ('sliding 473x473 windows at
  long side 473, scales 1, flip'); metrics.json did not say which checkpoint
  it scored."""
  shutil.copytree(REPO / 'configs', tmp_path / 'configs')
  shutil.copytree(REPO / 'scripts', tmp_path / 'scripts')
  _lip_download(tmp_path / 'data/lip')
  write_tiny_pth(tmp_path / 'hrnet_lip.pth', dict(TINY_HRNET, num_classes=20), seed=0)
  run(tmp_path, ['python', 'scripts/make_lists.py', 'lip', '--root', 'data/lip',
                 '--out', 'data/list/lip'])
  run(tmp_path, ['python', '-m', 'hrseg_jax.convert', 'hrnet_lip.pth', 'converted/lip'])
  r = run(tmp_path, ['python', '-m', 'hrseg_jax.main', '--config', 'configs/hrnet_w48_lip.py',
                     '--workdir', 'runs/lip_eval', '--mode', 'eval',
                     '--checkpoint', 'converted/lip', '--config.eval.flip=True'])
  lines = r.stdout.splitlines()
  # A tiny model: --config's (W48) is not the checkpoint's, which is evaluated.
  assert lines[1].startswith("warning: the checkpoint's model (hrnet custom, 20 classes) "
                             "differs from the config's (hrnet w48, 20 classes; "
                             'model.variant)'), r.stdout
  assert lines[3] == (
      'eval: 2 val images (data/list/lip/valList.txt), each resized to 473x473 (aspect '
      'not kept); sliding 473x473 windows (base rule) at long side 473, scales 1, flip '
      '(left/right classes swapped: 14-15, 16-17, 18-19)'), r.stdout
  names = classes.class_names('lip', 20)
  console_checks.assert_eval_table(r.stdout, names)
  metrics = json.loads((tmp_path / 'runs/lip_eval/eval/metrics.json').read_text())
  assert metrics['class_names'] == list(names)
  assert metrics['settings']['flip_pairs'] == [[14, 15], [16, 17], [18, 19]]
  assert metrics['settings']['checkpoint'] == os.path.realpath(tmp_path / 'converted/lip')
  assert metrics['settings']['checkpoint_step'] == 0
  assert np.asarray(metrics['confusion_matrix']).sum() == np.sum(
      [np.asarray(Image.open(p)) != 255 for p in sorted(
          (tmp_path / 'data/lip/TrainVal_parsing_annotations/val_segmentations').glob('*.png'))])


def test_short_side_datasets_say_their_padding():
  """PASCAL-Context, COCO-Stuff and ADE20K: short side 520 padded to a
  multiple of 8; the original crops that padding except for ADE20K."""
  def line(dataset):
    config = recipes.recipe(dataset, 'w48')
    config.eval.protocol = 'test'
    return evaluator.from_config(
        config, default_protocol='test', model_cfg=registry.resolve(config.model),
        to_global=lambda local: local, out_dir='unused', log=lambda _: None).settings_line()
  for dataset in ('pascal_ctx', 'pascal_ctx60', 'cocostuff'):
    assert (', short side resized to 520 and padded to a multiple of 8 (padding cropped '
            'from the prediction); sliding 520x520 windows') in line(dataset)
  assert (', short side resized to 520 and padded to a multiple of 8 (padding kept in the '
          'prediction, as the original does for ADE20K); sliding 520x520') in line('ade20k')
  # The original's Cityscapes rule slides only above scale 1.
  assert ('; sliding 1024x2048 windows (cityscapes rule: whole image at scales <= 1) at '
          'long side 2048, scales 1, no flip') in line('cityscapes')


def test_a_subset_is_named_as_one(tmp_path, monkeypatch):
  """eval.num_examples (test protocol) and data.val_num_samples (validation,
  the original's TEST.NUM_SAMPLES) score part of the split: the line said
  '1 val images', as if that were the whole split."""
  monkeypatch.chdir(tmp_path)
  _lip_download(tmp_path / 'data/lip')
  os.makedirs('data/list/lip')
  for name in ('valList.txt', 'trainList.txt'):
    (tmp_path / 'data/list/lip' / name).write_text(''.join(
        f'val_images/{n}.jpg val_segmentations/{n}.png\n' for n in ('100_7', '101_8')))

  def line(protocol, num_examples=-1, **data):
    config = recipes.recipe('lip', 'w48')
    config.eval.protocol = protocol
    config.eval.num_examples = num_examples
    config.data.update(data)
    return evaluator.from_config(
        config, default_protocol='test', model_cfg=registry.resolve(config.model),
        to_global=lambda local: local, out_dir='unused', log=lambda _: None).settings_line()
  assert line('test').startswith('2 val images (data/list/lip/valList.txt), ')
  assert line('test', num_examples=1).startswith(
      '1 of 2 val images (data/list/lip/valList.txt; eval.num_examples 1), each resized')
  assert line('validation', val_num_samples=1).startswith(
      '1 of 2 val images (data/list/lip/valList.txt; data.val_num_samples 1) at ')
  assert line('validation', val_num_samples=0).startswith('2 val images (')
