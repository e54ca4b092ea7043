"""The blocking client, :class:`SyncClient`, for plain synchronous code.

One thread, blocking zmq with timeouts, no event loop. The bookkeeping it shares with the
async client (inboxes, liveness, lag) is in connection.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import attrs
import zmq

from kernelsup.adapters import zmqio
from kernelsup.control.connection import (
    CONNECT_TIMEOUT_S,
    Connection,
    Inbox,
    StreamItem,
    dealer,
    execute_result,
    final_value,
    lag_event,
    lag_output,
    probe,
    resolve,
)
from kernelsup.core import protocol as proto
from kernelsup.core.config import Config
from kernelsup.core.errors import ClientError, KernelsupError, ProtocolError
from kernelsup.core.events import Event
from kernelsup.core.results import ExecuteResult, StatusReport


class SyncClient:
    """A blocking client for plain synchronous code: no event loop, one thread.

    ``SyncClient(target)`` connects at once (raising like ``kernelsup.connect``); use it as a
    context manager or call :meth:`close`. Methods are those of :class:`Client`, blocking;
    ``stream`` and ``watch`` are generators (closing one early cancels its request).
    Ctrl-C during a call cancels that request on the server (the kernel is interrupted).
    Not thread-safe.
    """

    def __init__(
        self,
        target: Config | str | os.PathLike[str] = "supervisor.toml",
        *,
        timeout: float = CONNECT_TIMEOUT_S,
        key: bytes | str | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        address = resolve(target, key=key, key_file=key_file)
        probe(address.endpoint)
        self._conn = Connection(address, time.monotonic)
        self._sock: zmq.Socket[bytes] = dealer(zmqio.context(), address.endpoint)
        try:
            rid, inbox, started = self._begin(proto.Hello())
            try:
                reply = self._next(inbox, started, deadline=started + timeout)
                self._conn.welcome(final_value(reply))
            finally:
                self._end(rid, inbox)
        except BaseException:
            self._sock.close(linger=0)
            raise

    @property
    def endpoint(self) -> str:
        return self._conn.endpoint

    def close(self) -> None:
        """Close the connection; later calls raise ClientError (``client_closed``)."""
        self._sock.close(linger=0)
        self._conn.fail(
            ClientError(f"the connection to {self.endpoint} is closed", code="client_closed")
        )

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing --

    def _begin(self, request: proto.Request) -> tuple[str, Inbox, float]:
        if self._sock.closed:
            raise ClientError("the client is closed", code="client_closed")
        rid, frames, inbox = self._conn.begin(request)
        started = self._conn.now()
        try:
            while True:
                try:
                    self._sock.send_multipart(frames, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    ms = int(self._conn.remaining(started, None) * 1000) + 1
                    self._sock.poll(ms, zmq.POLLOUT)
        except BaseException:
            self._conn.inboxes.pop(rid, None)
            raise
        return rid, inbox, started

    def _next(self, inbox: Inbox, started: float, deadline: float | None = None) -> proto.Reply:
        while True:
            reply = inbox.take()
            if reply is not None:
                return reply
            ms = int(self._conn.remaining(started, deadline) * 1000) + 1
            if self._sock.poll(ms, zmq.POLLIN):
                self._conn.on_frames(self._sock.recv_multipart())

    def _end(self, rid: str, inbox: Inbox) -> None:
        self._conn.inboxes.pop(rid, None)
        if not inbox.done and self._conn.broken is None and not self._sock.closed:
            _, frames = self._conn.codec.encode_request(proto.Cancel(rid))
            with contextlib.suppress(zmq.ZMQError):
                self._sock.send_multipart(frames, zmq.NOBLOCK)

    def _final(self, request: proto.Request) -> proto.Reply:
        rid, inbox, started = self._begin(request)
        try:
            while True:
                reply = self._next(inbox, started)
                if isinstance(reply, proto.FINAL_REPLIES):
                    return reply
        finally:
            self._end(rid, inbox)

    def _call(self, request: proto.Request) -> dict[str, Any]:
        return final_value(self._final(request))

    # -- the Supervisor's methods --

    def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> ExecuteResult:
        return execute_result(
            self._final(proto.Execute(code, pool, session, timeout, stream=False)), session
        )

    def stream(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[StreamItem]:
        rid, inbox, started = self._begin(proto.Execute(code, pool, session, timeout, stream=True))
        try:
            while True:
                reply = self._next(inbox, started)
                if isinstance(reply, proto.OutputMsg):
                    yield reply.output
                elif isinstance(reply, proto.Lagged):
                    yield lag_output(reply.dropped)
                elif isinstance(reply, proto.FINAL_REPLIES):
                    yield execute_result(reply, session)
                    return
        finally:
            self._end(rid, inbox)

    @contextlib.contextmanager
    def session(self, name: str, *, pool: str | None = None) -> Iterator[SyncSession]:
        try:
            yield SyncSession(self, name, pool)
        finally:
            with contextlib.suppress(KernelsupError):
                self.close_session(name)

    def close_session(self, name: str) -> bool:
        return bool(self._call(proto.CloseSession(name)).get("closed"))

    def status(self) -> StatusReport:
        return StatusReport.from_dict(self._call(proto.Status()))

    def interrupt(self, kernel_id: str) -> None:
        self._call(proto.Interrupt(kernel_id))

    def restart(self, kernel_id: str) -> None:
        self._call(proto.Restart(kernel_id))

    def server_stats(self) -> dict[str, Any]:
        return self._call(proto.ServerStats())

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Iterator[Event]]:
        rid, inbox, started = self._begin(proto.Watch())
        try:
            reply = self._next(inbox, started)
            if isinstance(reply, proto.FINAL_REPLIES):
                final_value(reply)
                raise ProtocolError("the server ended the watch at once", code="malformed")
            yield self._events(inbox, started)
        finally:
            self._end(rid, inbox)

    def _events(self, inbox: Inbox, started: float) -> Iterator[Event]:
        last: Event | None = None
        while True:
            reply = self._next(inbox, started)
            if isinstance(reply, proto.EventMsg):
                last = Event.from_dict(reply.event)
                yield last
            elif isinstance(reply, proto.Lagged):
                yield lag_event(reply.dropped, last)
            elif isinstance(reply, proto.FINAL_REPLIES):
                final_value(reply)
                return

    def watch(self) -> Iterator[Event]:
        with self.subscribe() as events:
            yield from events


@attrs.define
class SyncSession:
    client: SyncClient
    name: str
    pool: str | None = None

    def execute(self, code: str, *, timeout: float | None = None) -> ExecuteResult:
        return self.client.execute(code, pool=self.pool, session=self.name, timeout=timeout)

    def stream(self, code: str, *, timeout: float | None = None) -> Iterator[StreamItem]:
        return self.client.stream(code, pool=self.pool, session=self.name, timeout=timeout)


__all__ = ["SyncClient", "SyncSession"]
