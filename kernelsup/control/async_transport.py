"""The async client's I/O: one DEALER socket read by a background task, trio or asyncio.

:class:`~kernelsup.control.client.Client` does the protocol (connection.py keeps the
books); it only sends frames and waits through an :class:`AsyncTransport`. Under trio the
socket is driven by ``kernelsup.adapters.zmqio``; under asyncio by pyzmq's own
``zmq.asyncio``. :func:`open_transport` picks by ``sniffio``, so anyio on either works too.
While it is open, a task reads every reply and files it with
:meth:`Connection.on_frames <kernelsup.control.connection.Connection.on_frames>`, which
wakes the caller waiting on that request's inbox.

The blocking counterpart, for ``SyncClient``, is sync_transport.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import sniffio
import trio
import zmq
import zmq.asyncio

from kernelsup.adapters import io_errors, zmqio
from kernelsup.control.connection import CLEANUP_TIMEOUT_S, Address, Connection, Inbox, dealer
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
async def open_transport(address: Address) -> AsyncIterator[AsyncTransport]:
    """A transport to ``address`` for the running event loop (trio or asyncio), with its
    reader running for the block's duration; the socket is closed when the block ends."""
    library = sniffio.current_async_library()
    if library == "trio":
        async with _TrioTransport(address).running() as transport:
            yield transport
    elif library == "asyncio":
        async with _AsyncioTransport(address).running() as asyncio_transport:
            yield asyncio_transport
    else:
        raise RuntimeError(f"kernelsup.connect works under trio or asyncio, not {library}")


class _TrioTransport:
    def __init__(self, address: Address) -> None:
        self.conn = Connection(address, trio.current_time)
        self._sock = zmqio.Socket(dealer(zmqio.context(), address.endpoint))

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

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_lone(group)
            raise
        finally:
            self._sock.close()


class _AsyncioTransport:
    def __init__(self, address: Address) -> None:
        self._loop = asyncio.get_running_loop()
        self.conn = Connection(address, self._loop.time)
        ctx = zmq.asyncio.Context.shadow(zmqio.context().underlying)
        self._sock = dealer(ctx, address.endpoint)

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

        task = self._loop.create_task(read())
        try:
            yield self
        finally:
            task.cancel()
            try:
                await asyncio.wait([task])
            finally:
                self._sock.close(linger=0)


__all__ = ["AsyncTransport", "open_transport"]
