"""Deployment exports: each runtime's output against the JAX model.

StableHLO runs with JAX alone; ONNX with onnxruntime; SavedModel with
TensorFlow.  ONNX/SavedModel tests skip (one line) when their optional
runtime is not installed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import types
import subprocess
import sys

import numpy as np
import pytest

from hrseg_jax import Segmenter, checkpoints
from hrseg_jax.convert import convert
from hrseg_jax.deploy import cli, errors, graph, onnx_export, runtime, stablehlo
from hrseg_jax.inference import normalize
from hrseg_jax.models import lite_hrnet, registry
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

TINY_OCR = dict(TINY_HRNET, ocr=dict(mid_channels=16, key_channels=8), align_corners=True)
TINY_HANET = dict(TINY_HRNET, hanet={'positions': 'rows'})
# Lite-HRNet-30+HANet's blocks, head ('fork', the seed fork's) and HANet at
# tiny widths with one module per stage: the same operators in a graph small
# enough to convert in seconds (Lite-HRNet-30 has 14 modules).
TINY_LITE_VARIANT = dict(lite_hrnet.VARIANTS['30'], stem=(8, 8, 1), num_modules=(1, 1, 1),
                         channels=(8, 16, 32, 64), reduce_ratio=4)
TINY_LITE_HANET = {'arch': 'lite_hrnet', 'variant': 'tiny_test', 'num_classes': 5,
                   'head': 'fork', 'hanet': {'positions': 'rows'}}
GOLDEN = {'w18_small_v2': 'hrnet_w18_small_v2_cityscapes'}
SIZE = {'tiny': (32, 48), 'tiny_lite': (32, 64), 'golden': (64, 96)}


def needs(fmt):
  """Skips (one line) when the runtime of ``fmt`` is not installed."""
  for module in {'onnx': ('jax2onnx', 'onnxruntime'),
                 'savedmodel': ('orbax.export', 'tensorflow')}.get(fmt, ()):
    pytest.importorskip(module, reason=f'{fmt} runtime not installed '
                        f"(pip install 'hrseg-jax[{errors.EXTRAS[module]}]')")


TINY = {'hrnet': TINY_HRNET, 'ocr': TINY_OCR, 'hanet': TINY_HANET,
        'lite_hrnet_hanet': TINY_LITE_HANET}
RUNTIMES = ('stablehlo', 'onnx', 'savedmodel')


class Zoo:
  """Models, their JAX outputs and their exports, each made once per module."""

  def __init__(self, tmp_path_factory):
    self.tmp = tmp_path_factory.mktemp('zoo')
    self.models, self.references, self.exports = {}, {}, {}

  def model(self, name, golden=None):
    """(model config, variables, input size)."""
    if name not in self.models:
      if name in TINY:
        cfg = registry.resolve(TINY[name])
        size = SIZE['tiny_lite' if cfg['arch'] == 'lite_hrnet' else 'tiny']
        self.models[name] = (cfg, tiny_hrnet_variables(cfg, seed=3), size)
      else:
        dst = self.tmp / name / 'ckpt'
        convert.convert(golden / f'{GOLDEN[name]}.pth', dst, log=lambda *_: None)
        cfg, variables, _ = checkpoints.load_model(dst)
        self.models[name] = (registry.resolve(cfg), variables, SIZE['golden'])
    return self.models[name]

  def reference(self, name, pre_post):
    """(input, JAX output): class maps of uint8 RGB, or last logits."""
    if (name, pre_post) not in self.references:
      cfg, variables, size = self.models[name]
      seg = Segmenter(cfg, variables)
      rgb = smooth_images(2, size)
      self.references[name, pre_post] = (
          (rgb, seg.predict(rgb)) if pre_post
          else (normalize(rgb), np.asarray(seg.logits(normalize(rgb))[-1])))
    return self.references[name, pre_post]

  def export(self, fmt, name, pre_post):
    """(path, runner) of the export of ``name``, written once."""
    key = (fmt, name, pre_post)
    if key not in self.exports:
      cfg, variables, size = self.models[name]
      path = self.tmp / name / f'{"classes" if pre_post else "logits"}.{fmt}'
      self.exports[key] = (path, export_and_load(fmt, path, cfg, variables, size,
                                                 pre_post))
    return self.exports[key]


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(lite_hrnet.VARIANTS, 'tiny_test', TINY_LITE_VARIANT)
    yield Zoo(tmp_path_factory)


def export_and_load(fmt, path, cfg, variables, size, pre_post):
  shape, dtype = (*size, 3), (np.uint8 if pre_post else np.float32)
  path.parent.mkdir(parents=True, exist_ok=True)
  cli._write(fmt, str(path), cfg, variables, shape, dtype, pre_post, pre_post, 18)  # pylint: disable=protected-access
  return runtime.load(fmt, path)


def smooth_images(n, size, seed=7):
  """RGB uint8 images with regions and edges (bilinearly upsampled noise)."""
  import cv2  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (n, size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
  return np.stack([cv2.resize(im, size[::-1], interpolation=cv2.INTER_LINEAR)
                   for im in small])


def check_parity(zoo, fmt, name):
  """Logits rel L2 <= 1e-4 and argmax >= 99.9%; class maps identical."""
  for pre_post in (False, True):
    x, expected = zoo.reference(name, pre_post)
    out = zoo.export(fmt, name, pre_post)[1](x)
    if pre_post:
      assert out.dtype == np.int32
      np.testing.assert_array_equal(out, expected)
    else:
      result = runtime.compare(expected, out)
      assert result['rel_l2'] <= 1e-4 and result['argmax_agreement'] >= 0.999, result
      assert result['ok']
      print(f'{name} {fmt}: {runtime.describe(result)}')  # shown with pytest -rP


@pytest.mark.parametrize('fmt', RUNTIMES)
@pytest.mark.parametrize('name', ['ocr', 'hanet', 'lite_hrnet_hanet'])
def test_tiny_model_parity(zoo, name, fmt):
  needs(fmt)
  zoo.model(name)
  check_parity(zoo, fmt, name)


@pytest.mark.parametrize('fmt', RUNTIMES)
@pytest.mark.parametrize('name', ['w18_small_v2'])
def test_golden_model_parity(zoo, name, fmt, golden):
  needs(fmt)
  zoo.model(name, golden)
  check_parity(zoo, fmt, name)


def test_savedmodel_bytes_signature(zoo):
  needs('savedmodel')
  import cv2  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cfg, variables, size = zoo.model('hanet')
  path, _ = zoo.export('savedmodel', 'hanet', True)
  rgb = np.random.default_rng(1).integers(0, 256, (2, *size, 3), dtype=np.uint8)
  encoded = [cv2.imencode('.png', im[..., ::-1])[1].tobytes() for im in rgb]
  data = (path / 'saved_model.pb').read_bytes()   # no folder of the exporting machine
  assert b'hrseg_jax/models/' in data
  assert os.path.dirname(os.path.dirname(cli.__file__)).encode() not in data
  model = tf.saved_model.load(str(path))
  # Its output is named as serving_default's and the card's (it was 'class_map').
  maps = model.signatures['predict_bytes'](images=tf.constant(encoded))['output']
  np.testing.assert_array_equal(maps.numpy(), Segmenter(cfg, variables).predict(rgb))


# The commands' subprocesses compile in XLA's fast-compile mode, as the tests'
# own process does (tests/conftest.py).
FAST_COMPILE = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')


def _cli(*args, cwd):
  return subprocess.run([sys.executable, '-m', 'hrseg_jax.export', *args], cwd=cwd,
                        capture_output=True, text=True, check=False, env=FAST_COMPILE)


def test_export_cli_stablehlo_with_card_and_jax_only_loader(zoo, tmp_path):
  cfg, variables, _ = zoo.model('hrnet')
  checkpoints.save_model(tmp_path / 'ckpt', variables, cfg, {'dataset': 'lip'})
  r = _cli('ckpt', 'deploy/model.stablehlo', '--size', '32', '48', '--with-pre-post',
           cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith('exported stablehlo of ckpt (converted weights) in '), r.stdout
  assert 'class maps identical on 100% of pixels' in r.stdout
  assert 'wrote deploy/model.stablehlo and deploy/model.stablehlo.json' in r.stdout
  card = json.loads((tmp_path / 'deploy' / 'model.stablehlo.json').read_text())
  assert card['format'] == 'stablehlo' and card['num_classes'] == 5
  assert card['input'] == {'name': 'images', 'layout': 'NHWC', 'color': 'RGB',
                           'shape': ['batch', 32, 48, 3], 'dtype': 'uint8',
                           'normalization_in_graph': True, 'dynamic': ['batch']}
  assert card['output']['kind'] == 'class_map'
  assert card['classes'] == [f'class_{i}' for i in range(5)]  # LIP has 20
  assert len(card['checkpoint']['weights_sha256']) == 64
  assert card['checkpoint']['step'] == 0   # a converted (not trained) checkpoint
  assert card['software']['jax'] and card['verification']['class_map_agreement'] == 1.0
  assert sorted(os.listdir(tmp_path / 'deploy')) == ['model.stablehlo',
                                                     'model.stablehlo.json']
  # Source locations name the package's files, not the folder it is installed in.
  data = (tmp_path / 'deploy' / 'model.stablehlo').read_bytes()
  assert b'hrseg_jax/models/hrnet.py' in data
  assert os.path.dirname(os.path.dirname(cli.__file__)).encode() not in data
  umask = os.umask(0)
  os.umask(umask)
  for name in ('model.stablehlo', 'model.stablehlo.json'):  # readable as the umask allows
    assert os.stat(tmp_path / 'deploy' / name).st_mode & 0o777 == 0o666 & ~umask
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
                     text=True, check=False, env=FAST_COMPILE)
  assert r.returncode == 0, r.stderr
  np.testing.assert_array_equal(np.load(tmp_path / 'y.npy'),
                                Segmenter(cfg, variables).predict(rgb))
  # Unchecked: said on the console and in the card (it said nothing).
  r = _cli('ckpt', 'unchecked.stablehlo', '--size', '32', '48', '--no-verify', cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert lines[1:] == ['not checked against the JAX model (--no-verify)',
                       'wrote unchecked.stablehlo and unchecked.stablehlo.json'], r.stdout
  card = json.loads((tmp_path / 'unchecked.stablehlo.json').read_text())
  assert card['verification'] is None
  # An existing output is refused, with one line and exit code 2.
  r = _cli('ckpt', 'deploy/model.stablehlo', '--size', '32', '48', cwd=tmp_path)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      'error: output exists: deploy/model.stablehlo (pass --overwrite to replace it)']
  # A free height and width (multiples of 32): one StableHLO file for every
  # size, giving Segmenter's class maps at each.
  r = _cli('ckpt', 'dyn.stablehlo', '--size', '32', '64', '--dynamic-size',
           '--with-pre-post', cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert 'class maps identical on 100% of pixels' in r.stdout
  card = json.loads((tmp_path / 'dyn.stablehlo.json').read_text())
  assert card['input']['shape'] == ['batch', '32*h', '32*w', 3], card['input']
  run = runtime.load('stablehlo', tmp_path / 'dyn.stablehlo')
  for size in ((64, 32), (32, 96)):
    rgb = np.random.default_rng(2).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(run(rgb), Segmenter(cfg, variables).predict(rgb))
  with pytest.raises(ValueError, match=r'images of shape \[1, 100, 160, 3\] \(uint8\) do '
                     r'not fit this export, which takes uint8\[b,32\*h,32\*w,3\]: '):
    run(np.zeros((1, 100, 160, 3), np.uint8))
  # Its latency, at a size of the user's choice (its card's height and width
  # are symbols; reading them as numbers was a traceback).
  r = subprocess.run([sys.executable, '-m', 'hrseg_jax.deploy.latency', 'dyn.stablehlo',
                      '--size', '64', '32', '--repeats', '1', '--warmup', '0'],
                     cwd=tmp_path, capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith('one 64x32 image, median of 1 runs:\n  stablehlo   jax '), r.stdout
  # ONNX: jax2onnx cannot keep the size free through the upsampling's gathers:
  # one line saying so, nothing written.
  if importlib.util.find_spec('jax2onnx') and importlib.util.find_spec('onnxruntime'):
    r = _cli('ckpt', 'new/dyn.onnx', '--size', '32', '64', '--dynamic-size', cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith('error: --dynamic-size: jax2onnx cannot keep the height and '
                           'width of this hrnet model free ('), line
    assert line.endswith('export ONNX with a fixed --size H W, or StableHLO with '
                         '--dynamic-size'), line
    assert 'SENTINEL' not in line, line
    assert not (tmp_path / 'new').exists()   # nor the folder made for it


@pytest.mark.parametrize('fmt', ['stablehlo', 'onnx'])
def test_dynamic_height_and_width_where_the_graph_allows(fmt, tmp_path):
  """The writers keep H and W symbolic (multiples of 32) for a graph that traces so."""
  needs(fmt)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  w = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32)

  def fn(x):  # stride-2 conv, nearest 2x upsample, argmax: a miniature segmenter
    y = jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)
    return jnp.argmax(y, axis=-1).astype(jnp.int32)
  shape = graph.symbolic_image_shape((64, 64, 3), dynamic=True)
  path = tmp_path / f'm.{fmt}'
  if fmt == 'stablehlo':
    path.write_bytes(stablehlo.export_bytes(fn, shape, np.float32, platforms=('cpu',)))
  else:
    path.write_bytes(onnx_export.export_model(fn, shape, np.float32).SerializeToString())
  run = runtime.load(fmt, path)
  for size in ((32, 64), (96, 64)):
    x = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
    out = run(x)
    assert out.shape == (2, *size)
    np.testing.assert_array_equal(out, np.asarray(jax.jit(fn)(x)))


def test_export_cli_onnx_logits(zoo, tmp_path):
  needs('onnx')
  cfg, variables, _ = zoo.model('ocr')
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


@pytest.mark.parametrize('missing,output,extra', [
    ('onnxruntime', 'm.onnx', 'onnx'), ('jax2onnx', 'm.onnx', 'onnx'),
    ('tensorflow', 'm.savedmodel', 'savedmodel')])
def test_missing_extra_stops_the_export_before_any_work(missing, output, extra, tmp_path,
                                                         monkeypatch, capsys):
  from hrseg_jax import export  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
  monkeypatch.chdir(tmp_path)
  assert export.main(['no_checkpoint_here', output]) == 2
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert f"needs the Python package '{missing}'" in line
  assert f"run: pip install 'hrseg-jax[{extra}]'" in line
  assert os.listdir(tmp_path) == []


def test_format_from_extension():
  for name, fmt in (('a.pth', 'pytorch'), ('a.onnx', 'onnx'), ('d/a.stablehlo', 'stablehlo'),
                    ('a.savedmodel/', 'savedmodel'), ('weights', 'pytorch'),
                    ('a.pth.tar', 'pytorch')):
    assert cli.output_format(types.SimpleNamespace(format=None, output=name)) == fmt
  assert cli.output_format(types.SimpleNamespace(format='onnx', output='a.bin')) == 'onnx'


@pytest.mark.parametrize('args,message', [
    (['deploy/m.onx'], 'error: deploy/m.onx: the extension .onx names no export format; '
     'use .pth, .onnx, .stablehlo or .savedmodel, or pass --format'),
    (['deploy/m.onnx', '--format', 'stablehlo'],
     'error: deploy/m.onnx: the extension .onnx says onnx, --format says stablehlo; '
     'make them agree'),
    # Refused after the checkpoint had loaded, leaving an empty deploy/ behind.
    (['deploy/m.onnx', '--opset', '13'],
     'error: --opset 13: ONNX exports need opset 17 or newer')],
    ids=['typo', 'contradiction', 'old opset'])
def test_unknown_or_contradicted_extension_is_refused(args, message, tmp_path):
  """A typo'd extension once wrote a PyTorch state dict under that name."""
  cfg = registry.resolve(TINY_HRNET)
  checkpoints.save_model(tmp_path / 'ckpt', tiny_hrnet_variables(cfg, seed=3), cfg, {})
  r = _cli('ckpt', *args, cwd=tmp_path)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [message]
  assert sorted(os.listdir(tmp_path)) == ['ckpt']


