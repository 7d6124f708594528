"""Benchmark library behind ``benchmarks/benchmark.py``.

Measures the PyTorch reference runs' workloads (docs/performance.md) with this
project's own code: the training step of :mod:`hrseg_jax.train.step` with the
optimizer of :mod:`hrseg_jax.train.optim`, and jitted whole-image and
sliding-window inference through :func:`hrseg_jax.eval.inference.forward_exp`.

Nothing here imports Grain, clu, ml_collections or TFDS at module level (a
benchmark host may have only JAX, Flax and NumPy); only the optional input-pipeline measurement
(:mod:`benchmarks.harness.input_pipeline`) needs Grain, and it is skipped, with a
reason, where Grain is missing.  :mod:`~benchmarks.harness.cli`,
:mod:`~benchmarks.harness.models`, :mod:`~benchmarks.harness.peer`,
:mod:`~benchmarks.harness.schema` and :mod:`~benchmarks.harness.report` do not
import JAX either, so ``XLA_FLAGS`` can still be set after importing them.
"""
