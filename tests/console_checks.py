"""What a user reads on the console and finds in a workdir, as assertions."""
from __future__ import annotations

import json
import pathlib
import re

# The per-log-step line (hrseg_jax.train.progress).
STEP_LINE = re.compile(
    r'^step (?P<step>\d+)/(?P<total>\d+) \(epoch [\d.]+\) loss (?P<loss>[\d.]+|nan) '
    r'lr (?P<lr>[\d.]+e-?\d+|0) grad (?:[\d.]+|nan) \| (?P<ips>[\d.]+) img/s, '
    r'(?P<sps>[\d.]+) s/step(?P<compiling> incl\. compilation(?P<cached> \(read from '
    r'the cache\))?)?, data \d+% \| '
    r'ETA (?P<eta>\S+)(?: \+ (?P<evals>\d+) evals?)?')
STARTUP_KEYS = ('devices', 'batch', 'steps', 'data', 'model', 'workdir',
                'checkpoints', 'start')
# Lines of library logging: absl's "I1130 08:00:00.1 123 file.py:1]" format,
# Python's "WARNING:absl:", C++ "WARNING: All log messages ...".
NOISE = re.compile(r'^([IWEF]\d{4} |WARNING|INFO|ERROR:absl)')
NOISE_WORDS = ('Traceback', 'oneDNN', 'tensorflow', 'TensorFlow', 'orbax',
               'libtpu', 'cpu_feature_guard')


def assert_quiet(result) -> None:
  """No traceback and no library log lines on stdout or stderr."""
  text = result.stdout + result.stderr
  for line in text.splitlines():
    if 'slow_operation_alarm' in line:   # XLA: a compilation is slow (loaded machine)
      continue
    assert not NOISE.match(line), f'library log line on the console: {line!r}'
    for word in NOISE_WORDS:
      assert word not in line or line.startswith(('workdir', 'checkpoints')), (
          f'{word!r} on the console: {line!r}')


def step_lines(stdout: str) -> dict[int, re.Match]:
  out = {}
  for line in stdout.splitlines():
    m = STEP_LINE.match(line)
    if m:
      out[int(m['step'])] = m
  return out


def step_line_shape(line: str) -> str:
  """A step line with its numbers as N and its ETA as D, without the fields
  some machines add (``| skipped N``, ``| mem N GiB``): what the README's
  quoted lines and a run's must share."""
  line = re.sub(r' \| (skipped|mem) .*$', '', line)
  line = line.replace(' (read from the cache)', '')   # a repeated run's first line
  line = re.sub(r'ETA \S+', 'ETA D', line)
  line = re.sub(r'\+ (\d+) evals?', '+ N evals', line)
  return re.sub(r'\d+(\.\d+)?(e-?\d+)?', 'N', line)


def assert_training_console(result, *, steps, num_steps: int, start: str) -> None:
  """The start-up block once, then one line per log step with speed and ETA."""
  assert_quiet(result)
  lines = result.stdout.splitlines()
  for key in STARTUP_KEYS:
    found = [l for l in lines if l.split(' ', 1)[0] == key]
    assert len(found) == 1, (key, result.stdout)
  assert any(l.startswith('start') and start in l for l in lines), result.stdout
  found = step_lines(result.stdout)
  assert sorted(found) == sorted(steps), result.stdout
  for m in found.values():
    assert int(m['total']) == num_steps
    assert float(m['ips']) > 0 and m['eta'] != '?'
  per_step = [l for l in lines if l.startswith('step ')]
  assert len(per_step) == len(steps), result.stdout   # one line per log step


def duration_seconds(text: str) -> int:
  """``6m20s``, ``41s``, ``1h02m``, ``2d03h`` (progress.format_duration) in seconds."""
  units = {'d': 86400, 'h': 3600, 'm': 60, 's': 1}
  parts = re.findall(r'(\d+)([dhms])', text)
  assert parts and ''.join(a + b for a, b in parts) == text, text
  return sum(int(n) * units[u] for n, u in parts)


def assert_eta_leaves_out_compilation(stdout: str) -> None:
  """The first step line's ETA is not its compilation-inflated s/step times
  the remaining steps (a resumed run said ETA 5m27s with 46 s to go)."""
  for m in step_lines(stdout).values():
    if not m['compiling']:
      continue
    inflated = (int(m['total']) - int(m['step'])) * float(m['sps'])
    if inflated >= 4:   # well above format_duration's rounding to seconds
      assert duration_seconds(m['eta']) < inflated / 2, (m.group(0), stdout)


def assert_eval_table(stdout: str, class_names) -> None:
  """An IoU table naming the dataset's classes (not class_<i>)."""
  assert 'class_0' not in stdout
  assert re.search(r'^mIoU [\d.]+%  pixel acc [\d.]+%  mean acc [\d.]+%$', stdout,
                   re.M), stdout
  for name in class_names:
    assert re.search(rf'^\s*\d+\s+{re.escape(name)}\s+[\d.]+$', stdout, re.M), (name, stdout)


def assert_run_files(workdir: pathlib.Path, *, eval_steps, classes) -> None:
  """config.json, log.txt beside the TensorBoard events, eval pictures."""
  json.loads((workdir / 'config.json').read_text())
  events = sorted(workdir.glob('events.out.tfevents.*'))
  assert events, list(workdir.iterdir())
  log = (workdir / 'log.txt').read_text()
  assert re.search(r' step \d+/\d+ .* img/s', log) and 'checkpoints' in log
  assert re.search(r' trained \d+ steps? .*in \S+; ', log), log
  for step in eval_steps:
    out = workdir / 'eval' / f'step_{step}'
    metrics = json.loads((out / 'metrics.json').read_text())
    assert all(c in metrics['class_names'] for c in classes)
    assert (out / 'confusion.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  tags = _tensorboard_tags(events)
  if tags is not None:
    expected = {'train/loss', 'train/lr', 'eval/miou', 'eval/overlays',
                'train/images_per_sec', 'train/eta_seconds',
                'eval/confusion_matrix', *(f'eval/iou/{c}' for c in classes)}
    assert expected <= tags, sorted(tags)


def _tensorboard_tags(events) -> set[str] | None:
  try:
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  tags = set()
  for path in events:
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={'tensors': 0, 'images': 0})
    acc.Reload()
    for values in acc.Tags().values():
      if isinstance(values, list):
        tags.update(values)
  return tags
