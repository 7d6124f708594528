"""benchmarks/benchmark.py: the tiny CPU run, its JSON, the FLOP count, the peer.

The benchmark runs in subprocesses exactly as a user runs it.  No test here
asserts anything about speed: CPU timings of tiny models say nothing, and
timing thresholds flake.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:   # benchmarks/ is not part of the package
  sys.path.insert(0, str(REPO))

from benchmarks.harness import cli  # pylint: disable=wrong-import-position
from benchmarks.harness import models as bench_models  # pylint: disable=wrong-import-position
from benchmarks.harness import hlo_costs  # pylint: disable=wrong-import-position
from benchmarks.harness import peer, report, schema  # pylint: disable=wrong-import-position
from ctrl_c_util import WITH_CTRL_C, ctrl_c_when  # pylint: disable=wrong-import-position

GPU_RUN = REPO / 'benchmarks' / 'gpu_run.sh'
SCRIPT = REPO / 'benchmarks' / 'benchmark.py'
XLA_FLAG = '--xla_force_host_platform_device_count=1'
# HRNetV2-W48 at 1024x2048: 747.5 GMAC (the peer's PyTorch FLOP counter: 748).
W48_FLOPS = 2 * 747.5e9


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def _ok(done: subprocess.CompletedProcess) -> None:
  assert done.returncode == 0, (
      f'exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}\n'
      f'stderr:\n{done.stderr[-4000:]}')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """The ``--tiny`` run (both dtypes, every mode): (doc, stdout)."""
  out = tmp_path_factory.mktemp('bench') / 'tiny.json'
  done = _run('--tiny', '--input-pipeline', f'--xla-flags={XLA_FLAG}',
              '--out', str(out))
  _ok(done)
  return json.loads(out.read_text()), done.stdout


@pytest.mark.slow
def test_tiny_run_json_is_complete(tiny_run):
  doc, _ = tiny_run
  assert schema.validate(doc, require_ok=True) == []
  got = {(r['model'], r['dtype'], r['mode']) for r in doc['results']}
  assert got == {(m, d, w) for m in bench_models.DEFAULT_TINY_MODELS
                 for d in cli.DTYPES for w in cli.MODES}


@pytest.mark.slow
def test_tiny_run_numbers_positive_and_finite(tiny_run):
  doc, _ = tiny_run
  for rec in doc['results']:
    for name, kind in schema.RESULT_FIELDS[rec['mode']].items():
      value = rec[name]
      if kind in ('pos', 'opt') and value is not None:
        assert math.isfinite(value) and value > 0, (rec['mode'], name, value)
    assert rec['images_per_s'] == pytest.approx(
        rec['batch'] * 1e3 / (rec['ms_pipelined'] if rec['mode'] != 'train'
                              else rec['ms']))
    assert rec['mfu'] == pytest.approx(
        rec['model_flops'] / (rec['ms'] / 1e3) / (cli.H200_BF16_TFLOPS * 1e12))


@pytest.mark.slow
def test_tiny_run_records_the_run(tiny_run):
  doc, stdout = tiny_run
  meta = doc['meta']
  assert XLA_FLAG in meta['xla_flags'] and meta['xla_flags_extra'] == XLA_FLAG
  assert '--tiny' in meta['command']
  assert meta['versions']['jax'] and meta['versions']['flax']
  assert meta['device']['platform'] == 'cpu'
  assert doc['settings']['tiny'] is True
  train = [r for r in doc['results'] if r['mode'] == 'train']
  assert {r['checks']['loss_chunks'] for r in train} == {1}   # batch 2
  assert all(r['windows'] == 4 for r in doc['results'] if r['mode'] == 'sliding')
  assert '| model | impl |' in stdout and 'hrseg_jax' in stdout
  # The live header reads as --report's of the JSON (sizes as [64, 128]).
  assert report.header(doc) in stdout, stdout[-3000:]


@pytest.mark.slow
def test_tiny_run_includes_peer_rows(tiny_run):
  doc, _ = tiny_run
  rows = doc['peer']['rows']
  assert rows == peer.rows(peer.RAW)   # files and constants agree
  sources = {(r['source'], r['model']) for r in rows}
  assert {('pytorch', 'w48'), ('pytorch', 'w18'), ('pytorch', 'ocr_w48'),
          ('pytorch', 'w32_hanet'), ('pytorch', 'lite30_hanet'),
          ('jax_floor', 'w48')} <= sources
  assert all(r['model'] in bench_models.MODELS for r in rows)


@pytest.mark.slow
def test_tiny_run_input_pipeline(tiny_run):
  doc, _ = tiny_run
  section = doc['input_pipeline']
  if importlib.util.find_spec('grain') is None:
    assert section['status'] == 'skipped' and 'grain' in section['reason']
    return
  assert section['status'] == 'ok'
  assert [r['workers'] for r in section['runs']] == [0]
  assert all(r['images_per_s'] > 0 for r in section['runs'])
  assert section['headroom'] > 0


def test_isolated_two_output_train_run_and_report(tmp_path):
  """OCR (two outputs, loss 0.4 aux + 1.0 main) in a child process."""
  out = tmp_path / 'iso.json'
  _ok(_run('--tiny', '--isolate', '--models', 'tiny_ocr', '--dtypes', 'float32',
           '--modes', 'train', '--out', str(out)))
  doc = json.loads(out.read_text())
  assert schema.validate(doc, require_ok=True) == []
  assert doc['meta']['isolated'] is True
  assert [(r['model'], r['mode']) for r in doc['results']] == [('tiny_ocr', 'train')]
  done = _run('--report', str(out), str(out))
  _ok(done)
  assert done.stdout.count('| tiny HRNet + OCR | hrseg_jax (run 1) | float32 |') == 1
  assert done.stdout.count('| tiny HRNet + OCR | hrseg_jax (run 2) | float32 |') == 1


def test_isolated_run_skips_against_the_whole_budget(tmp_path):
  """Each child knows the run's budget and what the parent spent of it."""
  out = tmp_path / 'iso.json'
  done = _run('--tiny', '--isolate', '--models', 'tiny,tiny_hanet', '--dtypes', 'float32',
              '--modes', 'infer', '--time-budget', '0.5', '--out', str(out))
  assert done.returncode == 1, done.stderr[-2000:]   # not every workload ran
  results = json.loads(out.read_text())['results']
  skipped = [r['reason'] for r in results if r['status'] == 'skipped']
  assert skipped and set(skipped) == {'time budget of 0.5 s spent'}, results
  assert 'time budget of 0.5 s spent' in done.stdout
  assert not re.search(r'time budget of (?!0\.5 s)', done.stdout), done.stdout


