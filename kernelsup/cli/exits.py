"""How a ``kernelsup`` command ends: its exit code and the error line it prints.

The numbers, and which error or result status exits with which, are data in
:mod:`kernelsup.core.codes` (``Exit``, ``CODES``, ``STATUSES``); every command takes them
from there through this module. Errors print as ``<CODE> <ErrorClass>: <message>`` on
stderr.
"""

from __future__ import annotations

import sys

from kernelsup.core.codes import Exit, exec_exit, exit_for
from kernelsup.core.errors import KernelsupError, SupervisorGaveUp, leaves


def fail(err: KernelsupError, exit_code: Exit | None = None) -> Exit:
    """Print ``err``'s line on stderr; return ``exit_code``, by default its code's row's."""
    print(err.describe(), file=sys.stderr, flush=True)
    return exit_for(err) if exit_code is None else exit_code


def supervisor_failure(exc: BaseException) -> KernelsupError | None:
    """The error to report when a supervisor run ended with ``exc`` (maybe a group): the
    root giving up if it did, else the first kernelsup error; None if there is none."""
    found = [e for e in leaves(exc) if isinstance(e, KernelsupError)]
    gave_up = [e for e in found if e.code == SupervisorGaveUp.code]
    first = gave_up or found
    return first[0] if first else None


__all__ = ["Exit", "exec_exit", "fail", "supervisor_failure"]