def unwritable_folder(tmp_path):
  """A folder that takes no new file: read-only for a user; /proc for root
  (which writes in read-only folders)."""
  folder = tmp_path / 'readonly'
  folder.mkdir()
  folder.chmod(0o555)
  if not os.access(folder, os.W_OK):
    return folder
  if not os.path.isdir('/proc'):
    pytest.skip('running as root without /proc: no folder it cannot write')
  return pathlib.Path('/proc')


@pytest.mark.parametrize('output', ['deploy/m.stablehlo', 'm.pth'])
def test_unwritable_output_is_one_line_naming_it_before_any_work(output, tmp_path):
  """It was found after the export's work, in words about a temporary file
  ('[Errno 13] Permission denied: '/x/.tmp-k7kb.m.stablehlo.tmp-58d0'')."""
  cfg = registry.resolve(TINY_HRNET)
  checkpoints.save_model(tmp_path / 'ckpt', tiny_hrnet_variables(cfg, seed=3), cfg, {})
  folder = unwritable_folder(tmp_path)
  shown = 'readonly' if folder.parent == tmp_path else str(folder)
  target = os.path.join(shown, output)
  r = _cli('ckpt', target, '--size', '32', '48', cwd=tmp_path)
  assert r.returncode == 2, r.stderr
  (line,) = r.stderr.strip().splitlines()
  assert line.startswith(f'error: cannot write {target}: {shown} is not writable ('), line
  assert line.endswith('); choose another output path'), line
  assert r.stdout == ''   # nothing exported, nothing checked