def test_ctrl_c_is_one_line_and_keeps_the_finished_workloads(tmp_path):
  p = subprocess.Popen([*WITH_CTRL_C, sys.executable, str(SCRIPT), '--tiny', '--models',
                        'tiny', '--dtypes', 'float32', '--modes', 'infer,train',
                        '--out', 'b.json'], cwd=tmp_path,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  # Once inference is done, while the train step compiles.
  out, err = ctrl_c_when(p, (tmp_path / 'b.json').exists)
  assert p.returncode == 130, out + err
  assert err == 'stopped by Ctrl-C: the workloads finished are in b.json\n', err
  doc = json.loads((tmp_path / 'b.json').read_text())
  assert [(r['mode'], r['status']) for r in doc['results']] == [('infer', 'ok')]


# The sliding-window workload "loses" a Ctrl-C as JAX's garbage-collection callback
# can: raised inside a __del__, printed by Python as ignored, and run on.
_CTRL_C_LOST_IN_SLIDING = r"""
import os, signal, sys, time
from benchmarks import benchmark
from benchmarks.harness import workloads

class Callback:
  def __del__(self):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)

def sliding(*args):
  Callback()
  return workloads.run_infer(*args)

workloads.RUNNERS['sliding'] = sliding
sys.exit(benchmark.main(sys.argv[1:]))
"""


def test_ctrl_c_lost_in_a_callback_still_stops_it(tmp_path):
  r = subprocess.run([*WITH_CTRL_C, sys.executable, '-c', _CTRL_C_LOST_IN_SLIDING,
                      '--tiny', '--models', 'tiny', '--dtypes', 'float32',
                      '--modes', 'infer,train,sliding', '--out', 'b.json'],
                     cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS='cpu',
                                            PYTHONPATH=str(REPO)),
                     capture_output=True, text=True, timeout=600, check=False)
  assert r.returncode == 130, r.stdout + r.stderr
  assert r.stderr == 'stopped by Ctrl-C: the workloads finished are in b.json\n', r.stderr
  # Neither the workload it was pressed in nor the next one (train).
  doc = json.loads((tmp_path / 'b.json').read_text())
  assert [(x['mode'], x['status']) for x in doc['results']] == [('infer', 'ok')]


