"""The async client: :func:`connect` gives a :class:`Client`, under trio or asyncio.

How replies find their request, liveness and lag are in connection.py; this module adds
the async I/O. The trio backend drives the socket through ``kernelsup.adapters.zmqio``; the
asyncio one uses pyzmq's own ``zmq.asyncio``. :func:`connect` picks by ``sniffio`` (so it
also works under anyio on either). :class:`SyncClient` (sync_client.py) is re-exported
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import sniffio
import trio
import zmq
import zmq.asyncio

from kernelsup.adapters import zmqio
from kernelsup.control.connection import (
    CLEANUP_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    Address,
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
from kernelsup.control.sync_client import SyncClient, SyncSession
from kernelsup.core import protocol as proto
from kernelsup.core.config import Config
from kernelsup.core.errors import (
    ClientError,
    KernelsupError,
    ProtocolError,
    Unreachable,
    raise_lone,
)
from kernelsup.core.events import Event
from kernelsup.core.results import ExecuteResult, StatusReport

if sys.version_info < (3, 11):  # pragma: no cover - trio brings the backport there
    from exceptiongroup import BaseExceptionGroup

# --- async I/O backends ----------------------------------------------------------------


class _IO(Protocol):
    def now(self) -> float: ...
    async def send(self, frames: list[bytes]) -> None: ...
    def new_waiter(self) -> tuple[Callable[[], None], Callable[[float], Awaitable[None]]]: ...
    async def shielded(self, fn: Callable[[], Awaitable[Any]], seconds: float) -> None: ...
    def running(
        self,
        on_frames: Callable[[list[bytes]], None],
        on_error: Callable[[KernelsupError], None],
    ) -> contextlib.AbstractAsyncContextManager[None]: ...


class _TrioIO:
    def __init__(self, endpoint: str) -> None:
        self.sock = zmqio.Socket(dealer(zmqio.context(), endpoint))

    def now(self) -> float:
        return trio.current_time()

    async def send(self, frames: list[bytes]) -> None:
        await self.sock.send_multipart(frames)

    def new_waiter(self) -> tuple[Callable[[], None], Callable[[float], Awaitable[None]]]:
        event = trio.Event()

        async def wait(seconds: float) -> None:
            with trio.move_on_after(seconds):
                await event.wait()

        return event.set, wait

    async def shielded(self, fn: Callable[[], Awaitable[Any]], seconds: float) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(seconds):
            await fn()

    @asynccontextmanager
    async def running(
        self, on_frames: Callable[[list[bytes]], None], on_error: Callable[[KernelsupError], None]
    ) -> AsyncIterator[None]:
        async def read() -> None:
            try:
                while True:
                    on_frames(await self.sock.recv_multipart())
            except trio.ClosedResourceError:
                on_error(ClientError("the client was closed", code="client_closed"))
            except zmq.ZMQError as exc:
                on_error(Unreachable(f"the connection failed: {exc}"))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_lone(group)
            raise
        finally:
            self.sock.close()


class _AsyncioIO:
    def __init__(self, endpoint: str) -> None:
        ctx = zmq.asyncio.Context.shadow(zmqio.context().underlying)
        self.sock = dealer(ctx, endpoint)
        self._loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    async def send(self, frames: list[bytes]) -> None:
        await self.sock.send_multipart(frames)

    def new_waiter(self) -> tuple[Callable[[], None], Callable[[float], Awaitable[None]]]:
        event = asyncio.Event()

        async def wait(seconds: float) -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)

        return event.set, wait

    async def shielded(self, fn: Callable[[], Awaitable[Any]], seconds: float) -> None:
        task = asyncio.ensure_future(fn())
        try:
            await asyncio.wait_for(asyncio.shield(task), seconds)
        except asyncio.TimeoutError:
            task.cancel()

    @asynccontextmanager
    async def running(
        self, on_frames: Callable[[list[bytes]], None], on_error: Callable[[KernelsupError], None]
    ) -> AsyncIterator[None]:
        async def read() -> None:
            try:
                while True:
                    on_frames(await self.sock.recv_multipart())
            except zmq.ZMQError as exc:
                on_error(Unreachable(f"the connection failed: {exc}"))

        task = self._loop.create_task(read())
        try:
            yield
        finally:
            task.cancel()
            try:
                await asyncio.wait([task])
            finally:
                self.sock.close(linger=0)


# --- the async client ------------------------------------------------------------------


class Client:
    """A connection to a running supervisor, for trio and asyncio programs.

    Get one from :func:`connect`. The methods match the in-process ``Supervisor``'s and
    may be used from many tasks at once. Every method raises :class:`Unreachable` if the
    supervisor stops answering, :class:`AuthenticationError` if it no longer accepts our
    key; a method whose caller is cancelled cancels the request (an execute's kernel is
    interrupted).
    """

    def __init__(self, conn: Connection, io: _IO) -> None:
        self._conn = conn
        self._io = io

    @property
    def endpoint(self) -> str:
        return self._conn.endpoint

    # -- plumbing --

    async def _begin(self, request: proto.Request) -> tuple[str, Inbox, float]:
        rid, frames, inbox = self._conn.begin(request)
        try:
            await self._io.send(frames)
        except BaseException:
            self._conn.inboxes.pop(rid, None)
            raise
        return rid, inbox, self._io.now()

    async def _next(
        self, inbox: Inbox, started: float, deadline: float | None = None
    ) -> proto.Reply:
        while True:
            reply = inbox.take()
            if reply is not None:
                return reply
            inbox.wake, wait = self._io.new_waiter()
            await wait(self._conn.remaining(started, deadline))

    async def _end(self, rid: str, inbox: Inbox) -> None:
        """Forget the request; if it is not finished, ask the server to cancel it (even
        while the caller is being cancelled: shielded, bounded)."""
        self._conn.inboxes.pop(rid, None)
        if not inbox.done and self._conn.broken is None:
            _, frames = self._conn.codec.encode_request(proto.Cancel(rid))
            with contextlib.suppress(KernelsupError, trio.ClosedResourceError, zmq.ZMQError):
                await self._io.shielded(lambda: self._io.send(frames), CLEANUP_TIMEOUT_S)

    async def _final(self, request: proto.Request) -> proto.Reply:
        """Send ``request`` and wait for its final reply (skipping anything streamed)."""
        rid, inbox, started = await self._begin(request)
        try:
            while True:
                reply = await self._next(inbox, started)
                if isinstance(reply, proto.FINAL_REPLIES):
                    return reply
        finally:
            await self._end(rid, inbox)

    async def _call(self, request: proto.Request) -> dict[str, Any]:
        return final_value(await self._final(request))

    async def _hello(self, seconds: float) -> None:
        rid, inbox, started = await self._begin(proto.Hello())
        try:
            reply = await self._next(inbox, started, deadline=started + seconds)
            self._conn.welcome(final_value(reply))
        finally:
            await self._end(rid, inbox)

    # -- the Supervisor's methods --

    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> ExecuteResult:
        """Run ``code``; the result's ``status`` says how it went (kernel trouble is never
        raised). ``timeout`` defaults to the pool's ``exec_timeout``."""
        return execute_result(
            await self._final(proto.Execute(code, pool, session, timeout, stream=False)), session
        )

    async def stream(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield each :class:`Output` as it arrives, then the final ExecuteResult.

        A reader that falls more than ``STREAM_BUFFER`` behind gets a ``notice`` output
        named ``lagged`` with the count skipped (``metadata["dropped"]``); the final
        result has everything. Leaving the loop early cancels the request (the kernel is
        interrupted); under trio, wrap the loop in ``contextlib.aclosing(...)`` when you
        may leave it early, so that happens at once (and trio does not warn)."""
        rid, inbox, started = await self._begin(
            proto.Execute(code, pool, session, timeout, stream=True)
        )
        try:
            while True:
                reply = await self._next(inbox, started)
                if isinstance(reply, proto.OutputMsg):
                    yield reply.output
                elif isinstance(reply, proto.Lagged):
                    yield lag_output(reply.dropped)
                elif isinstance(reply, proto.FINAL_REPLIES):
                    yield execute_result(reply, session)
                    return
        finally:
            await self._end(rid, inbox)

    @asynccontextmanager
    async def session(
        self,
        name: str,
        *,
        pool: str | None = None,
    ) -> AsyncIterator[ClientSession]:
        """A named session for the block's duration, closed when it ends."""
        try:
            yield ClientSession(self, name, pool)
        finally:
            with contextlib.suppress(KernelsupError):
                await self._io.shielded(lambda: self.close_session(name), CLEANUP_TIMEOUT_S)

    async def close_session(self, name: str) -> bool:
        """Close a session (its kernel is shut down, never reused). False if unknown."""
        return bool((await self._call(proto.CloseSession(name))).get("closed"))

    async def status(self) -> StatusReport:
        return StatusReport.from_dict(await self._call(proto.Status()))

    async def interrupt(self, kernel_id: str) -> None:
        """Interrupt whatever the kernel runs. Raises Rejected (``unknown_kernel``...)."""
        await self._call(proto.Interrupt(kernel_id))

    async def restart(self, kernel_id: str) -> None:
        """Restart the kernel now; returns once it is starting. Raises Rejected."""
        await self._call(proto.Restart(kernel_id))

    async def server_stats(self) -> dict[str, Any]:
        """The control server's counters (refused messages, lagged clients...)."""
        return await self._call(proto.ServerStats())

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Event]]:
        """Events from the moment the block starts: on entry the subscription is in place.

        A reader that falls behind gets a ``lagged`` event with the count it missed."""
        rid, inbox, started = await self._begin(proto.Watch())
        try:
            reply = await self._next(inbox, started)
            if isinstance(reply, proto.FINAL_REPLIES):
                final_value(reply)
                raise ProtocolError("the server ended the watch at once", code="malformed")
            yield _Events(self, inbox, started)
        finally:
            await self._end(rid, inbox)

    async def watch(self) -> AsyncGenerator[Event, None]:
        """Follow the supervisor's events until the caller stops (or the supervisor does).
        To stop early under trio, prefer ``async with client.subscribe() as events``."""
        async with self.subscribe() as events:
            async for event in events:
                yield event


