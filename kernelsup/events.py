"""Structured events and the bounded event bus.

Theory of operation
-------------------
Actors report what happens to kernels, pools and the supervisor with
:meth:`EventBus.publish`, which is synchronous and never blocks: it stamps the event with
the next ``seq`` and the wall-clock time, keeps it in a small ring for
:meth:`EventBus.recent`, and offers it to every subscriber with ``send_nowait`` into that
subscriber's own bounded trio memory channel.

A subscriber whose buffer is full misses the event, and only that subscriber does: the
bus counts the miss and remembers the last event missed. The count becomes one synthetic
``lagged`` event (``dropped=N``) at the first moment the subscriber can take it, in its
place in the stream:

* at the next publish that finds room: the ``lagged`` event goes in first, then the new
  event if there is still room (if not, that event starts a new count);
* or, when nothing more is published, as soon as the subscriber has emptied its buffer and
  asks for more, so a burst followed by silence is still reported.

While a count is pending nothing newer is queued ahead of it. So each subscriber receives
events in publish order, and ``events received + sum of lagged.dropped`` equals the events
published while it was subscribed. A ``lagged`` event carries the ``seq`` and ``time`` of
the last event it stands for, which keeps ``seq`` strictly increasing in every stream.

Memory is bounded by the subscriber buffers plus the ring; a slow subscriber costs
``publish`` one look at its buffer and never delays anyone else.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, TextIO

import attrs
import trio

from kernelsup.errors import ConfigError, ProtocolError

# --- event kinds (the ``event`` field of the JSON form) --------------------------------

KERNEL_STARTING = "kernel_starting"          # (optional: restarts)
KERNEL_STARTED = "kernel_started"            # pid, start_s
KERNEL_EXITED = "kernel_exited"              # cause (ExitCause.to_dict()), text, restarts
KERNEL_START_FAILED = "kernel_start_failed"  # cause, message
RESTART_SCHEDULED = "restart_scheduled"      # delay, attempt, next_try (wall clock)
GAVE_UP = "gave_up"                          # reason
POOL_ESCALATED = "pool_escalated"            # reason
POOL_RESTARTED = "pool_restarted"            # (optional: reason)
SUPERVISOR_READY = "supervisor_ready"        # kernels, endpoint
SUPERVISOR_STOPPING = "supervisor_stopping"  # reason
SUPERVISOR_GAVE_UP = "supervisor_gave_up"    # reason
STATE_CHANGED = "state_changed"              # state
SESSION_OPENED = "session_opened"            # session
SESSION_CLOSED = "session_closed"            # session (optional: reason)
LAGGED = "lagged"                            # dropped (made by the bus, per subscriber)

ALL_KINDS: frozenset[str] = frozenset({
    KERNEL_STARTING, KERNEL_STARTED, KERNEL_EXITED, KERNEL_START_FAILED, RESTART_SCHEDULED,
    GAVE_UP, POOL_ESCALATED, POOL_RESTARTED, SUPERVISOR_READY, SUPERVISOR_STOPPING,
    SUPERVISOR_GAVE_UP, STATE_CHANGED, SESSION_OPENED, SESSION_CLOSED, LAGGED,
})

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
    raise TypeError(f"{path}: {type(value).__name__} is not JSON-ready "
                    "(use None, bool, int, float, str, list or dict)")


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
    data: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_data, hash=False,
                                          repr=lambda d: repr(dict(d)))
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"event", "time", "seq", "pool", "kernel_id", **data}``."""
        return {"event": self.kind, "time": self.time, "seq": self.seq, "pool": self.pool,
                "kernel_id": self.kernel_id, **self.data}

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
_ONE_LINE = {ord(c): c.encode("unicode_escape").decode("ascii")
             for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}

_Data = Mapping[str, Any]


def _clock(t: float) -> str:
    try:
        whole = math.floor(t)
        return (time.strftime("%H:%M:%S", time.localtime(whole))
                + f".{int((t - whole) * 1000):03d}")
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
    RESTART_SCHEDULED: lambda d: (f"restart scheduled in {_secs(d, 'delay')}"
                                  f" (attempt {_s(d, 'attempt')})"),
    GAVE_UP: lambda d: f"gave up: {_s(d, 'reason')}",
    POOL_ESCALATED: lambda d: f"escalated: {_s(d, 'reason')}",
    POOL_RESTARTED: lambda d: _with(d, "reason", "restarted", ": {}"),
    SUPERVISOR_READY: _ready,
    SUPERVISOR_STOPPING: lambda d: f"supervisor stopping: {_s(d, 'reason')}",
    SUPERVISOR_GAVE_UP: lambda d: f"supervisor gave up: {_s(d, 'reason')}",
    STATE_CHANGED: lambda d: f"state {_s(d, 'state')}",
    SESSION_OPENED: lambda d: f"session {_s(d, 'session')} opened",
    SESSION_CLOSED: lambda d: _with(d, "reason", f"session {_s(d, 'session')} closed", ": {}"),
    LAGGED: lambda d: f"lagged: {_s(d, 'dropped')} events dropped",
}