def test_w48_flops_match_the_reference_count():
  """Same code path as the benchmark's MFU column; tracing only."""
  from benchmarks.harness import flops  # pylint: disable=g-import-not-at-top
  got = flops.forward_flops(bench_models.MODELS['w48'].config, 1024, 2048)
  assert got == pytest.approx(W48_FLOPS, rel=5e-3)
  assert flops.train_flops(bench_models.MODELS['w48'].config, 512, 1024, 12) == (
      pytest.approx(3 * 12 * got / 4, rel=1e-6))


def test_peer_constants_match_the_files():
  directory = pathlib.Path(os.environ.get('HRSEG_PEER') or REPO.parent / 'shared' / 'peer')
  if not all((directory / name).is_file() for name in peer.RAW):
    pytest.skip(f'peer JSON files not at {directory}')
  raw, source = peer.load_raw(directory)
  assert source == str(directory)
  assert raw == peer.RAW


def test_peer_rows_are_built_in_unless_a_folder_is_named(tmp_path, monkeypatch):
  section = peer.load(None)
  assert section['source'] == 'constants'
  assert 'built into benchmarks/harness/peer.py' in section['note']
  assert section['rows'] == peer.rows(peer.RAW)
  errors = schema.validate({'peer': section})
  assert not [e for e in errors if e.startswith('peer')], errors
  monkeypatch.delenv('HRSEG_PEER', raising=False)
  assert cli.settings(cli.build_parser().parse_args([])).peer_dir is None
  # A folder named but lacking the files is an error, not the constants.
  with pytest.raises(ValueError, match=f'peer folder {tmp_path}: torch_hrnet_h200_'):
    cli.settings(cli.build_parser().parse_args(['--peer-dir', str(tmp_path)]))
  for name, content in peer.RAW.items():
    (tmp_path / name).write_text(json.dumps(content))
  section = peer.load(tmp_path)
  assert section['source'] == str(tmp_path) and section['rows'] == peer.rows(peer.RAW)


def test_class_weights_match_the_recipe():
  if importlib.util.find_spec('ml_collections') is None:
    pytest.skip('ml_collections not installed')
  from hrseg_jax import recipes  # pylint: disable=g-import-not-at-top
  assert bench_models.CITYSCAPES_CLASS_WEIGHTS == recipes.CITYSCAPES_CLASS_WEIGHTS


_ALLOWED_IMPORTS = r"""
import importlib.metadata as md, re, sys
import jax, flax.linen, optax, orbax.checkpoint
baseline = {m.split('.')[0] for m in sys.modules}  # their optional imports too
import benchmarks.benchmark, benchmarks.gpu_run, benchmarks.harness.env
import benchmarks.harness.runner, benchmarks.harness.workloads
def requirements(dist, seen):
  # dist and everything it requires (extras aside), recursively
  key = re.sub(r'[-_.]+', '-', dist).lower()
  if key in seen:
    return seen
  seen.add(key)
  try:
    reqs = md.requires(dist) or []
  except md.PackageNotFoundError:
    return seen
  for r in reqs:
    if 'extra ==' not in r:
      requirements(re.split(r'[ ;<>=!~\[(]', r, maxsplit=1)[0], seen)
  return seen
allowed = set()
for d in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint'):
  requirements(d, allowed)
providers = md.packages_distributions()
foreign = set()
for name in {m.split('.')[0] for m in sys.modules}:
  if (name in baseline or name in sys.stdlib_module_names or name.startswith('_')
      or name in ('benchmarks', 'hrseg_jax')):
    continue
  dists = {re.sub(r'[-_.]+', '-', d).lower() for d in providers.get(name, [])}
  if not dists & allowed:
    foreign.add(name)
print(sorted(foreign))
sys.exit(1 if foreign else 0)
"""


def test_benchmark_imports_nothing_beyond_jax_flax_optax_orbax():
  """The benchmark runs where only JAX, Flax, Optax and Orbax (and what they
  require) are installed: no OpenCV, Grain, clu, ml_collections or TFDS."""
  done = subprocess.run([sys.executable, '-c', _ALLOWED_IMPORTS], cwd=REPO,
                        check=False, capture_output=True, text=True, timeout=300)
  _ok(done)


