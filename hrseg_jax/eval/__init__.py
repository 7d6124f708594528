"""Evaluation: confusion matrix and mIoU, test-time inference, evaluate loop.

Modules (each one concept):

* :mod:`~hrseg_jax.eval.evaluator` -- evaluators built from ``config.eval``
  (``from_config`` picks the one ``eval.protocol`` names; ``run(variables)``,
  ``report(metrics, step)``): the batched validation or the original's
  test-time protocol, in training and in ``--mode eval`` alike.
* :mod:`~hrseg_jax.eval.metrics` -- confusion matrix, IoU metrics, clu metric.
* :mod:`~hrseg_jax.eval.windows` -- multi-scale sizes and sliding-window plans.
* :mod:`~hrseg_jax.eval.inference` -- jitted flip / sliding / multi-scale
  prediction with exp-logit fusion (the original's ``inference`` and
  ``multi_scale_inference``); the ``Predictor`` that ``hrseg_jax.Segmenter``
  is built on.
* :mod:`~hrseg_jax.eval.evaluate` -- the test protocol's loop and ``metrics.json``.
* :mod:`~hrseg_jax.eval.config` -- the ``eval`` config section.
* :mod:`~hrseg_jax.eval.classes`, :mod:`~hrseg_jax.eval.palettes` -- class
  names and colour palettes per dataset.
* :mod:`~hrseg_jax.eval.multihost` -- summing integer arrays across processes.
"""
