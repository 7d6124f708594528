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
  c = recipes.synthetic_recipe(
      'w18_small_v2', hanet=arg != 'off', image_size=(128, 256),
      crop_size=(96, 192),  # random rescale 0.5-2.1 + crop: rows vary
      num_steps=200, log_every_steps=50, checkpoint_every_steps=200,
      eval_every_steps=200)
  if arg != 'off':
    c.model.hanet.positions = arg
    c.model.hanet.frame_height = 128
  c.data.with_rows = arg == 'rows'
  return c