def test_schema_rejects_bad_records():
  rec = {name: 1.0 for name in schema.RESULT_FIELDS['train']}
  rec.update(model='w48', label='x', dtype='bfloat16', mode='train', status='ok', impl='hrseg_jax',
             timings_ms=[1.0], checks={c: True for c in schema.CHECKS['train']})
  assert schema.check_result(rec, 0) == []
  assert schema.check_result(dict(rec, ms=float('nan')), 0)
  assert schema.check_result(dict(rec, images_per_s=0), 0)
  assert schema.check_result({k: v for k, v in rec.items() if k != 'mfu'}, 0)
  assert schema.check_result(dict(rec, checks={'donated': False}), 0)
  assert schema.check_result(dict(rec, peak_bytes_in_use=None), 0) == []


def test_cli_defaults_and_errors():
  full = cli.settings(cli.build_parser().parse_args([]))
  assert (full.batch, full.crop, full.infer_size) == (12, (512, 1024), (1024, 2048))
  assert full.models == list(bench_models.DEFAULT_MODELS)
  assert full.window == full.crop and full.modes == list(cli.MODES)
  tiny = cli.settings(cli.build_parser().parse_args(['--tiny', '--crop', '32x64']))
  assert tiny.crop == (32, 64) and tiny.window == (32, 64) and tiny.batch == 2
  assert full.depthwise_grad == 'shifted' and cli.impl_label('shifted') == 'hrseg_jax'
  ab = cli.settings(cli.build_parser().parse_args(['--depthwise-grad', 'xla']))
  assert cli.impl_label(ab.depthwise_grad) == 'hrseg_jax (depthwise grad xla)'
  with pytest.raises(ValueError, match='unknown benchmark model'):
    cli.settings(cli.build_parser().parse_args(['--models', 'w99']))
  with pytest.raises(SystemExit):
    cli.build_parser().parse_args(['--crop', '512'])
  assert _run('--models', 'w99').returncode == 2


@pytest.mark.parametrize('script, args, message', [
    ('benchmark.py', ['--crop', 'abc'], "error: argument --crop: expected HxW"),
    ('benchmark.py', ['--report', 'missing.json'], 'error: --report missing.json: '),
    ('benchmark.py', ['--tiny', '--peak-tflops', '0'], 'error: --peak-tflops must be > 0'),
    ('benchmark.py', ['--tiny', '--time-budget', '-1'], 'error: --time-budget must be >= 0'),
    ('benchmark.py', ['--report', 'notes.txt'], 'error: --report notes.txt: not JSON'),
    ('benchmark.py', ['--tiny', '--out', 'notes.txt/b.json'],
     'error: --out notes.txt/b.json: notes.txt is not a folder'),
    ('benchmark.py', ['--tiny', '--profile', 'notes.txt'],
     'error: --profile notes.txt: is a file, not a folder'),
    ('flop_breakdown.py', ['--model', 'tiny', '--hlo-out', 'notes.txt/h.txt'],
     'error: --hlo-out notes.txt/h.txt: notes.txt is not a folder'),
    ('profile_summary.py', ['.', '--top', 'x'], 'error: argument --top: '),
])
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(tmp_path, script, args,
                                                             message):
  """Run from a temporary folder with relative paths, as a user would."""
  (tmp_path / 'notes.txt').write_text('not a benchmark result\n')
  done = subprocess.run([sys.executable, str(REPO / 'benchmarks' / script), *args],
                        cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 2, done.stderr
  assert done.stderr.count('\n') == 1 and done.stderr.startswith(message), done.stderr
  assert [p.name for p in tmp_path.iterdir()] == ['notes.txt']


def test_profile_into_a_folder_of_earlier_traces_names_the_new_one(tmp_path):
  """--profile DIR again: a new run folder, named on the console; old ones kept."""
  import gzip  # pylint: disable=g-import-not-at-top
  workload = tmp_path / 'prof' / 'tiny_float32_infer'
  old = workload / 'plugins' / 'profile' / '2099_01_01_00_00_00'   # a clock ahead
  old.mkdir(parents=True)
  with gzip.open(old / 'vm.trace.json.gz', 'wt') as f:
    json.dump({'traceEvents': []}, f)
  (old / 'program.hlo.txt').write_text('HloModule earlier\n')
  (workload / 'profile.json').write_text('{"calls": 3, "hlo_module": "earlier"}')
  before = {p: p.read_bytes() for p in old.iterdir()}
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  done = subprocess.run([sys.executable, str(SCRIPT), '--tiny', '--modes', 'infer',
                         '--dtypes', 'float32', '--profile', 'prof'], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  _ok(done)
  line = re.search(r'^profile tiny_float32_infer: 3 calls traced into (\S+) \(1 earlier '
                   r'trace beside it kept\)$', done.stdout, re.M)
  assert line, done.stdout
  run = tmp_path / line.group(1)
  assert line.group(1).startswith('prof/tiny_float32_infer/plugins/profile/')
  assert run != old and list(run.glob('*.trace.json.gz'))
  assert (run / 'program.hlo.txt').read_text().startswith('HloModule jit_')
  assert {p: p.read_bytes() for p in old.iterdir()} == before
  meta = json.loads((workload / 'profile.json').read_text())
  assert workload / meta['trace'] == run
  summary = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'profile_summary.py'),
                            'prof'], cwd=tmp_path, capture_output=True, text=True,
                           check=False)
  assert summary.returncode == 0, summary.stderr
  assert summary.stdout.startswith('tiny_float32_infer (jit_fn, 3 calls traced; '
                                   'operations from host threads'), summary.stdout
  assert f'; trace {run.name})' in summary.stdout.splitlines()[0]


