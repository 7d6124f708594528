"""predict(): inputs, written files (dtypes, values, palettes), bad input."""
import os
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from hrseg_jax import predict as predict_lib
from hrseg_jax.data.label_maps import CITYSCAPES_LABEL_TO_TRAIN
from hrseg_jax.eval import palettes
from hrseg_jax.inference import Segmenter, normalize
from hrseg_jax.models import registry
from hrseg_jax.models.layers import resize_bilinear
from test_eval_inference import TINY_HRNET, tiny_hrnet_variables

CITYSCAPES_HRNET = dict(TINY_HRNET, num_classes=19)


@pytest.fixture(scope='module')
def model():
  cfg = registry.resolve(CITYSCAPES_HRNET)
  return cfg, tiny_hrnet_variables(cfg, seed=1)


def write_image(path, seed, size=(24, 40)):
  rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  cv2.imwrite(str(path), rgb[..., ::-1])
  return path


def decoded(path):
  return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def expected_classes(seg, rgb):
  logits = seg.logits(normalize(rgb))[-1]
  return np.asarray(resize_bilinear(logits, rgb.shape[:2], False))[0].argmax(-1)


def read_png(path):
  with Image.open(path) as im:
    return im.mode, np.asarray(im), im.getpalette()


def test_folder_and_file_inputs_write_all_outputs(model, tmp_path):
  cfg, variables = model
  images = tmp_path / 'images'
  write_image(images / 'a.png', 0)
  write_image(images / 'sub' / 'b.jpg', 1)
  (images / 'notes.txt').write_text('not an image')
  single = write_image(tmp_path / 'other' / 'c.png', 2)
  out = tmp_path / 'out'
  results = predict_lib.predict(cfg, variables, [str(images), str(single)],
                                str(out), cityscapes_test_format=True)
  assert [r['input'] for r in results] == [
      str(images / 'a.png'), str(images / 'sub' / 'b.jpg'), str(single)]

  seg = Segmenter(cfg, variables)
  train_to_label = {t: l for l, t in CITYSCAPES_LABEL_TO_TRAIN.items()}
  for src, rel in [(images / 'a.png', 'a'), (images / 'sub' / 'b.jpg', 'sub/b'),
                   (single, 'c')]:
    rgb = decoded(src)
    mode, labels, _ = read_png(out / 'labels' / (rel + '.png'))
    assert mode == 'L' and labels.dtype == np.uint8 and labels.shape == rgb.shape[:2]
    np.testing.assert_array_equal(labels, expected_classes(seg, rgb))
    assert len(np.unique(labels)) > 1

    mode, color, _ = read_png(out / 'color' / (rel + '.png'))
    assert mode == 'RGB'
    np.testing.assert_array_equal(color, np.array(palettes.CITYSCAPES_COLORS)[labels])

    mode, over, _ = read_png(out / 'overlay' / (rel + '.png'))
    assert mode == 'RGB'
    blend = np.rint(0.5 * rgb.astype(np.float32) + 0.5 * color.astype(np.float32))
    np.testing.assert_array_equal(over, blend.astype(np.uint8))

    mode, label_ids, pal = read_png(out / 'test_results' / (os.path.basename(rel) + '.png'))
    assert mode == 'P'
    np.testing.assert_array_equal(
        label_ids, np.vectorize(train_to_label.get)(labels))
    assert pal[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]  # VOC
  assert not [p for p in out.rglob('*') if p.name.startswith('.tmp')]


