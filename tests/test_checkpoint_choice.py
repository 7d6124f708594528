"""--checkpoint best|latest|PATH, the checkpoint's dataset, predict settings
without a config, and progress lines."""
import json

import pytest

from hrseg_jax import predict, progress
from hrseg_jax.checkpoints import info as checkpoint_info


def fake_step(root, step, miou=None, dataset=None):
  """A step directory with the JSON item that select/dataset_of read."""
  meta = {'config': {'data': {'name': dataset}}} if dataset else {}
  if miou is not None:
    meta['eval'] = {'miou': miou}
  item = root / 'checkpoints' / str(step) / 'model'
  item.mkdir(parents=True)
  (item / 'metadata').write_text(json.dumps({'model': {}, 'meta': meta}))


def test_best_latest_and_paths(tmp_path):
  fake_step(tmp_path, 100, miou=0.41)
  fake_step(tmp_path, 200, miou=0.52)
  fake_step(tmp_path, 300)            # saved without an evaluation
  root = str(tmp_path / 'checkpoints')
  assert checkpoint_info.select(None, tmp_path)[:2] == (root, 200)
  assert checkpoint_info.select('best', tmp_path)[2].startswith(
      'best checkpoint (step 200, mIoU 52.00%)')
  assert checkpoint_info.select('latest', tmp_path)[:2] == (root, 300)
  assert checkpoint_info.select('some/ckpt', tmp_path) == ('some/ckpt', None,
                                                           'checkpoint some/ckpt')


def test_best_without_evaluations(tmp_path):
  fake_step(tmp_path, 5)
  fake_step(tmp_path, 10)
  assert checkpoint_info.select(None, tmp_path)[1] == 10   # falls back to latest
  with pytest.raises(FileNotFoundError, match='no checkpoint .* after an evaluation'):
    checkpoint_info.select('best', tmp_path)
  with pytest.raises(FileNotFoundError, match='checkpoint not found'):
    checkpoint_info.select('latest', tmp_path / 'nothing')


def test_dataset_of_and_check():
  assert checkpoint_info.dataset_of({'dataset': 'lip'}) == 'lip'
  assert checkpoint_info.dataset_of({'config': {'data': {'name': 'ade20k'}}}) == 'ade20k'
  assert checkpoint_info.dataset_of({}) is None
  assert checkpoint_info.check_dataset('cityscapes') == 'cityscapes'
  with pytest.raises(ValueError, match="--dataset 'kitti': unknown dataset"):
    checkpoint_info.check_dataset('kitti')


def test_dataset_class_counts_match_the_class_names():
  from hrseg_jax.eval import classes  # pylint: disable=g-import-not-at-top
  for name, k in checkpoint_info.NUM_CLASSES.items():
    assert classes.class_names(name, k) != classes.generic_names(k), name
  assert set(checkpoint_info.DATASETS) == set(checkpoint_info.NUM_CLASSES) | {'synthetic'}
  assert checkpoint_info.datasets_with(60) == ['pascal_ctx60', 'synthetic']
  assert checkpoint_info.check_dataset('synthetic', 7) == 'synthetic'


def test_convert_infers_the_dataset_from_the_class_count():
  from hrseg_jax.convert import convert  # pylint: disable=g-import-not-at-top
  assert [convert.dataset_for_num_classes(k) for k in (19, 20, 59, 60, 150, 171, 7)] == [
      'cityscapes', 'lip', 'pascal_ctx', 'pascal_ctx60', 'ade20k', 'cocostuff', None]


def test_predict_settings_keep_the_image_size():
  s = predict.predict_settings('cityscapes')
  assert (s['mode'], s['base_size'], s['scales'], s['flip']) == ('whole', None, (1.0,), False)
  assert predict.describe_settings(s) == (
      "whole image at each image's own size, scales 1, no flip")
  s = predict.predict_settings('cityscapes', sliding=True, scales=(0.5, 1.5), flip=True)
  assert (s['crop_size'], s['sliding_rule'], s['base_size']) == ((1024, 2048), 'cityscapes', None)
  assert predict.predict_settings('lip', flip=True)['flip_pairs'] == ((14, 15), (16, 17), (18, 19))
  assert predict.predict_settings(None, sliding=True, crop_size=(32, 64))['sliding_rule'] == 'base'
  with pytest.raises(ValueError, match='--crop_size'):
    predict.predict_settings(None, sliding=True)


