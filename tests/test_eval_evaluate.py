"""evaluate() end to end with a tiny random HRNet on in-memory examples."""
import json
import types

import jax
import numpy as np
import pytest
from PIL import Image

from hrseg_jax.eval import config as eval_config
from hrseg_jax.eval import evaluate as evaluate_lib
from hrseg_jax.eval import multihost
from hrseg_jax.inference import Segmenter, normalize
from hrseg_jax.models import registry
from hrseg_jax.models.layers import resize_bilinear
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

K = TINY_HRNET['num_classes']


@pytest.fixture(scope='module')
def model():
  cfg = registry.resolve(TINY_HRNET)
  return cfg, tiny_hrnet_variables(cfg)


def make_examples():
  """Four 24x40 images; labels with ignore, gt >= K, other sizes, padding."""
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, (24, 40, 3), np.uint8) for _ in range(4)]
  labels = [rng.integers(0, K, (24, 40)).astype(np.uint8),
            rng.integers(0, K, (30, 50)).astype(np.uint8),   # resized
            rng.integers(0, K, (20, 32)).astype(np.uint8),   # border cropped
            rng.integers(0, K, (24, 40)).astype(np.uint8)]
  labels[0][:3] = 255
  labels[3][5:9, 10:20] = 7  # >= K: not counted
  return [
      {'image': images[0], 'label': labels[0], 'id': 'a'},
      {'image': images[1], 'label': labels[1], 'id': 'b'},
      {'image': normalize(images[2]), 'label': labels[2], 'id': 'c',
       'pad': np.array([4, 8], np.int32)},
      {'image': images[3], 'label': labels[3], 'id': 'city/d'},
  ]


def expected_prediction(seg, example, crop_padding=True):
  """The original's testval for one example, written out directly."""
  image = np.asarray(example['image'])
  x = normalize(image) if image.dtype == np.uint8 else image
  logits = seg.logits(x)[-1]
  fused = np.exp(np.asarray(resize_bilinear(logits, x.shape[:2], False)))
  pad_h, pad_w = example.get('pad', (0, 0)) if crop_padding else (0, 0)
  fused = fused[:, :fused.shape[1] - pad_h, :fused.shape[2] - pad_w]
  fused = np.asarray(resize_bilinear(fused, example['label'].shape, False))
  return fused[0].argmax(-1)


def counts(preds, labels):
  """Confusion matrix by explicit per-pixel accumulation."""
  cm = np.zeros((K, K), np.int64)
  for p, l in zip(preds, labels):
    keep = l < K  # drops 255 and 7
    np.add.at(cm, (l[keep].astype(int), p[keep].astype(int)), 1)
  return cm


def test_evaluate_writes_consistent_metrics_and_predictions(model, tmp_path):
  cfg, variables = model
  examples = make_examples()
  eval_cfg = eval_config.default_eval_config()
  eval_cfg.batch_size = 2
  eval_cfg.save_predictions = True
  lines = []
  result = evaluate_lib.evaluate(cfg, variables, {'name': 'synthetic'},
                                 eval_cfg, out_dir=str(tmp_path),
                                 log=lines.append, examples=examples)

  saved = []
  for ex in examples:
    path = tmp_path / 'predictions' / (ex['id'] + '.png')
    with Image.open(path) as im:
      assert im.mode == 'L'
      pred = np.asarray(im)
    assert pred.dtype == np.uint8 and pred.shape == ex['label'].shape
    assert pred.max() < K
    saved.append(pred)
  seg = Segmenter(cfg, variables)
  for ex, pred in zip(examples, saved):
    np.testing.assert_array_equal(pred, expected_prediction(seg, ex))

  with open(tmp_path / 'metrics.json') as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(result))
  cm = np.array(written['confusion_matrix'])
  np.testing.assert_array_equal(cm, counts(saved, [e['label'] for e in examples]))
  pos, res, tp = cm.sum(1), cm.sum(0), np.diag(cm)
  iou = tp / np.maximum(1, pos + res - tp)
  np.testing.assert_allclose(written['iou'], iou)
  assert written['miou'] == pytest.approx(iou.mean())
  assert written['pixel_acc'] == pytest.approx(tp.sum() / pos.sum())
  assert written['mean_acc'] == pytest.approx((tp / np.maximum(1, pos)).mean())
  # The synthetic scenes' own class names (hrseg_jax.eval.classes).
  assert written['class_names'] == ['road', 'sky', 'building', 'vegetation', 'sidewalk'][:K]
  assert len(written['class_names']) == K
  s = written['settings']
  assert s['num_examples'] == 4 and s['scales'] == [1.0] and s['mode'] == 'whole'
  assert s['model']['num_classes'] == K and s['dataset'] == 'synthetic'
  assert any('mIoU' in line for line in lines)
  assert not [p for p in tmp_path.rglob('*') if p.name.startswith('.tmp')]


