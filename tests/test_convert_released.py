"""convert warns when a released checkpoint (README table) is converted
without the align_corners / InPlaceABN settings it was trained with."""
import os
import shutil
import subprocess
import sys

import pytest

from hrseg_jax.convert import released

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert(cwd, *args):
  return subprocess.run([sys.executable, '-m', 'hrseg_jax.convert', *args], cwd=cwd,
                        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                        text=True, timeout=300)


def test_released_file_without_its_options_warns_and_with_them_does_not(golden, tmp_path):
  """Run as a user runs it: the downloaded file in the current folder,
  relative paths. (The fixture's weights stand in for the released file's.)"""
  shutil.copy(golden / 'hrnet_w18_small_v2_cityscapes.pth',
              tmp_path / 'hrnet_ocr_cs_8162_torch11.pth')
  r = convert(tmp_path, 'hrnet_ocr_cs_8162_torch11.pth', 'converted/ocr_cs')
  assert r.returncode == 0, r.stderr
  assert r.stderr.strip().splitlines() == [
      'warning: hrnet_ocr_cs_8162_torch11.pth is a released checkpoint trained with '
      'align_corners=True, standard BatchNorm: convert it again with --align-corners '
      '--overwrite, or its predictions will be off'], r.stderr
  assert r.stdout.startswith('converted hrnet_ocr_cs_8162_torch11.pth -> converted/ocr_cs')
  r = convert(tmp_path, 'hrnet_ocr_cs_8162_torch11.pth', 'converted/ocr_cs',
              '--align-corners', '--overwrite')
  assert r.returncode == 0 and r.stderr == '', r.stderr
  assert 'align_corners=True' in r.stdout


@pytest.mark.parametrize('name, align_corners, inplace_abn, expected', [
    ('hrnet_ade20k_4312_torch04.pth', None, False,
     'with --align-corners --inplace-abn --overwrite'),
    ('hrnet_lip_5583_torch04.pth', True, False,
     'without --align-corners and with --inplace-abn --overwrite'),
    ('hrnet_cs_8090_torch11.pth', None, True, 'without --inplace-abn and with --overwrite'),
])
def test_the_warning_names_what_to_add_and_drop(name, align_corners, inplace_abn,
                                                 expected):
  line = released.option_warning(f'downloads/{name}', align_corners, inplace_abn)
  assert line.startswith(f'warning: {name} is a released checkpoint trained with ')
  assert f'convert it again {expected}, or its predictions will be off' in line


def test_matching_options_and_other_files_give_no_warning():
  for name, (align_corners, inplace_abn) in released.RELEASED.items():
    assert released.option_warning(name, align_corners, inplace_abn) is None
  assert released.option_warning('hrnet_cs_8090_torch11.pth', None, False) is None
  assert released.option_warning('my_model.pth', None, False) is None
