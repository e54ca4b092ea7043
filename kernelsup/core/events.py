"""Structured events: the kinds, the :class:`Event` value and its one-line description.

Pure data: the bus that carries events between actors is :mod:`kernelsup.tree.bus`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from kernelsup.core.errors import ProtocolError

# --- event kinds (the ``event`` field of the JSON form) --------------------------------

KERNEL_STARTING = "kernel_starting"  # (optional: restarts)
KERNEL_STARTED = "kernel_started"  # pid, start_s
KERNEL_EXITED = "kernel_exited"  # cause (ExitCause.to_dict()), text, restarts
KERNEL_START_FAILED = "kernel_start_failed"  # cause, message
RESTART_SCHEDULED = "restart_scheduled"  # delay, attempt, next_try (wall clock)
GAVE_UP = "gave_up"  # reason
POOL_ESCALATED = "pool_escalated"  # reason
POOL_RESTARTED = "pool_restarted"  # (optional: reason)
SUPERVISOR_READY = "supervisor_ready"  # kernels, endpoint
SUPERVISOR_STOPPING = "supervisor_stopping"  # reason
SESSION_OPENED = "session_opened"  # session
SESSION_CLOSED = "session_closed"  # session (optional: reason)
LAGGED = "lagged"  # dropped (made by the bus, per subscriber)

ALL_KINDS: frozenset[str] = frozenset(
    {
        KERNEL_STARTING,
        KERNEL_STARTED,
        KERNEL_EXITED,
        KERNEL_START_FAILED,
        RESTART_SCHEDULED,
        GAVE_UP,
        POOL_ESCALATED,
        POOL_RESTARTED,
        SUPERVISOR_READY,
        SUPERVISOR_STOPPING,
        SESSION_OPENED,
        SESSION_CLOSED,
        LAGGED,
    }
)

# The envelope of the JSON form; event data sits beside it, so it may not reuse these.
RESERVED_KEYS: frozenset[str] = frozenset({"event", "time", "seq", "pool", "kernel_id"})

# --- sizes ------------------------------------------------------------------------------

# Holds a one_for_all restart of a 50-kernel pool (about 5 events a kernel) for a consumer
# that is busy for a moment; an event is under 1 KB, so this is under 256 KB.
DEFAULT_SUBSCRIBER_BUFFER = 256
# No subscriber may pin more than this many events (about 50 MB at worst), whoever asks.
MAX_SUBSCRIBER_BUFFER = 65_536
# Enough for `status` to show the last few lifecycle events of every kernel of a large
# pool, for under 256 KB.
RECENT_EVENTS = 256
# The log should be complete: this rides out a terminal or pipe that stalls for seconds
# during a restart storm, for under 4 MB.
LOG_BUFFER = 4096


# --- the event --------------------------------------------------------------------------


def _json_copy(value: object, path: str) -> Any:
    """A copy of ``value`` if it is JSON-ready; TypeError/ValueError naming ``path`` if not."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} has no JSON form")
        return value
    if isinstance(value, list):
        return [_json_copy(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: key {key!r} is not a string")
            copy[key] = _json_copy(item, f"{path}.{key}")
        return copy
    raise TypeError(
        f"{path}: {type(value).__name__} is not JSON-ready "
        "(use None, bool, int, float, str, list or dict)"
    )


def _freeze_data(data: Mapping[str, Any]) -> Mapping[str, Any]:
    copy = _json_copy(data, "data")
    if not isinstance(copy, dict):
        raise TypeError(f"data: expected a mapping, got {type(data).__name__}")
    clash = RESERVED_KEYS.intersection(copy)
    if clash:
        raise ValueError(f"data: keys {sorted(clash)} are reserved for the envelope")
    return MappingProxyType(copy)


@attrs.frozen
class Event:
    """One thing that happened, as published on the :class:`EventBus`.

    ``data`` is a read-only copy of JSON-ready values (checked on construction);
    ``seq`` is assigned by the bus and increases by one per published event.
    """

    kind: str
    time: float
    pool: str | None = None
    kernel_id: str | None = None
    data: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_freeze_data, hash=False, repr=lambda d: repr(dict(d))
    )
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"event", "time", "seq", "pool", "kernel_id", **data}``."""
        return {
            "event": self.kind,
            "time": self.time,
            "seq": self.seq,
            "pool": self.pool,
            "kernel_id": self.kernel_id,
            **self.data,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        """Parse the JSON form back; raises :class:`ProtocolError` if it is malformed.

        Unknown kinds are accepted (a newer server may send them); ``describe()`` shows
        them generically.
        """

        def bad(reason: str) -> ProtocolError:
            return ProtocolError(f"malformed event: {reason}", field=reason.split(":")[0])

        if not isinstance(d, Mapping):
            raise ProtocolError(f"malformed event: expected an object, got {type(d).__name__}")
        missing = sorted(RESERVED_KEYS.difference(d))
        if missing:
            raise bad(f"{missing[0]}: missing")
        kind, t, seq = d["event"], d["time"], d["seq"]
        if not isinstance(kind, str):
            raise bad(f"event: expected a string, got {kind!r}")
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise bad(f"time: expected a number, got {t!r}")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise bad(f"seq: expected an integer, got {seq!r}")
        for key in ("pool", "kernel_id"):
            if d[key] is not None and not isinstance(d[key], str):
                raise bad(f"{key}: expected a string or null, got {d[key]!r}")
        data = {k: v for k, v in d.items() if k not in RESERVED_KEYS}
        try:
            return cls(kind, float(t), d["pool"], d["kernel_id"], data, seq)
        except (TypeError, ValueError) as exc:
            raise bad(str(exc)) from None

    def describe(self) -> str:
        """One line for humans: ``12:01:02.345 default-0 exited signal(9) (restarts 1)``.

        Local wall-clock time to the millisecond, then the kernel (or ``pool NAME``), then
        what happened. Line breaks inside data are escaped, so this is always one line.
        """
        subject = self.kernel_id or (f"pool {self.pool}" if self.pool else "")
        fmt = _PREDICATES.get(self.kind)
        predicate = fmt(self.data) if fmt else _generic(self.kind, self.data)
        line = " ".join(part for part in (_clock(self.time), subject, predicate) if part)
        return line.translate(_ONE_LINE)


# --- describe() -------------------------------------------------------------------------

# Every character str.splitlines() breaks on, mapped to its escape.
_ONE_LINE = {
    ord(c): c.encode("unicode_escape").decode("ascii")
    for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
}

_Data = Mapping[str, Any]


def _clock(t: float) -> str:
    try:
        whole = math.floor(t)
        return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{int((t - whole) * 1000):03d}"
    except (OverflowError, OSError, ValueError):
        return repr(t)


def _s(d: _Data, key: str) -> str:
    value = d.get(key)
    return "?" if value is None else str(value)


def _secs(d: _Data, key: str) -> str:
    value = d.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f} s"
    return f"{_s(d, key)} s"


def _cause(d: _Data) -> str:
    cause = d.get("cause")
    text = d.get("text") or (cause.get("text") if isinstance(cause, Mapping) else None)
    return str(text) if text else "?"


def _start_failed(d: _Data) -> str:
    message = d.get("message")
    return f"start failed: {_cause(d)}" + (f": {message}" if message else "")


def _with(d: _Data, key: str, text: str, fmt: str) -> str:
    """``text``, plus ``fmt`` filled with ``d[key]`` when the event has that optional datum."""
    value = d.get(key)
    return text if value is None or value == "" else text + fmt.format(value)


def _ready(d: _Data) -> str:
    kernels = d.get("kernels")
    count = len(kernels) if isinstance(kernels, list) else _s(d, "kernels")
    return _with(d, "endpoint", f"supervisor ready: {count} kernels", ", endpoint {}")


def _generic(kind: str, d: _Data) -> str:
    """An unknown kind (from a newer server): the kind and its data as ``key=json``."""
    return " ".join([kind, *(f"{k}={json.dumps(v)}" for k, v in d.items())])


_PREDICATES: dict[str, Callable[[_Data], str]] = {
    KERNEL_STARTING: lambda d: _with(d, "restarts", "starting", " (restarts {})"),
    KERNEL_STARTED: lambda d: f"started pid {_s(d, 'pid')} in {_secs(d, 'start_s')}",
    KERNEL_EXITED: lambda d: f"exited {_cause(d)} (restarts {_s(d, 'restarts')})",
    KERNEL_START_FAILED: _start_failed,
    RESTART_SCHEDULED: lambda d: (
        f"restart scheduled in {_secs(d, 'delay')} (attempt {_s(d, 'attempt')})"
    ),
    GAVE_UP: lambda d: f"gave up: {_s(d, 'reason')}",
    POOL_ESCALATED: lambda d: f"escalated: {_s(d, 'reason')}",
    POOL_RESTARTED: lambda d: _with(d, "reason", "restarted", ": {}"),
    SUPERVISOR_READY: _ready,
    SUPERVISOR_STOPPING: lambda d: f"supervisor stopping: {_s(d, 'reason')}",
    SESSION_OPENED: lambda d: f"session {_s(d, 'session')} opened",
    SESSION_CLOSED: lambda d: _with(d, "reason", f"session {_s(d, 'session')} closed", ": {}"),
    LAGGED: lambda d: f"lagged: {_s(d, 'dropped')} events dropped",
}