class _Events:
    """The events of one subscription (a plain iterator, so leaving a loop over it early
    leaves no generator to finalize; the subscription ends with its block)."""

    def __init__(self, client: Client, inbox: Inbox, started: float) -> None:
        self._client = client
        self._inbox = inbox
        self._started = started
        self._last: Event | None = None

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> Event:
        while not self._inbox.done:
            reply = await self._client._next(self._inbox, self._started)
            if isinstance(reply, proto.EventMsg):
                self._last = Event.from_dict(reply.event)
                return self._last
            if isinstance(reply, proto.Lagged):
                return lag_event(reply.dropped, self._last)
            if isinstance(reply, proto.FINAL_REPLIES):
                final_value(reply)  # an error (shutting_down) raises here
        raise StopAsyncIteration  # the supervisor stopped


@attrs.define
class ClientSession:
    """``execute``/``stream`` bound to one session name."""

    client: Client
    name: str
    pool: str | None = None

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
    ) -> ExecuteResult:
        return await self.client.execute(code, pool=self.pool, session=self.name, timeout=timeout)

    def stream(
        self, code: str, *, timeout: float | None = None
    ) -> AsyncGenerator[StreamItem, None]:
        return self.client.stream(code, pool=self.pool, session=self.name, timeout=timeout)


