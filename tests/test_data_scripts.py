"""The data scripts, run in-process on tiny inputs."""
import json
import os
import re
import runpy
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from hrseg_jax.data import pipeline
from hrseg_jax.data.config import default_data_config

SCRIPTS = os.path.join(os.path.dirname(__file__), os.pardir, 'scripts')


def _main(name):
  return runpy.run_path(os.path.join(SCRIPTS, name), run_name='script')['main']


def test_prepare_synthetic_then_make_lists(tmp_path, capsys):
  root = str(tmp_path / 'cs')
  _main('prepare_synthetic.py')(['--root', root, '--num_train', '3',
                                 '--num_val', '2', '--height', '32',
                                 '--width', '64'])
  out = capsys.readouterr().out
  assert out.startswith(f'wrote 3 train, 2 val, 0 test images (32x64) under {root}\n'
                        f'train          3 lines  {root}/train.lst\n'), out
  assert "'--config.data.crop_size=(16, 32)'" in out
  assert sorted(os.listdir(root)) == ['gtFine', 'leftImg8bit', 'train.lst',
                                      'trainval.lst', 'val.lst']
  list_dir = str(tmp_path / 'list')
  _main('make_lists.py')(['cityscapes', '--root', root, '--out', list_dir])
  out = capsys.readouterr().out
  assert 'train          3 lines' in out and 'trainval       5 lines' in out
  for name in ('train.lst', 'val.lst', 'trainval.lst'):
    with open(os.path.join(root, name)) as a, open(
        os.path.join(list_dir, name)) as b:
      assert a.read() == b.read()
  cfg = default_data_config('cityscapes')
  cfg.update(root=root, train_list=os.path.join(list_dir, 'train.lst'),
             crop_size=(16, 32), base_size=64, num_workers=0)
  batch = next(pipeline.make_train_iterator(cfg, batch_size=3, seed=0))
  assert batch['label'].shape == (3, 16, 32)


@pytest.mark.parametrize('args,expected', [
    (['--num_train', '0', '--num_val', '0'],
     '--num_train, --num_val and --num_test are all 0: nothing to write'),
    (['--height', '0'], '--height must be >= 1, got 0'),
    (['--num_classes', '25'], '--num_classes must be 1..19 (the Cityscapes train ids), got 25'),
])
def test_prepare_synthetic_bad_arguments_are_one_line(tmp_path, capsys, args, expected):
  """These were tracebacks (exit 1), --height 0 after making folders."""
  code = _main('prepare_synthetic.py')(['--root', str(tmp_path / 'cs'), *args])
  assert code == 2 and capsys.readouterr().err == f'error: {expected}\n'
  assert not (tmp_path / 'cs').exists()


def test_prepare_synthetic_root_that_is_a_file(tmp_path, capsys):
  (tmp_path / 'cs').write_text('x')
  code = _main('prepare_synthetic.py')(['--root', str(tmp_path / 'cs'), '--num_train', '1'])
  assert code == 2
  assert capsys.readouterr().err == f'error: --root {tmp_path / "cs"} is a file, not a folder\n'


def test_prepare_synthetic_into_an_earlier_dataset_is_refused(tmp_path):
  """A second run wrote its images beside the first run's (another size),
  and its list files named them all."""
  def run(*args):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, 'prepare_synthetic.py'),
                           '--root', 'data/cs', *args], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(SCRIPTS)),
                          capture_output=True, text=True, timeout=300, check=False)
  assert run('--num_train', '2', '--num_val', '1', '--height', '16', '--width', '32'
             ).returncode == 0
  before = sorted(str(p) for p in (tmp_path / 'data').rglob('*'))
  r = run('--num_train', '1', '--num_val', '1', '--height', '32', '--width', '64')
  assert (r.returncode, r.stdout) == (2, ''), r.stdout + r.stderr
  assert r.stderr == ('error: --root data/cs already holds a dataset (leftImg8bit/, '
                      'gtFine/): pass an empty or new folder (nothing there is '
                      'replaced)\n'), r.stderr
  assert sorted(str(p) for p in (tmp_path / 'data').rglob('*')) == before