def test_uncropped_padding_rows_and_skipped_examples(model, tmp_path):
  cfg, variables = model
  examples = make_examples()
  examples.insert(1, None)  # a bad example skipped by the pipeline
  for ex in examples[1:]:
    if ex is not None:
      ex['rows'] = np.arange(24, dtype=np.int32) * 2
  eval_cfg = eval_config.default_eval_config()
  eval_cfg.save_predictions = True
  lines = []
  result = evaluate_lib.evaluate(
      cfg, variables, {'name': 'ade20k', 'eval_crop_padding': False},
      eval_cfg, out_dir=str(tmp_path), log=lines.append, examples=examples)
  assert result['settings']['skipped_examples'] == 1
  assert result['settings']['num_examples'] == 5
  assert result['settings']['crop_padding'] is False
  assert any(line.startswith('eval: 1 bad example skipped ') for line in lines), lines
  seg = Segmenter(cfg, variables)
  with Image.open(tmp_path / 'predictions' / 'c.png') as im:
    pred = np.asarray(im)
  want = expected_prediction(seg, examples[3], crop_padding=False)
  np.testing.assert_array_equal(pred, want)
  assert (want != expected_prediction(seg, examples[3])).any()


def test_num_examples_and_process_shards_add_up(model, monkeypatch):
  cfg, variables = model
  examples = make_examples()
  eval_cfg = eval_config.default_eval_config()
  full = evaluate_lib.evaluate(cfg, variables, {}, eval_cfg, log=lambda _: None,
                               examples=examples)
  eval_cfg.num_examples = 1
  first = evaluate_lib.evaluate(cfg, variables, {}, eval_cfg,
                                log=lambda _: None, examples=examples)
  assert first['settings']['num_examples'] == 1
  assert np.sum(first['confusion_matrix']) == np.sum(examples[0]['label'] < K)

  eval_cfg.num_examples = -1
  monkeypatch.setattr(multihost, 'sum_across_processes', lambda cm: cm)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  shards = []
  for index in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda i=index: i)
    shards.append(np.array(evaluate_lib.evaluate(
        cfg, variables, {}, eval_cfg, log=lambda _: None,
        examples=examples)['confusion_matrix']))
  assert shards[0].sum() > 0 and shards[1].sum() > 0
  np.testing.assert_array_equal(shards[0] + shards[1], full['confusion_matrix'])


def test_default_source_is_the_data_pipeline(model, monkeypatch):
  cfg, variables = model
  calls = []

  def eval_examples(data_cfg, split='val'):
    calls.append((data_cfg, split))
    return make_examples()[:2]
  fake = types.ModuleType('hrseg_jax.data.pipeline')
  fake.eval_examples = eval_examples
  monkeypatch.setattr(evaluate_lib, 'pipeline', fake)
  eval_cfg = eval_config.default_eval_config()
  eval_cfg.split = 'testval'
  data_cfg = {'name': 'synthetic'}
  result = evaluate_lib.evaluate(cfg, variables, data_cfg, eval_cfg,
                                 log=lambda _: None)
  assert calls == [(data_cfg, 'testval')]
  assert result['settings']['num_examples'] == 2


