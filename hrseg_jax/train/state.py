"""The training state: a pytree of arrays, nothing else."""
from __future__ import annotations

from typing import Any

import flax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray            # int32 scalar: optimizer steps taken
  params: Any                  # float32 parameters
  model_state: Any             # every non-param collection (batch_stats, constants)
  opt_state: Any
  rng: jnp.ndarray             # base key; step keys are fold_in(rng, step)
  skipped: jnp.ndarray         # int32: steps skipped for non-finite values

  @property
  def variables(self):
    return {'params': self.params, **self.model_state}
