"""keep_best survives a restart: the evaluation mIoU is stored with the
checkpoint, so a resumed run still keeps (and `--checkpoint best` finds) the
best step."""
import jax
import jax.numpy as jnp

from hrseg_jax.checkpoints import info as checkpoint_info
from hrseg_jax.checkpoints.training import Checkpointer
from hrseg_jax.train.state import TrainState


def state(step):
  return TrainState(step=jnp.asarray(step, jnp.int32), params={'w': jnp.ones(3) * step},
                    model_state={}, opt_state={'m': jnp.zeros(3)},
                    rng=jax.random.PRNGKey(0), skipped=jnp.zeros((), jnp.int32))


def save(directory, steps):
  ckpt = Checkpointer(directory / 'checkpoints', max_to_keep=1, keep_best=True,
                      async_save=False)
  for step, miou in steps:
    ckpt.save(state(step), None, {'arch': 'x'}, force=True,
              metrics=None if miou is None else {'miou': miou},
              meta={} if miou is None else {'eval': {'miou': miou}})
  ckpt.close()


def test_best_checkpoint_is_kept_across_restarts(tmp_path):
  save(tmp_path, [(1, 0.5), (2, 0.9), (3, 0.1), (4, None)])
  save(tmp_path, [(5, 0.2), (6, None)])     # a resumed run
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert steps == [2, 6]
  assert checkpoint_info.select(None, tmp_path)[1] == 2
  assert checkpoint_info.select('latest', tmp_path)[1] == 6
