"""A bounded, iterative pickle machine for untrusted checkpoint files.

:class:`Machine` executes the pickle opcodes of protocols 0-5 itself (it is
not :class:`pickle.Unpickler`), so that every effect of a file is decided
here:

* Globals resolve through a caller-supplied function to inert values
  (:class:`Callable` stand-ins, :class:`Placeholder` classes, constants);
  nothing is imported and no attribute of any object is looked up by name.
* ``REDUCE``/``NEWOBJ`` call only :class:`Callable` stand-ins or create
  :class:`Placeholder` instances; ``BUILD`` is accepted only where the
  caller's ``build`` rule allows it (placeholders record the state); every
  other target -- storage types, dtypes of tensors, functions -- is refused,
  so nothing a file says can change an object the loader relies on.
* The machine is a loop over an explicit stack: it never recurses. Tuples
  and frozensets (the containers Python hashes by value) are refused beyond
  :data:`MAX_DEPTH` levels when created; :func:`check_structure` walks the
  result iteratively and refuses deeper nesting or cycles of any container.
* Every object created is charged to a :class:`Budget` of bytes shared by a
  whole file, and the number of objects is bounded by :data:`MAX_OBJECTS`:
  a small file cannot make the loader allocate much memory.
* Reads never go past the end of the buffer and never allocate more than the
  bytes actually present.

Any violation raises :class:`FormatError` with a one-line reason.
"""
from __future__ import annotations

import codecs
import functools
import reprlib
import struct
from typing import Any, Callable as CallableType

MAX_DEPTH = 100
MAX_OBJECTS = 2_000_000
_OBJECT_COST = 64  # Bytes charged per object, whatever its size.


class FormatError(Exception):
  """The bytes being parsed are not an acceptable checkpoint."""


class Budget:
  """Bytes a file may still make the loader allocate."""

  def __init__(self, limit: int):
    self.limit = int(limit)
    self.used = 0
    self.objects = 0

  def charge(self, nbytes: int, what: str = 'objects') -> None:
    self.used += int(nbytes)
    if self.used > self.limit:
      raise FormatError(
          f'{what} would need more than {self.limit:,} bytes of memory, more '
          f'than a file of this size can legitimately hold')

  def count(self, n: int = 1) -> None:
    self.objects += n
    if self.objects > MAX_OBJECTS:
      raise FormatError(f'more than {MAX_OBJECTS:,} objects in the pickle')
    self.charge(n * _OBJECT_COST)


class Placeholder:
  """Inert stand-in for a pickled object of a class the loader won't import.

  Subclasses are created per global; ``module`` and ``qualname`` name it.
  Whatever the pickle feeds the object is recorded, never acted upon.

  Attributes:
    args: positional arguments of the reconstructing call.
    kwargs: keyword arguments of the reconstructing call.
    state: the ``__setstate__`` argument, if any.
    dict_items: items set as with a dict subclass.
    list_items: items appended as with a list subclass.
  """

  module = ''
  qualname = ''

  def __init__(self, args: tuple = (), kwargs: dict | None = None):
    self.args, self.kwargs, self.state = args, dict(kwargs or {}), None
    self.dict_items, self.list_items = {}, []

  def __repr__(self) -> str:
    return f'<Placeholder for {self.module}.{self.qualname}>'


def printable(text: str) -> str:
  """``text`` with control and other non-printable characters escaped
  (``\\x1b``, ``\\r``, ``\\u202e``...): names read from a file, safe to show on
  a terminal in a one-line message."""
  if text.isprintable():
    return text
  return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@functools.lru_cache(maxsize=1024)
def placeholder_class(module: str, qualname: str) -> type[Placeholder]:
  module, qualname = printable(module), printable(qualname)
  return type(f'Placeholder[{module}.{qualname}]', (Placeholder,),
              {'module': module, 'qualname': qualname})


class Callable:
  """A side-effect-free function a pickle may call by ``REDUCE``."""

  __slots__ = ('name', 'fn')

  def __init__(self, name: str, fn: CallableType[..., Any]):
    object.__setattr__(self, 'name', name)
    object.__setattr__(self, 'fn', fn)

  def __setattr__(self, key, value):
    raise AttributeError('read-only')

  def __repr__(self) -> str:
    return self.name


class Frozen:
  """Base of values a pickle may name but never modify (storage types...)."""

  __slots__ = ()

  def __setattr__(self, key, value):
    raise AttributeError('read-only')


_CONTAINERS = (tuple, list, dict, set, frozenset)