def test_card_dataset_of_a_training_workdir():
  """A training checkpoint records its dataset in its config (meta.config.data.name)."""
  args = types.SimpleNamespace(dataset=None)
  trained = {'config': {'data': {'name': 'synthetic'}}, 'eval': {}}
  assert cli._dataset(args, {'num_classes': 19}, trained) == 'synthetic'
  assert cli._dataset(args, {'num_classes': 19}, {}) == 'cityscapes'
  assert cli._dataset(args, {'num_classes': 20}, {'dataset': 'lip'}) == 'lip'


def test_check_batch_has_the_statistics_of_normalised_photographs():
  """The export check's images, normalised, have mean 0 and spread ~1 per
  channel (uniform 0..255 noise has mean 0.06..0.42 and spread 1.26..1.28)."""
  rgb = cli.sample_input((64, 128, 3), np.uint8)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 64, 128, 3)
  x = cli.sample_input((64, 128, 3), np.float32)
  np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0, atol=0.02)
  np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1, atol=0.05)   # clipped to 0..255


def test_compare_counts_differing_pixels_and_never_rounds_to_100():
  ref = np.zeros((1, 1000, 1000), np.int32)
  out = ref.copy()
  out[0, 0, :4] = 1
  result = runtime.compare(ref, out)
  assert (result['differing_pixels'], result['pixels'], result['ok']) == (4, 10 ** 6, True)
  assert runtime.describe(result) == (
      'class maps identical on 99.9996% of pixels (4 of 1,000,000 differ)')
  assert runtime.describe(runtime.compare(ref, ref)) == 'class maps identical on 100% of pixels'
  logits = np.random.default_rng(0).normal(size=(1, 8, 8, 5))
  result = runtime.compare(logits, logits * (1 + 1e-3))
  assert not result['ok'] and runtime.describe(result).startswith('logits rel L2 1.00e-03, ')
  result.update(runtime.float32_error(logits * (1 + 3e-2), logits))
  assert runtime.describe(result).endswith(
      '; JAX float32 logits are at rel L2 3.00e-02 from float64 on this batch')