def test_make_lists_without_the_dataset_is_one_line(tmp_path, capsys):
  (tmp_path / 'lip').mkdir()   # (an empty folder; a missing one is named as such)
  code = _main('make_lists.py')(['lip', '--root', str(tmp_path / 'lip'),
                                 '--out', str(tmp_path / 'list')])
  err = capsys.readouterr().err
  assert code == 2 and err.count('\n') == 1
  assert err.startswith(f'error: {tmp_path / "lip"}: no lip images found; expected '
                        'TrainVal_images/')
  assert not (tmp_path / 'list').exists()


def test_make_lists_of_a_tree_without_its_val_split_says_so(tmp_path, capsys, monkeypatch):
  """A LIP download without val_images wrote trainList.txt only, silently;
  --mode eval then said 'valList.txt: list file not found (generate it with
  scripts/make_lists.py)', the command just run."""
  monkeypatch.chdir(tmp_path)
  for folder, name in (('TrainVal_images/train_images', 'a.jpg'),
                       ('TrainVal_parsing_annotations/train_segmentations', 'a.png')):
    os.makedirs(f'data/lip/{folder}')
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(f'data/lip/{folder}/{name}')
  code = _main('make_lists.py')(['lip', '--root', 'data/lip', '--out', 'data/list/lip'])
  out = capsys.readouterr().out.splitlines()
  assert code == 0
  assert out[-1] == ('note: no val images under data/lip, so no val list: --mode eval and '
                     'validation during training need them (expected TrainVal_images/'
                     '{train,val}_images/*.jpg with TrainVal_parsing_annotations/'
                     '{train,val}_segmentations/*.png)')
  assert sorted(os.listdir('data/list/lip')) == ['trainList.txt']


def test_prepare_pascal_ctx(tmp_path, capsys):
  Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / 'a.jpg')
  (tmp_path / 'a.json').write_text(json.dumps({
      'images': [{'image_id': 7, 'file_name': 'a.jpg', 'height': 4,
                  'width': 6, 'phase': 'val'}],
      'annos_segmentation': [{'id': 1, 'image_id': 7, 'category_id': 458,
                              'segmentation': {'size': [4, 6],
                                               'counts': '8`0'}}]}))
  out = str(tmp_path / 'out')
  _main('prepare_pascal_ctx.py')(['--json', str(tmp_path / 'a.json'),
                                  '--images', str(tmp_path), '--out', out])
  printed = capsys.readouterr().out.splitlines()
  assert printed[0] == (f'wrote 1 label PNGs from {tmp_path / "a.json"} under '
                        f'{out}/{{train,val}}/label')
  assert printed[-1] == f'val            1 lines  {out}/val.lst'
  label = np.asarray(Image.open(os.path.join(out, 'val', 'label', 'a.png')))
  # '8`0' is pycocotools' compressed RLE of counts [8, 16]: 8 pixels (two
  # columns of 4) background, then 16 pixels of category 458 = class 59.
  expected = np.zeros((4, 6), np.uint8)
  expected[:, 2:] = 59
  np.testing.assert_array_equal(label, expected)


