"""TFDS ArrayRecord sources: the converter and the TFDS Cityscapes builder.

Preparing a TFDS dataset imports TensorFlow; this is the only data test that
does.  Reading (``tfds.data_source``) does not need it.
"""
import importlib.resources
import importlib.util
import os
import sys
import zipfile

import numpy as np
import pytest

from hrseg_jax.data import pipeline
from hrseg_jax.data.config import default_data_config
from hrseg_jax.data.label_maps import get_label_map
from hrseg_jax.data.sources import make_source
from hrseg_jax.data.synthetic import write_cityscapes_layout

tfds = pytest.importorskip('tensorflow_datasets')


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds') / 'cityscapes'
  written = write_cityscapes_layout(str(root), num_train=5, num_val=3,
                                    num_test=1, image_size=(24, 48), seed=11)
  return root, written


def _files_cfg(root, written):
  cfg = default_data_config('cityscapes')
  cfg.root = str(root)
  cfg.train_list, cfg.val_list = written['train'], written['val']
  cfg.crop_size, cfg.base_size, cfg.eval_size = (12, 24), 48, (24, 48)
  cfg.num_workers, cfg.read_threads = 0, 0
  return cfg


def _by_id(source, strip=''):
  return {source[i]['id'].replace(strip, ''): source[i]
          for i in range(len(source))}


def _assert_same_examples(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key]['image'], b[key]['image'])
    np.testing.assert_array_equal(a[key]['label'], b[key]['label'])


def test_converted_dataset_reads_like_the_files(tree, tmp_path):
  from hrseg_jax.data.tfds_builder import write_tfds_dataset
  root, written = tree
  data_dir = str(tmp_path / 'tfds')
  path = write_tfds_dataset(
      'hrseg_cityscapes', str(root),
      {'train': written['train'], 'val': written['val']}, data_dir,
      image_format='png', label_map=get_label_map('cityscapes'))
  assert any(f.endswith('array_record-00000-of-00001')
             for f in os.listdir(path))
  files_cfg = _files_cfg(root, written)
  cfg = files_cfg.copy_and_resolve_references()
  cfg.update(source='tfds', tfds_name='hrseg_cityscapes',
             tfds_data_dir=data_dir, tfds_val_split='val',
             tfds_image_key='image', tfds_label_key='label', tfds_id_key='id')
  for split in ('train', 'val'):
    _assert_same_examples(_by_id(make_source(cfg, split)),
                          _by_id(make_source(files_cfg, split)))
  # The same pipeline runs on it; split syntax gives trainval.
  batch = next(pipeline.make_train_iterator(cfg, batch_size=2, seed=0))
  assert batch['image'].shape == (2, 12, 24, 3)
  cfg.tfds_train_split = 'train+val'
  assert pipeline.num_train_examples(cfg) == 8
  # Readers reopen the files after pickling (Grain workers).
  import pickle
  source = pickle.loads(pickle.dumps(make_source(cfg, 'val')))
  assert source[0]['label'].dtype == np.uint8


def test_tfds_cityscapes_builder_with_manual_zips(tree, tmp_path, monkeypatch):
  """The default recipe reads the official builder's raw labelIds."""
  if importlib.util.find_spec('importlib_resources') is None:
    # TFDS 4.9.10 imports the backport when preparing a builder of its own
    # package, but declares it only for Python < 3.9 (reading does not).
    monkeypatch.setitem(sys.modules, 'importlib_resources',
                        importlib.resources)
  root, written = tree
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name, top in (('leftImg8bit_trainvaltest.zip', 'leftImg8bit'),
                    ('gtFine_trainvaltest.zip', 'gtFine')):
    with zipfile.ZipFile(manual / name, 'w') as z:
      for dirpath, _, files in os.walk(root / top):
        for f in files:
          full = os.path.join(dirpath, f)
          z.write(full, os.path.relpath(full, root))
  data_dir = str(tmp_path / 'tfds')
  builder = tfds.builder('cityscapes/semantic_segmentation', data_dir=data_dir)
  builder.download_and_prepare(
      file_format='array_record',
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  cfg = default_data_config('cityscapes')
  cfg.source, cfg.tfds_data_dir = 'tfds', data_dir
  files_cfg = _files_cfg(root, written)
  _assert_same_examples(
      _by_id(make_source(cfg, 'train')),
      _by_id(make_source(files_cfg, 'train'), strip='_leftImg8bit'))
  _assert_same_examples(
      _by_id(make_source(cfg, 'val')),
      _by_id(make_source(files_cfg, 'val'), strip='_leftImg8bit'))


def test_missing_tfds_dataset_error(tmp_path):
  cfg = default_data_config('ade20k')
  cfg.source, cfg.tfds_data_dir = 'tfds', str(tmp_path)
  with pytest.raises(FileNotFoundError, match='hrseg_ade20k.*array_record'):
    make_source(cfg, 'train')
