"""TensorBoard event files without TensorFlow.

``clu.metric_writers`` imports its TensorFlow summary writer (and with it
TensorFlow, about 1.3 GB, x86_64 only) as soon as it is imported.
:func:`clu_metric_writers` imports it with that writer replaced by
:class:`TensorBoardXWriter`, a ``clu`` ``MetricWriter`` on ``tensorboardX``,
so ``create_default_writer``, ``AsyncWriter`` and ``periodic_actions`` work
as usual and write the same ``events.out.tfevents.*`` files, and training
needs no TensorFlow.
"""
from __future__ import annotations

import os
import sys
import types
from typing import Any, Mapping

_TF_WRITER = 'clu.metric_writers.summary_writer'


def clu_metric_writers() -> types.ModuleType:
  """``clu.metric_writers``, its ``SummaryWriter`` backed by tensorboardX.

  If ``clu.metric_writers`` was already imported in this process (with its
  TensorFlow writer), it is returned as it is.
  """
  if 'clu.metric_writers' not in sys.modules:
    shim = types.ModuleType(_TF_WRITER, 'SummaryWriter on tensorboardX (hrseg_jax)')
    # Resolved on first use: by then the package has imported its interface.
    shim.__getattr__ = _shim_attribute
    sys.modules[_TF_WRITER] = shim
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers


def _shim_attribute(name: str):
  if name == 'SummaryWriter':
    return writer_class()
  raise AttributeError(f'module {_TF_WRITER!r} has no attribute {name!r}')


_CLASS = None


def writer_class() -> type:
  """The :class:`TensorBoardXWriter` class (built once, on clu's interface)."""
  global _CLASS
  if _CLASS is None:
    _CLASS = _make_writer_class()
  return _CLASS


def _make_writer_class() -> type:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorboardX  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from clu.internal import utils  # pylint: disable=g-import-not-at-top
  from clu.metric_writers import interface  # pylint: disable=g-import-not-at-top
  from tensorboardX import summary  # pylint: disable=g-import-not-at-top

  class TensorBoardXWriter(interface.MetricWriter):
    """A ``clu`` ``MetricWriter`` writing TensorBoard event files with tensorboardX."""

    def __init__(self, logdir):
      super().__init__()
      self._logdir = os.fspath(logdir)
      self._file = None

    @property
    def _writer(self):
      """The event file, made at the first write: a run refused at start-up
      (another model's checkpoint, a failed rendezvous) leaves none behind."""
      if self._file is None:
        self._file = tensorboardX.SummaryWriter(logdir=self._logdir)
      return self._file

    def write_summaries(self, step: int, values: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None):
      logging.log_first_n(logging.WARNING,
                          'TensorBoardXWriter does not write raw summaries.', 1)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
      for key, value in scalars.items():
        self._writer.add_scalar(key, float(np.asarray(value)), global_step=step)

    def write_images(self, step: int, images: Mapping[str, Any]):
      for key, value in images.items():
        value = np.asarray(value)
        if value.ndim == 3:
          value = value[None]
        self._writer.add_images(key, value, global_step=step, dataformats='NHWC')

    def write_videos(self, step: int, videos: Mapping[str, Any]):
      logging.log_first_n(logging.WARNING,
                          'TensorBoardXWriter does not write videos.', 1)

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
      for key, value in audios.items():
        for i, clip in enumerate(np.asarray(value)):
          self._writer.add_audio(f'{key}/{i}', clip, global_step=step,
                                 sample_rate=sample_rate)

    def write_texts(self, step: int, texts: Mapping[str, str]):
      for key, value in texts.items():
        self._writer.add_text(key, value, global_step=step)

    def write_histograms(self, step: int, arrays: Mapping[str, Any],
                         num_buckets: Mapping[str, int] | None = None):
      for key, value in arrays.items():
        bins = None if num_buckets is None else num_buckets.get(key)
        self._writer.add_histogram(key, np.asarray(value), global_step=step,
                                   max_bins=bins)

    def write_hparams(self, hparams: Mapping[str, Any]):
      flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in utils.flatten_dict(hparams)}
      for s in summary.hparams(flat, {}):
        self._writer.file_writer.add_summary(s)

    def flush(self):
      if self._file is not None:
        self._file.flush()

    def close(self):
      if self._file is not None:
        self._file.close()

  return TensorBoardXWriter