def test_report_table_lists_peer_rows_of_measured_models():
  rec = {'model': 'w48', 'dtype': 'bfloat16', 'mode': 'train', 'status': 'ok',
         'images_per_s': 100.0, 'ms': 120.0, 'mfu': 0.1, 'compile_s': 60.0,
         'peak_bytes_in_use': 2 ** 34}
  doc = {'meta': {}, 'settings': {}, 'results': [rec],
         'peer': peer.load(None)}
  text = report.table(doc)
  assert '| HRNetV2-W48 | hrseg_jax | bfloat16 | 100.0 | 120.0 | 16.0 | 10.0% |' in text
  assert 'PyTorch torch.compile' in text and 'JAX floor' in text
  # The peer's inference was timed for latency only: no derived img/s.
  assert ('| HRNetV2-W48 | PyTorch torch.compile | bf16 autocast, channels_last | 88.9 '
          '| 135.0 | 16.2 | – | 22.1 | – | – | – | – |') in text
  assert 'Lite-HRNet' not in text
  # Compile seconds below 10 keep a decimal ('0.5', was '0' beside 'compile 0.5 s').
  fast = report.table(dict(doc, results=[dict(rec, compile_s=4.6),
                                         dict(rec, mode='infer', compile_s=0.5)]))
  assert '| 4.6/0.5 |' in fast and '| 60/– |' in text, fast


def test_report_of_runs_measured_differently_tells_their_rows_apart():
  """An A/B (--batch 24, --xla-flags) merged by --report: rows name their run."""
  rec = {'model': 'w48', 'dtype': 'bfloat16', 'mode': 'train', 'status': 'ok',
         'images_per_s': 100.0, 'ms': 120.0, 'mfu': 0.1, 'compile_s': 60.0}
  def doc(batch, flags):
    return {'meta': {'date': 'd', 'command': f'benchmark.py --batch {batch}',
                     'xla_flags': flags},
            'settings': {'batch': batch, 'crop': [512, 1024]},
            'results': [rec], 'peer': peer.load(None)}
  same = report.table(report.merge([doc(12, ''), dict(doc(12, ''), results=[
      dict(rec, model='w18')])]))
  assert '(run ' not in same and '\nmerged from:\n  benchmark.py --batch 12\n' in same
  # The same workload measured twice the same way: marked too.
  again = report.table(report.merge([doc(12, ''), doc(12, '')]))
  assert again.count('| HRNetV2-W48 | hrseg_jax (run ') == 2
  # One command a line (a line of all of them ran past 1,500 characters).
  assert ('merged from:\n  (run 1) benchmark.py --batch 12\n  (run 2) benchmark.py '
          '--batch 12') in again
  text = report.table(report.merge([doc(12, ''), doc(24, '--xla_x=1')]))
  assert '| HRNetV2-W48 | hrseg_jax (run 1) | bfloat16 |' in text
  assert '| HRNetV2-W48 | hrseg_jax (run 2) | bfloat16 |' in text
  lines = text.splitlines()
  run2 = lines.index('run 2: benchmark.py --batch 24')
  assert lines[run2 + 1].startswith(
      '  XLA_FLAGS: --xla_x=1; matmul precision: default (float32 rows: TF32 on '
      'NVIDIA GPUs); train: batch 24, crop [512, 1024];')


