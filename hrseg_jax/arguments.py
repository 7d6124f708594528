"""The argument parser of the commands that take argparse flags.

``python -m hrseg_jax.convert``, ``.export``, ``.summary``, ``.browse``,
``.deploy.latency`` and the ``scripts/*.py`` commands parse their flags with
:class:`ArgumentParser`, so that a bad flag reads as it does for
``python -m hrseg_jax.main``: one line on stderr, exit 2, instead of
argparse's usage block, and a misspelt flag names the flag it was probably
meant to be::

  error: unrecognized arguments: --formt onnx; did you mean --format? (see --help)

Flags are never abbreviated (``--overw`` is not ``--overwrite``), as absl
does not abbreviate them either.  ``--help`` prints argparse's own help.
"""
from __future__ import annotations

import argparse
import difflib
import sys


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` with one-line errors and no abbreviated flags.

  Errors found while parsing end in ``(see --help)``; those a command raises
  itself with :meth:`error` after parsing (its own checks of the values)
  are printed as given.  ``prog_in_errors``: start the line with the
  program's name (``launch_local.py: error: ...``), as the cluster
  launchers name themselves among the lines of the processes they start.
  """

  def __init__(self, *args, prog_in_errors: bool = False, **kwargs):
    kwargs['allow_abbrev'] = False
    super().__init__(*args, **kwargs)
    self.prog_in_errors = prog_in_errors
    self._parsing = False
    self._argv: list[str] = []

  def parse_known_args(self, args=None, namespace=None):
    was, self._parsing = self._parsing, True
    self._argv = list(sys.argv[1:] if args is None else args)
    try:
      return super().parse_known_args(args, namespace)
    finally:
      self._parsing = was

  def parse_args(self, args=None, namespace=None):
    parsed, extras = self.parse_known_args(args, namespace)
    if extras:
      self.unrecognized(extras)
    return parsed

  def option_strings(self) -> list[str]:
    """Every flag this parser takes (``--help`` included)."""
    return [o for action in self._actions for o in action.option_strings]

  def suggestion(self, flag: str) -> str | None:
    """The flag ``flag`` (``--formt``, ``--overw=1``) was probably meant to be."""
    flag = flag.split('=', 1)[0]
    known = self.option_strings()
    longer = [o for o in known if o.startswith(flag) and len(flag) > 2]
    if len(longer) == 1:   # an abbreviation
      return longer[0]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
    return close[0] if close else None

  def unrecognized(self, extras) -> None:
    """Exits with the line for arguments no flag or positional took."""
    message = f'unrecognized arguments: {" ".join(extras)}'
    flags = [a for a in extras if a.startswith('-') and a != '-']
    close = self.suggestion(flags[0]) if flags else None
    if close:
      message += f'; did you mean {close}?'
    was, self._parsing = self._parsing, True
    try:
      self.error(message)
    finally:
      self._parsing = was

  def error(self, message):
    """Prints ``error: MESSAGE`` as one line and exits with status 2."""
    if self._parsing and str(message).startswith('the following arguments are required'):
      # A misspelt required flag (--ro for --root) is named, not only the flag it lacks.
      given = self._argv[:self._argv.index('--')] if '--' in self._argv else self._argv
      known = self.option_strings()
      unknown = [a.split('=', 1)[0] for a in given
                 if a.startswith('--') and a.split('=', 1)[0] not in known]
      if unknown:
        self.unrecognized(unknown[:1])
    line = ' '.join(str(message).split())
    if self._parsing:
      line += ' (see --help)'
    prefix = f'{self.prog}: ' if self.prog_in_errors else ''
    self.exit(2, f'{prefix}error: {line}\n')
