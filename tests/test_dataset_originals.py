"""The datasets as their users have them on disk (original downloads, the
original repository's and mmsegmentation's layouts), prepared with the
documented commands from the user's folder with relative paths, and read
through the pipeline: raw label values end as the right training ids."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from hrseg_jax import recipes
from hrseg_jax.data import sources

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script(cwd, *args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, str(REPO / 'scripts' / args[0]), *args[1:]],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=120, check=False)


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _pixels(source, index=0):
  """{(raw value, training id)} of one example, read as the pipeline reads it."""
  raw = np.asarray(Image.open(source._labels[index]))  # pylint: disable=protected-access
  return sorted({(int(a), int(b)) for a, b in zip(raw.ravel(), source[index]['label'].ravel())})


@pytest.mark.parametrize('folder', ['data/ade20k', 'data/ade20k/ADEChallengeData2016'])
def test_ade20k_as_downloaded(tmp_path, monkeypatch, folder):
  """ADEChallengeData2016's images/{training,validation} and annotations/...
  (also mmsegmentation's layout) were refused by make_lists.py."""
  label = np.zeros((6, 8), np.uint8)
  label[:2], label[2:4], label[4:] = 1, 150, 0   # wall, flag, "other"
  for split, name in (('training', 'ADE_train_00000001'), ('training', 'ADE_train_00000002'),
                      ('validation', 'ADE_val_00000001')):
    _write(tmp_path / folder / 'images' / split / f'{name}.jpg', np.full((6, 8, 3), 90, np.uint8))
    _write(tmp_path / folder / 'annotations' / split / f'{name}.png', label)
  r = _script(tmp_path, 'make_lists.py', 'ade20k', '--root', 'data/ade20k',
              '--out', 'data/list/ade20k')
  assert r.returncode == 0, r.stderr
  first = folder[len('data/ade20k/'):] + '/' if folder != 'data/ade20k' else ''
  assert r.stdout.splitlines() == [
      f'found 2 train, 1 val images under data/ade20k (first: {first}images/training/'
      'ADE_train_00000001.jpg)',
      'testval        1 lines  data/list/ade20k/testval.lst',
      'train          2 lines  data/list/ade20k/train.lst',
      'trainval       3 lines  data/list/ade20k/trainval.lst',
      'val            1 lines  data/list/ade20k/val.lst']
  sub = folder[len('data/ade20k/'):] + '/' if folder != 'data/ade20k' else ''
  assert (tmp_path / 'data/list/ade20k/val.lst').read_text() == (
      f'{sub}images/validation/ADE_val_00000001.jpg '
      f'{sub}annotations/validation/ADE_val_00000001.png\n')
  monkeypatch.chdir(tmp_path)
  data = recipes.recipe('ade20k', 'w18_small_v1').data   # its default paths
  for split in ('train', 'val'):
    source = sources.make_source(data, split)
    assert _pixels(source) == [(0, 255), (1, 0), (150, 149)]


def _train_cli(cwd, *overrides):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  if not (cwd / 'configs').exists():
    (cwd / 'configs').symlink_to(REPO / 'configs')
  return subprocess.run(
      [sys.executable, '-m', 'hrseg_jax.main', '--config', 'configs/hrnet_w48_cocostuff.py',
       '--workdir', 'runs/x', "--config.train.init_from=", *overrides],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize('mmseg', [False, True])
def test_cocostuff164k_as_downloaded(tmp_path, monkeypatch, mmseg):
  """COCO-Stuff-164k (images/train2017 + annotations/train2017 stuffthingmaps:
  COCO id - 1, 255 = unlabeled; or mmsegmentation's *_labelTrainIds.png) was
  refused by make_lists.py, and its labels, read with the 10k map, would have
  trained on shifted classes (0 = person became ignore)."""
  label = np.full((6, 8), 255, np.uint8)
  label[:2], label[2:4], label[4:5] = 0, 12, 181   # person, stop sign, wood
  trainids = label.copy()
  trainids[:2], trainids[2:4], trainids[4:5] = 0, 11, 170
  for split in ('train2017', 'val2017'):
    _write(tmp_path / 'data/cocostuff' / 'images' / split / '000000000009.jpg',
           np.full((6, 8, 3), 90, np.uint8))
    _write(tmp_path / 'data/cocostuff' / 'annotations' / split / '000000000009.png', label)
    if mmseg:
      _write(tmp_path / 'data/cocostuff' / 'annotations' / split /
             '000000000009_labelTrainIds.png', trainids)
  r = _script(tmp_path, 'make_lists.py', 'cocostuff', '--root', 'data/cocostuff',
              '--out', 'data/list/cocostuff')
  assert r.returncode == 0, r.stderr
  name = '000000000009_labelTrainIds.png' if mmseg else '000000000009.png'
  assert (tmp_path / 'data/list/cocostuff/val.lst').read_text() == (
      f'images/val2017/000000000009.jpg annotations/val2017/{name}\n')
  label_map = 'identity' if mmseg else 'cocostuff164k'
  r = _train_cli(tmp_path)
  assert r.returncode == 2 and r.stdout == '' and r.stderr.count('\n') == 1, r.stderr
  assert r.stderr.startswith(f'error: data/cocostuff/annotations/train2017/{name}: '
                             'a label in '), r.stderr
  assert r.stderr.endswith(f"data.label_map='cocostuff': pass "
                           f'--config.data.label_map={label_map}\n'), r.stderr
  assert not (tmp_path / 'runs').exists()
  monkeypatch.chdir(tmp_path)
  data = recipes.recipe('cocostuff', 'w18_small_v1').data
  data.label_map = label_map
  for split in ('train', 'val'):
    source = sources.make_source(data, split)
    raw_to_id = [(0, 0), (11, 11), (170, 170)] if mmseg else [(0, 0), (12, 11), (181, 170)]
    assert _pixels(source) == [*raw_to_id, (255, 255)]


def test_cocostuff10k_ids_map_like_the_original(tmp_path, monkeypatch):
  """The original's COCO-Stuff-10k PNGs: COCO ids 1..182, 0 = unlabeled."""
  label = np.zeros((6, 8), np.uint8)
  label[:2], label[2:4], label[4:5] = 1, 13, 182   # person, stop sign, wood
  for split in ('train', 'val'):
    _write(tmp_path / 'data/cocostuff' / split / 'image' / 'COCO_train2014_000000000077.jpg',
           np.full((6, 8, 3), 90, np.uint8))
    _write(tmp_path / 'data/cocostuff' / split / 'label' / 'COCO_train2014_000000000077.png', label)
  r = _script(tmp_path, 'make_lists.py', 'cocostuff', '--root', 'data/cocostuff',
              '--out', 'data/list/cocostuff')
  assert r.returncode == 0, r.stderr
  monkeypatch.chdir(tmp_path)
  source = sources.make_source(recipes.recipe('cocostuff', 'w18_small_v1').data, 'val')
  assert _pixels(source) == [(0, 255), (1, 0), (13, 11), (182, 170)]


@pytest.mark.parametrize('root', ['data/pascal_ctx', 'data/pascal_ctx/VOCdevkit/VOC2010'])
def test_pascal_ctx_as_mmsegmentation_converts_it(tmp_path, monkeypatch, root):
  """mmsegmentation's PASCAL-Context (VOC2010 JPEGImages + SegmentationClassContext
  PNGs, 0 = background, split files in ImageSets/SegmentationContext) was
  refused by make_lists.py; 59 classes ignore the background, 60 keep it."""
  voc = tmp_path / 'data/pascal_ctx/VOCdevkit/VOC2010'
  label = np.zeros((6, 8), np.uint8)
  label[:2], label[2:4] = 1, 59   # aeroplane, wood
  for split, stems in (('train', ['2008_000002', '2008_000007']), ('val', ['2008_000003'])):
    for stem in stems:
      _write(voc / 'JPEGImages' / f'{stem}.jpg', np.full((6, 8, 3), 90, np.uint8))
      _write(voc / 'SegmentationClassContext' / f'{stem}.png', label)
    os.makedirs(voc / 'ImageSets/SegmentationContext', exist_ok=True)
    (voc / 'ImageSets/SegmentationContext' / f'{split}.txt').write_text('\n'.join(stems) + '\n')
  _write(voc / 'JPEGImages' / '2007_000027.jpg', np.full((6, 8, 3), 90, np.uint8))  # not in a split
  r = _script(tmp_path, 'make_lists.py', 'pascal_ctx', '--root', root,
              '--out', 'data/list/pascal_ctx')
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[0].startswith(f'found 2 train, 1 val images under {root} ')
  assert r.stdout.splitlines()[2] == 'train          2 lines  data/list/pascal_ctx/train.lst'
  base = 'VOCdevkit/VOC2010/' if root == 'data/pascal_ctx' else ''
  assert (tmp_path / 'data/list/pascal_ctx/val.lst').read_text() == (
      f'{base}JPEGImages/2008_000003.jpg {base}SegmentationClassContext/2008_000003.png\n')
  monkeypatch.chdir(tmp_path)
  for name, expected in (('pascal_ctx', [(0, 255), (1, 0), (59, 58)]),
                         ('pascal_ctx60', [(0, 0), (1, 1), (59, 59)])):
    data = recipes.recipe(name, 'w18_small_v1').data
    data.root = root
    assert _pixels(sources.make_source(data, 'val')) == expected


def test_pascal_ctx_split_file_naming_a_missing_image_is_one_line(tmp_path):
  voc = tmp_path / 'data/pascal_ctx/VOCdevkit/VOC2010'
  os.makedirs(voc / 'ImageSets/SegmentationContext')
  (voc / 'ImageSets/SegmentationContext/train.txt').write_text('2008_000002\n')
  r = _script(tmp_path, 'make_lists.py', 'pascal_ctx', '--root', 'data/pascal_ctx',
              '--out', 'data/list/pascal_ctx')
  assert r.returncode == 2 and r.stdout == ''
  assert r.stderr == ('error: data/pascal_ctx/VOCdevkit/VOC2010/JPEGImages/2008_000002.jpg: '
                      'image listed in data/pascal_ctx/VOCdevkit/VOC2010/ImageSets/'
                      'SegmentationContext/train.txt not found\n')
  assert not (tmp_path / 'data/list').exists()


def _browse(cwd, *args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  if not (cwd / 'configs').exists():
    (cwd / 'configs').symlink_to(REPO / 'configs')
  return subprocess.run([sys.executable, '-m', 'hrseg_jax.browse', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_browse_takes_the_overrides_training_takes(tmp_path):
  """browse refused --config.* ('unrecognized arguments'), so a dataset
  anywhere but the config's data.root could not be looked at."""
  label = np.ones((24, 32), np.uint8)
  for split, name in (('training', 'ADE_train_00000001'), ('validation', 'ADE_val_00000001')):
    _write(tmp_path / 'ADEChallengeData2016/images' / split / f'{name}.jpg',
           np.full((24, 32, 3), 90, np.uint8))
    _write(tmp_path / 'ADEChallengeData2016/annotations' / split / f'{name}.png', label)
  assert _script(tmp_path, 'make_lists.py', 'ade20k', '--root', 'ADEChallengeData2016',
                 '--out', 'lists').returncode == 0
  common = ['--config', 'configs/hrnet_w48_ade20k.py', '--num', '1', '--out', 'grid.png',
            '--config.data.root=ADEChallengeData2016']
  r = _browse(tmp_path, *common, '--config.data.train_list=lists/train.lst',
              '--config.data.val_list=lists/val.lst', '--config.data.num_workers=0',
              '--config.data.crop_size=(16,16)', '--config.data.base_size=32',
              '--config.data.eval_size=(16,16)', '--config.data.eval_base_size=16')
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith('wrote grid.png: ') and r.stdout.endswith(
      ', 1 samples of train and val\n') and (tmp_path / 'grid.png').is_file()
  r = _browse(tmp_path, *common[:-1], '--config.data.train_list=lists/train.lst')
  assert r.returncode == 2 and r.stderr.startswith(   # the config's own data.root
      'error: data/ade20k: data.root folder not found'), r.stderr
  r = _browse(tmp_path, *common, '--config.data.rot=x')
  assert r.returncode == 2 and r.stderr == (
      "error: unknown config field 'config.data.rot' (no field 'rot'; "
      'did you mean --config.data.root?)\n')
  r = _browse(tmp_path, *common, '--config.data.rot', 'x')   # two words, as training takes
  assert r.returncode == 2 and r.stderr.startswith(
      "error: unknown config field 'config.data.rot'"), r.stderr
  r = _browse(tmp_path, *common, '--bogus')
  assert r.returncode == 2 and r.stderr == 'error: unrecognized arguments: --bogus (see --help)\n'


def _cocostuff10k_download(tmp_path):
  import scipy.io  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'data/cocostuff-10k-v1.1'
  labels = np.zeros((6, 8), np.uint16)
  labels[:2], labels[2:4], labels[4:5] = 1, 13, 182   # person, stop sign, wood
  for list_name, names in (('train.txt', ['COCO_train2014_000000000077',
                                          'COCO_train2014_000000000078']),
                           ('test.txt', ['COCO_train2014_000000000080'])):
    for name in names:
      _write(root / 'images' / f'{name}.jpg', np.full((6, 8, 3), 90, np.uint8))
      os.makedirs(root / 'annotations', exist_ok=True)
      scipy.io.savemat(root / 'annotations' / f'{name}.mat', {'S': labels})
    os.makedirs(root / 'imageLists', exist_ok=True)
    (root / 'imageLists' / list_name).write_text('\n'.join(names) + '\n')
  return root


def test_cocostuff10k_as_downloaded(tmp_path, monkeypatch):
  """COCO-Stuff-10k's download (.mat annotations, imageLists/) had no
  documented way into the {train,val}/{image,label} layout the original reads."""
  _cocostuff10k_download(tmp_path)
  r = _script(tmp_path, 'make_lists.py', 'cocostuff', '--root', 'data/cocostuff-10k-v1.1',
              '--out', 'data/list/cocostuff')
  assert r.returncode == 2 and r.stderr.count('\n') == 1
  assert r.stderr.endswith('run scripts/prepare_cocostuff10k.py instead)\n'), r.stderr
  r = _script(tmp_path, 'prepare_cocostuff10k.py', '--root', 'data/cocostuff-10k-v1.1',
              '--out', 'data/cocostuff', '--list_dir', 'data/list/cocostuff')
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines() == [
      'wrote 3 label PNGs from data/cocostuff-10k-v1.1 under data/cocostuff/{train,val}/label',
      'testval        1 lines  data/list/cocostuff/testval.lst',
      'train          2 lines  data/list/cocostuff/train.lst',
      'trainval       3 lines  data/list/cocostuff/trainval.lst',
      'val            1 lines  data/list/cocostuff/val.lst']
  assert (tmp_path / 'data/list/cocostuff/val.lst').read_text() == (
      'val/image/COCO_train2014_000000000080.jpg val/label/COCO_train2014_000000000080.png\n')
  monkeypatch.chdir(tmp_path)
  data = recipes.recipe('cocostuff', 'w18_small_v1').data
  for split in ('train', 'val'):
    assert _pixels(sources.make_source(data, split)) == [(0, 255), (1, 0), (13, 11), (182, 170)]


def test_cocostuff10k_bad_download_is_one_line_and_writes_nothing(tmp_path):
  root = _cocostuff10k_download(tmp_path)
  (root / 'annotations/COCO_train2014_000000000080.mat').write_bytes(b'not a mat file')
  r = _script(tmp_path, 'prepare_cocostuff10k.py', '--root', 'data/cocostuff-10k-v1.1',
              '--out', 'data/cocostuff')
  assert r.returncode == 2 and r.stdout == '' and r.stderr.count('\n') == 1, r.stderr
  assert r.stderr.startswith('error: data/cocostuff-10k-v1.1/annotations/'
                             'COCO_train2014_000000000080.mat: not a COCO-Stuff-10k '
                             'annotation file'), r.stderr
  assert not (tmp_path / 'data/cocostuff').exists()
  (root / 'annotations/COCO_train2014_000000000080.mat').unlink()
  r = _script(tmp_path, 'prepare_cocostuff10k.py', '--root', 'data/cocostuff-10k-v1.1',
              '--out', 'data/cocostuff')
  assert r.returncode == 2 and r.stderr == (
      'error: data/cocostuff-10k-v1.1/annotations/COCO_train2014_000000000080.mat: '
      'annotation of COCO_train2014_000000000080 (listed in '
      'data/cocostuff-10k-v1.1/imageLists/test.txt) not found\n')
  assert not (tmp_path / 'data/cocostuff').exists()


@pytest.mark.parametrize('values, dtype', [([['ab', 'cd']], '<U2'), ([[1.5, 2.0]], 'float64')])
def test_cocostuff10k_annotation_not_of_integers_is_one_line(tmp_path, values, dtype):
  """'S' of text was a UFuncTypeError traceback; of fractions, truncated
  silently into other classes."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  root = _cocostuff10k_download(tmp_path)
  mat = root / 'annotations/COCO_train2014_000000000080.mat'
  scipy.io.savemat(mat, {'S': np.array(values)})
  r = _script(tmp_path, 'prepare_cocostuff10k.py', '--root', 'data/cocostuff-10k-v1.1',
              '--out', 'data/cocostuff')
  assert r.returncode == 2 and r.stdout == '', r.stderr
  assert r.stderr == ('error: data/cocostuff-10k-v1.1/annotations/COCO_train2014_000000000080'
                      f".mat: 'S' holds {dtype} values, not the integer COCO ids 0..182\n")
  assert not (tmp_path / 'data/cocostuff').exists()


def test_prepare_tfds_with_a_wrong_root_is_one_line_and_makes_nothing(tmp_path):
  """A wrong --root was a DataError traceback (exit 1) under TFDS's progress
  bars, after TFDS had made data_dir/hrseg_ade20k/incomplete.* folders."""
  label = np.ones((6, 8), np.uint8)
  _write(tmp_path / 'data/ade20k/images/training/ADE_train_00000001.jpg',
         np.full((6, 8, 3), 90, np.uint8))
  _write(tmp_path / 'data/ade20k/annotations/training/ADE_train_00000001.png', label)
  assert _script(tmp_path, 'make_lists.py', 'ade20k', '--root', 'data/ade20k',
                 '--out', 'data/list/ade20k').returncode == 0
  for root, expected in (
      ('data/ade', 'error: data/ade: dataset folder not found (--root; the list paths are '
                   'relative to it)\n'),
      ('data', 'error: data/images/training/ADE_train_00000001.jpg: file not found: the first '
               'train entry of data/list/ade20k/train.lst, joined to --root\n')):
    r = _script(tmp_path, 'prepare_tfds.py', '--dataset', 'ade20k', '--root', root,
                '--train_list', 'data/list/ade20k/train.lst', '--data_dir', 'tfds')
    assert (r.returncode, r.stdout, r.stderr) == (2, '', expected)
    assert not (tmp_path / 'tfds').exists()


def test_prepare_tfds_failing_mid_way_leaves_no_folders_it_made(tmp_path):
  """An unreadable second image: one error naming it, and none of the folders
  TFDS made (data_dir, data_dir/<name>, data_dir/downloads/extracted) is
  left; a data_dir that was there keeps what it held."""
  assert _script(tmp_path, 'prepare_synthetic.py', '--root', 'cs', '--num_train', '3',
                 '--num_val', '1', '--height', '16', '--width', '32').returncode == 0
  bad = 'cs/' + (tmp_path / 'cs/train.lst').read_text().splitlines()[1].split()[0]
  (tmp_path / bad).write_bytes(b'not an image')
  os.makedirs(tmp_path / 'shared/other_dataset')
  for data_dir in ('tfds/new', 'shared'):
    r = _script(tmp_path, 'prepare_tfds.py', '--dataset', 'cityscapes', '--root', 'cs',
                '--train_list', 'cs/train.lst', '--val_list', 'cs/val.lst',
                '--data_dir', data_dir)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1].endswith(
        f'error: {bad}: cannot decode image (corrupt, truncated or not an image)')
  assert sorted(os.listdir(tmp_path)) == ['cs', 'shared']
  assert os.listdir(tmp_path / 'shared') == ['other_dataset']


def test_prepare_tfds_of_cocostuff164k_names_its_label_map(tmp_path):
  """Without --label_map, COCO-Stuff-164k failed on the first undefined value
  after TFDS had made its folders (or, without one, was stored unchecked)."""
  label = np.zeros((6, 8), np.uint8)
  for split in ('train2017', 'val2017'):
    _write(tmp_path / 'data/cocostuff/images' / split / '000000000009.jpg',
           np.full((6, 8, 3), 90, np.uint8))
    _write(tmp_path / 'data/cocostuff/annotations' / split / '000000000009.png', label)
  assert _script(tmp_path, 'make_lists.py', 'cocostuff', '--root', 'data/cocostuff',
                 '--out', 'data/list/cocostuff').returncode == 0
  r = _script(tmp_path, 'prepare_tfds.py', '--dataset', 'cocostuff', '--data_dir', 'tfds')
  assert (r.returncode, r.stdout) == (2, ''), r.stderr
  assert r.stderr == (
      'error: data/cocostuff/annotations/train2017/000000000009.png: a label in '
      "COCO-Stuff-164k's stuffthingmaps (COCO id - 1, 255 = unlabeled), listed in "
      "data/list/cocostuff/train.lst, but --label_map 'cocostuff': pass --label_map "
      'cocostuff164k\n')
  assert not (tmp_path / 'tfds').exists()


def test_pascal_ctx_empty_split_file_writes_no_empty_list(tmp_path):
  """An empty ImageSets/SegmentationContext/val.txt lists nothing: the train
  lists are written and reported, with no empty val.lst (which make_lists
  then failed to count: a DataError traceback, exit 1, after writing)."""
  voc = tmp_path / 'data/pascal_ctx/VOCdevkit/VOC2010'
  _write(voc / 'JPEGImages/2008_000002.jpg', np.full((6, 8, 3), 90, np.uint8))
  _write(voc / 'SegmentationClassContext/2008_000002.png', np.ones((6, 8), np.uint8))
  os.makedirs(voc / 'ImageSets/SegmentationContext')
  (voc / 'ImageSets/SegmentationContext/train.txt').write_text('2008_000002\n')
  (voc / 'ImageSets/SegmentationContext/val.txt').write_text('\n')
  r = _script(tmp_path, 'make_lists.py', 'pascal_ctx', '--root', 'data/pascal_ctx',
              '--out', 'data/list/pascal_ctx')
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[0].startswith('found 1 train image under data/pascal_ctx ')
  assert sorted(os.listdir(tmp_path / 'data/list/pascal_ctx')) == ['train.lst']
