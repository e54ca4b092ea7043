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
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, TextIO

import attrs
import trio

from kernelsup.core.errors import ConfigError
from kernelsup.core.events import (
    ALL_KINDS,
    DEFAULT_SUBSCRIBER_BUFFER,
    LAGGED,
    LOG_BUFFER,
    MAX_SUBSCRIBER_BUFFER,
    RECENT_EVENTS,
    Event,
)

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
        return {
            "published": self.published,
            "dropped": self.dropped,
            "subscribers": dict(self.subscribers),
        }


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
        self._pending = 0  # missed since the last delivery
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Subscription {self.name!r} buffer={self.buffer} dropped_total={self.dropped_total}>"
        )


class EventBus:
    """Structured events with bounded fan-out (see the module docstring).

    ``clock`` gives the wall-clock ``time`` of each event (``time.time``); ``recent`` is
    how many events :meth:`recent` keeps.
    """

    def __init__(
        self, *, recent: int = RECENT_EVENTS, clock: Callable[[], float] = time.time
    ) -> None:
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

    def publish(
        self, kind: str, /, *, pool: str | None = None, kernel_id: str | None = None, **data: Any
    ) -> Event:
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

    def subscribe(
        self, buffer: int = DEFAULT_SUBSCRIBER_BUFFER, *, name: str | None = None
    ) -> Subscription:
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
        return BusStats(
            self._seq, self._dropped_by_gone + sum(live.values()), MappingProxyType(live)
        )

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

    def __init__(
        self, log_file: str | os.PathLike[str] | None = None, *, buffer: int = LOG_BUFFER
    ) -> None:
        self.log_file = os.fspath(log_file) if log_file else None
        self.buffer = buffer
        self.written = 0
        self.errors = 0

    async def run(
        self,
        bus: EventBus,
        stream: TextIO | None = None,
        *,
        json_lines: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write every event from ``bus`` until it closes (or this task is cancelled).

        ``stream`` (stderr when None) gets ``describe()`` lines, or JSON lines with
        ``json_lines``. Signals started once subscribed and the file is open, so nothing
        published after ``nursery.start`` returns is missed. Raises ConfigError if the
        log file cannot be opened. Writes are plain blocking writes of one short line.
        """
        outputs: list[tuple[TextIO, bool]] = [
            (sys.stderr if stream is None else stream, json_lines)
        ]
        file: TextIO | None = None
        if self.log_file:
            try:
                file = await trio.to_thread.run_sync(_open_append, self.log_file)
            except OSError as exc:
                raise ConfigError(
                    f"supervisor.log_file: cannot open {self.log_file!r}: {exc.strerror or exc}",
                    path="$.supervisor.log_file",
                    log_file=self.log_file,
                ) from None
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

    def _write(self, event: Event, outputs: list[tuple[TextIO, bool]]) -> list[tuple[TextIO, bool]]:
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
