"""Hostile or damaged state dicts through ``python -m hrseg_jax.convert``.

The files themselves are well-formed ``.pth`` archives (the loader's own
defences are tested in ``test_pth_hostile.py``); what they hold is not a
model a user should get: non-finite weights, tensors of the wrong rank or
empty, architectures that cannot be inferred or are absurdly large, names
with control characters, more metadata than a checkpoint carries. Each must
end in one ``error:`` line naming the file (and the key), exit code 2,
nothing written, and never run for long. Most cases call the command's
``main`` in-process (the same code path, without a JAX start-up each); the
user-visible ones run the real command line from the user's folder.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hrseg_jax.convert import __main__ as convert_main, pth_write
from hrseg_jax.convert import pth as convert_pth
from hrseg_jax.models import hanet
import pth_payloads
from test_convert import TINY, torch_state

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny_state():
  return torch_state(TINY)


def convert_cli(folder: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  """``python -m hrseg_jax.convert model.pth out`` run from ``folder``."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'hrseg_jax.convert', 'model.pth', 'out', *args],
                        cwd=folder, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def refused(folder: pathlib.Path, state, *args: str) -> str:
  """Writes ``state`` as model.pth, converts it; returns the one error line."""
  pth_write.save_pth(state, folder / 'model.pth')
  proc = convert_cli(folder, *args)
  assert proc.returncode == 2, (proc.stdout, proc.stderr)
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
  assert 'model.pth' in lines[0] and 'Traceback' not in proc.stderr, lines
  assert sorted(p.name for p in folder.iterdir()) == ['model.pth']
  return lines[0]


def refused_in_process(folder: pathlib.Path, state, capsys, monkeypatch) -> str:
  """As :func:`refused`, through the command's ``main`` in this process."""
  pth_write.save_pth(state, folder / 'model.pth')
  monkeypatch.chdir(folder)
  assert convert_main.main(['model.pth', 'out']) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and err.startswith('error: '), err
  assert 'model.pth' in err, err
  assert sorted(p.name for p in folder.iterdir()) == ['model.pth']
  return err.strip()


def test_non_finite_weights_are_refused_naming_the_keys(tmp_path, tiny_state):
  state = dict(tiny_state)
  w = state['conv1.weight'].copy()
  w[0, 0, 0, 0] = np.nan
  state['conv1.weight'] = w
  state['bn1.running_var'] = np.full_like(state['bn1.running_var'], np.inf)
  # Finite in float64, infinite once cast to the model's float32.
  state['last_layer.3.bias'] = np.full(state['last_layer.3.bias'].shape, 1e300)
  line = refused(tmp_path, state)
  assert '3 tensors with NaN or infinite values' in line, line
  for key in ('conv1.weight', 'bn1.running_var', 'last_layer.3.bias'):
    assert key in line, line


def test_a_tensor_of_the_wrong_rank_is_named_not_a_traceback(tmp_path, tiny_state):
  state = dict(tiny_state, **{'layer1.0.conv1.weight': np.float32(0.5)})
  line = refused(tmp_path, state)
  assert 'layer1.0.conv1.weight has shape ()' in line, line


LITE_KEYS = {'stem.conv1.conv.weight': np.zeros((4, 3, 3, 3), np.float32)}


@pytest.mark.parametrize('extra,phrase', [
    # An OCR head without its object-context block.
    ({'conv3x3_ocr.0.weight': np.zeros((4, 60, 3, 3), np.float32)},
     'ocr_distri_head.object_context_block.f_pixel.0.weight missing'),
    ({'last_layer.3.weight': np.float32(1)}, 'last_layer.3.weight has shape ()'),
    ({'stage2.0.branches.1.1.conv1.weight': np.zeros((8, 8, 3, 3), np.float32),
      'stage2.0.branches.2.0.conv1.weight': np.zeros((8, 8, 3, 3), np.float32)},
     'stage2.0.branches.1.0.conv1.weight missing'),
    ({'hanet3_0.attention_first.0.weight': np.zeros((4,), np.float32)},
     'hanet3_0.attention_first.0.weight has shape (4,)'),
    ({**LITE_KEYS, 'cls_head.weight': np.float32(1)}, 'cls_head.weight has shape ()'),
])
def test_architecture_inference_names_the_key(tmp_path, tiny_state, capsys, monkeypatch,
                                             extra, phrase):
  state = dict(tiny_state, **extra)
  if 'stage2.0.branches.2.0.conv1.weight' in extra:
    del state['stage2.0.branches.1.0.conv1.weight']
  err = refused_in_process(tmp_path, state, capsys, monkeypatch)
  assert phrase in err, err


def test_a_huge_empty_head_is_a_shape_mismatch_without_allocating(tmp_path, tiny_state):
  # 10**12 classes read off a zero-size tensor: the model's head would need
  # terabytes; the error must not allocate it (nor print a MemoryError).
  state = dict(tiny_state, **{'last_layer.3.weight': np.zeros((10**12, 0, 1, 1), np.float32)})
  line = refused(tmp_path, state)
  assert ('last_layer.3.weight: checkpoint (1000000000000, 0, 1, 1) vs model '
          '(1000000000000, 60, 1, 1)') in line, line


