"""Tiny training configs shared by the training tests."""
from hrseg_jax import recipes

TINY_MODEL = dict(variant='custom', stage1=[1, 8, 'BOTTLENECK'],
                  stages=[[1, [1, 1], [4, 8]], [1, [1, 1, 1], [4, 8, 16]],
                          [1, [1, 1, 1, 1], [4, 8, 16, 32]]])


def tiny_config(num_steps=6, batch_size=8, num_classes=6):
  c = recipes.recipe('synthetic')
  for k, v in TINY_MODEL.items():
    c.model[k] = v
  c.model.num_classes = num_classes
  c.data.num_classes = num_classes
  c.data.num_train = 32
  c.data.num_val = 8
  c.data.image_size = (64, 128)
  c.data.crop_size = (64, 128)
  c.data.base_size = 128
  c.data.eval_size = (64, 128)
  c.data.eval_base_size = 128
  c.data.eval_crop_size = (64, 128)
  c.train.batch_size = batch_size
  c.train.num_steps = num_steps
  c.train.base_lr = 0.05
  c.train.dtype = 'float32'
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 1000
  c.train.async_checkpoints = False
  c.eval.every_steps = -1
  c.eval.batch_size = 8
  c.eval.mode = 'whole'
  return c
