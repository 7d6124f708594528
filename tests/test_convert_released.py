"""convert gives a released checkpoint (README table), named as released, the
align_corners / InPlaceABN settings it was trained with, unless told
otherwise (and then warns); a file saved by InPlaceABN (no
num_batches_tracked buffers) gets its BN scale whatever its name."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hrseg_jax import checkpoints
from hrseg_jax.convert import mapping, pth, pth_write, released

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert(cwd, *args):
  return subprocess.run([sys.executable, '-m', 'hrseg_jax.convert', *args], cwd=cwd,
                        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                        text=True, timeout=300)


def test_released_file_gets_its_own_settings_unless_told_otherwise(golden, tmp_path):
  """Run as a user runs it: the downloaded file in the current folder,
  relative paths. (The fixture's weights stand in for the released file's.)"""
  shutil.copy(golden / 'hrnet_w18_small_v2_cityscapes.pth',
              tmp_path / 'hrnet_ocr_cs_8162_torch11.pth')
  r = convert(tmp_path, 'hrnet_ocr_cs_8162_torch11.pth', 'converted/ocr_cs')
  assert r.returncode == 0 and r.stderr == '', r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[0] == ('hrnet_ocr_cs_8162_torch11.pth: a released checkpoint: converting '
                      'with align_corners=True, as it was trained')
  assert lines[1].startswith('converted hrnet_ocr_cs_8162_torch11.pth -> converted/ocr_cs')
  assert 'align_corners=True' in lines[1]
  model_cfg, _, meta = checkpoints.load_model(tmp_path / 'converted' / 'ocr_cs')
  assert model_cfg['align_corners'] is True and meta['inplace_abn'] is False
  # The option as the README writes it: nothing more to say.
  r = convert(tmp_path, 'hrnet_ocr_cs_8162_torch11.pth', 'converted/ocr_cs',
              '--align-corners', '--overwrite')
  assert r.returncode == 0 and r.stderr == '', r.stderr
  assert r.stdout.startswith('converted ') and 'align_corners=True' in r.stdout
  # Against the table: done as asked, with a warning.
  r = convert(tmp_path, 'hrnet_ocr_cs_8162_torch11.pth', 'converted/plain',
              '--no-align-corners')
  assert r.returncode == 0, r.stderr
  assert r.stderr.strip().splitlines() == [
      'warning: hrnet_ocr_cs_8162_torch11.pth is a released checkpoint trained with '
      'align_corners=True, standard BatchNorm: converted with --no-align-corners as '
      'asked, its predictions will be off (drop the option to use its own settings)']
  model_cfg, _, _ = checkpoints.load_model(tmp_path / 'converted' / 'plain')
  assert not model_cfg.get('align_corners')


@pytest.mark.parametrize('name, given, expected, note, against', [
    ('hrnet_ade20k_4312_torch04.pth', (None, None), (True, True),
     'align_corners=True, InPlaceABN', None),
    ('hrnet_lip_5583_torch04.pth', (True, None), (True, True), 'InPlaceABN',
     '--align-corners'),
    ('hrnet_cs_8090_torch11.pth', (None, True), (False, True), None, '--inplace-abn'),
    ('hrnet_cs_8090_torch11.pth', (None, None), (False, False), None, None),
    ('my_model.pth', (None, None), (None, None), None, None),
    ('my_model.pth', (False, True), (False, True), None, None),
])
def test_options_of_released_and_other_files(name, given, expected, note, against):
  align_corners, inplace_abn, note_line, warning = released.options(
      f'downloads/{name}', *given)
  assert (align_corners, inplace_abn) == expected
  assert note_line == (None if note is None else
                       f'{name}: a released checkpoint: converting with {note}, as it '
                       'was trained')
  if against is None:
    assert warning is None
  else:
    assert warning.startswith(f'warning: {name} is a released checkpoint trained with ')
    assert f'converted with {against} as asked' in warning


def test_options_as_trained_give_no_lines():
  for name, (align_corners, inplace_abn) in released.RELEASED.items():
    assert released.options(name, align_corners, inplace_abn)[2:] == (None, None)


def test_file_without_bn_counters_converts_with_inplace_abn_scales(golden, tmp_path):
  """The master branch's checkpoints (InPlaceABNSync, PyTorch 0.4.1) have BN
  statistics but no num_batches_tracked; their names do not say which
  branch (BN) they come from."""
  state = pth.state_dict_from_checkpoint(
      pth.load_pth(golden / 'hrnet_w18_small_v2_cityscapes.pth'))
  name = 'hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth'
  pth_write.save_pth({k: v for k, v in state.items()
                      if not k.endswith('num_batches_tracked')}, tmp_path / name)
  r = convert(tmp_path, name, 'converted/abn')
  assert r.returncode == 0 and r.stderr == '', r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[0] == (
      f'{name}: no num_batches_tracked buffers, as saved by InPlaceABN (PyTorch 0.4: '
      'master-branch and *_torch04 checkpoints): converting with its BN scale |w| + '
      '1e-5 (--no-inplace-abn if it was trained with standard BatchNorm)')
  assert lines[1].startswith(f'converted {name} -> converted/abn') and 'InPlaceABN' in lines[1]
  r = convert(tmp_path, name, 'converted/std', '--no-inplace-abn')
  assert r.returncode == 0 and r.stderr == '' and r.stdout.startswith('converted '), r.stdout
  scales = {}
  for folder in ('abn', 'std'):
    _, variables, meta = checkpoints.load_model(tmp_path / 'converted' / folder)
    assert meta['inplace_abn'] is (folder == 'abn')
    scales[folder] = mapping.variables_to_torch(variables)['bn1.weight']
  w = state['model.bn1.weight']
  np.testing.assert_array_equal(scales['std'], w)
  np.testing.assert_allclose(scales['abn'], np.abs(w) + 1e-5, rtol=1e-7)
  # With its counters (as every file saved by nn.BatchNorm2d): standard BN, no line.
  r = convert(tmp_path, str(golden / 'hrnet_w18_small_v2_cityscapes.pth'), 'converted/g')
  assert r.returncode == 0 and r.stdout.startswith('converted ') and 'InPlaceABN' not in r.stdout


def test_renamed_ocr_file_says_which_align_corners_it_got(tmp_path):
  """An OCR .pth not named as released (renamed, or trained by the user)
  keeps the default align_corners=False, and a line says so and names the
  flag: the released OCR checkpoints were all trained with True."""
  from test_convert import TINY, torch_state  # pylint: disable=g-import-not-at-top
  pth_write.save_pth(torch_state(dict(TINY, ocr={'mid_channels': 12, 'key_channels': 6})),
                     tmp_path / 'my_ocr.pth')
  r = convert(tmp_path, 'my_ocr.pth', 'converted/ocr')
  assert r.returncode == 0 and r.stderr == '', r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[0] == (
      'my_ocr.pth: an OCR model not under a released file name: converting with '
      'align_corners=False (the default), but the released OCR checkpoints were trained '
      'with align_corners=True: pass --align-corners if this one was too '
      '(--no-align-corners: False, without this line)')
  assert lines[1].startswith('converted my_ocr.pth -> converted/ocr') and len(lines) == 2
  for flag in ('--align-corners', '--no-align-corners'):
    r = convert(tmp_path, 'my_ocr.pth', 'converted/ocr', flag, '--overwrite')
    assert r.returncode == 0 and r.stderr == '' and r.stdout.startswith('converted '), r.stdout
  # ADE20K / COCO-Stuff (released with True, OCR or not); the others: no line.
  cfg = dict(TINY, num_classes=150)
  assert 'the released ade20k checkpoints' in released.align_corners_note('a.pth', cfg, 'ade20k')
  assert released.align_corners_note('a.pth', dict(TINY, num_classes=19), 'cityscapes') is None


def test_inplace_abn_forced_on_a_file_saved_by_batchnorm_warns(golden, tmp_path):
  """--inplace-abn for a file with num_batches_tracked buffers (standard
  BatchNorm saved them; InPlaceABN saves none): converted as asked, with a
  warning, as for options against the released table."""
  shutil.copy(golden / 'hrnet_w18_small_v2_cityscapes.pth', tmp_path / 'model.pth')
  r = convert(tmp_path, 'model.pth', 'converted/abn', '--inplace-abn')
  assert r.returncode == 0, r.stderr
  assert r.stderr.strip().splitlines() == [
      'warning: model.pth has num_batches_tracked buffers, as saved by standard BatchNorm '
      '(InPlaceABN saves none): converted with --inplace-abn as asked, its BN scales '
      '|w| + 1e-5 are off if it was trained with BatchNorm (drop the option to use its BN '
      'weights as they are)']
  assert checkpoints.load_model(tmp_path / 'converted' / 'abn')[2]['inplace_abn'] is True
