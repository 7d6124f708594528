"""The core package runs without TensorFlow and without PyTorch.

Each check runs in a fresh interpreter in which importing ``tensorflow``,
``tensorflow_datasets`` or ``torch`` raises ImportError (as on an install
without them, e.g. an aarch64 host), so it does not depend on what other
tests imported before, and fails if anything tries to import them.
"""
from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys
import textwrap

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCKED = ('tensorflow', 'tensorflow_datasets', 'torch')


def run_without_tf_torch(code: str, cwd) -> str:
  """Runs ``code`` with TensorFlow and PyTorch unimportable; returns stdout."""
  prelude = 'import sys\n' + ''.join(f'sys.modules[{m!r}] = None\n' for m in BLOCKED)
  epilogue = textwrap.dedent(f"""
      loaded = [m for m in {BLOCKED!r} if sys.modules.get(m) is not None]
      assert not loaded, loaded
      """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests')]),
             JAX_DISABLE_MOST_OPTIMIZATIONS='1')  # fast compiles, as in tests/conftest.py
  r = subprocess.run([sys.executable, '-c', prelude + textwrap.dedent(code) + epilogue],
                     cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  return r.stdout


def read_scalars(path: pathlib.Path) -> dict[str, dict[int, float]]:
  """Scalars of a TensorBoard event file (TFRecord framing, Event protos)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  data, pos, out = path.read_bytes(), 0, {}
  while pos < len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4
    for v in event.summary.value:
      if v.HasField('simple_value'):
        out.setdefault(v.tag, {})[event.step] = v.simple_value
  return out


def test_training_writes_tensorboard_files_without_tensorflow(tmp_path):
  """A tiny run trains, checkpoints and writes its TensorBoard scalars."""
  run_without_tf_torch("""
      from hrseg_jax.train import loop
      from train_util import tiny_config
      result = loop.train_and_evaluate(tiny_config(num_steps=2, batch_size=4), 'work')
      assert result['final_step'] == 2, result
      """, tmp_path)
  events = list((tmp_path / 'work').glob('events.out.tfevents.*'))
  assert len(events) == 1, events
  scalars = read_scalars(events[0])
  assert sorted(scalars['train/loss']) == [1, 2], scalars.keys()
  assert all(v > 0 for v in scalars['train/loss'].values())
  assert scalars['train/lr'][1] == scalars['train/lr'][2] == np.float32(0.05)  # steps 1, 2: base


def test_convert_and_export_without_tensorflow_or_torch(golden, tmp_path):
  """convert reads a .pth and export writes one back, bit for bit."""
  src = golden / 'hrnet_w18_small_v2_cityscapes.pth'
  run_without_tf_torch(f"""
      import numpy as np
      from hrseg_jax import export
      from hrseg_jax.convert import convert, pth
      convert.convert({str(src)!r}, 'ckpt', log=lambda *_: None)
      assert export.main(['ckpt', 'back.pth']) == 0
      a, b = pth.load_pth({str(src)!r}), pth.load_pth('back.pth')
      a, b = a.get('state_dict', a), b.get('state_dict', b)
      strip = lambda d: {{k.removeprefix('model.'): v for k, v in d.items()}}
      a, b = strip(a), strip(b)
      common = [k for k in a if not k.endswith('num_batches_tracked')]
      assert common and all(np.array_equal(a[k], b[k]) for k in common)
      """, tmp_path)
