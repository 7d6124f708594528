"""Demo: a small HRNet trained and evaluated on the built-in synthetic
street scenes, sized for a 2-core CPU (a few minutes). No dataset needed.

  python -m hrseg_jax.main --config configs/demo.py --workdir runs/demo

A shorter run (fields as --config.SECTION.FIELD; the names below are the
recipe's arguments, not field paths):

  python -m hrseg_jax.main --config configs/demo.py --workdir runs/quick \
      --config.train.num_steps=40 --config.eval.every_steps=20 \
      --config.train.checkpoint_every_steps=20 --config.train.log_every_steps=10
"""
from hrseg_jax import recipes

# A narrow HRNetV2 (same topology as W18-Small-v1 at half width).
DEMO_MODEL = dict(variant='custom', stage1=[1, 16, 'BOTTLENECK'],
                  stages=[[1, [1, 1], [8, 16]], [1, [1, 1, 1], [8, 16, 32]],
                          [1, [1, 1, 1, 1], [8, 16, 32, 64]]])


def get_config():
  return recipes.synthetic_recipe(
      model=DEMO_MODEL, image_size=(128, 256), num_steps=300,
      log_every_steps=25, checkpoint_every_steps=100, eval_every_steps=150)
