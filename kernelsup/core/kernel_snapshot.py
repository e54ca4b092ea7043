"""Saving and restoring a Python kernel's user namespace, run INSIDE the kernel.

Theory of operation. kernelsup never imports this module to use it: core/snapshots.py
ships its source text to a Python kernel as a silent request (no history, no execution
count, nothing printed) that defines these functions in a private dict and calls one of
them on the kernel's globals. So this module imports only the standard library (and
cloudpickle when the kernel's Python has it), and it reports through a small JSON file
the supervisor names, never through the kernel's output.

What is saved: every user-visible name except IPython's own (``In``, ``Out``, ``_``,
``_i3``, ``_3``, what the shell lists in ``user_ns_hidden``). A module is saved by its
import name and imported again on restore. Every other value goes into ONE pickle of a
dict, so two names that share an object still share it after a restore. A value that
cannot be pickled (an open file, a socket, a generator, a thread, a lock) is left out and
named with the reason; a snapshot that would pass ``max_bytes`` or ``timeout`` stops where
it is, keeps the previous snapshot, and says which bound it hit. Nothing is dropped without
being named. Files are replaced atomically but not fsynced: a snapshot outlives its
kernel's death (the point), not the machine's crash, and a checkpoint after every request
must not wait on the disk.

Why cloudpickle (not dill): it pickles what agents define interactively (functions,
lambdas, classes from ``__main__``) by value, it is the C pickler with a reducer hook (a
100 MB array is written at disk speed; dill's pure-Python pickler is several times slower),
and it is the serializer Ray, Dask and joblib depend on. (cloudpickle would "save" a file
opened for reading as a copy of its contents: open files are left out here, named, like
everything else that is a handle on this process.) Without it the
kernel falls back to the standard pickle, which refuses functions defined in the session:
they are then named in ``skipped``.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import sys
import time
import types
from typing import IO, Any

# IPython's own names in the user namespace: the output cache and input history.
_IPYTHON_NAMES = re.compile(r"_|__|___|_i|_ii|_iii|_i\d+|_\d+|_[oid]h|In|Out|exit|quit")
# What a report names at most: a namespace with more skipped names is summarized.
MAX_REPORTED = 1000
MAX_REASON = 200


class _Bound(Exception):
    """Raised by the writer when a bound is passed; ``what`` is "max_bytes" or "timeout"."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _BoundedWriter:
    """A file-like sink that counts bytes and time and stops the pickler at a bound."""

    def __init__(self, sink: IO[bytes] | None, max_bytes: int, deadline: float) -> None:
        self.sink = sink
        self.written = 0
        self.max_bytes = max_bytes
        self.deadline = deadline

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.written += n
        if self.written > self.max_bytes:
            raise _Bound("max_bytes")
        if time.monotonic() > self.deadline:
            raise _Bound("timeout")
        if self.sink is not None:
            self.sink.write(data)
        return n


def _pickler() -> tuple[Any, str]:
    try:
        import cloudpickle  # type: ignore[import-untyped]
    except ImportError:
        import pickle

        return pickle, "pickle"
    return cloudpickle, "cloudpickle"


def user_names(ns: dict[str, Any]) -> list[str]:
    """The names a user defined: not IPython's, not dunder, not hidden by the shell."""
    hidden: dict[str, Any] = {}
    shell = ns.get("get_ipython")
    if callable(shell):
        try:
            hidden = getattr(shell(), "user_ns_hidden", {}) or {}
        except Exception:
            hidden = {}
    names = []
    for name, value in ns.items():
        if not isinstance(name, str) or name.startswith("__") or _IPYTHON_NAMES.fullmatch(name):
            continue
        if name in hidden and hidden[name] is value:
            continue
        if name == "get_ipython":
            continue
        names.append(name)
    return sorted(names)


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _write_report(report_path: str, report: dict[str, Any]) -> None:
    for key in ("names", "modules", "restored"):
        if isinstance(report.get(key), list) and len(report[key]) > MAX_REPORTED:
            report[key + "_more"] = len(report[key]) - MAX_REPORTED
            report[key] = report[key][:MAX_REPORTED]
    for key in ("skipped", "not_restored"):
        named = report.get(key)
        if isinstance(named, dict) and len(named) > MAX_REPORTED:
            report[key + "_more"] = len(named) - MAX_REPORTED
            report[key] = dict(list(named.items())[:MAX_REPORTED])
    tmp = report_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(tmp, report_path)