def test_progress_lines():
  now = [0.0]
  p = progress.Progress(10, 'eval', clock=lambda: now[0])
  now[0] = 5.0
  # The first item alone pays for compilation: its rate times the 9 items
  # left (45 s here; hours for a 500-image evaluation) is no ETA.
  assert p.line(1) == 'eval 1/10 (10%) | 0.20 img/s incl. start-up'
  now[0] = 7.0   # the first item (compilation) is left out of the rate
  assert p.line(3) == 'eval 3/10 (30%) | 1.00 img/s | ETA 7s'
  now[0] = 14.0
  assert p.line(10, 'x.png') == 'eval 10/10 (100%) x.png | 1.00 img/s | done in 14s'
  # Items that compile (predict: an image of a new size) are told: their time
  # is out of the rate, and the ETA adds the mean compile time per compile left.
  now[0] = 0.0
  p = progress.Progress(6, 'predict', clock=lambda: now[0])
  now[0] = 4.0
  assert p.line(1, 'a', compiled='8x8', compiles_left=2) == (
      'predict 1/6 (17%) a | 4.0 s incl. compiling for 8x8 | ETA at most 20s')
  now[0] = 4.5
  # 2 images at 2 img/s + 2 compiles of 4 s.
  assert p.line(2, 'b', compiles_left=2) == 'predict 2/6 (33%) b | 2.00 img/s | ETA 9s'
  now[0] = 6.5
  assert p.line(3, 'c', compiled='8x9', compiles_left=1) == (
      'predict 3/6 (50%) c | 2.0 s incl. compiling for 8x9 | 2.00 img/s | ETA 4s')
  assert (p.compiles, p.compile_seconds) == (2, 6.0)
  # Every item compiled: no rate; the ETA is the compiles left.
  p = progress.Progress(3, 'predict', clock=lambda: now[0])
  now[0] = 9.5
  p.line(1, compiled='8x8', compiles_left=2)
  now[0] = 12.5
  assert p.line(2, compiled='8x9', compiles_left=1) == (
      'predict 2/3 (67%) | 3.0 s incl. compiling for 8x9 | ETA 3s')
  # 6 images in 5 sizes, the first 5 compile: no rate, and the ETA is at most
  # a compile's time for each image left (there was none).
  p = progress.Progress(6, 'predict', clock=lambda: now[0])
  now[0] = 16.0
  assert p.line(1, 'a', compiled='8x8', compiles_left=4) == (
      'predict 1/6 (17%) a | 3.5 s incl. compiling for 8x8 | ETA at most 18s')
  now[0] = 20.5
  assert p.line(2, 'b', compiled='8x9', compiles_left=3) == (
      'predict 2/6 (33%) b | 4.5 s incl. compiling for 8x9 | ETA at most 16s')
  # Rounded to the nearest (2/3 read 66%, 1/6 16%), never 100% before the end.
  assert [progress.percent(d, t) for d, t in ((2, 3), (1, 6), (1, 8), (3, 8), (8, 20),
                                              (199, 200), (200, 200), (1, 500))] == [
      67, 17, 13, 38, 40, 99, 100, 0]
  p = progress.Progress(200, 'eval', clock=lambda: now[0])
  assert p.line(199).startswith('eval 199/200 (99%) | ')
  # A size read from the persistent compilation cache is not called compiling.
  p = progress.Progress(3, 'predict', clock=lambda: now[0])
  now[0] += 0.5
  assert p.line(1, 'a', compiled='8x8', compiles_left=0, from_cache=True) == (
      'predict 1/3 (33%) a | 0.5 s incl. reading the compiled model for 8x8 from the '
      'cache')   # no size left to compile: no bound (the next line has a rate)
  assert (p.compiles, p.cached) == (1, 1)
  assert progress.format_duration(3 * 3600 + 7 * 60) == '3h07m'
  assert progress.format_duration(185) == '3m05s'