def test_absurd_module_counts_are_refused_before_any_search(tmp_path, tiny_state):
  # 5,000 modules (one key each, aliases of one tiny tensor) once made the
  # architecture search quadratic in the number of keys; HRNets have <= 4.
  one = np.zeros((1, 1, 1, 1), np.float32)
  state = dict(tiny_state, **{f'stage2.{m}.branches.0.0.conv1.weight': one
                              for m in range(1, 5000)})
  line = refused(tmp_path, state)
  assert 'not an HRNet state dict: stage2 has 5000 modules (at most 8)' in line, line


@pytest.mark.parametrize('keys,phrase', [
    ([f'stage3.0.branches.{i}.0.conv1.weight' for i in range(3, 9)],
     'stage3.0 has 9 branches (at most 8)'),
    ([f'stage4.1.branches.2.{b}.conv1.weight' for b in range(1, 9)],
     'stage4.1.branches.2 has 9 blocks (at most 8)'),
    ([f'layer1.{b}.conv1.weight' for b in range(1, 9)], 'layer1 has 9 blocks (at most 8)'),
])
def test_absurd_layouts_are_refused_before_a_model_is_traced(tmp_path, tiny_state, capsys,
                                                            monkeypatch, keys, phrase):
  one = np.zeros((1, 1, 1, 1), np.float32)
  state = dict(tiny_state, **{k: one for k in keys})
  err = refused_in_process(tmp_path, state, capsys, monkeypatch)
  assert f'not an HRNet state dict: {phrase}' in err, err


def test_hanet_r_factor_is_computed_not_searched():
  """Same answers as the search over every r, but without the search: the
  widths come from the file (a zero-size tensor can claim 10**9 channels)."""
  def searched(in_channels, mid):
    if mid > in_channels and mid % in_channels == 0:
      return -(mid // in_channels)
    for r in (64, 32, 16, 128, 8, 4, 2, 1, *range(3, 4 * in_channels + 1)):
      if hanet.mid_channels(in_channels, r) == mid:
        return r
    return None

  for in_channels in range(1, 70):
    for mid in range(0, 3 * in_channels + 2):
      try:
        got = hanet._infer_r_factor(in_channels, mid)  # pylint: disable=protected-access
      except ValueError:
        got = None
      assert got == searched(in_channels, mid), (in_channels, mid)
  with pytest.raises(ValueError, match='no HANet r_factor maps 1000000 channels to 0'):
    hanet._infer_r_factor(10**6, 0)  # pylint: disable=protected-access
  assert hanet._infer_r_factor(10**6, 7) == 142858  # pylint: disable=protected-access


def test_keys_with_control_characters_never_reach_the_terminal(tmp_path, tiny_state):
  state = dict(tiny_state, **{'x\x1b[2J\r\u202e.weight': np.zeros(2, np.float32)})
  line = refused(tmp_path, state)
  assert "state dict key 'x\\x1b[2J\\r\\u202e.weight' (14 characters) is not a parameter " \
         'name' in line, line


def test_a_huge_key_is_refused_before_prefix_stripping(tmp_path, tiny_state):
  # Stripping 'module.' wrappers one at a time was quadratic in the key's length.
  state = dict(tiny_state, **{'module.' * 20_000 + 'conv1.weight': np.zeros(2, np.float32)})
  line = refused(tmp_path, state)
  assert '(140,012 characters) is not a parameter name' in line, line
  assert len(line) < 400, line


def test_names_of_unknown_classes_are_escaped(tmp_path):
  # A pickled object of class "\x1b[31mevil.Name" as the whole file.
  pth_payloads.zip_pth(tmp_path / 'model.pth', b'\x80\x02c\x1b[31mevil\nName\r\n)R.')
  proc = convert_cli(tmp_path)
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr
  assert proc.stderr.startswith('error: ') and 'model.pth' in proc.stderr, proc.stderr
  assert '\x1b' not in proc.stderr and '\r' not in proc.stderr, repr(proc.stderr)
  assert '\\x1b[31mevil.Name\\r' in proc.stderr, proc.stderr


@pytest.mark.parametrize('key,shape', [('last_layer.3.weight', (0,)),
                                       ('layer1.0.conv1.weight', (0, 64, 1, 1)),
                                       ('stage3.0.branches.2.0.conv1.weight', (0, 16, 3, 3))])
def test_a_width_of_zero_is_refused_naming_the_key(tmp_path, tiny_state, capsys, monkeypatch,
                                                   key, shape):
  state = dict(tiny_state, **{key: np.zeros(shape, np.float32)})
  err = refused_in_process(tmp_path, state, capsys, monkeypatch)
  assert f'{key} has shape {shape}: a model cannot have a width' in err, err


@pytest.mark.parametrize('extras', [
    {f'loss.w{i}': np.ones(30_000, np.float32) for i in range(3)},  # 90,000 elements
    {f'loss.w{i}': np.ones(1, np.float32) for i in range(300)},
])
def test_entries_kept_as_metadata_are_bounded_together(tmp_path, tiny_state, capsys, monkeypatch,
                                                      extras):
  # Each loss.* entry alone is small, but all of them went into the
  # checkpoint's JSON metadata (as Python floats: 8x their bytes in memory).
  err = refused_in_process(tmp_path, dict(tiny_state, **extras), capsys, monkeypatch)
  assert 'too much that is not model weights' in err, err
  assert 'at most 256 entries of 65,536 elements together' in err, err


def test_counters_of_no_batch_norm_are_unexpected_keys(tmp_path, tiny_state, capsys,
                                                       monkeypatch):
  # They were ignored as BN counters and kept in the checkpoint's metadata.
  junk = {f'junk{i}.num_batches_tracked': np.asarray(i, np.int64) for i in range(300)}
  err = refused_in_process(tmp_path, dict(tiny_state, **junk), capsys, monkeypatch)
  assert '300 unexpected keys: junk0.num_batches_tracked, ' in err, err


def test_lite_hrnet_infers_hanet_options_only_from_its_four_hanets():
  # Thousands of hanetN prefixes (aliases of one large table) each ran the
  # table comparison; hanet5 and up are not in the model (unexpected keys).
  from hrseg_jax.models import lite_hrnet  # pylint: disable=g-import-not-at-top
  only_hanet5 = {'hanet5.attention_first.0.weight': np.zeros((4, 4, 1))}
  assert lite_hrnet._infer_hanet(only_hanet5) is None  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="no HANet at 'hanet2.'"):
    lite_hrnet._infer_hanet({'hanet2.x': np.zeros(1), 'hanet12.x': np.zeros(1)})  # pylint: disable=protected-access


