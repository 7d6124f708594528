"""The seed fork's HRNet-W32 + HANet (seg_hrnet_hanet.py): one HANet whose
attention comes from the stage-2 input of branch 0 and modulates the stage-4
output of branch 0; Cityscapes, the fork's seg_hrnet_w32.yaml recipe.

The fork passes no positions (``hanet.positions='none'``, needed for its
checkpoints).  For new training, ``--config.model.hanet.positions=rows``
feeds the true image row of every feature row (see hrseg_jax/models/hanet.py).
"""
from hrseg_jax import recipes


def get_config():
  return recipes.recipe('cityscapes', 'w32', hanet=True)