# --- the bus ----------------------------------------------------------------------------


@attrs.frozen
class BusStats:
    """A snapshot of :attr:`EventBus.stats`.

    ``dropped`` counts every event any subscriber missed over the bus's life (gone
    subscribers included); ``subscribers`` maps each current subscriber's name to the
    events it has missed so far.
    """

    published: int
    dropped: int
    subscribers: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"published": self.published, "dropped": self.dropped,
                "subscribers": dict(self.subscribers)}


class Subscription:
    """One subscriber's view of an :class:`EventBus`; see :meth:`EventBus.subscribe`.

    An async iterator of :class:`Event` and a (sync) context manager: leaving the block,
    or :meth:`close`, unsubscribes. Iteration stops when the subscription or the bus is
    closed (after the events already buffered when the bus closed).
    """

    def __init__(self, bus: EventBus, name: str, buffer: int) -> None:
        self.name = name
        self.buffer = buffer
        self.dropped_total = 0
        self._bus = bus
        self._send, self._recv = trio.open_memory_channel[Event](buffer)
        self._pending = 0                 # missed since the last delivery
        self._last_missed: Event | None = None

    # -- the publishing side (called by EventBus.publish, never blocks) --

    def _offer(self, event: Event) -> bool:
        """Queue ``event`` or count it as missed. False if the receiver is gone."""
        try:
            if self._pending:
                st = self._send.statistics()
                if st.current_buffer_used >= st.max_buffer_size:
                    self._miss(event)
                    return True
                self._send.send_nowait(self._take_lag())
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self._miss(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _miss(self, event: Event) -> None:
        self._pending += 1
        self.dropped_total += 1
        self._last_missed = event

    def _take_lag(self) -> Event:
        last = self._last_missed
        assert last is not None and self._pending > 0
        lag = Event(LAGGED, last.time, None, None, {"dropped": self._pending}, last.seq)
        self._pending = 0
        self._last_missed = None
        return lag

    # -- the receiving side --

    async def receive(self) -> Event:
        """Wait for the next event (or a ``lagged`` one standing for those missed).

        Raises ``trio.EndOfChannel`` once the bus is closed and everything is delivered,
        ``trio.ClosedResourceError`` if this subscription was closed. Cancellable; a
        cancelled receive loses no event.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        event: Event | None = None
        try:
            event = self._recv.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            if not self._pending:
                raise
        if event is None:
            if not self._pending:
                return await self._recv.receive()
            # Buffer empty and misses pending: nothing newer was queued, so it is their turn.
            event = self._take_lag()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Unsubscribe and drop what is buffered; a task iterating stops. Idempotent."""
        self._bus._forget(self)
        self._send.close()
        self._recv.close()
        self._pending = 0
        self._last_missed = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Subscription {self.name!r} buffer={self.buffer}"
                f" dropped_total={self.dropped_total}>")