def test_prepare_pascal_ctx_bad_input_is_one_line_and_writes_nothing(
    tmp_path, capsys, monkeypatch):
  """The documented command from the user's folder: a mistyped JSON or
  image folder, an image missing from the folder (the first one is fine) and
  a file that is not the annotation JSON each give one ``error:`` line, exit
  2, and leave no output."""
  monkeypatch.chdir(tmp_path)
  voc = tmp_path / 'data' / 'pascal_ctx' / 'VOCdevkit' / 'VOC2010'
  (voc / 'JPEGImages').mkdir(parents=True)
  Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(voc / 'JPEGImages' / 'a.jpg')
  rle = {'size': [4, 6], 'counts': [8, 16]}
  images = [{'image_id': i, 'file_name': f'{n}.jpg', 'height': 4, 'width': 6,
             'phase': 'train'} for i, n in enumerate('ab')]
  (voc / 'trainval_merged.json').write_text(json.dumps({
      'images': images, 'annos_segmentation': [
          {'id': i, 'image_id': i, 'category_id': 458, 'segmentation': rle}
          for i in range(2)]}))
  (voc / 'notes.json').write_text('[1, 2]')
  (voc / 'small.json').write_text(json.dumps({'images': images[:1], 'annos_segmentation': [
      {'id': 0, 'image_id': 0, 'category_id': 458,
       'segmentation': {'size': [2, 6], 'counts': [4, 8]}}]}))
  json_arg = 'data/pascal_ctx/VOCdevkit/VOC2010/trainval_merged.json'
  images_arg = 'data/pascal_ctx/VOCdevkit/VOC2010/JPEGImages'
  cases = (
      ((json_arg.replace('merged', 'merge'), images_arg),
       f'error: {json_arg.replace("merged", "merge")}: annotation file not found '
       "(PASCAL-Context's trainval_merged.json)"),
      ((json_arg, images_arg.replace('JPEG', 'JPG')),
       f'error: {images_arg.replace("JPEG", "JPG")}: image folder not found '
       '(VOCdevkit/VOC2010/JPEGImages)'),
      ((json_arg, images_arg),
       f'error: {images_arg}/b.jpg: image listed in {json_arg} not found'),
      ((json_arg.replace('trainval_merged', 'notes'), images_arg),
       f'error: {json_arg.replace("trainval_merged", "notes")}: not a Detail annotation '
       "file: expected 'images' and 'annos_segmentation' lists (PASCAL-Context's "
       'trainval_merged.json)'),
  )
  cases += (((json_arg.replace('trainval_merged', 'small'), images_arg),
             f'error: {json_arg.replace("trainval_merged", "small")}: a.jpg: mask (2, 6) '
             '!= image (4, 6)'),)
  for (json_path, image_dir), expected in cases:
    code = _main('prepare_pascal_ctx.py')([
        '--json', json_path, '--images', image_dir, '--out', 'data/pascal_ctx',
        '--list_dir', 'data/list/pascal_ctx'])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.splitlines() == [expected], captured.err
    assert sorted(os.listdir('data/pascal_ctx')) == ['VOCdevkit']
    assert not os.path.exists('data/list')


def test_benchmark_input_runs(tmp_path, capsys):
  bench = os.path.join(os.path.dirname(SCRIPTS), 'benchmarks',
                       'benchmark_input.py')
  main = runpy.run_path(bench, run_name='script')['main']
  main(['--num_images', '1', '--batch_size', '1', '--batches', '1',
        '--warmup', '0', '--workers', '0', '--dir', str(tmp_path / 'bench')])
  out = capsys.readouterr().out
  assert 'wrote 1 1024x2048 (HxW) PNG pairs' in out   # as crop (512, 1024)
  assert 'images per CPU-second' in out
  assert '0 workers (in-process)' in out   # 0 workers: no division by zero


@pytest.mark.parametrize('args, expected', [
    (['--workers', 'a'], "error: argument --workers: expected worker counts >= 0 "
                         "such as 0,2; got 'a'"),
    (['--num_images', '0'], 'error: --num_images must be >= 1; got 0'),
])
def test_benchmark_input_rejects_bad_arguments_before_writing(tmp_path, capsys,
                                                              args, expected):
  bench = os.path.join(os.path.dirname(SCRIPTS), 'benchmarks',
                       'benchmark_input.py')
  main = runpy.run_path(bench, run_name='script')['main']
  try:
    code = main([*args, '--dir', str(tmp_path / 'bench')])
  except SystemExit as e:   # argparse's own errors
    code = e.code
  assert code == 2 and capsys.readouterr().err.splitlines() == [expected]
  assert not (tmp_path / 'bench').exists()


