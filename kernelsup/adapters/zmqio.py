"""trio <-> pyzmq: a trio-native wrapper around a synchronous ``zmq.Socket``.

This is the only module that knows zmq's file-descriptor rules.

Theory of operation
-------------------
A zmq socket is not a kernel socket. ``socket.FD`` is the socket's internal command
mailbox (an eventfd on Linux), and it is *edge-triggered* in a particular way:

* it becomes readable when commands arrive for the socket (a peer's messages became
  readable, a full pipe drained, the context is terminating...). It announces both
  directions: a writer waits for it to become *readable* too;
* every ``send``, every ``recv`` (successful or not) and every read of ``EVENTS`` drains
  that mailbox. Whatever those commands announced is now folded into ``EVENTS``, and the
  fd stays quiet until the *next* command arrives.

So the one rule: whoever touches the socket may swallow the edge that another task is
waiting for, and must therefore read ``EVENTS`` afterwards and wake that task if its
direction is ready. The naive adapter ("recv NOBLOCK, else wait_readable(FD)") breaks
this when one task sends while another waits to receive: a send eats the edge that
announced the last replies, and the receiver sleeps for ever.

How this module keeps the rule:

1. One lock per direction: at most one receiver and one sender are inside the socket.
2. An operation is always tried first with ``NOBLOCK``. Only on ``zmq.Again`` does the
   task park, in ``_wait``, and ``_wait`` first reads ``EVENTS`` (the failed attempt may
   have drained the mailbox). If that shows the direction ready, it retries instead.
3. A parked task sits in a ``CancelScope`` stored in ``self._parked[direction]``. Trio
   lets only one task wait readable on an fd, so exactly one parked task (the watcher)
   waits on ``FD``; the other, if any, sleeps. When the watcher wakes for any reason it
   wakes the sleeper too, so both re-check and one of them takes over the fd.
4. After every successful send and every successful recv, ``_refresh`` reads ``EVENTS``
   and cancels the scope of each parked task whose direction is ready: it retries.

Nothing polls on a timer. A message leaves the zmq socket only in the same step that
returns it, so a cancelled ``recv_multipart`` loses nothing, and a cancelled
``send_multipart`` has sent nothing (zmq sends a multipart message atomically: the high
water mark is checked on the first frame only).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import cast

import trio
import zmq

from kernelsup.adapters.io_errors import is_gone

__all__ = ["Socket", "context"]

_BOTH = zmq.POLLIN | zmq.POLLOUT


def context() -> zmq.Context[zmq.Socket[bytes]]:
    """The process-wide zmq context shared by every kernelsup socket."""
    return zmq.Context.instance()


class Socket:
    """A synchronous ``zmq.Socket`` driven from trio.

    The wrapper takes ownership: close it with :meth:`close` (or use it as a context
    manager), not the zmq socket. Options may be set on :attr:`zmq` directly, but every
    send, receive and ``EVENTS`` read must go through this wrapper, or parked tasks may
    never wake (see the theory of operation above).

    One task may receive while another sends; concurrent receivers (or senders) queue
    on a lock and take turns.
    """

    def __init__(self, zmq_socket: zmq.Socket[bytes]) -> None:
        self._sock = zmq_socket
        self._fd = cast(int, zmq_socket.getsockopt(zmq.FD))  # int options return int
        self._closed = False
        self._recv_lock = trio.Lock()
        self._send_lock = trio.Lock()
        # The parked task of each direction (zmq.POLLIN / zmq.POLLOUT) and whether one of
        # them is the watcher, the only task allowed in wait_readable(self._fd).
        self._parked: dict[int, trio.CancelScope] = {}
        self._watching = False

    @property
    def zmq(self) -> zmq.Socket[bytes]:
        """The underlying socket, for options and bind/connect (not for I/O)."""
        return self._sock

    @property
    def closed(self) -> bool:
        return self._closed

    async def send_multipart(self, frames: Sequence[bytes]) -> None:
        """Send one multipart message, waiting while the socket is at its high water mark.

        Raises ``trio.ClosedResourceError`` if the socket is or gets closed (also when its
        zmq context is terminated); other ``zmq.ZMQError`` propagate. Cancellable: if
        cancelled, nothing was sent.

        Not for a ROUTER with ROUTER_MANDATORY: its POLLOUT means *some* peer has room, so
        a send to one full peer would retry at every checkpoint instead of sleeping (and
        hold the send lock against everyone else); use :meth:`try_send_multipart`.
        """
        async with self._send_lock:
            while True:
                self._check_open()
                try:
                    self._sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    await self._wait(zmq.POLLOUT)
                    continue
                except zmq.ZMQError as exc:
                    _raise_if_gone(exc)
                    raise
                self._refresh()
                return

    def try_send_multipart(self, frames: Sequence[bytes]) -> bool:
        """Send now if zmq takes the message; False if the peer's pipe is full (EAGAIN).

        Never checkpoints and takes no lock, so it cannot wait behind another sender.
        Raises ``trio.ClosedResourceError`` if the socket is closed; other
        ``zmq.ZMQError`` propagate (on a ROUTER_MANDATORY socket, EHOSTUNREACH: that peer
        is gone)."""
        self._check_open()
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            _raise_if_gone(exc)
            raise
        finally:
            if not self._sock.closed:
                self._refresh()  # sent or not, the attempt may have eaten a reader's edge
        return True

    async def recv_multipart(self) -> list[bytes]:
        """Receive one multipart message, waiting until one arrives.

        Raises ``trio.ClosedResourceError`` if the socket is or gets closed (also when its
        zmq context is terminated); other ``zmq.ZMQError`` propagate. Cancellable: if
        cancelled, no message was taken off the socket.
        """
        async with self._recv_lock:
            while True:
                self._check_open()
                try:
                    frames: list[bytes] = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    await self._wait(zmq.POLLIN)
                    continue
                except zmq.ZMQError as exc:
                    _raise_if_gone(exc)
                    raise
                # No checkpoint from here on: the message is ours once it is returned.
                self._refresh()
                return frames

    def close(self, linger: int = 0) -> None:
        """Close the socket; idempotent, never blocks.

        Tasks blocked in send or receive on this socket wake with
        ``trio.ClosedResourceError``. ``linger`` (ms) is zmq's: how long unsent messages
        may keep the context busy after the close.
        """
        if self._closed:
            return
        self._closed = True
        if trio.lowlevel.in_trio_run() and not self._sock.closed:
            # Wakes the watcher with ClosedResourceError before the fd goes away. (If the
            # zmq socket was closed behind our back, its fd number may already be reused.)
            trio.lowlevel.notify_closing(self._fd)
        self._wake(_BOTH)  # the sleeper retries and finds the socket closed
        self._sock.close(linger=linger)

    def __enter__(self) -> Socket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("socket was closed")

    def _refresh(self) -> int:
        """Read EVENTS (which drains the fd's edge) and wake the parked tasks it concerns."""
        try:
            events = cast(int, self._sock.getsockopt(zmq.EVENTS))
        except zmq.ZMQError:
            events = _BOTH  # the socket is failing: let everyone retry and see the error
        self._wake(events)
        return events

    def _wake(self, events: int) -> None:
        for direction, scope in self._parked.items():
            if events & direction:
                scope.cancel()

    async def _wait(self, direction: int) -> None:
        """Wait until ``direction`` may be ready; the caller retries its operation.

        Called right after an attempt failed with ``zmq.Again``.
        """
        if self._refresh() & direction:
            await trio.lowlevel.checkpoint()
            return
        # No checkpoint between the EVENTS read above and parking below: any change
        # after that read makes the fd readable, so no edge can slip through.
        with trio.CancelScope() as scope:
            self._parked[direction] = scope
            try:
                if self._watching:
                    await trio.sleep_forever()  # the watcher or a _refresh wakes us
                else:
                    self._watching = True
                    try:
                        await trio.lowlevel.wait_readable(self._fd)
                    finally:
                        self._watching = False
                        self._wake(_BOTH & ~direction)  # the other task takes over
            finally:
                del self._parked[direction]


def _raise_if_gone(exc: zmq.ZMQError) -> None:
    """A socket or context that is gone is our caller's ClosedResourceError."""
    if is_gone(exc):
        raise trio.ClosedResourceError(f"zmq socket is gone: {exc}") from exc
