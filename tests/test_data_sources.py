"""Files sources on tiny on-disk copies of every layout, and bad input."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from hrseg_jax.data import lists
from hrseg_jax.data import pascal_ctx
from hrseg_jax.data import pipeline
from hrseg_jax.data.config import default_data_config
from hrseg_jax.data.errors import SKIPPED, DataError
from hrseg_jax.data.sources import make_source

# labelId -> trainId (spec 4.5); every other labelId 0..33 and 255 -> 255.
CITYSCAPES = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8,
              22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16,
              32: 17, 33: 18}


def _table(pairs):
  table = np.full(256, 255, np.uint8)
  for raw, train_id in pairs.items():
    table[raw] = train_id
  return table


def _image(h, w, seed):
  """A smooth colour image (small JPEG error)."""
  base = np.random.default_rng(seed).integers(30, 200, 3)
  ramp = np.linspace(0, 40, w)[None, :, None]
  return np.clip(base + ramp + np.zeros((h, 1, 1)), 0, 255).astype(np.uint8)


def _label(h, w, values, seed):
  rng = np.random.default_rng(seed)
  return np.asarray(values, np.uint8)[rng.integers(0, len(values), (h, w))]


def _save(path, array, palette=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if palette:
    im = Image.fromarray(array, 'P')
    im.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    im.save(path)
  else:
    Image.fromarray(array).save(path, quality=95)


def _cfg(name, root, list_dir, **overrides):
  cfg = default_data_config(name)
  cfg.root = str(root)
  names = lists.LIST_FORMATS['pascal_ctx' if name.startswith('pascal_ctx')
                             else name][2]
  cfg.train_list = os.path.join(list_dir, names['train'])
  cfg.val_list = os.path.join(list_dir, names['val'])
  cfg.update(overrides)
  return cfg


def _check(source, raws, table, lossless):
  """Labels are table[raw] per id; images are the written ones."""
  assert len(source) == len(raws)
  for i in range(len(source)):
    ex = source[i]
    raw, image = raws[ex['id']]
    assert ex['image'].dtype == np.uint8 and ex['label'].dtype == np.uint8
    np.testing.assert_array_equal(ex['label'], table[raw])
    if lossless:
      np.testing.assert_array_equal(ex['image'], image)
    else:
      assert np.abs(ex['image'].astype(int) - image).max() <= 8


def make_cityscapes(root, n_train=3, n_val=2, h=16, w=32):
  """A Cityscapes tree whose labels use every labelId 0..33 and 255."""
  raws = {}
  for split, n in (('train', n_train), ('val', n_val)):
    for i in range(n):
      stem = f'c{split}_{i:06d}_000019'
      image, raw = _image(h, w, i), _label(h, w, list(range(34)) + [255], i)
      _save(f'{root}/leftImg8bit/{split}/c{split}/{stem}_leftImg8bit.png',
            image)
      _save(f'{root}/gtFine/{split}/c{split}/{stem}_gtFine_labelIds.png', raw)
      raws[f'{stem}_leftImg8bit'] = (raw, image)
  _save(f'{root}/leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png',
        _image(h, w, 7))
  return raws


def test_cityscapes_layout(tmp_path):
  root, list_dir = tmp_path / 'cityscapes', tmp_path / 'list'
  raws = make_cityscapes(root)
  written = lists.make_lists('cityscapes', str(root), str(list_dir))
  assert sorted(written) == ['test', 'train', 'trainval', 'val']
  cfg = _cfg('cityscapes', root, list_dir,
             test_list=str(list_dir / 'test.lst'))
  table = _table(CITYSCAPES)
  train, val = make_source(cfg, 'train'), make_source(cfg, 'val')
  _check(train, {k: v for k, v in raws.items() if 'ctrain' in k}, table, True)
  _check(val, {k: v for k, v in raws.items() if 'cval' in k}, table, True)
  test = make_source(cfg, 'test')
  assert len(test) == 1 and set(test[0]) == {'image', 'id'}
  assert test[0]['id'] == 'berlin_000000_000019_leftImg8bit'
  # Test images are predicted per image; batched evaluation needs labels.
  example = pipeline.eval_examples(cfg, 'test')[0]
  assert set(example) == {'image', 'id', 'pad'}
  with pytest.raises(ValueError, match='no labels'):
    pipeline.make_eval_iterator(cfg, batch_size=1, split='test')


def test_lip_layout_with_palette_labels(tmp_path):
  root, list_dir = tmp_path / 'lip', tmp_path / 'list'
  raws = {}
  for split, n in (('train', 3), ('val', 2)):
    for i in range(n):
      stem = f'{100 + i}_{split}'
      image, raw = _image(12, 10, i), _label(12, 10, range(20), 50 + i)
      _save(f'{root}/TrainVal_images/{split}_images/{stem}.jpg', image)
      # Palette PNGs: values are palette indices, as the original's
      # Image.open(..).convert('P').
      _save(f'{root}/TrainVal_parsing_annotations/{split}_segmentations/'
            f'{stem}.png', raw, palette=split == 'train')
      if split == 'train':
        _save(f'{root}/TrainVal_parsing_annotations/'
              f'train_segmentations_reversed/{stem}.png', raw[:, ::-1].copy())
      raws[stem] = (raw, image)
  lists.make_lists('lip', str(root), str(list_dir))
  train_lines = (list_dir / 'trainList.txt').read_text().splitlines()
  assert train_lines[0] == ('train_images/100_train.jpg '
                            'train_segmentations/100_train.png '
                            'train_segmentations_reversed/100_train.png')
  assert (list_dir / 'valList.txt').read_text() == (
      list_dir / 'testvalList.txt').read_text()
  cfg = _cfg('lip', root, list_dir)
  identity = np.arange(256, dtype=np.uint8)
  _check(make_source(cfg, 'train'),
         {k: v for k, v in raws.items() if 'train' in k}, identity, False)
  _check(make_source(cfg, 'val'),
         {k: v for k, v in raws.items() if 'val' in k}, identity, False)
  cfg.update(pre_resize_size=(9, 9), base_size=9, crop_size=(9, 9),
             eval_size=(9, 9), num_workers=0, read_threads=0)
  batch = next(pipeline.make_train_iterator(cfg, batch_size=3, seed=1))
  assert batch['image'].shape == (3, 9, 9, 3)
  assert set(np.unique(batch['label'])) <= set(range(20)) | {255}
  full = pipeline.eval_examples(cfg)[1]
  assert full['image'].shape == (9, 9, 3) and full['label'].shape == (12, 10)


def _paired_layout(root, values):
  raws = {}
  for split, n in (('train', 3), ('val', 2)):
    for i in range(n):
      stem = f'IMG_{split}_{i:08d}'
      image, raw = _image(10, 14, i), _label(10, 14, values, 70 + i)
      _save(f'{root}/{split}/image/{stem}.jpg', image)
      _save(f'{root}/{split}/label/{stem}.png', raw)
      raws[stem] = (raw, image)
  return raws


@pytest.mark.parametrize('name,values,pairs', [
    ('ade20k', list(range(151)), {0: 255, **{c: c - 1 for c in
                                             range(1, 151)}}),
    ('cocostuff', [0, 1, 11, 13, 25, 27, 28, 31, 44, 46, 182],
     {0: 255, 1: 0, 11: 10, 13: 11, 25: 23, 27: 24, 28: 25, 31: 26, 44: 39,
      46: 40, 182: 170}),
])
def test_paired_layouts(tmp_path, name, values, pairs):
  root, list_dir = tmp_path / name, tmp_path / 'list'
  raws = _paired_layout(root, values)
  written = lists.make_lists(name, str(root), str(list_dir))
  assert sorted(written) == ['testval', 'train', 'trainval', 'val']
  assert (list_dir / 'train.lst').read_text().splitlines()[0] == (
      'train/image/IMG_train_00000000.jpg train/label/IMG_train_00000000.png')
  cfg = _cfg(name, root, list_dir)
  _check(make_source(cfg, 'train'),
         {k: v for k, v in raws.items() if 'train' in k}, _table(pairs),
         False)
  _check(make_source(cfg, 'val'),
         {k: v for k, v in raws.items() if 'val' in k}, _table(pairs), False)
  # The recipe's pipelines on these files (sizes scaled down).
  cfg.update(base_size=12, crop_size=(8, 8), eval_base_size=12,
             eval_size=(8, 8), num_workers=0, read_threads=0, with_rows=True)
  batch = next(pipeline.make_train_iterator(cfg, batch_size=3, seed=0))
  assert batch['image'].shape == (3, 8, 8, 3)
  assert set(np.unique(batch['label'])) <= set(_table(pairs).tolist())
  batches = list(pipeline.make_eval_iterator(cfg, batch_size=2))
  assert [b['label'].shape for b in batches] == [(2, 8, 8)]
  full = pipeline.eval_examples(cfg)[0]
  # 10x14 -> short side 12 -> 12x17 -> padded to 16x24 (multiples of 8).
  assert full['image'].shape == (16, 24, 3) and full['label'].shape == (10, 14)
  np.testing.assert_array_equal(full['pad'], [4, 7])
  assert (full['rows'][12:] == -1).all()


def _rle_counts(mask):
  flat = mask.T.ravel()
  changes = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], changes, [flat.size]])
  counts = np.diff(bounds).tolist()
  return counts if flat[0] == 0 else [0] + counts


def test_pascal_ctx_from_detail_json(tmp_path):
  voc = tmp_path / 'VOC2010'
  images, anns = [], []
  expected = {}
  for i, (phase, cats) in enumerate((('train', (2, 9, 458)),
                                     ('train', (59, 2)), ('val', (18,)))):
    name = f'2008_{i:06d}.jpg'
    h, w = 8, 12
    _save(str(voc / 'JPEGImages' / name), _image(h, w, i))
    images.append({'image_id': i, 'file_name': name, 'height': h,
                   'width': w, 'phase': phase})
    raw = np.zeros((h, w), np.int64)
    for j, cat in enumerate(cats):
      mask = np.zeros((h, w), np.uint8)
      mask[j * 2:j * 2 + 4, j * 3:] = 1   # overlapping: later wins
      raw[mask == 1] = cat
      anns.append({'id': len(anns), 'image_id': i, 'category_id': cat,
                   'segmentation': {'size': [h, w],
                                    'counts': _rle_counts(mask)}})
    expected[name[:-4]] = raw
  json_path = tmp_path / 'trainval_merged.json'
  json_path.write_text(json.dumps({'images': images,
                                   'annos_segmentation': anns}))
  root, list_dir = tmp_path / 'pascal_ctx', tmp_path / 'list'
  written = pascal_ctx.convert(str(json_path), str(voc / 'JPEGImages'),
                               str(root), str(list_dir))
  assert sorted(written) == ['testval', 'train', 'trainval', 'val']
  ids = [0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72,
         80, 85, 98, 104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207,
         220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354,
         355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458]
  index = {raw: k for k, raw in enumerate(ids)}
  for name, k, table in (
      ('pascal_ctx60', 60, np.arange(256, dtype=np.uint8)),
      ('pascal_ctx', 59, _table({0: 255, **{c: c - 1 for c in
                                            range(1, 60)}}))):
    cfg = _cfg(name, root, list_dir)
    assert cfg.num_classes == k
    for split, count in (('train', 2), ('val', 1)):
      source = make_source(cfg, split)
      assert len(source) == count
      for i in range(count):
        ex = source[i]
        stored = np.vectorize(index.get)(expected[ex['id']]).astype(np.uint8)
        np.testing.assert_array_equal(ex['label'], table[stored])


def test_pascal_ctx_rejects_unknown_category(tmp_path):
  _save(str(tmp_path / 'img' / 'a.jpg'), _image(4, 4, 0))
  (tmp_path / 'a.json').write_text(json.dumps({
      'images': [{'image_id': 1, 'file_name': 'a.jpg', 'height': 4,
                  'width': 4, 'phase': 'train'}],
      'annos_segmentation': [{'id': 1, 'image_id': 1, 'category_id': 3,
                              'segmentation': {'size': [4, 4],
                                               'counts': [0, 16]}}]}))
  with pytest.raises(DataError, match=r'a\.jpg.*\[3\]'):
    pascal_ctx.convert(str(tmp_path / 'a.json'), str(tmp_path / 'img'),
                       str(tmp_path / 'out'))


# --- Bad input --------------------------------------------------------------


@pytest.fixture
def cityscapes(tmp_path):
  root, list_dir = tmp_path / 'cityscapes', tmp_path / 'list'
  make_cityscapes(root, n_train=4, n_val=3)
  lists.make_lists('cityscapes', str(root), str(list_dir))
  cfg = _cfg('cityscapes', root, list_dir, num_workers=0, read_threads=0,
             crop_size=(8, 8), base_size=32, eval_size=(16, 32))
  source = make_source(cfg, 'train')
  paths = [(source.image_path(i), source._labels[i]) for i in range(4)]
  return cfg, paths


def _corrupt(path, how):
  data = open(path, 'rb').read()
  if how == 'garbage':
    data = b'not an image at all' * 10
  elif how == 'truncated':
    data = data[:len(data) // 2]
  with open(path, 'wb') as f:
    f.write(data)


@pytest.mark.parametrize('which,how,match', [
    ('image', 'missing', 'file not found'),
    ('label', 'missing', 'file not found'),
    ('image', 'garbage', 'cannot decode image'),
    ('image', 'truncated', 'cannot decode image'),
    ('label', 'truncated', 'cannot decode label'),
    ('label', 'empty', 'empty file'),
])
def test_bad_files_raise_naming_the_file(cityscapes, which, how, match):
  cfg, paths = cityscapes
  path = paths[1][0 if which == 'image' else 1]
  if how == 'missing':
    os.remove(path)
  elif how == 'empty':
    open(path, 'wb').close()
  else:
    _corrupt(path, how)
  source = make_source(cfg, 'train')
  source[0]
  with pytest.raises(DataError, match=match) as info:
    source[1]
  assert info.value.path == path and path in str(info.value)
  if how == 'missing':   # which list names the file
    assert str(info.value) == f'{path}: file not found (listed in {cfg.train_list})'


def test_truncated_jpeg(tmp_path):
  path = str(tmp_path / 'a.jpg')
  _save(path, np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(
      np.uint8))
  _corrupt(path, 'truncated')
  from hrseg_jax.data import decode
  with pytest.raises(DataError, match=r'a\.jpg: truncated JPEG'):
    decode.read_image(path)
  # Bytes after the end-of-image marker are allowed.
  good = str(tmp_path / 'b.jpg')
  _save(good, _image(8, 8, 0))
  with open(good, 'ab') as f:
    f.write(b'trailing')
  assert decode.read_image(good).shape == (8, 8, 3)


def test_size_mismatch_and_bad_label_values(cityscapes):
  cfg, paths = cityscapes
  image_path, label_path = paths[2]
  _save(label_path, np.full((15, 32), 7, np.uint8))
  with pytest.raises(DataError, match='image size .* != label size') as info:
    make_source(cfg, 'train')[2]
  assert image_path in str(info.value) and label_path in str(info.value)
  _save(label_path, np.full((16, 32), 40, np.uint8))
  with pytest.raises(DataError, match=r'label values \[40\]') as info:
    make_source(cfg, 'train')[2]
  assert info.value.path == label_path
  _save(label_path, np.zeros((16, 32, 3), np.uint8))
  with pytest.raises(DataError, match="mode 'RGB'"):
    make_source(cfg, 'train')[2]


def test_pipeline_raises_by_default(cityscapes):
  cfg, paths = cityscapes
  os.remove(paths[2][0])
  it = pipeline.make_train_iterator(cfg, batch_size=4, seed=0)
  with pytest.raises(DataError, match='file not found'):
    next(it)


def test_a_wrong_root_or_prefix_fails_before_any_reading(cityscapes):
  """The first entry of a list and the root are checked when the source is
  made (a wrong data.root or prefix fails at start-up, not at the first
  batch); with skip_bad_examples only the root is."""
  cfg, paths = cityscapes
  root = cfg.root
  cfg.root = root + '_x'
  with pytest.raises(DataError, match='data.root folder not found') as info:
    make_source(cfg, 'train')
  assert info.value.path == root + '_x'
  cfg.root, cfg.label_prefix = root, 'gtFine'
  with pytest.raises(DataError, match=r'file not found: the first label of .*train.lst, '
                     r"joined to data.root \+ data.label_prefix='gtFine'") as info:
    make_source(cfg, 'train')
  assert info.value.path == os.path.join(root, 'gtFine', os.path.relpath(paths[0][1], root))
  cfg.label_prefix = ''
  os.remove(paths[0][0])
  with pytest.raises(DataError, match='file not found: the first image of') as info:
    make_source(cfg, 'train')
  assert info.value.path == paths[0][0]
  cfg.skip_bad_examples = True
  assert len(make_source(cfg, 'train')) == 4


def test_skip_and_count(cityscapes, caplog):
  cfg, paths = cityscapes
  cfg.skip_bad_examples = True
  _corrupt(paths[3][0], 'garbage')
  SKIPPED.reset()
  it = pipeline.make_train_iterator(cfg, batch_size=2, seed=0)
  with caplog.at_level(logging.WARNING):
    batches = [next(it) for _ in range(4)]   # two epochs of 4 examples
  assert all(b['image'].shape == (2, 8, 8, 3) for b in batches)
  assert SKIPPED.count('train') == 2 and SKIPPED.paths() == [paths[3][0]] * 2
  # Skipped twice (two epochs), named once.
  assert caplog.text.count(paths[3][0]) == 1 and 'skipped each time it comes' in caplog.text

  # Evaluation: the bad example is masked out, the others are kept.
  val_cfg = cfg.copy_and_resolve_references()
  val_cfg.val_list = val_cfg.train_list
  SKIPPED.reset()
  batches = list(pipeline.make_eval_iterator(val_cfg, batch_size=3))
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, [True, True, True, False, False, False])
  assert SKIPPED.count('val') == 1
  SKIPPED.reset()   # counted under the split evaluated (eval.split)
  list(pipeline.make_eval_iterator(cfg, batch_size=3, split='train'))
  assert SKIPPED.count('train') == 1 and SKIPPED.count('val') == 0
  SKIPPED.reset()
  examples = pipeline.eval_examples(val_cfg)
  assert examples[3] is None and examples[2] is not None
  assert SKIPPED.count('val') == 1
  SKIPPED.reset()


def test_read_list_errors(tmp_path):
  with pytest.raises(DataError, match='list file not found'):
    lists.read_list(str(tmp_path / 'nope.lst'))
  (tmp_path / 'empty.lst').write_text('\n\n')
  with pytest.raises(DataError, match='empty'):
    lists.read_list(str(tmp_path / 'empty.lst'))
  (tmp_path / 'mixed.lst').write_text('a.png b.png\nc.png\n')
  with pytest.raises(DataError, match='mixes'):
    lists.read_list(str(tmp_path / 'mixed.lst'))
  (tmp_path / 'ok.lst').write_text('a.png\tb.png\n\nc.png d.png x\n')
  assert lists.read_list(str(tmp_path / 'ok.lst')) == [
      ('a.png', 'b.png'), ('c.png', 'd.png', 'x')]


def test_make_lists_missing_label(tmp_path):
  root = tmp_path / 'cityscapes'
  make_cityscapes(root, n_train=2, n_val=1)
  os.remove(root / 'gtFine/train/ctrain/'
            'ctrain_000001_000019_gtFine_labelIds.png')
  with pytest.raises(DataError, match='label for .*ctrain_000001'):
    lists.make_lists('cityscapes', str(root), str(tmp_path / 'list'))
  (tmp_path / 'nothing').mkdir()   # empty (a missing root is 'no such folder')
  with pytest.raises(DataError, match='no ade20k images'):
    lists.make_lists('ade20k', str(tmp_path / 'nothing'), str(tmp_path))


def test_cityscapes_list_format(tmp_path):
  root = tmp_path / 'cityscapes'
  make_cityscapes(root, n_train=2, n_val=1)
  lists.make_lists('cityscapes', str(root), str(tmp_path / 'list'))
  train = (tmp_path / 'list' / 'train.lst').read_text().splitlines()
  assert train == [
      f'leftImg8bit/train/ctrain/ctrain_{i:06d}_000019_leftImg8bit.png\t'
      f'gtFine/train/ctrain/ctrain_{i:06d}_000019_gtFine_labelIds.png'
      for i in range(2)]
  trainval = (tmp_path / 'list' / 'trainval.lst').read_text().splitlines()
  assert trainval == train + (tmp_path / 'list' / 'val.lst').read_text(
      ).splitlines()
  assert (tmp_path / 'list' / 'test.lst').read_text() == (
      'leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png\n')
  # The generated image is decoded exactly (PNG) and as RGB.
  png = cv2.imread(str(root / train[0].split('\t')[0]))
  np.testing.assert_array_equal(
      make_source(_cfg('cityscapes', root, tmp_path / 'list'), 'train')[0][
          'image'], png[..., ::-1])