def test_prepare_tfds(tmp_path, capsys):
  root = str(tmp_path / 'cs')
  _main('prepare_synthetic.py')(['--root', root, '--num_train', '2',
                                 '--num_val', '1', '--height', '16',
                                 '--width', '32'])
  capsys.readouterr()
  data_dir = str(tmp_path / 'tfds')
  code = _main('prepare_tfds.py')(['--dataset', 'cityscapes', '--root', root,
                                   '--train_list', os.path.join(root, 'train.lst'),
                                   '--val_list', os.path.join(root, 'val.lst'),
                                   '--data_dir', data_dir])
  out = capsys.readouterr().out
  assert code == 0
  # What was written and the flags to pass, as the command line takes them;
  # not TFDS's 'Downloading and preparing dataset Unknown size ...' lines.
  assert out == (
      f'wrote {data_dir}/hrseg_cityscapes/1.0.0\n'
      'read it with: --config.data.source=tfds --config.data.tfds_name=hrseg_cityscapes '
      f'--config.data.tfds_data_dir={data_dir} --config.data.tfds_val_split=val '
      '--config.data.tfds_image_key=image --config.data.tfds_label_key=label '
      '--config.data.tfds_id_key=id\n'), out
  cfg = default_data_config('cityscapes')
  cfg.update(source='tfds', tfds_name='hrseg_cityscapes',
             tfds_data_dir=data_dir, tfds_val_split='val',
             tfds_image_key='image', tfds_label_key='label', tfds_id_key='id')
  assert pipeline.num_train_examples(cfg) == 2
  assert len(pipeline.eval_examples(cfg)) == 1
  # Run again (say, after the lists changed): TFDS would silently keep the
  # old dataset while the script said 'wrote'; now one error line.
  before = sorted(str(p) for p in (tmp_path / 'tfds').rglob('*'))
  code = _main('prepare_tfds.py')(['--dataset', 'cityscapes', '--root', root,
                                   '--train_list', os.path.join(root, 'val.lst'),
                                   '--val_list', os.path.join(root, 'val.lst'),
                                   '--data_dir', data_dir])
  out, err = capsys.readouterr()
  assert code == 2 and out == '', out
  assert err == (f'error: {data_dir}/hrseg_cityscapes/1.0.0 already holds a TFDS dataset '
                 '(kept; nothing written): remove it, or write to another name or '
                 'data_dir\n'), err
  assert sorted(str(p) for p in (tmp_path / 'tfds').rglob('*')) == before


def test_prepare_tfds_into_a_pipe_prints_plain_progress_lines(tmp_path):
  """Its stderr a pipe (a log file, CI, nohup): TFDS's progress bars became
  carriage-return fragments (thousands for a real dataset); now a plain line
  per tenth of each split, and no bar."""
  pytest.importorskip('tensorflow_datasets')
  repo = os.path.abspath(os.path.join(SCRIPTS, os.pardir))
  env = dict(os.environ, PYTHONPATH=repo)
  script = os.path.join(repo, 'scripts')

  def run(name, *args):
    return subprocess.run([sys.executable, os.path.join(script, name), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  r = run('prepare_synthetic.py', '--root', 'cs', '--num_train', '12', '--num_val', '3',
          '--height', '16', '--width', '32')
  assert r.returncode == 0, r.stderr
  r = run('prepare_tfds.py', '--dataset', 'cityscapes', '--root', 'cs',
          '--train_list', 'cs/train.lst', '--val_list', 'cs/val.lst', '--data_dir', 'tfds')
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith('wrote tfds/hrseg_cityscapes/1.0.0\nread it with: '), r.stdout
  assert '\r' not in r.stderr and '\x1b' not in r.stderr, repr(r.stderr)
  lines = r.stderr.splitlines()
  done = [re.match(r'converting (train|val) (\d+)/(\d+) \(\d+%\) \| ', l) for l in lines]
  assert all(done), lines
  train = [int(m[2]) for m in done if m[1] == 'train']
  val = [int(m[2]) for m in done if m[1] == 'val']
  assert train == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12] and val == [1, 2, 3], lines
  assert ' | done in ' in lines[-1], lines


def test_make_lists_of_a_missing_root_says_so(tmp_path):
  """A --root that is not there said 'no cityscapes images found', as for an
  empty folder: the path was mistyped, not the dataset incomplete."""
  env = dict(os.environ, PYTHONPATH=os.path.dirname(SCRIPTS))
  script = os.path.join(SCRIPTS, 'make_lists.py')

  def run(root):
    return subprocess.run([sys.executable, script, 'cityscapes', '--root', root, '--out',
                           'data/list/cityscapes'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  r = run('data/cityscapes')
  assert (r.returncode, r.stdout, r.stderr) == (2, '', 'error: data/cityscapes: no such folder\n')
  (tmp_path / 'notes.txt').write_text('x')
  r = run('notes.txt')
  assert (r.returncode, r.stderr) == (2, 'error: notes.txt: not a folder\n')
  (tmp_path / 'data/cityscapes').mkdir(parents=True)
  r = run('data/cityscapes')
  assert r.returncode == 2 and r.stderr.startswith(
      'error: data/cityscapes: no cityscapes images found; expected leftImg8bit/')
  assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*')) == [
      'data', 'data/cityscapes', 'notes.txt']
