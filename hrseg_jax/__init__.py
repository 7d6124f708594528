"""hrseg-jax: HRNet-family semantic segmentation in JAX/Flax."""

__version__ = '0.1.0'


def __getattr__(name):
  # Lazy, so `import hrseg_jax.data` never pulls in the model stack.
  if name in ('Segmenter', 'overlay', 'normalize'):
    from hrseg_jax import inference
    return getattr(inference, name)
  raise AttributeError(name)