def _depth_of(obj: Any, depths: dict[int, int]) -> int:
  return depths.get(id(obj), 0) if type(obj) in (tuple, frozenset) else 0


def _is_container(obj: Any) -> bool:
  return isinstance(obj, (*_CONTAINERS, Placeholder))


def _children(obj: Any) -> list:
  if isinstance(obj, dict):
    return [x for kv in obj.items() for x in kv] + list(
        getattr(obj, '__dict__', {}).values())
  if isinstance(obj, (tuple, list, set, frozenset)):
    return list(obj)
  if isinstance(obj, Placeholder):
    return [obj.args, obj.kwargs, obj.state, obj.dict_items, obj.list_items]
  return []


def check_structure(root: Any) -> None:
  """Refuses cycles and nesting deeper than :data:`MAX_DEPTH`, iteratively."""
  if not _is_container(root):
    return
  heights: dict[int, int] = {}
  on_path = {id(root)}
  stack = [[root, iter(_children(root)), 0]]
  while stack:
    frame = stack[-1]
    for child in frame[1]:
      if not _is_container(child):
        continue
      height = heights.get(id(child))
      if height is not None:
        frame[2] = max(frame[2], height)
        if len(stack) + height > MAX_DEPTH:
          raise FormatError(f'objects nested more than {MAX_DEPTH} levels deep')
        continue
      if id(child) in on_path:
        raise FormatError('the pickle holds a cyclic structure')
      if len(stack) >= MAX_DEPTH:
        raise FormatError(f'objects nested more than {MAX_DEPTH} levels deep')
      on_path.add(id(child))
      stack.append([child, iter(_children(child)), 0])
      break
    else:
      stack.pop()
      on_path.discard(id(frame[0]))
      heights[id(frame[0])] = frame[2] + 1
      if stack:
        stack[-1][2] = max(stack[-1][2], frame[2] + 1)


def _decode_utf8(data: bytes) -> str:
  return bytes(data).decode('utf-8', 'surrogatepass')


