"""The training state: a pytree of arrays, nothing else, and its initialisation
on the device mesh."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from hrseg_jax.train import sharding


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray            # int32 scalar: optimizer steps taken
  params: Any                  # float32 parameters
  model_state: Any             # every non-param collection (batch_stats, constants)
  opt_state: Any
  rng: jnp.ndarray             # base key; step keys are fold_in(rng, step)
  skipped: jnp.ndarray         # int32: steps skipped for non-finite values

  @classmethod
  def create(cls, variables, tx, rng) -> 'TrainState':
    """Step 0: ``variables`` split into parameters and model state, a fresh
    optimizer state from ``tx``."""
    params = variables['params']
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               model_state={k: v for k, v in variables.items() if k != 'params'},
               opt_state=tx.init(params), rng=rng, skipped=jnp.zeros((), jnp.int32))

  @property
  def variables(self):
    return {'params': self.params, **self.model_state}


def init_state(model, tx, rng, image_shape, mesh,
               on_shapes=None) -> tuple[TrainState, Any]:
  """Initialises the state directly with its shardings (no host copy).

  ``on_shapes``: called with the state's shapes (a tree of
  ``jax.ShapeDtypeStruct``) before its initialisation compiles.
  """
  init_rng, state_rng = jax.random.split(rng)

  def make():
    variables = model.init({'params': init_rng, 'dropout': init_rng},
                           jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return TrainState.create(variables, tx, state_rng)

  abstract = jax.eval_shape(make)
  if on_shapes is not None:
    on_shapes(abstract)
  shardings = sharding.state_shardings(abstract, mesh)
  return jax.jit(make, out_shardings=shardings)(), shardings
