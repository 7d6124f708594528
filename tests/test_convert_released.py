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


def standin_cfg(num_classes, ocr=False):
  """A small model that shows what a released file shows: HRNetV2-W48's
  branch widths (one block each), an OCR head if ``ocr``, the class count."""
  return dict(arch='hrnet', variant='custom', num_classes=num_classes,
              stage1=[1, 8, 'BOTTLENECK'],
              stages=[[1, [1, 1], list(released.W48_WIDTHS[:2])],
                      [1, [1, 1, 1], list(released.W48_WIDTHS[:3])],
                      [1, [1, 1, 1, 1], list(released.W48_WIDTHS)]],
              ocr={'mid_channels': 12, 'key_channels': 6} if ocr else None)


def standin(path, num_classes, ocr=False, counters=True):
  """A stand-in for a released file (:func:`standin_cfg`), random weights,
  with num_batches_tracked buffers unless ``counters`` is False (as
  InPlaceABN saves)."""
  from test_convert import torch_state  # pylint: disable=g-import-not-at-top
  state = {'model.' + k: v for k, v in torch_state(standin_cfg(num_classes, ocr)).items()
           if counters or not k.endswith('num_batches_tracked')}
  pth_write.save_pth(state, path)
  return state


def test_released_file_gets_its_own_settings_unless_told_otherwise(tmp_path):
  """Run as a user runs it: the downloaded file in the current folder,
  relative paths. (A small stand-in with what the file shows: OCR, 19
  classes, W48's widths, num_batches_tracked.)"""
  standin(tmp_path / 'hrnet_ocr_cs_8162_torch11.pth', 19, ocr=True)
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


def test_released_name_on_other_contents_converts_by_the_contents(golden, tmp_path):
  """A file under a released name that shows it is not that file
  (num_batches_tracked buffers where the released one was saved by
  InPlaceABN, another architecture, another class count) is converted by
  what it shows: no InPlaceABN scale |w| + 1e-5, which flips the sign of
  every gamma < 0; one warning line says what differs and what was done."""
  name = 'hrnet_lip_5583_torch04.pth'
  os.symlink(golden / 'hrnet_w18_small_v2_cityscapes.pth', tmp_path / name)
  r = convert(tmp_path, name, 'converted/lip')
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip().splitlines() == [
      f'converted {name} -> converted/lip: hrnet w18_small_v2, 19 classes, 3,939,579 '
      'parameters (cityscapes)']
  assert r.stderr.strip().splitlines() == [
      f'warning: {name} is named as a released checkpoint but its contents differ: '
      'num_batches_tracked buffers (standard BatchNorm, not InPlaceABN), branch widths 18, '
      "36, 72, 144 (not HRNetV2-W48's 48, 96, 192, 384), 19 classes (not 20); converted "
      'as a file of its own, with standard BatchNorm (its num_batches_tracked buffers), '
      'align_corners=False (the default); pass --inplace-abn if it was trained with '
      'InPlaceABN']
  model_cfg, variables, meta = checkpoints.load_model(tmp_path / 'converted' / 'lip')
  assert meta['inplace_abn'] is False and not model_cfg.get('align_corners')
  state = pth.state_dict_from_checkpoint(pth.load_pth(tmp_path / name))
  got = mapping.variables_to_torch(variables)
  for k in ('bn1.weight', 'last_layer.1.weight'):
    np.testing.assert_array_equal(got[k], state['model.' + k])
  # Asked for explicitly: done, and the same line says so.
  r = convert(tmp_path, name, 'converted/abn', '--inplace-abn', '--align-corners')
  assert r.returncode == 0, r.stderr
  (line,) = r.stderr.strip().splitlines()
  assert line.endswith('; converted as a file of its own, with InPlaceABN as asked, '
                       'align_corners=True as asked'), line
  model_cfg, _, meta = checkpoints.load_model(tmp_path / 'converted' / 'abn')
  assert meta['inplace_abn'] is True and model_cfg['align_corners'] is True


