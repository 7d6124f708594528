"""Random mutations of real ``.pth`` files; every load must end cleanly.

``python tests/pth_fuzz.py --seed S --count N --out DIR`` mutates the two
fixtures written by real PyTorch (zip and legacy format) ``N`` times with
byte flips, truncations, pickle-opcode swaps, record/key renames and chunk
duplications, loads each mutant in this process and prints one JSON line:
``{"outcomes": {"loaded": .., "refused": ..}, "failures": [...],
"peak_rss_mb": .., "samples": [...]}``. A failure is any exception other
than a one-line ``PthError`` starting with the file's path.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import pickle
import pickletools
import resource
import sys
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures' / 'pth'
BASES = ('zip_checkpoint.pth', 'legacy_state_dict.pth')
KINDS = ('flip', 'truncate', 'opcode', 'rename', 'duplicate')
_OPCODES = bytes(sorted({op.code.encode('latin1')[0]
                         for op in pickletools.opcodes}))


def _pickle_regions(data: bytes, base: str) -> list[tuple[int, int]]:
  """(start, end) of the pickles in a file: data.pkl, or the legacy stream."""
  if base.startswith('zip'):
    from hrseg_jax.convert import zip_reader  # pylint: disable=g-import-not-at-top
    archive = zip_reader.ZipArchive(data)
    entry = archive.entries[archive.prefix + 'data.pkl']
    return [(entry.start, entry.start + entry.size)]
  regions, pos = [], 0
  for _ in range(5):  # magic, protocol, sys_info, main, keys
    end = pos
    for _, _, end in pickletools.genops(data[pos:]):
      pass
    regions.append((pos, pos + end + 1))
    pos += end + 1
  return regions


def _fix_crc(out: bytearray, start: int, end: int) -> None:
  """Rewrites data.pkl's CRC (local and central headers) for its new bytes."""
  crc = zlib.crc32(bytes(out[start:end])).to_bytes(4, 'little')
  local = out.rindex(b'PK\x03\x04', 0, start)
  out[local + 14:local + 18] = crc
  central = out.index(b'PK\x01\x02', end)
  out[central + 16:central + 20] = crc


def mutate(data: bytes, base: str, kind: str,
           rng: np.random.Generator) -> tuple[bytes, str]:
  """One mutant of ``data`` and a description of the change."""
  out = bytearray(data)
  if kind == 'flip':
    n = int(rng.integers(1, 9))
    where = sorted(int(p) for p in rng.integers(0, len(out), n))
    for p in where:
      out[p] ^= int(rng.integers(1, 256))
    return bytes(out), f'flip {n} bytes at {where}'
  if kind == 'truncate':
    cut = int(rng.integers(1, len(out)))
    return bytes(out[:cut]), f'truncate at {cut}'
  if kind == 'opcode':
    regions = _pickle_regions(data, base)
    start, end = regions[int(rng.integers(0, len(regions)))]
    n = int(rng.integers(1, 4))
    where = sorted(int(p) for p in rng.integers(start, end, n))
    for p in where:
      out[p] = _OPCODES[int(rng.integers(0, len(_OPCODES)))]
    if base.startswith('zip'):  # As an attacker would: a valid CRC.
      _fix_crc(out, start, end)
    return bytes(out), f'{n} opcodes at {where}'
  if kind == 'rename':
    if base.startswith('zip'):
      names = [b'data/0', b'data/1', b'data.pkl', b'byteorder', b'version']
      old = names[int(rng.integers(0, len(names)))]
      new = bytearray(old)
      new[int(rng.integers(0, len(new)))] = b'./0a9'[int(rng.integers(0, 5))]
      # Central directory only, local header only, or both.
      hits = [i for i in range(len(data)) if data.startswith(old, i)]
      which = int(rng.integers(0, 3))
      chosen = hits if which == 2 else hits[which::2] or hits
      for i in chosen:
        out[i:i + len(old)] = new
      return bytes(out), f'rename {old!r} -> {bytes(new)!r} ({which})'
    keys_start, keys_end = _pickle_regions(data, base)[-1]
    keys = pickle.loads(data[keys_start:keys_end])
    old = keys[int(rng.integers(0, len(keys)))].encode()
    new = str(int(rng.integers(0, 10**len(old)))).zfill(len(old)).encode()
    i = data.index(b'X' + len(old).to_bytes(4, 'little') + old, keys_start)
    out[i + 5:i + 5 + len(old)] = new
    return bytes(out), f'rename storage key {old!r} -> {new!r}'
  start = int(rng.integers(0, len(out)))
  length = int(rng.integers(1, 64))
  out[start:start] = data[start:start + length]
  return bytes(out), f'duplicate {length} bytes at {start}'


def mutants(seed: int, count: int):
  """Yields (base name, kind, description, bytes), reproducibly."""
  rng = np.random.default_rng(seed)
  sources = {b: (FIXTURES / b).read_bytes() for b in BASES}
  for n in range(count):
    base = BASES[n % len(BASES)]
    kind = KINDS[int(rng.integers(0, len(KINDS)))]
    data, what = mutate(sources[base], base, kind, rng)
    yield base, kind, what, data


def peak_rss_mb() -> int:
  """This process's peak RSS (VmHWM; ru_maxrss would include the parent's)."""
  with open('/proc/self/status', encoding='ascii') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) // 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def run(seed: int, count: int, out: pathlib.Path) -> dict:
  from hrseg_jax.convert import pth  # pylint: disable=g-import-not-at-top
  outcomes = collections.Counter()
  failures, samples = [], []
  for n, (base, kind, what, data) in enumerate(mutants(seed, count)):
    path = out / f'm{n:04d}_{base}'
    path.write_bytes(data)
    try:
      pth.load_pth(path)
      outcomes['loaded'] += 1
    except pth.PthError as e:
      message = str(e)
      if '\n' in message or not message.startswith(str(path)):
        failures.append(f'{path.name} ({what}): bad message {message[:200]!r}')
      outcomes['refused'] += 1
      if len(samples) < 6 and kind not in [s[1] for s in samples]:
        samples.append((path.name, kind, what, message[len(str(path)) + 2:]))
    except BaseException as e:  # pylint: disable=broad-except
      failures.append(f'{path.name} ({what}): {type(e).__name__}: {e}'[:300])
    path.unlink()
  peak = peak_rss_mb()
  return {'seed': seed, 'count': count, 'outcomes': dict(outcomes),
          'failures': failures, 'peak_rss_mb': peak, 'samples': samples}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--count', type=int, default=300)
  p.add_argument('--out', required=True)
  args = p.parse_args()
  sys.path.insert(0, str(ROOT))
  print(json.dumps(run(args.seed, args.count, pathlib.Path(args.out))))


if __name__ == '__main__':
  main()