@pytest.mark.parametrize('rule', ['base', 'cityscapes'])
def test_fixed_shape_inference_matches_the_predictor(rule):
  """The benchmark's one-jit inference computes what evaluation computes."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks.harness import workloads  # pylint: disable=g-import-not-at-top
  from hrseg_jax.eval import inference, windows  # pylint: disable=g-import-not-at-top
  from hrseg_jax.models import registry  # pylint: disable=g-import-not-at-top
  bench_model = bench_models.TINY_MODELS['tiny']
  model = registry.build_model(bench_model.config)
  rng = np.random.default_rng(0)
  variables = workloads.init_variables(bench_model, seed=0)
  # Fan-in-scaled random weights: the init's tiny ones give one class everywhere.
  def perturb(path, a):
    noise = rng.standard_normal(a.shape)
    if a.ndim > 1:
      return (noise / np.sqrt(np.prod(a.shape[:-1]))).astype(np.float32)
    base = 1.0 if path[-1].key == 'scale' else 0.0
    return (base + 0.05 * noise).astype(np.float32)
  variables = dict(variables, params=jax.tree_util.tree_map_with_path(
      perturb, variables['params']))
  images = rng.standard_normal((1, 64, 128, 3), np.float32)
  plan = (windows.base_windows((64, 128), (32, 64)) if rule == 'base'
          else windows.cityscapes_windows((64, 128), (32, 64)))
  predictor = inference.Predictor(
      inference.model_apply_fn(model), variables, num_classes=19,
      align_corners=False, mode='sliding', sliding_rule=rule,
      crop_size=(32, 64), batch_size=len(plan.offsets))
  cases = [(workloads.whole_image_fn(model, False), predictor.whole(images)),
           (workloads.sliding_fn(model, False, plan, 19),
            predictor.sliding(images))]
  for fn, expected in cases:
    got = np.asarray(jax.jit(fn)(variables, images))
    want = np.asarray(np.argmax(expected, axis=-1), np.uint8)
    assert got.shape == want.shape == (1, 64, 128)
    assert len(np.unique(want)) > 3   # not a constant map
    assert np.mean(got != want) < 1e-3


def _gpu_run(out, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(['bash', str(GPU_RUN), str(out), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900,
                        check=False)


@pytest.mark.slow
def test_gpu_run_tiny_entry_writes_json_and_table(tmp_path):
  out = tmp_path / 'gpu'
  done = _gpu_run(out, '--tiny', '--only', 'w48_bf16,w48_f32',
                  '--', f'--xla-flags={XLA_FLAG}')
  _ok(done)
  doc = json.loads((out / 'gpu_run.json').read_text())
  got = sorted((r['model'], r['dtype'], r['mode'], r['status'])
               for r in doc['results'])
  assert got == [('tiny', 'bfloat16', 'infer', 'ok'),
                 ('tiny', 'bfloat16', 'train', 'ok'),
                 ('tiny', 'float32', 'train', 'ok')]
  assert schema.validate(doc, require_ok=True) == []
  assert (out / 'w48_bf16.json').exists() and (out / 'w48_f32.log').exists()
  assert '| tiny HRNet (2 branches) | hrseg_jax | bfloat16 |' in (
      out / 'table.txt').read_text()
  # The first entry is profiled; its summary names source operations.
  assert (out / 'profile.tgz').exists()
  summary = (out / 'profile_summary.txt').read_text()
  assert summary.startswith('tiny_bfloat16_infer (jit_fn, 3 calls traced; operations from '
                            'host threads'), summary[:300]
  assert 'tiny_bfloat16_train (jit_train_step, 3 calls traced' in summary
  per_call = re.findall(r'per call: ([\d.]+) ms in operations, busy ([\d.]+) ms of a '
                        r'([\d.]+) ms span \(idle \d+%\), ([\d,]+) operations', summary)
  assert len(per_call) == 2 and all(float(b) <= float(s) for _, b, s, _ in per_call)
  assert re.search(r'^\| bwd \S+ +\| +[\d.]+ \| +[\d.]+% \|', summary, re.M), summary
  again = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'profile_summary.py'),
                          str(out / 'profile'), '--by', 'hlo', '--top', '3'],
                         capture_output=True, text=True, check=False)
  assert again.returncode == 0 and again.stdout.count('(jit_') == 2, again.stderr
  missing = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'profile_summary.py'),
                            str(out / 'w48_bf16.log')], capture_output=True, text=True,
                           check=False)
  assert missing.returncode == 2 and missing.stderr.count('\n') == 1, missing.stderr


def test_gpu_run_records_entries_past_the_budget_as_skipped(tmp_path):
  done = _gpu_run(tmp_path, '--tiny', '--budget', '1')
  _ok(done)
  doc = json.loads((tmp_path / 'gpu_run.json').read_text())
  assert {r['status'] for r in doc['results']} == {'skipped'}
  # --tiny: the stand-ins the entries would have run, named by entry.
  assert [(r['model'], r['dtype'], r['mode']) for r in doc['results']][:2] == [
      ('tiny', 'bfloat16', 'train'), ('tiny', 'bfloat16', 'infer')]
  assert len(doc['results']) == 8
  assert doc['results'][-1]['impl'] == 'hrseg_jax (depthwise grad xla)'
  assert doc['results'][-1]['reason'] == (
      'overall budget of 1 s spent (entry lite30_hanet_bf16_dwxla)')
  assert 'overall budget' in done.stdout
  assert 'None' not in (tmp_path / 'table.txt').read_text()


def test_gpu_run_records_a_failed_entry(tmp_path):
  """An entry that dies before writing its JSON is an error row, not nothing
  (OUT holds no earlier run's files: a folder that is not empty is refused)."""
  done = _gpu_run(tmp_path / 'out', '--tiny', '--only', 'w48_f32',
                  '--', '--xla-flags=--xla_no_such_flag')
  _ok(done)
  doc = json.loads((tmp_path / 'out' / 'gpu_run.json').read_text())
  assert [(r['model'], r['mode'], r['status']) for r in doc['results']] == [
      ('tiny', 'train', 'error')]
  assert doc['results'][0]['error'].startswith('exit ')
  assert 'w48_f32.log (entry w48_f32)' in doc['results'][0]['error']


def test_gpu_run_ctrl_c_stops_the_running_entry_and_records_the_rest(tmp_path):
  """Ctrl-C: the entry (its own session) is stopped too, not left running."""
  p = subprocess.Popen([*WITH_CTRL_C, str(GPU_RUN), 'out', '--tiny', '--no-profile',
                        '--only', 'w48_bf16,w48_f32'], cwd=tmp_path,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)

  def entry_processes() -> list[str]:
    """The first entry's benchmark.py (it runs in this test's folder)."""
    found = []
    for proc in pathlib.Path('/proc').iterdir():
      try:
        if (os.readlink(proc / 'cwd') == os.path.realpath(tmp_path)
            and b'out/w48_bf16.json' in (proc / 'cmdline').read_bytes()):
          found.append(proc.name)
      except OSError:
        continue
    return found
  out, err = ctrl_c_when(p, entry_processes)   # once the first entry runs
  assert p.returncode == 130, out + err
  assert err == 'stopped by Ctrl-C: what was measured is in out/gpu_run.json\n', err
  assert '[w48_bf16] stopped by Ctrl-C after ' in out
  assert not entry_processes()
  doc = json.loads((tmp_path / 'out' / 'gpu_run.json').read_text())
  reasons = {(r['dtype'], r['mode']): r.get('reason') for r in doc['results']
             if r['status'] != 'ok'}
  assert reasons[('float32', 'train')] == 'not started: stopped by Ctrl-C (entry w48_f32)'
  assert reasons[('bfloat16', 'train')] == 'stopped by Ctrl-C (entry w48_bf16)'


@pytest.mark.parametrize('args, message', [
    (['--only', 'w99'],
     'error: --only: unknown entry w99; known: w48_bf16, lite30_hanet_bf16, '
     'ocr_w48_bf16, w32_hanet_bf16, w48_f32, lite30_hanet_bf16_dwxla'),
    (['--budget', 'x'], "error: argument --budget: invalid float value: 'x'"),
    (['--tiny', '--', '--batch', '0'], 'error: --batch must be >= 1'),
    (['--', '--crop', '5'], 'error: argument --crop: expected HxW'),
    (['--', '--out', 'x.json'], 'error: --out after --: gpu_run sets it for each entry'),
    (['--', '--dtype', 'float32'], 'error: --dtypes after --: gpu_run sets it'),
])
def test_gpu_run_rejects_bad_arguments_before_creating_out(tmp_path, args, message):
  done = _gpu_run(tmp_path / 'out', *args)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), done.stderr
  assert not (tmp_path / 'out').exists()