def test_list_file_and_no_overlay(model, tmp_path):
  cfg, variables = model
  write_image(tmp_path / 'data' / 'x' / 'a.png', 3)
  write_image(tmp_path / 'data' / 'y' / 'a.png', 4)
  lst = tmp_path / 'data' / 'test.lst'
  lst.write_text('x/a.png\tgt/ignored.png\n\ny/a.png\n')
  out = tmp_path / 'out'
  predict_lib.predict(cfg, variables, str(lst), str(out), overlay=False,
                      palette='lip')
  assert (out / 'labels' / 'x' / 'a.png').is_file()
  assert (out / 'labels' / 'y' / 'a.png').is_file()
  assert not (out / 'overlay').exists() and not (out / 'test_results').exists()
  _, labels, _ = read_png(out / 'labels' / 'x' / 'a.png')
  _, color, _ = read_png(out / 'color' / 'x' / 'a.png')
  np.testing.assert_array_equal(color, palettes.get_palette('lip')[labels])
  # Same basename twice cannot go to the flat test_results folder.
  with pytest.raises(ValueError, match='test_results'):
    predict_lib.predict(cfg, variables, str(lst), str(tmp_path / 'o2'),
                        cityscapes_test_format=True)
  assert not (tmp_path / 'o2').exists()


def test_missing_inputs_fail_before_writing(model, tmp_path):
  cfg, variables = model
  good = write_image(tmp_path / 'good.png', 5)
  missing = tmp_path / 'nope.png'
  with pytest.raises(FileNotFoundError, match='nope.png'):
    predict_lib.predict(cfg, variables, [str(good), str(missing)],
                        str(tmp_path / 'out'))
  lst = tmp_path / 'list.txt'
  lst.write_text('good.png\nmissing.jpg\n')
  with pytest.raises(FileNotFoundError, match='missing.jpg'):
    predict_lib.predict(cfg, variables, str(lst), str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='no .* images'):
    os.makedirs(tmp_path / 'empty')
    predict_lib.predict(cfg, variables, str(tmp_path / 'empty'),
                        str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_corrupt_image_names_the_file_and_leaves_no_outputs(model, tmp_path):
  cfg, variables = model
  good = write_image(tmp_path / 'in' / 'good.png', 6)
  bad = tmp_path / 'in' / 'zbad.png'
  bad.write_bytes(good.read_bytes()[:200])  # truncated PNG
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match='zbad.png: cannot decode image'):
    predict_lib.predict(cfg, variables, str(tmp_path / 'in'), str(out))
  # Every image decodes before the first is predicted: good.png was written
  # before zbad.png stopped the run.
  assert not out.exists()


def test_bad_settings(model, tmp_path):
  cfg, variables = model
  img = write_image(tmp_path / 'a.png', 7)
  with pytest.raises(ValueError, match='19-class'):
    predict_lib.predict(dict(cfg, num_classes=5), variables, str(img),
                        str(tmp_path / 'out'), cityscapes_test_format=True)
  twins = [write_image(tmp_path / d / 'same.png', 8) for d in ('p', 'q')]
  with pytest.raises(ValueError, match=re.escape(
      f'{twins[0]} and {twins[1]} map to the same output name')):
    predict_lib.resolve_inputs([str(t) for t in twins])
  # The same file twice (given, and again in its folder) is named once.
  with pytest.raises(ValueError, match=re.escape(f'{twins[0]}: given twice')):
    predict_lib.resolve_inputs([str(twins[0]), str(tmp_path / 'p')])
  # A video among images: not "not an image".
  (tmp_path / 'clip.mp4').write_bytes(b'not decoded')
  with pytest.raises(ValueError, match='clip.mp4: a video is predicted on its own'):
    predict_lib.resolve_inputs([str(img), str(tmp_path / 'clip.mp4')])


def test_segmenter_names_the_shape_it_was_given(model):
  """An RGBA (H, W, 4) array was reported as 'got shape (1, H, W, 4)'."""
  seg = Segmenter(*model)
  for shape in ((8, 12, 4), (8, 12), (2, 8, 12, 1)):
    with pytest.raises(ValueError, match=re.escape(f'(B, H, W, 3) or (H, W, 3), got shape '
                                                   f'{shape}')):
      seg.predict(np.zeros(shape, np.uint8))
