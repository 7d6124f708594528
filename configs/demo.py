"""Demo: a small HRNet trained and evaluated on the built-in synthetic
street scenes, sized for a 2-core CPU (a few minutes). No dataset needed.

  python -m hrseg_jax.main --config configs/demo.py --workdir runs/demo
"""
from hrseg_jax import recipes


def get_config():
  c = recipes.recipe('synthetic')
  # A narrow HRNetV2 (same topology as W18-Small-v1 at half width).
  c.model.variant = 'custom'
  c.model.stage1 = [1, 16, 'BOTTLENECK']
  c.model.stages = [[1, [1, 1], [8, 16]], [1, [1, 1, 1], [8, 16, 32]],
                    [1, [1, 1, 1, 1], [8, 16, 32, 64]]]
  c.model.num_classes = c.data.num_classes
  c.data.num_train = 256
  c.data.num_val = 32
  c.data.image_size = (128, 256)
  c.data.crop_size = (128, 256)
  c.data.base_size = 256
  c.data.eval_size = (128, 256)
  c.data.eval_base_size = 256
  c.data.eval_crop_size = (128, 256)
  c.train.batch_size = 8
  c.train.num_steps = 300
  c.train.base_lr = 0.05
  c.train.dtype = 'float32'
  c.train.log_every_steps = 25
  c.train.checkpoint_every_steps = 100
  c.eval.every_steps = 150
  c.eval.batch_size = 8
  c.eval.mode = 'whole'
  c.eval.crop_size = (128, 256)
  c.eval.base_size = 256
  return c
