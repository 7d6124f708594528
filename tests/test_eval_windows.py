"""Multi-scale sizes and the two sliding-window rules of the original."""
import numpy as np
import pytest

from hrseg_jax.eval import windows


@pytest.mark.parametrize('size,base,scale,expected', [
    ((1024, 2048), 2048, 1.0, (1024, 2048)),
    ((1024, 2048), 2048, 0.75, (768, 1536)),
    ((1024, 2048), 2048, 1.25, (1280, 2560)),
    ((1024, 2048), 2048, 1.75, (1792, 3584)),
    ((520, 693), 520, 1.0, (390, 520)),      # short side 520 -> long 520
    ((693, 520), 520, 0.75, (390, 293)),     # int(520*0.75+0.5) = 390
    ((473, 473), 473, 1.5, (710, 710)),      # h == w: width branch
])
def test_scaled_size(size, base, scale, expected):
  assert windows.scaled_size(*size, base, scale) == expected


@pytest.mark.parametrize('scale,offsets', [
    (1.25, ((0, 0), (0, 512), (256, 0), (256, 512))),
    (1.5, ((0, 0), (0, 1024), (512, 0), (512, 1024))),
    (1.75, ((0, 0), (0, 1536), (768, 0), (768, 1536))),
])
def test_cityscapes_rule_shifts_windows_back(scale, offsets):
  plan = windows.plan_scale((1024, 2048), scale, mode='sliding',
                            rule='cityscapes', crop_size=(1024, 2048),
                            base_size=2048)
  assert plan.window == (1024, 2048)
  assert plan.canvas == plan.scaled  # no padding
  assert plan.offsets == offsets
  count = windows.window_counts(plan)
  assert count.min() == 1 and count.max() == 4


@pytest.mark.parametrize('scale', [0.5, 0.75, 1.0])
def test_cityscapes_rule_is_whole_image_up_to_scale_one(scale):
  plan = windows.plan_scale((1024, 2048), scale, mode='sliding',
                            rule='cityscapes', crop_size=(1024, 2048),
                            base_size=2048)
  assert plan.is_single and plan.window == plan.scaled


def test_cityscapes_rule_small_dimension_keeps_image_size():
  plan = windows.cityscapes_windows((500, 3000), (1024, 2048))
  assert plan.window == (500, 2048)
  assert plan.offsets == ((0, 0), (0, 952))


def test_base_rule_pads_and_strides_two_thirds():
  # 520x780 image at scale 2 of base 520: 693x1040, crop 520, stride 346.
  plan = windows.plan_scale((520, 780), 2.0, mode='sliding', rule='base',
                            crop_size=(520, 520), base_size=520)
  assert plan.scaled == (693, 1040)
  assert plan.window == (520, 520)
  assert plan.offsets == tuple((y, x) for y in (0, 346) for x in (0, 346, 692))
  # The last column window (692..1212) runs past the image and is padded.
  assert plan.canvas == (866, 1212)
  count = windows.window_counts(plan)[:693, :1040]
  assert count[0, 0] == 1 and count[400, 400] == 4 and count[0, 700] == 2
  assert count[0, 1000] == 1


def test_base_rule_small_image_is_one_padded_window():
  plan = windows.plan_scale((520, 693), 1.0, mode='sliding', rule='base',
                            crop_size=(520, 520), base_size=520)
  assert plan.scaled == (390, 520)
  assert plan.canvas == (520, 520) and plan.offsets == ((0, 0),)
  assert plan.is_single


def test_base_rule_lip_stride():
  plan = windows.base_windows((710, 710), (473, 473))
  assert sorted({y for y, _ in plan.offsets}) == [0, 315]


def test_base_rule_pads_thin_image_to_crop():
  # Wider than the crop but shorter: padded to crop height, tiled in width.
  plan = windows.base_windows((300, 800), (520, 520))
  assert plan.offsets == ((0, 0), (0, 346))
  assert plan.canvas == (520, 866)


def test_whole_mode_and_default_base_size():
  plan = windows.plan_scale((40, 60), 1.0, mode='whole', rule='base',
                            crop_size=None, base_size=None)
  assert plan.is_single and plan.scaled == (40, 60)
  assert windows.plan_scale((40, 60), 0.5, mode='whole', rule='base',
                            crop_size=None, base_size=None).scaled == (20, 30)


def test_bad_settings():
  with pytest.raises(ValueError, match='mode'):
    windows.plan_scale((8, 8), 1.0, mode='tiles', rule='base',
                       crop_size=(4, 4), base_size=8)
  with pytest.raises(ValueError, match='sliding_rule'):
    windows.plan_scale((8, 8), 1.0, mode='sliding', rule='diagonal',
                       crop_size=(4, 4), base_size=8)
  with pytest.raises(ValueError, match='crop_size'):
    windows.plan_scale((8, 8), 1.0, mode='sliding', rule='base',
                       crop_size=None, base_size=8)


def test_window_counts_cover_canvas():
  plan = windows.base_windows((100, 130), (64, 64))
  count = windows.window_counts(plan)
  assert count.shape == plan.canvas and count.min() >= 1
  assert count.sum() == len(plan.offsets) * 64 * 64
  assert np.all(count[:100, :130] >= 1)
