"""Benchmark library behind ``scripts/benchmark.py``.

Measures the PyTorch peer's workloads (``shared/peer/README.md``) with this
project's own code: the training step of :mod:`hrseg_jax.train.step` with the
optimizer of :mod:`hrseg_jax.train.optim`, and jitted whole-image and
sliding-window inference through :func:`hrseg_jax.eval.inference.forward_exp`.

Nothing here imports Grain, clu, ml_collections or TFDS at module level (the
GPU machine lacks them); only the optional input-pipeline measurement
(:mod:`hrseg_jax.bench.input_pipeline`) needs Grain, and it is skipped, with a
reason, where Grain is missing.  :mod:`~hrseg_jax.bench.cli`,
:mod:`~hrseg_jax.bench.models`, :mod:`~hrseg_jax.bench.peer`,
:mod:`~hrseg_jax.bench.schema` and :mod:`~hrseg_jax.bench.report` do not
import JAX either, so ``XLA_FLAGS`` can still be set after importing them.
"""
