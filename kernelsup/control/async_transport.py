"""The async client's I/O: one DEALER socket read by a background task, trio or asyncio.

:class:`~kernelsup.control.client.Client` does the protocol (connection.py keeps the
books); it only sends frames and waits through an :class:`AsyncTransport`. Under trio the
socket is driven by ``kernelsup.adapters.zmqio``; under asyncio by pyzmq's own
``zmq.asyncio``. :func:`open_transport` picks by ``sniffio``, so anyio on either works too.
While it is open, a task reads every reply and files it with
:meth:`Connection.on_frames <kernelsup.control.connection.Connection.on_frames>`, which
wakes the caller waiting on that request's inbox; another follows the socket's monitor
(the connection coming up or breaking: :meth:`Connection.on_monitor`), which fails the
requests in flight when the connection breaks.

The blocking counterpart, for ``SyncClient``, is sync_transport.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import sniffio
import trio
import zmq
import zmq.asyncio

from kernelsup.adapters import io_errors, zmqio
from kernelsup.control.connection import (
    CLEANUP_TIMEOUT_S,
    Address,
    Connection,
    Inbox,
    ServerProcess,
    dealer,
    monitor_event,
)
from kernelsup.core.errors import ClientError, KernelsupError, raise_lone

if sys.version_info < (3, 11):  # pragma: no cover - trio brings the backport there
    from exceptiongroup import BaseExceptionGroup


class AsyncTransport(Protocol):
    """What the async client awaits; one per connection."""

    @property
    def conn(self) -> Connection: ...
    async def send(self, frames: list[bytes]) -> None:
        """Send one request (waits while the socket cannot take it)."""

    async def wait(self, inbox: Inbox, seconds: float) -> None:
        """Return when ``inbox`` may hold a reply, or after ``seconds``."""

    async def send_cancel(self, frames: list[bytes]) -> None:
        """Send a ``cancel``, even while the caller is being cancelled (shielded, bounded);
        never raises: a connection that is gone has nothing to cancel."""

    async def shielded(self, fn: Callable[[], Awaitable[object]], seconds: float) -> None:
        """Run ``fn`` shielded from the caller's cancellation, for at most ``seconds``."""


@asynccontextmanager
async def open_transport(
    address: Address, server: ServerProcess | None = None
) -> AsyncIterator[AsyncTransport]:
    """A transport to ``address`` (served by ``server``, if known) for the running event
    loop (trio or asyncio), with its readers running for the block's duration; the socket
    is closed when the block ends."""
    library = sniffio.current_async_library()
    if library == "trio":
        async with _TrioTransport(address, server).running() as transport:
            yield transport
    elif library == "asyncio":
        async with _AsyncioTransport(address, server).running() as asyncio_transport:
            yield asyncio_transport
    else:
        raise RuntimeError(f"kernelsup.connect works under trio or asyncio, not {library}")


class _TrioTransport:
    def __init__(self, address: Address, server: ServerProcess | None) -> None:
        self.conn = Connection(address, trio.current_time, server)
        raw, mon = dealer(zmqio.context(), self.conn)
        self._sock = zmqio.Socket(raw)
        self._monitor = zmqio.Socket(mon) if mon is not None else None

    async def send(self, frames: list[bytes]) -> None:
        await self._sock.send_multipart(frames)

    async def wait(self, inbox: Inbox, seconds: float) -> None:
        event = trio.Event()
        inbox.wake = event.set
        with trio.move_on_after(seconds):
            await event.wait()

    async def send_cancel(self, frames: list[bytes]) -> None:
        with contextlib.suppress(KernelsupError, trio.ClosedResourceError, zmq.ZMQError):
            await self.shielded(lambda: self._sock.send_multipart(frames), CLEANUP_TIMEOUT_S)

    async def shielded(self, fn: Callable[[], Awaitable[object]], seconds: float) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(seconds):
            await fn()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[_TrioTransport]:
        async def read() -> None:
            try:
                while True:
                    self.conn.on_frames(await self._sock.recv_multipart())
            except trio.ClosedResourceError:
                self.conn.fail(ClientError("the client was closed", code="client_closed"))
            except zmq.ZMQError as exc:
                self.conn.fail(io_errors.map_error(exc, "io", self.conn.endpoint))

        async def follow(mon: zmqio.Socket) -> None:
            with contextlib.suppress(trio.ClosedResourceError, zmq.ZMQError):
                while True:
                    self.conn.on_monitor(monitor_event(await mon.recv_multipart()))
                    self._wake_all()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                if self._monitor is not None:
                    nursery.start_soon(follow, self._monitor)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_lone(group)
            raise
        finally:
            if self._monitor is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._sock.zmq.disable_monitor()
                self._monitor.close()
            self._sock.close()

    def _wake_all(self) -> None:
        """Wake every waiting caller: the connection changed, each looks again."""
        for inbox in list(self.conn.inboxes.values()):
            if inbox.wake is not None:
                inbox.wake()


class _AsyncioTransport:
    def __init__(self, address: Address, server: ServerProcess | None) -> None:
        self._loop = asyncio.get_running_loop()
        self.conn = Connection(address, self._loop.time, server)
        ctx = zmq.asyncio.Context.shadow(zmqio.context().underlying)
        self._sock, self._monitor = dealer(ctx, self.conn)

    async def send(self, frames: list[bytes]) -> None:
        await self._sock.send_multipart(frames)

    async def wait(self, inbox: Inbox, seconds: float) -> None:
        event = asyncio.Event()
        inbox.wake = event.set
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def send_cancel(self, frames: list[bytes]) -> None:
        with contextlib.suppress(KernelsupError, zmq.ZMQError):
            await self.shielded(lambda: self._sock.send_multipart(frames), CLEANUP_TIMEOUT_S)

    async def shielded(self, fn: Callable[[], Awaitable[object]], seconds: float) -> None:
        task = asyncio.ensure_future(fn())
        try:
            await asyncio.wait_for(asyncio.shield(task), seconds)
        except asyncio.TimeoutError:
            task.cancel()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[_AsyncioTransport]:
        async def read() -> None:
            try:
                while True:
                    self.conn.on_frames(await self._sock.recv_multipart())
            except zmq.ZMQError as exc:
                self.conn.fail(io_errors.map_error(exc, "io", self.conn.endpoint))

        async def follow(mon: Any) -> None:
            with contextlib.suppress(zmq.ZMQError):
                while True:
                    self.conn.on_monitor(monitor_event(await mon.recv_multipart()))
                    for inbox in list(self.conn.inboxes.values()):
                        if inbox.wake is not None:
                            inbox.wake()

        tasks = [self._loop.create_task(read())]
        if self._monitor is not None:
            tasks.append(self._loop.create_task(follow(self._monitor)))
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            try:
                await asyncio.wait(tasks)
            finally:
                if self._monitor is not None:
                    with contextlib.suppress(zmq.ZMQError):
                        self._sock.disable_monitor()
                    self._monitor.close(linger=0)
                self._sock.close(linger=0)


__all__ = ["AsyncTransport", "open_transport"]
