"""Tiny training configs shared by the training tests."""
from hrseg_jax import recipes

TINY_MODEL = dict(variant='custom', stage1=[1, 8, 'BOTTLENECK'],
                  stages=[[1, [1, 1], [4, 8]], [1, [1, 1, 1], [4, 8, 16]],
                          [1, [1, 1, 1, 1], [4, 8, 16, 32]]])


def tiny_config(num_steps=6, batch_size=8, num_classes=6):
  c = recipes.synthetic_recipe(
      model=dict(TINY_MODEL, num_classes=num_classes), image_size=(64, 128),
      num_train=32, num_val=8, batch_size=batch_size, num_steps=num_steps,
      log_every_steps=1, checkpoint_every_steps=1000, eval_every_steps=-1)
  c.data.num_classes = num_classes
  c.train.async_checkpoints = False
  return c
