"""Confusion matrix and IoU metrics with the original's exact semantics.

``get_confusion_matrix`` in the original (``lib/utils/utils.py``):

1. the prediction is the argmax over classes (cast to uint8);
2. ground-truth pixels equal to ``ignore_label`` are dropped;
3. ``bincount(gt * K + pred)`` and only the entries with ``gt < K`` and
   ``pred < K`` are copied into the K x K matrix (rows = ground truth,
   columns = prediction), so ground-truth values >= K are ignored as well.

The metrics (``testval``/``validate``): ``IoU = tp / max(1, pos + res - tp)``
per class, ``mIoU`` = mean over **all** K classes (a class absent from both
ground truth and prediction counts as 0), ``pixel_acc = sum(tp) / sum(pos)``,
``mean_acc = mean(tp / max(1, pos))``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics


def _is_numpy(*xs) -> bool:
  return all(x is None or isinstance(x, (np.ndarray, np.generic, bool, int))
             for x in xs)


def confusion_matrix(pred, label, num_classes: int, ignore_label: int = 255,
                     mask=None):
  """K x K confusion matrix (rows: ground truth, columns: prediction).

  Works eagerly on numpy arrays (returns int64, no compilation) and on jax
  arrays, also inside ``jax.jit`` on batch-sharded arrays (returns int32; a
  scatter-add of ``label * K + pred``, no one-hot).

  Args:
    pred: int [...] predicted class ids (e.g. the argmax, [B, H, W]).
    label: int [...] ground truth, same shape as ``pred``.
    num_classes: K.
    ignore_label: ground-truth value to drop (255, or -1 for PASCAL-Context
      59 in the original's yaml).
    mask: optional; [B] (per example: padding examples of a fixed-size batch
      are 0/False) or the shape of ``label`` (per pixel).  Zero entries are
      dropped.

  Returns:
    [K, K] counts; pixels with ``label == ignore_label``, ``label`` outside
    ``[0, K)``, ``pred`` outside ``[0, K)`` or a zero mask are not counted.
  """
  xp = np if _is_numpy(pred, label, mask) else jnp
  pred = xp.asarray(pred)
  label = xp.asarray(label)
  if pred.shape != label.shape:
    raise ValueError(f'confusion_matrix: prediction shape {pred.shape} != '
                     f'label shape {label.shape}')
  k = int(num_classes)
  label = label.astype(xp.int32)
  pred = pred.astype(xp.int32)
  valid = ((label != ignore_label) & (label >= 0) & (label < k)
           & (pred >= 0) & (pred < k))
  if mask is not None:
    mask = xp.asarray(mask)
    if mask.shape != label.shape:
      if mask.ndim != 1 or mask.shape[0] != label.shape[0]:
        raise ValueError(f'confusion_matrix: mask shape {mask.shape} is '
                         f'neither [B] nor the label shape {label.shape}')
      mask = mask.reshape(mask.shape + (1,) * (label.ndim - 1))
    valid = valid & (mask != 0)
  # Invalid pixels go to the extra bin k*k, which is dropped.
  index = xp.where(valid, label * k + pred, k * k).reshape(-1)
  if xp is np:
    counts = np.bincount(index, minlength=k * k + 1).astype(np.int64)
  else:
    counts = jnp.bincount(index, length=k * k + 1)
  return counts[:k * k].reshape(k, k)


def iou_metrics(cm) -> dict[str, Any]:
  """The original's metrics from an accumulated confusion matrix.

  Args:
    cm: [K, K] counts, rows = ground truth, columns = prediction.

  Returns:
    ``{'miou', 'pixel_acc', 'mean_acc'}`` as Python floats and ``'iou'``, a
    list of K per-class IoUs.  ``pixel_acc`` of an empty matrix is 0 (the
    original would divide by zero).
  """
  cm = np.asarray(cm, np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'iou_metrics: expected a square matrix, got {cm.shape}')
  pos = cm.sum(1)
  res = cm.sum(0)
  tp = np.diag(cm)
  iou = tp / np.maximum(1.0, pos + res - tp)
  return {
      'miou': float(iou.mean()),
      'pixel_acc': float(tp.sum() / max(1.0, pos.sum())),
      'mean_acc': float((tp / np.maximum(1.0, pos)).mean()),
      'iou': [float(v) for v in iou],
  }


def format_iou_table(metrics: Mapping[str, Any],
                     class_names: Sequence[str] | None = None) -> str:
  """Per-class IoU table plus the summary line, in percent.

  Args:
    metrics: the output of :func:`iou_metrics`.
    class_names: K names; ``class_<i>`` when omitted.
  """
  iou = list(metrics['iou'])
  names = list(class_names) if class_names is not None else [
      f'class_{i}' for i in range(len(iou))]
  if len(names) != len(iou):
    raise ValueError(f'format_iou_table: {len(names)} class names for '
                     f'{len(iou)} classes')
  width = max([len('class')] + [len(n) for n in names])
  lines = [f'{"id":>3}  {"class":<{width}}  {"IoU %":>6}']
  lines += [f'{i:>3}  {n:<{width}}  {100 * v:6.2f}'
            for i, (n, v) in enumerate(zip(names, iou))]
  lines.append(f'mIoU {100 * metrics["miou"]:.2f}%  '
               f'pixel acc {100 * metrics["pixel_acc"]:.2f}%  '
               f'mean acc {100 * metrics["mean_acc"]:.2f}%')
  return '\n'.join(lines)


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """A ``clu`` metric accumulating a confusion matrix; ``merge`` adds.

  Use a bound subclass so ``empty()`` and collections know K::

    CM = ConfusionMatrix.bind(19)
    m = CM.from_model_output(predictions=pred, labels=label, mask=mask)
    total = total.merge(m)           # on host: exact int64 sums
    total.compute()                  # mIoU
    total.compute_metrics()          # iou_metrics dict

  ``from_model_output`` also accepts ``num_classes``/``ignore_label``
  directly.  Merging two concrete (host or device) matrices accumulates in
  numpy int64, so long evaluations cannot overflow; inside ``jit`` the sum
  stays a jax array.
  """
  matrix: Any
  num_classes: ClassVar[int | None] = None
  ignore_label: ClassVar[int] = 255

  @classmethod
  def bind(cls, num_classes: int, ignore_label: int = 255):
    """Returns a subclass with K (and the ignore label) fixed."""
    bound = type(f'ConfusionMatrix{num_classes}', (cls,), {
        'num_classes': int(num_classes), 'ignore_label': int(ignore_label),
        '__annotations__': {}})
    return flax.struct.dataclass(bound)  # a pytree like its base

  @classmethod
  def empty(cls):
    if cls.num_classes is None:
      raise ValueError('ConfusionMatrix.empty() needs K: use '
                       'ConfusionMatrix.bind(num_classes)')
    return cls(matrix=np.zeros((cls.num_classes,) * 2, np.int64))

  @classmethod
  def from_model_output(cls, *, predictions, labels, mask=None,
                        num_classes: int | None = None,
                        ignore_label: int | None = None, **_):
    k = num_classes if num_classes is not None else cls.num_classes
    if k is None:
      raise ValueError('ConfusionMatrix: num_classes not given and not bound')
    ignore = cls.ignore_label if ignore_label is None else ignore_label
    return cls(matrix=confusion_matrix(predictions, labels, k, ignore, mask))

  def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
    a, b = self.matrix, other.matrix
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
      return type(self)(matrix=a + b)
    return type(self)(matrix=np.asarray(a, np.int64) + np.asarray(b, np.int64))

  def compute(self) -> float:
    """The mean IoU over all classes."""
    return iou_metrics(self.matrix)['miou']

  def compute_metrics(self) -> dict[str, Any]:
    """All of :func:`iou_metrics`."""
    return iou_metrics(self.matrix)