def test_convert_records_the_dataset(tmp_path):
  """19 classes -> cityscapes; --dataset overrides; an unknown name is an
  error before anything is written."""
  from hrseg_jax import Segmenter, checkpoints  # pylint: disable=g-import-not-at-top
  from hrseg_jax.convert import convert, mapping, pth_write  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  from test_eval_inference import TINY_HRNET, tiny_hrnet_variables  # pylint: disable=g-import-not-at-top
  cfg = registry.resolve(dict(TINY_HRNET, num_classes=19))
  pth_write.save_pth(mapping.variables_to_torch(tiny_hrnet_variables(cfg)), tmp_path / 'm.pth')
  quiet = lambda *_: None  # pylint: disable=unnecessary-lambda-assignment
  assert convert.convert(tmp_path / 'm.pth', tmp_path / 'a', log=quiet)['dataset'] == 'cityscapes'
  convert.convert(tmp_path / 'm.pth', tmp_path / 'b', dataset='synthetic', log=quiet)
  assert checkpoints.load_model_config(tmp_path / 'b')[1]['dataset'] == 'synthetic'
  with pytest.raises(ValueError, match="--dataset 'kitti'"):
    convert.convert(tmp_path / 'm.pth', tmp_path / 'c', dataset='kitti', log=quiet)
  assert not (tmp_path / 'c').exists()
  # LIP has 20 classes, not 19: its names and colours would be wrong.
  with pytest.raises(ValueError, match=r'--dataset lip has 20 classes, the model has 19 '
                     r'\(datasets that fit: cityscapes, synthetic\)'):
    Segmenter.from_checkpoint(tmp_path / 'a', dataset='lip')
  with pytest.raises(ValueError, match='--dataset lip has 20 classes, the model has 19'):
    convert.convert(tmp_path / 'm.pth', tmp_path / 'd', dataset='lip', log=quiet)
  assert not (tmp_path / 'd').exists()
  assert Segmenter.from_checkpoint(tmp_path / 'a', dataset='synthetic').dataset == 'synthetic'


def test_step_spec_parsing():
  from hrseg_jax import export as export_cli  # pylint: disable=g-import-not-at-top
  assert [export_cli.parse_step(t) for t in ('best', 'latest', '40')] == [
      'best', 'latest', 40]
  with pytest.raises(Exception, match="'last': expected a step number, best or latest"):
    export_cli.parse_step('last')
  assert checkpoint_info.pick_step('anywhere', None) is None
  assert checkpoint_info.pick_step('anywhere', 'latest') is None
  assert checkpoint_info.pick_step('anywhere', 7) == 7


def test_export_step_best_latest_and_number(tmp_path, monkeypatch, capsys):
  """``python -m hrseg_jax.export WORKDIR OUT --step best|latest|N`` from the
  workdir's folder, relative paths: the step named, and its weights."""
  import shutil  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from hrseg_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from hrseg_jax import export as export_cli  # pylint: disable=g-import-not-at-top
  from hrseg_jax.convert import pth  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  from test_eval_inference import TINY_HRNET, tiny_hrnet_variables
  monkeypatch.chdir(tmp_path)
  cfg = registry.resolve(TINY_HRNET)
  variables = tiny_hrnet_variables(cfg)
  # Three kept steps of one run: 10 (mIoU 50%), 20 (30%), 30 (no evaluation),
  # each with its own weights (the head's bias holds the step number).
  root = tmp_path / 'run' / 'checkpoints'
  for step, miou in ((10, 0.5), (20, 0.3), (30, None)):
    marked = dict(variables, params=dict(variables['params']))
    head = dict(marked['params']['last_layer_3'])
    head['bias'] = np.full_like(head['bias'], step)
    marked['params']['last_layer_3'] = head
    meta = {'eval': {'miou': miou}} if miou is not None else {}
    saved = checkpoints.save_model(tmp_path / f'tmp{step}', marked, cfg, meta, step=step)
    root.mkdir(parents=True, exist_ok=True)
    shutil.move(str(saved / str(step)), str(root / str(step)))

  def exported(argv):
    assert export_cli.main(argv) == 0, capsys.readouterr().err
    line = capsys.readouterr().out.strip()
    state = pth.state_dict_from_checkpoint(pth.load_pth(argv[1]))
    bias = [v for k, v in state.items() if k.endswith('last_layer.3.bias')][0]
    return int(np.asarray(bias)[0]), line

  assert exported(['run', 'best.pth', '--step', 'best'])[0] == 10
  assert exported(['run', 'latest.pth', '--step', 'latest'])[0] == 30
  assert exported(['run', 'default.pth'])[0] == 30
  bias, line = exported(['run', 'n.pth', '--step', '20'])
  assert bias == 20 and line.startswith('wrote n.pth: ') and line.endswith(
      'PyTorch state dict of step 20 of run')
  # best where no step followed an evaluation: one line, exit 2, no file.
  checkpoints.save_model(tmp_path / 'converted', variables, cfg)
  code = export_cli.main(['converted', 'x.pth', '--step', 'best'])
  err = capsys.readouterr().err
  assert code == 2 and err.count('\n') == 1 and err.startswith('error: --step best: '), err
  assert not (tmp_path / 'x.pth').exists()
  # A step that is not kept: one line naming the ones that are.
  assert export_cli.main(['run', 'x.pth', '--step', '15']) == 2
  err = capsys.readouterr().err
  assert err == 'error: run/checkpoints: no checkpoint step 15 (steps kept: 10, 20, 30)\n', err
  assert err.count('\n') == 1 and not (tmp_path / 'x.pth').exists()
