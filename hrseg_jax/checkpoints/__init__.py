"""Checkpoints: what every command that loads or saves a model goes through.

* :mod:`~hrseg_jax.checkpoints.model`: self-describing model checkpoints
  (variables + model config + meta) written by ``convert`` and by training,
  read by eval, predict, export and ``train.init_from``
  (:func:`load_model`, :func:`save_model`, :func:`find_checkpoint`).
* :mod:`~hrseg_jax.checkpoints.training`: the training checkpoints of a run
  (:class:`~hrseg_jax.checkpoints.training.Checkpointer`: asynchronous
  Orbax saves, keep-N and best mIoU, the input state, crash safety).
* :mod:`~hrseg_jax.checkpoints.info`: what a checkpoint says about itself
  (its dataset, its best and latest step: ``--checkpoint best|latest``).
* :mod:`~hrseg_jax.checkpoints.manifest`: the integrity manifest (sizes and
  SHA-256 digests) of every step, checked before anything is restored.

Orbax's own log records are filtered in one place,
:func:`hrseg_jax.console.quiet_orbax`, which the modules here call.
"""
from hrseg_jax.checkpoints.model import (MODEL, VARIABLES, find_checkpoint,
                                         load_model, load_model_config, model_steps,
                                         resolve_step, save_model)

__all__ = ['MODEL', 'VARIABLES', 'find_checkpoint', 'load_model',
           'load_model_config', 'model_steps', 'resolve_step', 'save_model']
