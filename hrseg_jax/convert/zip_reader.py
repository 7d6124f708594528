"""A strict reader of the uncompressed zip archives ``torch.save`` writes.

It reads a buffer (a memory-mapped file) and hands out zero-copy views of
the entries. Archives are accepted only if every entry is **stored** (torch
never compresses, so nothing can inflate), not encrypted, **unique** by
name, **inside** one top-level folder (no absolute paths, no ``..``), and
**inside the file**, with no two entries' bytes overlapping (so one record
cannot be read under many names). Anything else raises
:class:`~hrseg_jax.convert.safe_pickle.FormatError`.
"""
from __future__ import annotations

import struct
import zlib

from hrseg_jax.convert.safe_pickle import FormatError

_EOCD = b'PK\x05\x06'
_EOCD64 = b'PK\x06\x06'
_LOCATOR64 = b'PK\x06\x07'
_CENTRAL = b'PK\x01\x02'
_LOCAL = b'PK\x03\x04'
_MAX_ENTRIES = 1_000_000


class _Entry:
  __slots__ = ('name', 'header', 'size', 'crc', 'start')

  def __init__(self, name: str, header: int, size: int, crc: int):
    self.name, self.header, self.size, self.crc = name, header, size, crc
    self.start = -1


def _find_eocd(buf) -> int:
  lo = max(0, len(buf) - 22 - 65535)
  tail = bytes(buf[lo:])
  pos = tail.rfind(_EOCD)
  while pos >= 0:
    if pos + 22 <= len(tail):
      (comment_len,) = struct.unpack_from('<H', tail, pos + 20)
      if pos + 22 + comment_len == len(tail):
        return lo + pos
    pos = tail.rfind(_EOCD, 0, pos)
  raise FormatError('truncated or corrupt zip archive (no end of central '
                    'directory record)')


def _zip64_extra(extra: bytes, fields: list[int]) -> list[int]:
  """Replaces the 0xFFFFFFFF fields by the zip64 extra field's values."""
  pos = 0
  while pos + 4 <= len(extra):
    tag, size = struct.unpack_from('<HH', extra, pos)
    if tag == 1:
      values = extra[pos + 4:pos + 4 + size]
      out, i = [], 0
      for field in fields:
        if field == 0xFFFFFFFF:
          if i + 8 > len(values):
            raise FormatError('corrupt zip64 extra field')
          out.append(struct.unpack_from('<Q', values, i)[0])
          i += 8
        else:
          out.append(field)
      return out
    pos += 4 + size
  if 0xFFFFFFFF in fields:
    raise FormatError('zip entry lacks its zip64 sizes')
  return fields