def test_two_keys_for_one_tensor_are_refused_not_one_dropped(tmp_path, tiny_state, capsys,
                                                             monkeypatch):
  # Stripping mmpose's backbone. prefix (and the HANet renaming, below) kept
  # the later of two keys that end up with the same name, silently.
  state = dict(tiny_state, **{'backbone.conv1.weight': np.ones((64, 3, 3, 3), np.float32)})
  err = refused_in_process(tmp_path, state, capsys, monkeypatch)
  assert 'the state dict holds both backbone.conv1.weight and conv1.weight' in err, err
  from hrseg_jax.convert import convert  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='holds hanet3.0.x under two names'):
    convert.rename_keys({'hanet3_0.x': 1, 'hanet3.0.x': 2}, {'hanet3_0.': 'hanet3.0.'})


def _golden_state(golden) -> dict:
  path = golden / 'hrnet_w18_small_v2_cityscapes.pth'
  return convert_pth.state_dict_from_checkpoint(convert_pth.load_pth(str(path)))


@pytest.mark.parametrize('extra, line', [
    ({'aux.weight': 3}, 'error: model.pth: 1 unexpected key: aux.weight'),
    ({'foo.bar.weight': 3}, 'error: model.pth: 1 unexpected key: foo.bar.weight'),
    ({'model.foo.weight': 3}, 'error: model.pth: 1 unexpected key: foo.weight'),
    ({'aux.weight': 3, 'model.foo.weight': 3},
     'error: model.pth: 2 unexpected keys: aux.weight, foo.weight'),
    ({'conv1.weight': 3},
     'error: model.pth: the state dict holds both model.conv1.weight and conv1.weight'),
])
def test_a_stray_key_outside_the_prefix_is_an_unexpected_key(tmp_path, golden, extra,
                                                              line):
  """The released w18-small state dict (``model.*`` keys) plus one key without
  the prefix was 'not an HRNet state dict: conv1.weight / layer1.0.conv1.weight
  missing': the prefix was kept because one key lacked it."""
  state = _golden_state(golden)
  assert all(k.startswith(('model.', 'loss.')) for k in state)   # loss.*: class weights
  state.update({k: np.zeros(n, np.float32) for k, n in extra.items()})
  pth_write.save_pth(state, tmp_path / 'model.pth')
  r = convert_cli(tmp_path)
  assert r.returncode == 2 and r.stderr.splitlines() == [line], r.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['model.pth']


@pytest.mark.parametrize('obj, line', [
    ({}, 'error: model.pth: holds no tensors (an empty state dict)'),
    ({'state_dict': {}}, 'error: model.pth: holds no tensors (an empty state dict)'),
    ({'loss.weight': np.ones(3, np.float32)},
     'error: model.pth: holds no model weights, only 1 loss.* entry'),
])
def test_a_state_dict_without_tensors_says_so(tmp_path, obj, line):
  """``{}`` was 'not an HRNet state dict: conv1.weight / ... missing'."""
  pth_write.save_pth(obj, tmp_path / 'model.pth')
  r = convert_cli(tmp_path)
  assert r.returncode == 2 and r.stderr.splitlines() == [line], r.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['model.pth']