class EventBus:
    """Structured events with bounded fan-out (see the module docstring).

    ``clock`` gives the wall-clock ``time`` of each event (``time.time``); ``recent`` is
    how many events :meth:`recent` keeps.
    """

    def __init__(self, *, recent: int = RECENT_EVENTS,
                 clock: Callable[[], float] = time.time) -> None:
        if recent < 0:
            raise ValueError(f"recent must be >= 0, got {recent}")
        self._clock = clock
        self._ring: deque[Event] = deque(maxlen=recent)
        self._subs: dict[str, Subscription] = {}
        self._seq = 0
        self._dropped_by_gone = 0
        self._names = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, kind: str, /, *, pool: str | None = None, kernel_id: str | None = None,
                **data: Any) -> Event:
        """Publish one event and return it. Synchronous; never blocks, never checkpoints.

        Raises ValueError for an unknown kind (or ``lagged``, which only the bus makes),
        a reserved key in ``data`` or a non-finite float; TypeError for data that is not
        JSON-ready. After :meth:`close`, events are still numbered and kept in the ring,
        but nobody receives them.
        """
        if kind not in ALL_KINDS or kind == LAGGED:
            raise ValueError(f"cannot publish event kind {kind!r}")
        event = Event(kind, self._clock(), pool, kernel_id, data, self._seq + 1)
        self._seq = event.seq
        self._ring.append(event)
        for sub in tuple(self._subs.values()):
            if not sub._offer(event):
                self._forget(sub)
        return event

    def subscribe(self, buffer: int = DEFAULT_SUBSCRIBER_BUFFER, *,
                  name: str | None = None) -> Subscription:
        """A new subscription that receives every event published from now on.

        ``buffer`` (1..MAX_SUBSCRIBER_BUFFER) is how many events may wait for it before it
        misses some (see the module docstring). ``name`` labels it in :attr:`stats`; a
        number is appended when missing or already taken. On a closed bus the
        subscription yields nothing.
        """
        if not 1 <= buffer <= MAX_SUBSCRIBER_BUFFER:
            raise ValueError(f"buffer must be in 1..{MAX_SUBSCRIBER_BUFFER}, got {buffer}")
        if name is None or name in self._subs:
            self._names += 1
            name = f"{name or 'subscriber'}-{self._names}"
        sub = Subscription(self, name, buffer)
        if self._closed:
            sub._send.close()
        else:
            self._subs[name] = sub
        return sub

    def recent(self, n: int | None = None) -> tuple[Event, ...]:
        """The last ``n`` events published (all kept if ``n`` is None), oldest first."""
        if n is None:
            return tuple(self._ring)
        if n <= 0:
            return ()
        return tuple(self._ring)[-n:]

    @property
    def stats(self) -> BusStats:
        live = {name: sub.dropped_total for name, sub in self._subs.items()}
        return BusStats(self._seq, self._dropped_by_gone + sum(live.values()),
                        MappingProxyType(live))

    def close(self) -> None:
        """End every subscription: each delivers what it holds, then stops. Idempotent."""
        self._closed = True
        for sub in tuple(self._subs.values()):
            sub._send.close()
            self._forget(sub)

    def _forget(self, sub: Subscription) -> None:
        if self._subs.get(sub.name) is sub:
            del self._subs[sub.name]
            self._dropped_by_gone += sub.dropped_total


# --- the log ----------------------------------------------------------------------------


def _open_append(path: str) -> TextIO:
    return open(path, "a", buffering=1, encoding="utf-8")  # line-buffered


class EventLog:
    """Writes events to a text stream and, if ``log_file`` is set, appends JSON lines to it.

    ``written`` counts events handled; ``errors`` counts outputs turned off because a
    write failed (a closed pipe, a full disk): the log never takes the supervisor down.
    """

    def __init__(self, log_file: str | os.PathLike[str] | None = None, *,
                 buffer: int = LOG_BUFFER) -> None:
        self.log_file = os.fspath(log_file) if log_file else None
        self.buffer = buffer
        self.written = 0
        self.errors = 0

    async def run(self, bus: EventBus, stream: TextIO | None = None, *,
                  json_lines: bool = False,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write every event from ``bus`` until it closes (or this task is cancelled).

        ``stream`` (stderr when None) gets ``describe()`` lines, or JSON lines with
        ``json_lines``. Signals started once subscribed and the file is open, so nothing
        published after ``nursery.start`` returns is missed. Raises ConfigError if the
        log file cannot be opened. Writes are plain blocking writes of one short line.
        """
        outputs: list[tuple[TextIO, bool]] = [(sys.stderr if stream is None else stream,
                                               json_lines)]
        file: TextIO | None = None
        if self.log_file:
            try:
                file = await trio.to_thread.run_sync(_open_append, self.log_file)
            except OSError as exc:
                raise ConfigError(
                    f"supervisor.log_file: cannot open {self.log_file!r}: "
                    f"{exc.strerror or exc}", path="$.supervisor.log_file",
                    log_file=self.log_file) from None
            outputs.append((file, True))
        try:
            with bus.subscribe(self.buffer, name="event-log") as sub:
                task_status.started()
                async for event in sub:
                    outputs = self._write(event, outputs)
                    if not outputs:
                        return
        finally:
            if file is not None:
                file.close()

    def _write(self, event: Event, outputs: list[tuple[TextIO, bool]]
               ) -> list[tuple[TextIO, bool]]:
        """Write ``event`` to each output; returns those that still work."""
        self.written += 1
        as_json: str | None = None
        working = []
        for out, use_json in outputs:
            if use_json:
                if as_json is None:
                    as_json = json.dumps(event.to_dict())
                line = as_json
            else:
                line = event.describe()
            try:
                out.write(line + "\n")
                out.flush()
            except (OSError, ValueError):  # ValueError: the stream was closed under us
                self.errors += 1
                continue
            working.append((out, use_json))
        return working
