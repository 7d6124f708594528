"""Input pipelines for HRNet segmentation datasets (Grain, NumPy, OpenCV).

Importing this package is light: it imports neither JAX, Grain nor
TensorFlow.  The modules:

* :mod:`~hrseg_jax.data.config` -- ``default_data_config(name)``, the fields.
* :mod:`~hrseg_jax.data.pipeline` -- ``make_train_iterator``,
  ``make_eval_iterator``, ``eval_batch_ids``, ``eval_examples``,
  ``num_train_examples`` (imports Grain, which imports JAX).
* :mod:`~hrseg_jax.data.transforms` -- ``normalize`` and the
  resize/pad/crop/flip primitives; :mod:`~hrseg_jax.data.imagenet_stats` --
  ``MEAN``, ``STD``.
* :mod:`~hrseg_jax.data.sources`, :mod:`~hrseg_jax.data.tfds_source`,
  :mod:`~hrseg_jax.data.synthetic` -- random-access sources.
* :mod:`~hrseg_jax.data.label_maps`, :mod:`~hrseg_jax.data.lists`,
  :mod:`~hrseg_jax.data.errors` -- label maps, list files, DataError.
* :mod:`~hrseg_jax.data.augment`, :mod:`~hrseg_jax.data.decode`,
  :mod:`~hrseg_jax.data.workers` -- per-example transforms of the recipes,
  image/label decoding, Grain worker start-up.
* :mod:`~hrseg_jax.data.pascal_ctx`, :mod:`~hrseg_jax.data.cocostuff10k`
  (with :mod:`~hrseg_jax.data.rle`), :mod:`~hrseg_jax.data.tfds_builder` --
  dataset preparation for ``scripts/prepare_*.py``.
"""

_LAZY = {
    'default_data_config': 'hrseg_jax.data.config',
    'make_train_iterator': 'hrseg_jax.data.pipeline',
    'make_eval_iterator': 'hrseg_jax.data.pipeline',
    'eval_batch_ids': 'hrseg_jax.data.pipeline',
    'eval_examples': 'hrseg_jax.data.pipeline',
    'num_train_examples': 'hrseg_jax.data.pipeline',
    'DataError': 'hrseg_jax.data.errors',
}


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