def test_released_name_keeps_its_settings_where_contents_agree(tmp_path):
  """The released *_torch04 files have no num_batches_tracked buffers: a
  stand-in with W48's widths and LIP's 20 classes converts as before, with
  InPlaceABN; the same with the buffers differs only in BN, and only that
  is said and not applied."""
  name = 'hrnet_lip_5583_torch04.pth'
  state = standin(tmp_path / name, 20, counters=False)
  w = state['model.bn1.weight']
  assert (w < 0).any()   # where |w| + 1e-5 differs from w in sign
  r = convert(tmp_path, name, 'converted/lip')
  assert r.returncode == 0 and r.stderr == '', r.stderr
  lines = r.stdout.strip().splitlines()
  assert lines[0] == (f'{name}: a released checkpoint: converting with InPlaceABN, as it '
                      'was trained')
  assert 'InPlaceABN scales (lip)' in lines[1]
  _, variables, _ = checkpoints.load_model(tmp_path / 'converted' / 'lip')
  np.testing.assert_allclose(mapping.variables_to_torch(variables)['bn1.weight'],
                             np.abs(w) + 1e-5, rtol=1e-7)
  state = standin(tmp_path / name, 20, counters=True)
  r = convert(tmp_path, name, 'converted/bn')
  assert r.returncode == 0, r.stderr
  assert r.stderr.strip().splitlines() == [
      f'warning: {name} is named as a released checkpoint but its contents differ: '
      'num_batches_tracked buffers (standard BatchNorm, not InPlaceABN); converted as a '
      'file of its own, with standard BatchNorm (its num_batches_tracked buffers), '
      'align_corners=False (the default); pass --inplace-abn if it was trained with '
      'InPlaceABN']
  assert 'InPlaceABN' not in r.stdout and 'a released checkpoint' not in r.stdout
  _, variables, meta = checkpoints.load_model(tmp_path / 'converted' / 'bn')
  assert meta['inplace_abn'] is False
  np.testing.assert_array_equal(mapping.variables_to_torch(variables)['bn1.weight'],
                                state['model.bn1.weight'])


def test_differences_name_what_the_file_shows():
  """The checks behind the line, also used for train.init_from's files
  (convert.resolve_inplace_abn, no options)."""
  from hrseg_jax.convert import convert as convert_lib  # pylint: disable=g-import-not-at-top
  assert {n: released.contents(n)[0] for n in released.RELEASED}[
      'hrnet_ocr_cs_trainval_8227_torch11.pth'] == (19,)   # every name has its counts
  state = {'stem.conv1.conv.weight': np.zeros((32, 3, 3, 3), np.float32)}
  assert released.differences('hrnet_ade20k_4312_torch04.pth', state, {}) == [
      'a Lite-HRNet (not HRNetV2-W48)']
  state = {f'stage4.0.branches.{i}.0.conv1.weight': np.zeros((c, c, 3, 3), np.float32)
           for i, c in enumerate(released.W48_WIDTHS)}
  state['bn1.running_var'] = np.ones(4, np.float32)
  state['cls_head.weight'] = np.zeros((59, 8, 1, 1), np.float32)
  state['conv3x3_ocr.0.weight'] = np.zeros((8, 8, 3, 3), np.float32)
  assert released.differences('hrnet_ocr_pascal_ctx_5618_torch11.pth', state, {}) == []
  assert released.differences('hrnet_cs_8090_torch11.pth', state, {}) == [
      'an OCR head (not plain HRNetV2)', '59 classes (not 19)']
  warnings = []
  assert convert_lib.resolve_inplace_abn(
      'x/hrnet_cs_8090_torch11.pth', (state, {}), None, False, log=warnings.append) is True
  assert warnings == [
      'warning: hrnet_cs_8090_torch11.pth is named as a released checkpoint but its '
      'contents differ: an OCR head (not plain HRNetV2), 59 classes (not 19); converted '
      "as a file of its own, with InPlaceABN's BN scale |w| + 1e-5 (it has no "
      'num_batches_tracked buffers)']
