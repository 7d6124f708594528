"""Conversion and export never lose files; damaged checkpoints are named.

Driven through the real command lines (``convert`` and ``export`` ``main``),
from a temporary working directory with relative paths, as a user types them.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pth_payloads as P
from hrseg_jax import checkpoints, overwrite
from hrseg_jax.checkpoints import manifest
from hrseg_jax import export as export_cli
from hrseg_jax.convert import __main__ as convert_cli, pth_write
from hrseg_jax.convert import pth
from test_convert import TINY, torch_state


def _files(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def _one_line_error(capsys, code: int, *phrases: str) -> str:
  err = capsys.readouterr().err.strip()
  assert code == 2, err
  assert len(err.splitlines()) == 1 and err.startswith('error: '), err
  assert 'Traceback' not in err
  for phrase in phrases:
    assert phrase in err, err
  return err


def _no_hidden_leftovers(folder: pathlib.Path):
  assert not [p.name for p in folder.rglob('.*')
              if '.tmp' in p.name or '.old-' in p.name]


@pytest.fixture(scope='module', name='converted')
def fixture_converted(tmp_path_factory):
  """A tiny converted checkpoint (``ckpt``) and its source (``tiny.pth``)."""
  root = tmp_path_factory.mktemp('converted')
  pth_write.save_pth(torch_state(TINY), root / 'tiny.pth')
  cwd = os.getcwd()
  os.chdir(root)
  try:
    assert convert_cli.main(['tiny.pth', 'ckpt']) == 0
  finally:
    os.chdir(cwd)
  return root


@pytest.fixture(name='user_dir')
def fixture_user_dir(tmp_path, monkeypatch, converted):
  """A working directory holding copies of ``tiny.pth`` and ``ckpt``."""
  shutil.copy(converted / 'tiny.pth', tmp_path / 'tiny.pth')
  shutil.copytree(converted / 'ckpt', tmp_path / 'ckpt')
  monkeypatch.chdir(tmp_path)
  return tmp_path


# ---------------------------------------------------------------------------
# --overwrite and export's output.


def test_overwrite_never_deletes_the_folder_holding_the_input(user_dir, capsys):
  d = user_dir / 'd'
  d.mkdir()
  shutil.copy('tiny.pth', d / 'model.pth')
  (d / 'notes.txt').write_text('mine')
  before = _files(d)
  for out in ('d', str(d), 'd/', './d/../d'):
    code = convert_cli.main(['d/model.pth', out, '--overwrite'])
    _one_line_error(capsys, code, 'refusing to replace', 'model.pth')
    assert _files(d) == before
  _no_hidden_leftovers(user_dir)


def test_overwrite_never_replaces_an_arbitrary_folder(user_dir, capsys):
  other = user_dir / 'photos'
  other.mkdir()
  (other / 'a.jpg').write_bytes(b'jpeg')
  code = convert_cli.main(['tiny.pth', 'photos', '--overwrite'])
  _one_line_error(capsys, code, 'not a checkpoint written by hrseg_jax', 'a.jpg')
  assert _files(other) == {'a.jpg': b'jpeg'}
  # A checkpoint folder the user has put a file into is no longer replaced.
  (user_dir / 'ckpt' / 'README.txt').write_text('my notes')
  code = convert_cli.main(['tiny.pth', 'ckpt', '--overwrite'])
  _one_line_error(capsys, code, 'not a checkpoint written by hrseg_jax')
  assert (user_dir / 'ckpt' / 'README.txt').read_text() == 'my notes'
  # The current directory is never replaced either.
  code = convert_cli.main(['tiny.pth', '.', '--overwrite'])
  _one_line_error(capsys, code, 'refusing to replace')
  _no_hidden_leftovers(user_dir)


def test_not_empty_names_overwrite_only_where_it_would_replace(user_dir):
  """Without --overwrite, a non-empty output folder is refused; the line
  suggests --overwrite only for a folder --overwrite would replace."""
  repo = str(pathlib.Path(__file__).resolve().parents[1])

  def run(*args):
    r = subprocess.run([sys.executable, '-m', 'hrseg_jax.convert', *args], cwd=user_dir,
                       env=dict(os.environ, PYTHONPATH=repo), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr)
    return r.stderr.strip().splitlines()
  (user_dir / 'photos').mkdir()
  (user_dir / 'photos' / 'a.jpg').write_bytes(b'jpeg')
  assert run('tiny.pth', 'photos') == [
      'error: output directory is not empty: photos and --overwrite would not replace it '
      'either: it is not a checkpoint written by hrseg_jax (it holds a.jpg); remove it '
      'yourself or choose another output directory']
  (user_dir / 'd').mkdir()
  shutil.copy(user_dir / 'tiny.pth', user_dir / 'd' / 'model.pth')
  assert run('d/model.pth', 'd') == [
      'error: output directory is not empty: d and --overwrite would not replace it '
      'either: it holds the input d/model.pth']
  assert run('tiny.pth', 'ckpt') == [
      'error: output directory is not empty: ckpt (pass --overwrite to replace it)']
  assert _files(user_dir / 'photos') == {'a.jpg': b'jpeg'}


def test_overwrite_replaces_a_converted_checkpoint(user_dir, capsys):
  old = _files(user_dir / 'ckpt')
  assert overwrite.is_checkpoint_dir('ckpt')
  code = convert_cli.main(['tiny.pth', 'ckpt', '--overwrite', '--seed', '1'])
  assert code == 0, capsys.readouterr().err
  assert (user_dir / 'ckpt' / '0' / manifest.NAME).is_file()
  assert set(_files(user_dir / 'ckpt')) and _files(user_dir / 'ckpt') != {}
  assert old  # The replaced checkpoint loads.
  checkpoints.load_model('ckpt')
  assert sorted(p.name for p in user_dir.iterdir()) == ['ckpt', 'tiny.pth']


def test_export_refuses_an_existing_file_unless_overwrite(user_dir, capsys):
  pathlib.Path('out.pth').write_bytes(b'precious')
  code = export_cli.main(['ckpt', 'out.pth'])
  _one_line_error(capsys, code, 'out.pth', '--overwrite')
  assert pathlib.Path('out.pth').read_bytes() == b'precious'
  code = export_cli.main(['ckpt', 'ckpt'])
  _one_line_error(capsys, code, 'directory')
  assert export_cli.main(['ckpt', 'out.pth', '--overwrite']) == 0
  assert 'conv1.weight' in ''.join(pth.load_pth('out.pth'))
  assert sorted(p.name for p in user_dir.iterdir()) == ['ckpt', 'out.pth', 'tiny.pth']


# ---------------------------------------------------------------------------
# One-line errors of convert: nothing written, nothing hidden left.


def _bad_state_files(folder: pathlib.Path) -> dict[str, tuple[pathlib.Path, tuple]]:
  state = torch_state(TINY)
  cases = {}

  def save(name, obj, *phrases):
    pth_write.save_pth(obj, folder / name)
    cases[name] = (folder / name, phrases)

  nbt = [k for k in state if k.endswith('num_batches_tracked')][0]
  save('complex_nbt.pth', dict(state, **{nbt: np.array(3 + 1j, np.complex64)}),
       nbt, 'integer scalar')
  save('complex_weight.pth', dict(state, **{'conv1.weight': state['conv1.weight'] * 1j}),
       'conv1.weight', 'complex')
  save('int_weight.pth', dict(state, **{'conv1.weight': state['conv1.weight'].astype(np.int32)}),
       'conv1.weight', 'integer')
  save('bool_weight.pth', dict(state, **{'bn1.weight': state['bn1.weight'] > 0}),
       'bn1.weight', 'bool')
  save('loss_nan.pth', dict(state, **{'loss.criterion.weight': np.array([1, np.nan], np.float32)}),
       'loss.criterion.weight', 'non-finite')
  save('loss_huge.pth', dict(state, **{'loss.criterion.weight': np.ones(70000, np.float32)}),
       'loss.criterion.weight', 'at most')
  save('loss_complex.pth', dict(state, **{'loss.criterion.weight': np.ones(3, np.complex64)}),
       'loss.criterion.weight', 'complex')
  P.object_array(folder)
  cases['object_array.pth'] = (folder / 'object_array.pth', ('refusing numpy dtype',))
  P.ordered_dict_get(folder)
  cases['ordered_dict_get.pth'] = (folder / 'ordered_dict_get.pth', ("attribute 'get'",))
  P.stride_zero_loss(folder)
  cases['stride_zero_loss.pth'] = (folder / 'stride_zero_loss.pth', ('would materialise',))
  return cases


def test_bad_files_and_options_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  cases = _bad_state_files(tmp_path)
  inputs = sorted(p.name for p in tmp_path.iterdir())
  for name, (path, phrases) in cases.items():
    code = convert_cli.main([path.name, 'out'])
    _one_line_error(capsys, code, name, *phrases)
  pth_write.save_pth(torch_state(TINY), tmp_path / 'good.pth')
  for value in ('-3', '0'):
    code = convert_cli.main(['good.pth', 'out', '--num-classes', value])
    _one_line_error(capsys, code, '--num-classes', value)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs + ['good.pth'])


def test_loss_entries_are_kept_as_plain_floats(user_dir, capsys):
  state = torch_state(TINY)
  state['loss.criterion.weight'] = np.array([0.5, 2.0, 1.0], np.float16)
  pth_write.save_pth({'state_dict': collections.OrderedDict(state)}, 'w.pth')
  assert convert_cli.main(['w.pth', 'out']) == 0, capsys.readouterr().err
  meta = checkpoints.load_model('out')[2]
  assert meta['torch_layout']['extras'] == {'loss.criterion.weight': [0.5, 2.0, 1.0]}


# ---------------------------------------------------------------------------
# Integrity: the manifest names the damaged file.


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  files = [p for p in step_dir.rglob('*') if p.is_file()
           and p.name != manifest.NAME and p.stat().st_size > 1000]
  return sorted(files, key=lambda p: -p.stat().st_size)


def test_converted_checkpoint_has_a_complete_manifest(converted):
  step = converted / 'ckpt' / '0'
  listed = json.loads((step / manifest.NAME).read_text())['files']
  on_disk = {str(p.relative_to(step)) for p in step.rglob('*')
             if p.is_file() and p.name != manifest.NAME}
  assert set(listed) == on_disk
  assert manifest.verify(step) is True


@pytest.mark.parametrize('damage', ['flip', 'truncate', 'delete', 'json'])
def test_damaged_checkpoint_is_named_in_one_line(user_dir, capsys, damage):
  step = user_dir / 'ckpt' / '0'
  victim = _data_files(step)[0]
  if damage == 'flip':
    data = bytearray(victim.read_bytes())
    for k in range(64):
      data[len(data) // 2 + k] ^= 0xFF
    victim.write_bytes(bytes(data))
  elif damage == 'truncate':
    victim.write_bytes(victim.read_bytes()[:100])
  elif damage == 'delete':
    victim.unlink()
  else:
    victim = step / 'model' / 'metadata'
    cfg = json.loads(victim.read_text())
    cfg['model']['stages'][0][2] = [8, 16]
    victim.write_text(json.dumps(cfg))
  with pytest.raises(manifest.CorruptCheckpointError) as info:
    checkpoints.load_model('ckpt')
  # Named below the checkpoint as typed ('ckpt'), not its absolute path.
  named = f'checkpoint ckpt/0 is corrupt: {victim.relative_to(user_dir)} '
  assert str(info.value).startswith(named) and '\n' not in str(info.value)
  code = export_cli.main(['ckpt', 'out.pth'])
  _one_line_error(capsys, code, f'error: {named}')
  assert not pathlib.Path('out.pth').exists()


def test_without_a_manifest_config_and_weights_are_still_checked(user_dir):
  step = user_dir / 'ckpt' / '0'
  (step / manifest.NAME).unlink()
  checkpoints.load_model('ckpt')  # An older checkpoint: still loads.
  meta_file = step / 'model' / 'metadata'
  cfg = json.loads(meta_file.read_text())
  cfg['model']['stages'][0][2] = [8, 16]
  meta_file.write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match='model config does not match its weights') as info:
    checkpoints.load_model('ckpt')
  assert '\n' not in str(info.value)


def test_digests_can_be_skipped_for_very_large_checkpoints(user_dir, monkeypatch):
  step = user_dir / 'ckpt' / '0'
  victim = _data_files(step)[0]
  data = bytearray(victim.read_bytes())
  data[-1] ^= 1
  victim.write_bytes(bytes(data))
  monkeypatch.setenv('HRSEG_VERIFY_CHECKSUMS', '0')
  assert manifest.verify(step) is True  # Sizes only.
  monkeypatch.setenv('HRSEG_VERIFY_CHECKSUMS', '1')
  with pytest.raises(manifest.CorruptCheckpointError, match='SHA-256'):
    manifest.verify(step)


# ---------------------------------------------------------------------------
# Training checkpoints: manifest after the (async) commit; sizes, digests and
# finiteness checked on restore, naming the step.


def _train_state(step: int, value: float = 1.0):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hrseg_jax.train.state import TrainState  # pylint: disable=g-import-not-at-top
  return TrainState(
      step=jnp.int32(step), params={'w': jnp.full((64, 64), value, jnp.float32)},
      model_state={'batch_stats': {'mean': jnp.zeros(4, jnp.float32)}},
      opt_state={'mu': jnp.zeros((64, 64), jnp.float32), 'count': jnp.int32(step)},
      rng=jax.random.PRNGKey(0), skipped=jnp.int32(0))


@pytest.mark.parametrize('async_save', [True, False])
def test_training_checkpoints_get_a_manifest_and_are_verified(tmp_path, async_save):
  import jax  # pylint: disable=g-import-not-at-top
  from hrseg_jax.checkpoints import training as checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(tmp_path / 'c', keep_best=False,
                                    async_save=async_save)
  for step in (2, 4):
    ckpt.save(_train_state(step), None, {'arch': 'tiny'})
  ckpt.close()
  for step in (2, 4):
    assert manifest.verify(tmp_path / 'c' / str(step)) is True
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _train_state(0))
  ckpt = checkpointing.Checkpointer(tmp_path / 'c', keep_best=False)
  assert float(ckpt.restore(abstract).params['w'][0, 0]) == 1.0
  # A damaged file of the latest step: one line naming it and the way out.
  victim = max((p for p in (tmp_path / 'c' / '4').rglob('*')
                if p.is_file() and p.name != manifest.NAME), key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2] ^= 0xFF
  victim.write_bytes(bytes(data))
  with pytest.raises(checkpointing.CheckpointRestoreError) as info:
    ckpt.restore(abstract)
  message = str(info.value)
  assert '\n' not in message and str(victim) in message
  assert str(tmp_path / 'c' / '4') in message and 'resume from step 2' in message
  ckpt.close()


def test_restored_non_finite_values_name_the_step(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from hrseg_jax.checkpoints import training as checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(tmp_path / 'c', keep_best=False, async_save=False)
  ckpt.save(_train_state(3, float('nan')), None, {'arch': 'tiny'})
  ckpt.close()
  (tmp_path / 'c' / '3' / manifest.NAME).unlink()  # As an older checkpoint.
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _train_state(0))
  ckpt = checkpointing.Checkpointer(tmp_path / 'c', keep_best=False)
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=r"step 3\) holds non-finite values in "
                           r"\['variables'\]\['params'\]\['w'\]"):
    ckpt.restore(abstract)
  ckpt.close()


def test_training_checkpoints_leave_the_preemption_sync_point_to_the_loop(
    tmp_path, monkeypatch):
  """JAX's preemption sync point hears only the loop's steps.  Orbax's
  manager also reports steps to it (in ``save`` and, for asynchronous saves,
  in the thread that finalizes a step, with that older step): on several
  processes that moves JAX's step counter back and lets processes stop at
  different steps, each then waiting for the other for ever."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from hrseg_jax.checkpoints import training as checkpointing  # pylint: disable=g-import-not-at-top
  reported = []
  monkeypatch.setattr(multihost_utils, 'reached_preemption_sync_point',
                      lambda step: reported.append(step) or False)
  ckpt = checkpointing.Checkpointer(tmp_path / 'c', keep_best=False, async_save=True)
  for step in (2, 4):
    ckpt.save(_train_state(step), None, {'arch': 'tiny'}, force=True)
  ckpt.save(_train_state(6), None, {'arch': 'tiny'})
  ckpt.close()
  assert ckpt.complete_steps() == [2, 4, 6]
  assert reported == []