def test_sum_across_processes_is_exact_beyond_int32(monkeypatch):
  from jax.experimental import multihost_utils
  x = np.array([[2**40 + 12345, 7], [0, 2**31]], np.int64)
  seen = []

  def fake_allgather(a):
    seen.append(np.asarray(a).dtype)
    return np.stack([a, a, a])  # three identical processes
  monkeypatch.setattr(multihost_utils, 'process_allgather', fake_allgather)
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  np.testing.assert_array_equal(multihost.sum_across_processes(x), 3 * x)
  assert seen == [np.int32]


def test_prediction_paths_stay_inside_out_dir():
  assert evaluate_lib.prediction_path('/o', 'x/y') == '/o/predictions/x/y.png'
  with pytest.raises(ValueError):
    evaluate_lib.prediction_path('/o', '../escape')


def test_same_shape_groups():
  exs = [{'image': np.zeros(s)} for s in
         [(2, 2, 3), (2, 2, 3), (2, 2, 3), (4, 2, 3), (2, 2, 3)]]
  sizes = [len(g) for g in evaluate_lib.same_shape_groups(exs, 2)]
  assert sizes == [2, 1, 1, 1]


@pytest.mark.parametrize('dataset,mode,rule,crop,base,pairs', [
    ('cityscapes', 'sliding', 'cityscapes', (1024, 2048), 2048, ()),
    ('lip', 'sliding', 'base', (473, 473), 473, ((14, 15), (16, 17), (18, 19))),
    ('ade20k', 'sliding', 'base', (520, 520), 520, ()),
    ('synthetic', 'whole', 'cityscapes', None, None, ()),
])
def test_default_eval_config_presets(dataset, mode, rule, crop, base, pairs):
  c = eval_config.default_eval_config(dataset)
  assert (c.mode, c.sliding_rule, c.crop_size, c.base_size) == (mode, rule, crop, base)
  assert tuple(c.flip_pairs) == pairs
  assert c.scales == (1.0,) and c.flip is False and c.num_examples == -1
  kw = eval_config.predictor_kwargs(c)
  assert kw['crop_size'] == crop and kw['batch_size'] == 1


@pytest.mark.parametrize('override,match', [
    (dict(mode='tiles'), 'mode'), (dict(sliding_rule='x', mode='sliding',
                                        crop_size=(8, 8)), 'sliding_rule'),
    (dict(mode='sliding'), 'crop_size'), (dict(scales=(0.0,)), 'scales'),
    (dict(batch_size=0), 'batch_size'), (dict(flip_pairs=((1, 2, 3),)), 'pairs'),
])
def test_bad_eval_config(override, match):
  c = eval_config.default_eval_config()
  c.update(override)
  with pytest.raises(ValueError, match=match):
    eval_config.predictor_kwargs(c)


def test_no_examples_is_an_error(model):
  cfg, variables = model
  with pytest.raises(ValueError, match='no examples'):
    evaluate_lib.evaluate(cfg, variables, {}, None, examples=[])


def test_bfloat16_compute_and_progress_lines(model):
  """eval's dtype choice reaches the network (bfloat16 allowed; settings
  record it) and progress lines carry the rate and ETA."""
  cfg, variables = model
  examples = make_examples()[:2]
  lines = []
  r32 = evaluate_lib.evaluate(cfg, variables, {}, eval_config.default_eval_config(),
                              log=lines.append, examples=examples)
  r16 = evaluate_lib.evaluate(cfg, variables, {}, eval_config.default_eval_config(),
                              log=lambda _: None, examples=examples,
                              dtype=jax.numpy.bfloat16)
  assert r32['settings']['dtype'] == 'float32' and r16['settings']['dtype'] == 'bfloat16'
  assert lines[0].startswith('eval 1/2 (50%) | ') and lines[0].endswith(' incl. start-up')
  assert lines[1].startswith('eval 2/2 (100%) | ') and 'done in' in lines[1]