class ZipArchive:
  """Entries of a torch zip archive held in ``buf``; see the module doc."""

  def __init__(self, buf):
    self._buf = buf
    size = len(buf)
    eocd = _find_eocd(buf)
    (_, disk, cd_disk, n_disk, count, cd_size,
     cd_offset, _) = struct.unpack_from('<4sHHHHIIH', buf, eocd)
    if disk or cd_disk or n_disk != count:
      raise FormatError('multi-disk zip archives are not supported')
    end_of_data = eocd
    if 0xFFFFFFFF in (cd_size, cd_offset) or count == 0xFFFF:
      loc = eocd - 20
      if loc < 0 or bytes(buf[loc:loc + 4]) != _LOCATOR64:
        raise FormatError('corrupt zip64 archive (no locator)')
      (eocd64,) = struct.unpack_from('<8xQ', buf, loc)
      if eocd64 + 56 > loc or bytes(buf[eocd64:eocd64 + 4]) != _EOCD64:
        raise FormatError('corrupt zip64 end of central directory')
      count, _, cd_size, cd_offset = struct.unpack_from('<QQQQ', buf,
                                                        eocd64 + 24)
      end_of_data = eocd64
    if count > _MAX_ENTRIES or count * 46 > cd_size:
      raise FormatError(f'zip central directory claims {count} entries in '
                        f'{cd_size} bytes')
    if cd_offset + cd_size > end_of_data or end_of_data > size:
      raise FormatError('zip central directory lies outside the file')
    self.entries: dict[str, _Entry] = {}
    pos = cd_offset
    for _ in range(count):
      entry, pos = self._central_entry(pos, cd_offset + cd_size)
      if entry.name in self.entries:
        raise FormatError(f'zip archive holds two records named '
                          f'{entry.name!r}')
      self.entries[entry.name] = entry
    self._check_layout(cd_offset)
    self.prefix = self._check_names()

  def _central_entry(self, pos: int, end: int) -> tuple[_Entry, int]:
    buf = self._buf
    if pos + 46 > end or bytes(buf[pos:pos + 4]) != _CENTRAL:
      raise FormatError('corrupt zip central directory')
    (flags, method, crc, csize, usize, name_len, extra_len, comment_len,
     header) = struct.unpack_from('<8xHH4xIIIHHH8xI', buf, pos)
    stop = pos + 46 + name_len + extra_len + comment_len
    if stop > end:
      raise FormatError('corrupt zip central directory')
    raw_name = bytes(buf[pos + 46:pos + 46 + name_len])
    extra = bytes(buf[pos + 46 + name_len:pos + 46 + name_len + extra_len])
    try:
      name = raw_name.decode('utf-8' if flags & 0x800 else 'cp437')
    except UnicodeDecodeError:
      raise FormatError(f'bad zip entry name {raw_name[:60]!r}') from None
    usize, csize, header = _zip64_extra(extra, [usize, csize, header])
    if flags & 0x1:
      raise FormatError(f'zip record {name!r} is encrypted')
    if method != 0 or csize != usize:
      raise FormatError(f'zip record {name!r} is compressed (method {method});'
                        ' torch.save never compresses, refusing to inflate it')
    return _Entry(name, header, usize, crc), stop

  def _check_layout(self, cd_offset: int) -> None:
    """Every record lies before the central directory; none overlap."""
    buf = self._buf
    previous_end, previous = 0, None
    for entry in sorted(self.entries.values(), key=lambda e: e.header):
      if entry.header < previous_end:
        raise FormatError(f'zip records {previous!r} and {entry.name!r} '
                          'overlap')
      if entry.header + 30 > cd_offset or bytes(
          buf[entry.header:entry.header + 4]) != _LOCAL:
        raise FormatError(f'bad local header for zip record {entry.name!r}')
      name_len, extra_len = struct.unpack_from('<26xHH', buf, entry.header)
      local_name = bytes(buf[entry.header + 30:entry.header + 30 + name_len])
      if local_name != entry.name.encode('utf-8') and (
          local_name != entry.name.encode('cp437', 'replace')):
        raise FormatError(f'zip record {entry.name!r} has another name in '
                          'its local header')
      entry.start = entry.header + 30 + name_len + extra_len
      previous_end = entry.start + entry.size
      if previous_end > cd_offset:
        raise FormatError(f'zip record {entry.name!r} runs past the end of '
                          'the archive data (truncated file?)')
      previous = entry.name

  def _check_names(self) -> str:
    prefixes = set()
    for name in self.entries:
      parts = name.split('/')
      if (name.startswith('/') or '\\' in name or '\0' in name or
          len(parts) < 2 or any(p in ('', '.', '..') for p in parts[:-1]) or
          parts[-1] in ('.', '..') or ':' in parts[0]):
        raise FormatError(f'zip record name {name!r} points outside the '
                          'archive folder')
      prefixes.add(parts[0])
    if len(prefixes) > 1:
      raise FormatError('zip records lie in several top-level folders: ' +
                        ', '.join(sorted(prefixes)[:4]))
    for name in self.entries:
      if name.endswith('/data.pkl') and name.count('/') == 1:
        return name[:-len('data.pkl')]
    raise FormatError('zip archive has no <archive>/data.pkl record '
                      '(not a torch.save checkpoint)')

  def __contains__(self, name: str) -> bool:
    return name in self.entries

  def read(self, name: str, what: str = 'record') -> memoryview:
    """A read-only view of a record's bytes; CRC checked when recorded."""
    entry = self.entries.get(name)
    if entry is None:
      raise FormatError(f'missing {what} {name!r}')
    view = memoryview(self._buf)[entry.start:entry.start + entry.size]
    if entry.crc and zlib.crc32(view) != entry.crc:
      raise FormatError(f'CRC mismatch in zip record {name!r} (corrupt file)')
    return view
