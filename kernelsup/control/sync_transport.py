"""The blocking client's I/O: one DEALER socket, blocking zmq with timeouts, no event loop.

What :class:`~kernelsup.control.sync_client.SyncClient` calls where the async client
awaits its transport (async_transport.py). There is no reader in the background: the call
that waits reads the socket itself and files whatever arrives with
:meth:`Connection.on_frames <kernelsup.control.connection.Connection.on_frames>`, so a
reply to another request on the same connection waits in that request's inbox. It reads
the socket's monitor the same way (:meth:`Connection.on_monitor`).

Imports neither trio nor the trio adapters: blocking code needs no event loop library.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import zmq

from kernelsup.adapters import io_errors
from kernelsup.control.connection import (
    Address,
    Connection,
    Inbox,
    ServerProcess,
    dealer,
    monitor_event,
)
from kernelsup.core.errors import ClientError


class SyncTransport:
    """One connection's socket, for one thread."""

    def __init__(self, address: Address, server: ServerProcess | None = None) -> None:
        self.conn = Connection(address, time.monotonic, server)
        # The process-wide context (the one kernelsup.adapters.zmqio.context() returns).
        self._sock: zmq.Socket[bytes]
        self._monitor: zmq.Socket[bytes] | None
        self._sock, self._monitor = dealer(zmq.Context.instance(), self.conn)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        if self._monitor is not None:
            self._poller.register(self._monitor, zmq.POLLIN)

    def send(self, frames: list[bytes]) -> None:
        """Send one request, waiting while the supervisor is there (connection.py)."""
        started = self.conn.now()
        with io_errors.map_exceptions("io", self.conn.endpoint):
            while True:
                try:
                    self._sock.send_multipart(frames, zmq.NOBLOCK)
                    return
                except zmq.Again:
                    self._follow_monitor()
                    ms = int(self.conn.remaining(started, None) * 1000) + 1
                    self._sock.poll(ms, zmq.POLLOUT)

    def wait(self, inbox: Inbox, seconds: float) -> None:
        """Read and file one message if one comes within ``seconds`` (it may belong to
        another request: the caller looks at ``inbox`` again), and any connection events."""
        with io_errors.map_exceptions("io", self.conn.endpoint):
            ready = dict(self._poller.poll(int(seconds * 1000) + 1))
            self._follow_monitor()
            if self._sock not in ready:
                return
            frames = self._sock.recv_multipart()
        self.conn.on_frames(frames)

    def _follow_monitor(self) -> None:
        while self._monitor is not None and self._monitor.poll(0, zmq.POLLIN):
            self.conn.on_monitor(monitor_event(self._monitor.recv_multipart()))

    def send_cancel(self, frames: list[bytes]) -> None:
        """Send a ``cancel`` if the socket can take it now; never raises."""
        if not self._sock.closed:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.send_multipart(frames, zmq.NOBLOCK)

    def shielded(self, fn: Callable[[], object], seconds: float) -> None:
        """Run ``fn`` (blocking code has no cancellation to shield from; a call bounds its
        own wait)."""
        fn()

    def close(self) -> None:
        """Close the socket; later requests raise ClientError (``client_closed``)."""
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._monitor.close(linger=0)
        self._sock.close(linger=0)
        self.conn.fail(
            ClientError(f"the connection to {self.conn.endpoint} is closed", code="client_closed")
        )


__all__ = ["SyncTransport"]
