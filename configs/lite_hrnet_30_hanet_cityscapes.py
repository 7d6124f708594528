"""The seed fork's Lite-HRNet-30 + 4 shared HANets (seg_lite_hrnet_w32.yaml,
tools/lite_train.py), with its 19-class head (BN + ReLU on the logits), for
checkpoint parity and reproduction.  For new training prefer
``--config.model.head=clean``.
"""
from hrseg_jax import recipes


def get_config():
  return recipes.lite_recipe('30', head='fork', hanet=True, fork=True)
