"""Snapshots of a session's namespace: the requests that save and restore it, and what
they report.

The work happens inside the kernel (core/kernel_snapshot.py, shipped as source); this
module only writes the one-line requests that run it and reads the JSON reports it leaves
in files the supervisor named. Pure: no I/O here beyond reading that module's own source.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import attrs

MAX_REPORT_BYTES = 1 << 20  # a report names at most MAX_REPORTED names of MAX_REASON chars


@cache
def _source() -> tuple[str, str]:
    """The kernel-side module's source, and the name it is kept under in the kernel's
    ``sys.modules`` (with a digest of the source: a kernel never runs a stale copy)."""
    import hashlib
    import inspect  # here: clients import this module for its records, not for this

    from kernelsup.core import kernel_snapshot

    source = inspect.getsource(kernel_snapshot)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return source, f"_kernelsup_snapshot_{digest}"


# Runs in a private dict (``G``: the user's globals, ``SRC``, ``NAME``, ``ARGS``): the
# kernel-side module is compiled once per kernel, kept in sys.modules, then called.
_BOOT = """\
import sys
m = sys.modules.get(NAME)
if m is None:
    import types
    m = types.ModuleType(NAME)
    exec(compile(SRC, "<kernelsup-snapshot>", "exec"), m.__dict__)
    sys.modules[NAME] = m
getattr(m, FUNCTION)(G, *ARGS)
"""


def _call(function: str, *args: object) -> str:
    """A request that runs ``function`` of the kernel-side module on the user's globals,
    leaving no name behind in the user's namespace."""
    source, name = _source()
    return (
        f"exec({_BOOT!r}, {{'G': globals(), 'SRC': {source!r}, 'NAME': {name!r}, "
        f"'FUNCTION': {function!r}, 'ARGS': {args!r}}})"
    )


def save_request(path: str, report_path: str, max_bytes: int, timeout: float) -> str:
    """The code that saves the user namespace to ``path`` within the bounds."""
    return _call("save", path, report_path, int(max_bytes), float(timeout))


def load_request(path: str, report_path: str) -> str:
    """The code that restores ``path`` into the user namespace."""
    return _call("load", path, report_path)


def read_report(text: str) -> dict[str, Any]:
    """A report file's JSON object; ValueError names what is wrong with it."""
    if len(text) > MAX_REPORT_BYTES:
        raise ValueError(f"snapshot report is {len(text)} bytes (at most {MAX_REPORT_BYTES})")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("snapshot report is not a JSON object")
    return data


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(v) for v in value)


def _reasons(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


@attrs.frozen
class SnapshotInfo:
    """One snapshot of a session: what it holds and what it left out (name: reason)."""

    id: str
    session: str
    bytes: int
    names: tuple[str, ...]
    skipped: dict[str, str] = attrs.field(factory=dict)
    modules: tuple[str, ...] = ()
    created: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session": self.session,
            "bytes": self.bytes,
            "names": list(self.names),
            "skipped": dict(self.skipped),
            "modules": list(self.modules),
            "created": self.created,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: object) -> SnapshotInfo:
        if not isinstance(data, dict):
            raise ValueError("snapshot info is not an object")
        return cls(
            id=str(data.get("id", "")),
            session=str(data.get("session", "")),
            bytes=int(data.get("bytes", 0)),
            names=_names(data.get("names")),
            skipped=_reasons(data.get("skipped")),
            modules=_names(data.get("modules")),
            created=float(data.get("created", 0.0)),
            seconds=float(data.get("seconds", 0.0)),
        )

    @classmethod
    def from_report(
        cls, report: dict[str, Any], *, id: str, session: str, created: float
    ) -> SnapshotInfo:
        return cls(
            id=id,
            session=session,
            bytes=int(report.get("bytes", 0)),
            names=_names(report.get("names")),
            skipped=_reasons(report.get("skipped")),
            modules=_names(report.get("modules")),
            created=created,
            seconds=float(report.get("seconds", 0.0)),
        )


@attrs.frozen
class RestoreInfo:
    """A snapshot loaded into a session's kernel: the names that came back, and those that
    did not with the reason (a module that no longer imports...)."""

    session: str
    snapshot_id: str
    restored: tuple[str, ...]
    not_restored: dict[str, str] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "snapshot_id": self.snapshot_id,
            "restored": list(self.restored),
            "not_restored": dict(self.not_restored),
        }

    @classmethod
    def from_dict(cls, data: object) -> RestoreInfo:
        if not isinstance(data, dict):
            raise ValueError("restore info is not an object")
        return cls(
            session=str(data.get("session", "")),
            snapshot_id=str(data.get("snapshot_id", "")),
            restored=_names(data.get("restored")),
            not_restored=_reasons(data.get("not_restored")),
        )

    @classmethod
    def from_report(cls, report: dict[str, Any], *, session: str, snapshot_id: str) -> RestoreInfo:
        return cls(
            session=session,
            snapshot_id=snapshot_id,
            restored=_names(report.get("restored")),
            not_restored=_reasons(report.get("not_restored")),
        )


def failure(report: dict[str, Any], *, max_bytes: int, timeout: float) -> str | None:
    """Why a save report says the snapshot was not taken, in words; None if it was."""
    if report.get("ok") is True:
        return None
    reason = report.get("reason")
    if reason == "max_bytes":
        return f"the namespace is larger than checkpoint_max_bytes = {max_bytes}"
    if reason == "timeout":
        return f"saving took longer than checkpoint_timeout = {timeout} s"
    return f"the snapshot failed: {report.get('error', 'no report')}"
