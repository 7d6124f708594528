"""HRNetV2-W18-Small-v2 with and without HANet on the synthetic scenes (which
have a height structure: sky at the top, road at the bottom).

  --config configs/synthetic_hanet_ablation.py:off    no HANet
  --config configs/synthetic_hanet_ablation.py:rows   HANet fed true image rows
  --config configs/synthetic_hanet_ablation.py:none   HANet without positions
                                                      (the seed fork's mode)
"""
from hrseg_jax import recipes


def get_config(arg='rows'):
  if arg not in ('off', 'rows', 'none'):
    raise ValueError(f'synthetic_hanet_ablation: unknown variant {arg!r} (off, rows, none)')
  c = recipes.recipe('synthetic', 'w18_small_v2', hanet=arg != 'off')
  c.model.num_classes = c.data.num_classes
  if arg != 'off':
    c.model.hanet.positions = arg
    c.model.hanet.frame_height = 128
  c.data.with_rows = arg == 'rows'
  c.data.num_train = 256
  c.data.num_val = 32
  c.data.image_size = (128, 256)
  c.data.crop_size = (96, 192)  # random rescale 0.5-2.1 + crop: rows vary
  c.data.base_size = 256
  c.data.eval_size = (128, 256)
  c.data.eval_base_size = 256
  c.data.eval_crop_size = (128, 256)
  c.train.batch_size = 8
  c.train.num_steps = 200
  c.train.base_lr = 0.05
  c.train.dtype = 'float32'
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 200
  c.eval.every_steps = 200
  c.eval.batch_size = 8
  c.eval.mode = 'whole'
  c.eval.crop_size = (128, 256)
  c.eval.base_size = 256
  return c
