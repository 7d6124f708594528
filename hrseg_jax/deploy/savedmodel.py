"""TensorFlow SavedModel exports through ``orbax-export`` (for TF Serving).

Signatures (every one has a free batch dimension):

* ``serving_default``: ``images`` NHWC at the exported size (uint8 RGB, or
  normalised float32 without ``--with-pre-post``/``--input-dtype uint8``) ->
  ``output`` (class maps int32 [B, H, W], or logits at 1/4 resolution).
* ``predict_bytes`` (with ``--with-pre-post`` only): ``images`` a string
  vector of encoded PNG/JPEG/BMP/GIF images -> ``output`` (class maps
  int32 [B, H, W]), named as ``serving_default``'s and the card's output.
  Images of another size are bilinearly resized to the exported size first.
  TensorFlow's decoder leaves a JPEG's EXIF orientation unapplied (OpenCV,
  which ``--mode predict`` decodes with, rotates such photos upright).

The weights are TF variables of the SavedModel; the network itself is the
StableHLO of the JAX function, embedded by jax2tf (native serialization).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import numpy as np

from hrseg_jax.deploy.errors import require

BYTES_SIGNATURE = 'predict_bytes'


def write(path: str, fn: Callable[[Mapping, Any], Any], variables: Mapping,
          image_shape, dtype, *, with_bytes: bool) -> None:
  """Writes the SavedModel directory ``path`` (which must not exist)."""
  oex = require('orbax.export', 'SavedModel export')
  tf = require('tensorflow', 'SavedModel export')
  h, w, c = image_shape
  tf_dtype = tf.uint8 if np.dtype(dtype) == np.uint8 else tf.float32
  module = oex.JaxModule(variables, fn, trainable=False,
                         input_polymorphic_shape=f'b, {h}, {w}, {c}')
  static = [d if isinstance(d, int) else None for d in image_shape]
  configs = [oex.ServingConfig(
      'serving_default',
      input_signature=[tf.TensorSpec([None, *static], tf_dtype, name='images')],
      tf_postprocessor=lambda out: {'output': out})]
  if with_bytes and static[0] is None:
    raise ValueError('the encoded-bytes signature needs a fixed --size H W')
  if with_bytes:
    def decode(images):
      def one(data):
        img = tf.io.decode_image(data, channels=3, expand_animations=False)
        img = tf.image.resize(tf.cast(img, tf.float32), (h, w), method='bilinear')
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
      return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([h, w, c], tf.uint8))
    configs.append(oex.ServingConfig(
        BYTES_SIGNATURE,
        input_signature=[tf.TensorSpec([None], tf.string, name='images')],
        tf_preprocessor=decode,
        tf_postprocessor=lambda out: {'output': out}))
  manager = oex.ExportManager(module, configs)
  manager.save(os.fspath(path))