class Machine:
  """Runs one pickle from ``data[start:]``; see the module docstring.

  Args:
    data: the bytes (any buffer; only read).
    start: offset of the pickle's first opcode.
    find_global: ``(module, name) -> value``.
    persistent_load: ``pid -> value``, or None to refuse persistent ids.
    budget: shared memory budget of the file.
    build: ``(target, state) -> None`` applies BUILD to a non-placeholder
      target, or raises FormatError to refuse.
    newobj: ``cls -> bool``, whether NEWOBJ may call the stand-in ``cls``.
  """

  def __init__(self, data, start: int, find_global, persistent_load,
               budget: Budget, build, newobj):
    self._data = memoryview(data).cast('B') if not isinstance(
        data, (bytes, bytearray)) else memoryview(data)
    self.pos = start
    self._find_global = find_global
    self._persistent_load = persistent_load
    self._budget = budget
    self._build_fn, self._newobj_ok = build, newobj
    self._depths: dict[int, int] = {}
    self._keep: list = []  # Keeps ids in _depths valid.

  # -- reading ------------------------------------------------------------

  def _read(self, n: int) -> memoryview:
    if n < 0 or self.pos + n > len(self._data):
      raise FormatError(f'pickle truncated at offset {self.pos} (needs {n} '
                        f'more bytes)')
    chunk = self._data[self.pos:self.pos + n]
    self.pos += n
    return chunk

  def _readline(self) -> bytes:
    end = self.pos
    limit = min(len(self._data), self.pos + 65536)
    while end < limit and self._data[end] != 0x0A:
      end += 1
    if end >= limit:
      raise FormatError(f'pickle text argument at offset {self.pos} is '
                        'unterminated or too long')
    line = bytes(self._data[self.pos:end])
    self.pos = end + 1
    return line

  def _unpack(self, fmt: str) -> int:
    return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]

  # -- helpers --------------------------------------------------------------

  def _new(self, obj: Any, nbytes: int = 0) -> Any:
    budget = self._budget
    budget.objects += 1
    budget.used += _OBJECT_COST + nbytes
    if budget.used > budget.limit or budget.objects > MAX_OBJECTS:
      budget.count(0)
      budget.charge(0, 'pickled objects')
    return obj

  def _tuple(self, items) -> tuple:
    t = tuple(items)
    depth = 1 + max((_depth_of(x, self._depths) for x in t), default=0)
    if depth > MAX_DEPTH:
      raise FormatError(f'tuples nested more than {MAX_DEPTH} levels deep')
    self._depths[id(t)] = depth
    self._keep.append(t)
    return self._new(t, 96 + 8 * len(t))  # With its _depths and _keep entries.

  def _frozen_set(self, items) -> frozenset:
    items = list(items)
    depth = 1 + max((_depth_of(x, self._depths) for x in items), default=0)
    if depth > MAX_DEPTH:
      raise FormatError(f'sets nested more than {MAX_DEPTH} levels deep')
    s = frozenset(items)
    self._depths[id(s)] = depth
    self._keep.append(s)
    return self._new(s, 96 + 16 * len(s))

  def _pop_mark(self) -> list:
    if not self._metastack:
      raise FormatError('pickle has no MARK where one is needed')
    items = self._stack
    self._stack = self._metastack.pop()
    return items

  def _pop(self) -> Any:
    if not self._stack:
      raise FormatError('pickle stack underflow')
    return self._stack.pop()

  def _top(self) -> Any:
    if not self._stack:
      raise FormatError('pickle stack underflow')
    return self._stack[-1]

  def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
    if not isinstance(args, tuple):
      raise FormatError(f'arguments of {func!r} are not a tuple')
    if kwargs is not None and not (isinstance(kwargs, dict) and
                                   all(isinstance(k, str) for k in kwargs)):
      raise FormatError(f'keyword arguments of {func!r} are not a dict')
    if isinstance(func, type) and issubclass(func, Placeholder):
      return self._new(func(args, kwargs))
    if isinstance(func, Callable):
      self._budget.count()
      try:
        return func.fn(*args, **(kwargs or {}))
      except FormatError:
        raise
      except (TypeError, ValueError, OverflowError) as e:
        raise FormatError(f'bad arguments for {func.name}: '
                          f'{type(e).__name__}: {e}') from None
    raise FormatError(f'refusing to call {type(func).__name__} {func!r}')

  def _setitems(self, target: Any, items: list) -> None:
    if len(items) % 2:
      raise FormatError('odd number of items for SETITEMS')
    pairs = list(zip(items[::2], items[1::2]))
    if isinstance(target, Placeholder):
      target = target.dict_items
    if not isinstance(target, dict):
      raise FormatError(f'cannot set items on a {type(target).__name__}')
    self._budget.charge(64 * len(pairs), 'dict items')
    try:
      for k, v in pairs:
        target[k] = v
    except TypeError as e:
      raise FormatError(f'bad dict key: {e}') from None

  def _appends(self, target: Any, items: list) -> None:
    if isinstance(target, Placeholder):
      target = target.list_items
    if not isinstance(target, list):
      raise FormatError(f'cannot append to a {type(target).__name__}')
    self._budget.charge(8 * len(items), 'list items')
    target.extend(items)

  def _build(self, target: Any, state: Any) -> None:
    if isinstance(target, Placeholder):
      target.state = state
      return
    self._build_fn(target, state)

  # -- the loop -----------------------------------------------------------

  def load(self) -> Any:  # pylint: disable=too-many-branches,too-many-statements
    """Runs to STOP; returns the pickled object."""
    self._stack: list = []
    self._metastack: list = []
    memo: dict[int, Any] = {}
    budget = self._budget
    read, pop, push = self._read, self._pop, None
    data, size = self._data, len(self._data)
    while True:
      if self.pos >= size:
        raise FormatError('pickle truncated (no STOP opcode)')
      op = data[self.pos]
      self.pos += 1
      budget.used += 16
      if budget.used > budget.limit:
        budget.charge(0)
      stack = self._stack
      push = stack.append
      # Memo operations first: about a third of the opcodes of a checkpoint.
      if op in (0x71, 0x72, 0x94, 0x70):  # PUT, BINPUT, LONG_BINPUT, MEMOIZE
        if op == 0x70:
          try:
            index = int(self._readline())
          except ValueError:
            raise FormatError('bad PUT index in pickle') from None
        else:
          index = (read(1)[0] if op == 0x71 else self._unpack('<I')
                   if op == 0x72 else len(memo))
        if index < 0:
          raise FormatError('negative memo index in pickle')
        memo[index] = self._top()
        budget.charge(64)
      elif op in (0x68, 0x6A, 0x67):  # GET, BINGET, LONG_BINGET
        if op == 0x67:
          try:
            index = int(self._readline())
          except ValueError:
            raise FormatError('bad GET index in pickle') from None
        else:
          index = read(1)[0] if op == 0x68 else self._unpack('<I')
        if index not in memo:
          raise FormatError(f'memo entry {index} missing in pickle')
        push(memo[index])
      elif op == 0x80:  # PROTO
        if read(1)[0] > 5:
          raise FormatError('unsupported pickle protocol')
      elif op == 0x95:  # FRAME
        read(8)
      elif op == 0x2E:  # STOP
        if len(stack) != 1 or self._metastack:
          raise FormatError('pickle ended with a malformed stack')
        return stack[0]
      elif op == 0x28:  # MARK
        self._metastack.append(stack)
        self._stack = []
        budget.charge(64)
      elif op == 0x30:  # POP
        if stack:
          stack.pop()
        else:
          self._pop_mark()
      elif op == 0x31:  # POP_MARK
        self._pop_mark()
      elif op == 0x32:  # DUP
        push(self._top())
      elif op == 0x4E:  # NONE
        push(None)
      elif op == 0x88:
        push(True)
      elif op == 0x89:
        push(False)
      elif op == 0x4B:  # BININT1
        push(read(1)[0])
      elif op == 0x4D:  # BININT2
        push(self._unpack('<H'))
      elif op == 0x4A:  # BININT
        push(self._unpack('<i'))
      elif op == 0x8A:  # LONG1
        n = read(1)[0]
        push(int.from_bytes(read(n), 'little', signed=True))
      elif op == 0x8B:  # LONG4
        n = self._unpack('<i')
        if n > 4096:
          raise FormatError('integer of more than 4096 bytes in pickle')
        push(int.from_bytes(read(n), 'little', signed=True))
      elif op in (0x49, 0x4C):  # INT, LONG (text)
        text = self._readline().rstrip(b'L')
        if len(text) > 1000:
          raise FormatError('integer literal too long in pickle')
        if op == 0x49 and text in (b'00', b'01'):
          push(text == b'01')
        else:
          try:
            push(int(text))
          except ValueError:
            raise FormatError(f'bad integer {text[:40]!r} in pickle') from None
      elif op == 0x47:  # BINFLOAT
        push(self._unpack('>d'))
      elif op == 0x46:  # FLOAT
        try:
          push(float(self._readline()))
        except ValueError:
          raise FormatError('bad float in pickle') from None
      elif op in (0x58, 0x8C, 0x8D):  # BINUNICODE, SHORT_, 8
        n = (self._unpack('<I') if op == 0x58 else read(1)[0] if op == 0x8C
             else self._unpack('<Q'))
        raw = read(n)
        budget.charge(4 * n, 'strings')
        try:
          push(self._new(_decode_utf8(raw)))
        except UnicodeDecodeError:
          raise FormatError('bad UTF-8 string in pickle') from None
      elif op == 0x56:  # UNICODE (text)
        push(self._new(self._readline().decode('raw_unicode_escape')))
      elif op in (0x54, 0x55):  # BINSTRING, SHORT_BINSTRING: latin-1 str
        n = self._unpack('<i') if op == 0x54 else read(1)[0]
        raw = read(n)
        budget.charge(n, 'strings')
        push(self._new(bytes(raw).decode('latin1')))
      elif op == 0x53:  # STRING (text)
        line = self._readline().rstrip(b'\r')
        if len(line) < 2 or line[0] != line[-1] or line[:1] not in b'"\'':
          raise FormatError('bad STRING argument in pickle')
        try:
          push(self._new(codecs.escape_decode(line[1:-1])[0].decode('latin1')))
        except ValueError:
          raise FormatError('bad STRING argument in pickle') from None
      elif op in (0x42, 0x43, 0x8E, 0x96):  # BINBYTES, SHORT_, 8, BYTEARRAY8
        n = (self._unpack('<I') if op == 0x42 else read(1)[0] if op == 0x43
             else self._unpack('<Q'))
        raw = read(n)
        budget.charge(n, 'bytes')
        push(self._new(bytearray(raw) if op == 0x96 else bytes(raw)))
      elif op == 0x29:  # EMPTY_TUPLE
        push(())
      elif op in (0x85, 0x86, 0x87):  # TUPLE1-3
        n = op - 0x84
        if len(stack) < n:
          raise FormatError('pickle stack underflow')
        items = stack[-n:]
        del stack[-n:]
        push(self._tuple(items))
      elif op == 0x74:  # TUPLE
        items = self._pop_mark()
        self._stack.append(self._tuple(items))
      elif op == 0x5D:  # EMPTY_LIST
        push(self._new([]))
      elif op == 0x6C:  # LIST
        items = self._pop_mark()
        self._stack.append(self._new(items, 8 * len(items)))
      elif op == 0x7D:  # EMPTY_DICT
        push(self._new({}))
      elif op == 0x64:  # DICT
        items = self._pop_mark()
        d = self._new({})
        self._setitems(d, items)
        self._stack.append(d)
      elif op == 0x8F:  # EMPTY_SET
        push(self._new(set()))
      elif op == 0x91:  # FROZENSET
        items = self._pop_mark()
        try:
          self._stack.append(self._frozen_set(items))
        except TypeError as e:
          raise FormatError(f'bad set element: {e}') from None
      elif op == 0x90:  # ADDITEMS
        items = self._pop_mark()
        target = self._top()
        if not isinstance(target, set):
          raise FormatError('ADDITEMS on a non-set')
        budget.charge(16 * len(items), 'set items')
        try:
          target.update(items)
        except TypeError as e:
          raise FormatError(f'bad set element: {e}') from None
      elif op == 0x61:  # APPEND
        value = pop()
        self._appends(self._top(), [value])
      elif op == 0x65:  # APPENDS
        items = self._pop_mark()
        self._appends(self._top(), items)
      elif op == 0x73:  # SETITEM
        value, key = pop(), pop()
        self._setitems(self._top(), [key, value])
      elif op == 0x75:  # SETITEMS
        items = self._pop_mark()
        self._setitems(self._top(), items)
      elif op == 0x63:  # GLOBAL
        module = self._readline().decode('utf-8', 'replace')
        name = self._readline().decode('utf-8', 'replace')
        push(self._find_global(module, name))
      elif op == 0x93:  # STACK_GLOBAL
        name, module = pop(), pop()
        if not isinstance(module, str) or not isinstance(name, str):
          raise FormatError('STACK_GLOBAL needs two strings')
        push(self._find_global(module, name))
      elif op == 0x52:  # REDUCE
        args, func = pop(), pop()
        push(self._call(func, args))
      elif op == 0x81:  # NEWOBJ
        args, cls = pop(), pop()
        push(self._newobj(cls, args, None))
      elif op == 0x92:  # NEWOBJ_EX
        kwargs, args, cls = pop(), pop(), pop()
        push(self._newobj(cls, args, kwargs))
      elif op == 0x62:  # BUILD
        state = pop()
        self._build(self._top(), state)
      elif op in (0x50, 0x51):  # PERSID, BINPERSID
        pid = self._readline().decode('ascii', 'replace') if op == 0x50 else pop()
        if self._persistent_load is None:
          raise FormatError('unexpected persistent id in pickle')
        push(self._persistent_load(pid))
      elif op in (0x69, 0x6F):  # INST, OBJ
        if op == 0x69:
          module = self._readline().decode('utf-8', 'replace')
          name = self._readline().decode('utf-8', 'replace')
          cls = self._find_global(module, name)
          args = self._pop_mark()
        else:
          items = self._pop_mark()
          if not items:
            raise FormatError('OBJ without a class')
          cls, args = items[0], items[1:]
        self._stack.append(self._newobj(cls, self._tuple(args), None))
      else:
        raise FormatError(f'unsupported pickle opcode 0x{op:02x} at offset '
                          f'{self.pos - 1}')

  def _newobj(self, cls: Any, args: Any, kwargs: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, Placeholder):
      return self._call(cls, args, kwargs)
    if isinstance(cls, Callable) and self._newobj_ok(cls):
      return self._call(cls, args, kwargs)
    raise FormatError(f'refusing to create an instance of {_short(cls)}')


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def _short(obj: Any) -> str:
  """A short, bounded repr (never recursing into deep structures)."""
  if isinstance(obj, type) and issubclass(obj, Placeholder):
    return f'{obj.module}.{obj.qualname}'[:80]
  try:
    text = _REPR.repr(obj)
  except Exception:  # pylint: disable=broad-except
    text = type(obj).__name__
  return text if len(text) <= 80 else text[:77] + '...'


def bounded_int(value: Any, what: str, limit: int = 2**62) -> int:
  """An int in [0, limit) (bools refused), or FormatError naming ``what``."""
  if type(value) is not int:  # pylint: disable=unidiomatic-typecheck
    raise FormatError(f'{what} is {_short(value)}, not an integer')
  if not 0 <= value < limit:
    raise FormatError(f'{what} is out of range ({_short(value)})')
  return value

