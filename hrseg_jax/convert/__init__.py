"""PyTorch ``.pth`` checkpoints: read and written without PyTorch, converted to
and from Orbax (``python -m hrseg_jax.convert``)."""