def test_gpu_run_refuses_the_folder_of_an_earlier_run(tmp_path):
  """A second run into one OUT rewrote its table over the first's files."""
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'gpu_run.json').write_text('{}')
  done = _gpu_run(tmp_path / 'out', '--tiny')
  assert done.returncode == 2, done.stderr
  assert done.stderr.startswith('error: OUT ') and 'is not empty (an earlier run?)' in (
      done.stderr), done.stderr
  assert os.listdir(tmp_path / 'out') == ['gpu_run.json']


def test_flop_breakdown_keys():
  fwd = 'jit(train_step)/jvp(HRNet)/stage1_0/fuse_layers_1_0_0_3/conv_general_dilated'
  assert hlo_costs.source_key(fwd) == 'fwd stage1_*/fuse_layers_1_0_0_*/conv_general_dilated'
  bwd = 'jit(train_step)/transpose(jvp(HRNet))/stage1_0/bn/mul'
  assert hlo_costs.source_key(bwd) == 'bwd stage1_*/bn/mul'
  assert hlo_costs.source_key('') == '?'   # XLA's own code has no direction
  nested = 'jit(train_step)/jvp(jit(log_softmax))/exp'
  assert hlo_costs.source_key(nested) == 'fwd exp'


def test_flop_breakdown_accounts_for_xla_total_and_names_layers():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  script = REPO / 'benchmarks' / 'flop_breakdown.py'
  r = subprocess.run([sys.executable, str(script), '--model', 'tiny', '--mode', 'train',
                      '--batch', '2', '--size', '32x64', '--top', '100'],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                     check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  head = re.search(r'model GFLOP ([\d.]+)\s+program GFLOP ([\d.]+).*XLA GFLOP ([\d.]+) '
                   r'\(.*this walk: ([\d.]+)\)', r.stdout)
  assert head, r.stdout
  model, program, xla, walk = (float(v) for v in head.groups())
  assert min(model, program, xla, walk) > 0
  # The walk counts a convolution's padding taps, which XLA leaves out: a few
  # percent on these tiny maps, 0.1% on Lite-HRNet-30 at 256x512.
  assert abs(walk - xla) <= 0.1 * xla, (walk, xla)
  rows = [line for line in r.stdout.splitlines() if line.startswith('| fwd ')
          or line.startswith('| bwd ')]
  assert any('bwd ' in x and 'conv_general_dilated' in x for x in rows), r.stdout
  bad = subprocess.run([sys.executable, str(script), '--model', 'nope'], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_gpu_run_sigterm_between_entries_is_one_line(tmp_path, monkeypatch, capsys):
  """SIGTERM while gpu_run itself works between entries (here: printing an
  entry's log) is one line, exit 143, as during an entry; it was a traceback."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from benchmarks import gpu_run  # pylint: disable=g-import-not-at-top

  def tail(log):
    os.kill(os.getpid(), signal.SIGTERM)   # to gpu_run's own handler
    time.sleep(60)   # interrupted by it at once
    raise AssertionError(f'no SIGTERM handler stopped gpu_run at {log}')
  monkeypatch.setattr(gpu_run, '_run', lambda cmd, log, deadline: 'exit 0')
  monkeypatch.setattr(gpu_run, '_tail', tail)
  monkeypatch.chdir(tmp_path)
  before = signal.getsignal(signal.SIGTERM)
  try:
    code = gpu_run.entry(['--out', 'out', '--tiny', '--only', 'w48_f32'])
  finally:
    signal.signal(signal.SIGTERM, before)
  assert code == 143
  assert capsys.readouterr().err == 'stopped by SIGTERM\n'


def test_a_report_without_peer_rows_names_the_models_the_peer_measured():
  """It said 'every peer row is in the JSON' also where no JSON was written."""
  rec = {'model': 'tiny', 'dtype': 'float32', 'mode': 'train', 'status': 'ok',
         'images_per_s': 1.0, 'ms': 1.0, 'mfu': None, 'compile_s': 1.0}
  doc = {'meta': {'date': 'd', 'command': 'benchmark.py --tiny'},
         'settings': {'batch': 2, 'crop': [64, 128]}, 'results': [rec],
         'peer': peer.load(None)}
  text = report.table(doc)
  assert 'in the JSON' not in text
  line = [l for l in text.splitlines() if l.startswith('(no peer rows')]
  assert len(line) == 1 and 'the peer measured ' in line[0] and 'w48' in line[0], text
