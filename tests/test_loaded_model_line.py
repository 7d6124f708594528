"""The console names what was loaded: the converted model and its settings
(convert, then --mode predict on one tiny image, relative paths)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from hrseg_jax.convert import __main__ as convert_cli
from hrseg_jax.convert import mapping, pth
from hrseg_jax.models import registry
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_convert_and_predict_name_model_settings_and_dtype(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  cfg = registry.resolve(dict(TINY_HRNET, num_classes=19))
  state = {'model.' + k: v
           for k, v in mapping.variables_to_torch(tiny_hrnet_variables(cfg)).items()}
  pth.save_pth(state, tmp_path / 'ocr_like.pth')
  assert convert_cli.main(['ocr_like.pth', 'converted/cs', '--align-corners']) == 0
  out = capsys.readouterr().out
  assert out.startswith('converted ocr_like.pth -> converted/cs: hrnet custom, 19 classes, ')
  assert ', align_corners=True (cityscapes)' in out, out
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save('photo.png')
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  r = subprocess.run(
      [sys.executable, '-m', 'hrseg_jax.main', '--mode', 'predict', '--checkpoint',
       'converted/cs', '--input', 'photo.png', '--workdir', 'runs/p', '--dtype', 'bfloat16'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  assert lines[0] == ('predict: checkpoint converted/cs (converted weights, step 0): '
                      'hrnet custom, 19 classes, align_corners=True'), r.stdout
  assert lines[1] == ("predict: palette cityscapes; whole image at each image's own size, "
                      'scales 1, no flip, bfloat16 compute'), r.stdout
  assert (tmp_path / 'runs/p/predictions/labels/photo.png').exists()