def save(
    ns: dict[str, Any], path: str, report_path: str, max_bytes: int, timeout: float
) -> dict[str, Any]:
    """Pickle the user namespace ``ns`` to ``path`` (replaced atomically, only when the
    whole snapshot fits) and write what happened to ``report_path``; returns the report."""
    started = time.monotonic()
    deadline = started + timeout
    pickler, pickler_name = _pickler()
    modules: dict[str, str] = {}
    values: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in user_names(ns):
        value = ns[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
        elif isinstance(value, io.IOBase):
            skipped[name] = f"{type(value).__name__}: an open file is not saved (open it again)"
        else:
            values[name] = value
    report: dict[str, Any] = {"ok": False, "pickler": pickler_name, "skipped": skipped}
    tmp = path + ".tmp"
    try:
        try:
            _dump(pickler, {"modules": modules, "values": values}, tmp, max_bytes, deadline)
        except _Bound:
            raise
        except Exception:
            # Some value cannot be pickled: find which, alone, then save the rest together.
            for name in list(values):
                try:
                    pickler.dump(values[name], _BoundedWriter(None, max_bytes, deadline), 5)
                except _Bound:
                    raise
                except Exception as exc:
                    skipped[name] = _reason(exc)
                    del values[name]
            _dump(pickler, {"modules": modules, "values": values}, tmp, max_bytes, deadline)
    except _Bound as bound:
        _remove(tmp)
        report.update(reason=bound.what, seconds=time.monotonic() - started)
        _write_report(report_path, report)
        return report
    except Exception as exc:  # the disk, or a value whose pickling fails only in company
        _remove(tmp)
        report.update(reason="error", error=_reason(exc), seconds=time.monotonic() - started)
        _write_report(report_path, report)
        return report
    os.replace(tmp, path)
    report.update(
        ok=True,
        bytes=os.path.getsize(path),
        names=sorted(values),
        modules=sorted(modules),
        seconds=time.monotonic() - started,
    )
    _write_report(report_path, report)
    return report


def _dump(pickler: Any, obj: Any, tmp: str, max_bytes: int, deadline: float) -> None:
    with open(tmp, "wb") as f:
        pickler.dump(obj, _BoundedWriter(f, max_bytes, deadline), 5)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def load(ns: dict[str, Any], path: str, report_path: str) -> dict[str, Any]:
    """Restore what :func:`save` wrote to ``path`` into ``ns``; report ``restored`` names
    and ``not_restored`` {name: reason} to ``report_path``; returns the report."""
    started = time.monotonic()
    restored: list[str] = []
    not_restored: dict[str, str] = {}
    report: dict[str, Any] = {"ok": False, "restored": restored, "not_restored": not_restored}
    try:
        pickler, _ = _pickler()
        with open(path, "rb") as f:
            saved = pickler.load(f)
        modules, values = saved["modules"], saved["values"]
    except Exception as exc:
        report.update(reason="error", error=_reason(exc), seconds=time.monotonic() - started)
        _write_report(report_path, report)
        return report
    for name, module_name in modules.items():
        try:
            ns[name] = importlib.import_module(module_name)
            restored.append(name)
        except Exception as exc:
            not_restored[name] = _reason(exc)
    for name, value in values.items():
        ns[name] = value
        restored.append(name)
    restored.sort()
    report.update(ok=True, seconds=time.monotonic() - started, python=sys.version.split()[0])
    _write_report(report_path, report)
    return report
