"""Deployment exports: each runtime's output against the JAX model.

StableHLO runs with JAX alone; ONNX with onnxruntime; SavedModel with
TensorFlow.  ONNX/SavedModel tests skip (one line) when their optional
runtime is not installed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hrseg_jax import Segmenter, checkpoints
from hrseg_jax.convert import convert
from hrseg_jax.deploy import cli, errors, graph, onnx_export, runtime
from hrseg_jax.inference import normalize
from hrseg_jax.models import registry
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

TINY_OCR = dict(TINY_HRNET, ocr=dict(mid_channels=16, key_channels=8), align_corners=True)
TINY_HANET = dict(TINY_HRNET, hanet={'positions': 'rows'})
GOLDEN = {'w18_small_v2': 'hrnet_w18_small_v2_cityscapes',
          'lite_hrnet_30_hanet': 'lite_hrnet_30_hanet_cityscapes'}
SIZE = {'tiny': (32, 48), 'golden': (64, 96)}


def needs(fmt):
  """Skips (one line) when the runtime of ``fmt`` is not installed."""
  for module in {'onnx': ('jax2onnx', 'onnxruntime'),
                 'savedmodel': ('orbax.export', 'tensorflow')}.get(fmt, ()):
    pytest.importorskip(module, reason=f'{fmt} runtime not installed '
                        f"(pip install 'hrseg-jax[{errors.EXTRAS[module]}]')")


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  """name -> (model config, variables, input size)."""
  out = {}
  for name, cfg in (('hrnet', TINY_HRNET), ('ocr', TINY_OCR), ('hanet', TINY_HANET)):
    cfg = registry.resolve(cfg)
    out[name] = (cfg, tiny_hrnet_variables(cfg, seed=3), SIZE['tiny'])
  return out


def golden_model(name, golden, tmp_path_factory):
  dst = tmp_path_factory.mktemp(name) / 'ckpt'
  convert.convert(golden / f'{GOLDEN[name]}.pth', dst, log=lambda *_: None)
  cfg, variables, _ = checkpoints.load_model(dst)
  return registry.resolve(cfg), variables, SIZE['golden']


def export_and_load(fmt, tmp_path, cfg, variables, size, pre_post):
  shape, dtype = (*size, 3), (np.uint8 if pre_post else np.float32)
  path = str(tmp_path / f'model.{fmt}')
  cli._write(fmt, path, cfg, variables, shape, dtype, pre_post, pre_post, 18)  # pylint: disable=protected-access
  return runtime.load(fmt, path)


def smooth_images(n, size, seed=7):
  """RGB uint8 images with regions and edges (bilinearly upsampled noise)."""
  import cv2  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (n, size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
  return np.stack([cv2.resize(im, size[::-1], interpolation=cv2.INTER_LINEAR)
                   for im in small])


def check_parity(run, cfg, variables, size, pre_post):
  """Logits rel L2 <= 1e-4 and argmax >= 99.9%; class maps identical."""
  seg = Segmenter(cfg, variables)
  rgb = smooth_images(2, size)
  if pre_post:
    out = run(rgb)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, seg.predict(rgb))
    return
  x = normalize(rgb)
  result = runtime.compare(np.asarray(seg.logits(x)[-1]), run(x))
  assert result['rel_l2'] <= 1e-4 and result['argmax_agreement'] >= 0.999, result
  assert result['ok']


@pytest.mark.parametrize('fmt', ['stablehlo', 'onnx'])
@pytest.mark.parametrize('name', ['hrnet', 'ocr', 'hanet'])
def test_tiny_model_parity(models, name, fmt, tmp_path):
  needs(fmt)
  cfg, variables, size = models[name]
  for pre_post in (False, True):
    run = export_and_load(fmt, tmp_path / str(pre_post), cfg, variables, size, pre_post)
    check_parity(run, cfg, variables, size, pre_post)


@pytest.mark.parametrize('name,fmt', [('w18_small_v2', 'stablehlo'), ('w18_small_v2', 'onnx'),
                                      ('lite_hrnet_30_hanet', 'stablehlo')])
def test_golden_model_parity(name, fmt, golden, tmp_path, tmp_path_factory):
  needs(fmt)
  cfg, variables, size = golden_model(name, golden, tmp_path_factory)
  for pre_post in (False, True):
    run = export_and_load(fmt, tmp_path / str(pre_post), cfg, variables, size, pre_post)
    check_parity(run, cfg, variables, size, pre_post)


def test_savedmodel_parity_and_bytes_signature(models, tmp_path):
  needs('savedmodel')
  import cv2  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cfg, variables, size = models['hanet']
  run = export_and_load('savedmodel', tmp_path / 'l', cfg, variables, size, False)
  check_parity(run, cfg, variables, size, False)
  run = export_and_load('savedmodel', tmp_path / 'c', cfg, variables, size, True)
  check_parity(run, cfg, variables, size, True)
  rgb = np.random.default_rng(1).integers(0, 256, (2, *size, 3), dtype=np.uint8)
  encoded = [cv2.imencode('.png', im[..., ::-1])[1].tobytes() for im in rgb]
  model = tf.saved_model.load(str(tmp_path / 'c' / 'model.savedmodel'))
  maps = model.signatures['predict_bytes'](images=tf.constant(encoded))['class_map']
  np.testing.assert_array_equal(maps.numpy(), Segmenter(cfg, variables).predict(rgb))


def _cli(*args, cwd):
  return subprocess.run([sys.executable, '-m', 'hrseg_jax.export', *args], cwd=cwd,
                        capture_output=True, text=True, check=False)


def test_export_cli_stablehlo_with_card_and_jax_only_loader(models, tmp_path):
  cfg, variables, _ = models['hrnet']
  checkpoints.save_model(tmp_path / 'ckpt', variables, cfg, {'dataset': 'lip'})
  r = _cli('ckpt', 'deploy/model.stablehlo', '--size', '32', '48', '--with-pre-post',
           cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert 'class maps identical on 100.000% of pixels' in r.stdout
  assert 'wrote deploy/model.stablehlo and deploy/model.stablehlo.json' in r.stdout
  card = json.loads((tmp_path / 'deploy' / 'model.stablehlo.json').read_text())
  assert card['format'] == 'stablehlo' and card['num_classes'] == 5
  assert card['input'] == {'name': 'images', 'layout': 'NHWC', 'color': 'RGB',
                           'shape': ['batch', 32, 48, 3], 'dtype': 'uint8',
                           'normalization_in_graph': True, 'dynamic': ['batch']}
  assert card['output']['kind'] == 'class_map'
  assert card['classes'] == [f'class_{i}' for i in range(5)]  # LIP has 20
  assert len(card['checkpoint']['weights_sha256']) == 64
  assert card['software']['jax'] and card['verification']['class_map_agreement'] == 1.0
  assert sorted(os.listdir(tmp_path / 'deploy')) == ['model.stablehlo',
                                                     'model.stablehlo.json']
  # The loader runs it with JAX alone: no model code, no Flax, no checkpoint.
  rgb = np.random.default_rng(2).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
  np.save(tmp_path / 'x.npy', rgb)
  code = ('import sys, numpy as np\n'
          'from hrseg_jax.deploy import stablehlo\n'
          "y = stablehlo.load('deploy/model.stablehlo')(np.load('x.npy'))\n"
          "np.save('y.npy', y)\n"
          "bad = [m for m in sys.modules if m.startswith(('flax', 'hrseg_jax.models'))]\n"
          'assert not bad, bad\n')
  r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                     text=True, check=False)
  assert r.returncode == 0, r.stderr
  np.testing.assert_array_equal(np.load(tmp_path / 'y.npy'),
                                Segmenter(cfg, variables).predict(rgb))
  # An existing output is refused, with one line and exit code 2.
  r = _cli('ckpt', 'deploy/model.stablehlo', '--size', '32', '48', cwd=tmp_path)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      'error: output exists: deploy/model.stablehlo (pass --overwrite to replace it)']


def test_export_cli_onnx_logits(models, tmp_path):
  needs('onnx')
  cfg, variables, _ = models['ocr']
  checkpoints.save_model(tmp_path / 'ckpt', variables, cfg)
  r = _cli('ckpt', 'm.onnx', '--size', '32', '48', cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert 'checked with onnxruntime' in r.stdout and 'logits rel L2' in r.stdout
  card = json.loads((tmp_path / 'm.onnx.json').read_text())
  assert card["opset"] == 18 and card['input']['dtype'] == 'float32'
  assert card['output']['shape'] == ['batch', 8, 12, 5]
  assert card['verification']['rel_l2'] <= 1e-4


def test_unsupported_operator_is_one_line_naming_it():
  needs('onnx')
  import jax  # pylint: disable=g-import-not-at-top

  def fn(x):
    return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
  with pytest.raises(errors.ExportError) as e:
    onnx_export.export_model(fn, (4, 4, 3), np.float32)
  assert "'pure_callback'" in str(e.value) and '\n' not in str(e.value)


def test_missing_extra_names_the_pip_install():
  with pytest.raises(errors.ExportError) as e:
    errors.require('hrseg_no_such_module', 'ONNX export')
  assert "pip install 'hrseg-jax[hrseg_no_such_module]'" in str(e.value)
  assert '\n' not in str(e.value)
  with pytest.raises(errors.ExportError):
    onnx_export.export_model(lambda x: x, (4, 4, 3), np.float32, opset=13)


def test_format_from_extension():
  for name, fmt in (('a.pth', 'pytorch'), ('a.onnx', 'onnx'), ('d/a.stablehlo', 'stablehlo'),
                    ('a.savedmodel/', 'savedmodel'), ('weights', 'pytorch')):
    assert cli.output_format(type('A', (), {'format': None, 'output': name})) == fmt
  assert graph.input_spec(4, 6, True) == ((4, 6, 3), np.uint8)