@asynccontextmanager
async def connect(
    target: Config | str | os.PathLike[str] = "supervisor.toml",
    *,
    timeout: float = CONNECT_TIMEOUT_S,
    key: bytes | str | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Client]:
    """Connect to the supervisor ``kernelsup run`` serves for ``target``.

    ``target`` is the config file's path (or a Config), or an endpoint (``ipc://...``
    finds its key file beside the socket; ``tcp://...`` needs ``key`` or ``key_file``).
    Works under trio and asyncio. Raises :class:`Unreachable`, naming the endpoint, if no
    supervisor answers within ``timeout`` seconds (at once if its key or socket file is
    missing), :class:`AuthenticationError` for a wrong key, :class:`ProtocolError`
    (``protocol_version``) for a server of another protocol version.
    """
    address = resolve(target, key=key, key_file=key_file)
    probe(address.endpoint)
    library = sniffio.current_async_library()
    io: _TrioIO | _AsyncioIO
    if library == "trio":
        io = _TrioIO(address.endpoint)
    elif library == "asyncio":
        io = _AsyncioIO(address.endpoint)
    else:
        raise RuntimeError(f"kernelsup.connect works under trio or asyncio, not {library}")
    conn = Connection(address, io.now)
    async with io.running(conn.on_frames, conn.fail):
        client = Client(conn, io)
        await client._hello(timeout)
        try:
            yield client
        finally:
            conn.fail(
                ClientError(
                    f"the connection to {address.endpoint} is closed (the connect() block ended)",
                    code="client_closed",
                )
            )


__all__ = [
    "CONNECT_TIMEOUT_S",
    "Address",
    "Client",
    "ClientSession",
    "SyncClient",
    "SyncSession",
    "connect",
    "probe",
    "resolve",
]
