"""Training: the loop (:mod:`~hrseg_jax.train.loop`), its state, step,
optimizer, losses, shardings and hooks, its config checks, stop signal,
workdir and resume notes."""