def test_dynamic_size_savedmodel_points_to_stablehlo(tmp_path, monkeypatch, capsys):
  """Not to ONNX, which cannot keep the size free through these models' upsampling."""
  from hrseg_jax import export  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  assert export.main(['ckpt', 'm.savedmodel', '--dynamic-size']) == 2
  assert capsys.readouterr().err == (
      'error: --dynamic-size: SavedModel exports take a fixed --size H W; a StableHLO '
      'export keeps the height and width free\n')
  assert os.listdir(tmp_path) == []


def test_latency_refuses_bad_arguments_in_one_line(tmp_path):
  """Each names the file or flag (a missing export once named only its card;
  --repeats 0 said 'no median for empty data')."""
  (tmp_path / 'weights.pth').write_bytes(b'PK')
  (tmp_path / 'm.onnx').write_bytes(b'')
  (tmp_path / 'm.onnx.json').write_text('{"format": "onnx"')
  # A damaged copy (cut short) with its card: a traceback of the runtime's
  # parser (struct.error, InvalidProtobuf).
  card = {'input': {'shape': ['batch', 32, 48, 3], 'dtype': 'uint8'},
          'output': {'kind': 'class_map'}}
  (tmp_path / 'cut.stablehlo').write_bytes(b'\x10\x00\x00\x00' * 8)
  (tmp_path / 'cut.stablehlo.json').write_text(json.dumps(dict(card, format='stablehlo')))
  (tmp_path / 'cut.onnx').write_bytes(b'\x08\x09\x12\xff\xff')
  (tmp_path / 'cut.onnx.json').write_text(json.dumps(dict(card, format='onnx')))
  damaged = [
      (['cut.stablehlo'], 'error: cut.stablehlo: not a StableHLO export of python -m '
       'hrseg_jax.export, or a damaged copy of one ('),
      # The checkpoint is read before any export is timed.
      (['cut.stablehlo', '--checkpoint', 'nope'], 'error: checkpoint not found: ')]
  if importlib.util.find_spec('onnxruntime'):
    damaged.append((['cut.onnx'], 'error: cut.onnx: onnxruntime '))
  for args, line in (
      *damaged,
      (['gone.stablehlo'], 'error: gone.stablehlo: no such file'),
      (['weights.pth'], 'error: weights.pth: no card weights.pth.json beside it; pass '
       'exports written by python -m hrseg_jax.export'),
      (['m.onnx'], 'error: m.onnx.json: not a card written by python -m hrseg_jax.export '
       '(JSONDecodeError: '),
      (['m.onnx', '--repeats', '0'], 'error: --repeats 0: must be at least 1'),
      (['m.onnx', '--size', '-64', '32'],
       'error: --size -64 32: height and width must be positive')):
    r = subprocess.run([sys.executable, '-m', 'hrseg_jax.deploy.latency', *args],
                       cwd=tmp_path, capture_output=True, text=True, check=False)
    assert r.returncode == 2, (args, r.stderr)
    (got,) = r.stderr.strip().splitlines()
    assert got.startswith(line), (args, got)
    assert not r.stdout


def test_latency_image_size_of_fixed_and_free_size_exports():
  from hrseg_jax.deploy import latency  # pylint: disable=g-import-not-at-top

  def card(h, w):
    return {'input': {'shape': ['batch', h, w, 3]}}
  free, fixed, other = card('32*h', '32*w'), card(64, 96), card(32, 32)
  assert latency.image_size(['a'], [free]) == (512, 1024)
  assert latency.image_size(['a'], [free], (64, 32)) == (64, 32)
  assert latency.image_size(['a', 'b'], [free, fixed]) == (64, 96)
  with pytest.raises(ValueError, match=r'^c: takes 32x32 images, b 64x96; time them sep'):
    latency.image_size(['a', 'b', 'c'], [free, fixed, other])
  with pytest.raises(ValueError, match=r'^--size 32 32: b takes 64x96 images only$'):
    latency.image_size(['a', 'b'], [free, fixed], (32, 32))
