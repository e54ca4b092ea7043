"""What both clients share: finding the supervisor, one connection's bookkeeping (no I/O).

Theory of operation
-------------------
A client speaks core/protocol.py over one ZeroMQ DEALER socket to the control endpoint, with
the key from the 0600 key file beside it. Many requests share that connection. Each
request has an :class:`Inbox` keyed by its request id; whoever reads the socket (a
background task in the async client, the waiting call itself in the sync one) verifies
each reply and files it in its inbox (:meth:`Connection.on_frames`). An inbox keeps at
most ``STREAM_BUFFER`` outputs/events; past that they are counted and delivered as one
``lagged`` marker, while the final reply is kept aside and never dropped. The I/O is the
transports' (async_transport.py, sync_transport.py); the requests are client.py's.

Liveness: when a request ends with ``Unreachable``. A waiting client cannot see the
supervisor working, only hear it; so the rule is about the supervisor being there, not
about how soon it answers. A request waits for its reply, however long the supervisor
takes (stopped with SIGSTOP, its loop busy, its machine swapping), until one of these:

1. **The connection broke** after ``hello`` was answered: zmq reports the connection closed
   (a socket monitor on the client's DEALER). A unix or TCP connection closes when the
   supervisor process exits, however it dies, so a SIGKILLed supervisor is seen at once.
   Over TCP, zmq heartbeats (every ``TCP_HEARTBEAT_IVL_S``) also close a connection
   whose peer has answered none for ``TCP_HEARTBEAT_TIMEOUT_S``: a host that vanished.
   Every request in flight then fails: the server cancels what it had of them, so they
   may or may not have run.
2. **The supervisor process is gone** (IPC, same machine): when nothing was heard for
   ``QUIET_CHECK_S`` (or two of the server's ping intervals, if longer), and again every as
   long, the client looks at the process that served the endpoint when it connected
   (its pid from ``SO_PEERCRED`` on the probe connection, with its start time from
   /proc, so a reused pid is not mistaken for it). Missing, a zombie, or another process:
   gone. This catches what the monitor cannot (a connection held open by a leaked
   descriptor).
3. **No connection for** ``RECONNECT_WAIT_S``: a request sent while the connection is
   down (zmq reconnects by itself) waits that long for it to come back; over IPC it fails
   at once if the supervisor process is gone.

The pid, not the socket file, is what is checked: a socket file that still accepts
connections proves nothing while the supervisor is stopped (the kernel queues
connections for it) and a new supervisor may have replaced it. A stalled supervisor is
never declared gone; bound your own wait (cancel the call, or trio's ``fail_after``) if
you need to. The server's pings (``ping_interval_s``, from ``hello``) still tell the
server a client is there, and reset the quiet clock here.

Leaving a call early (cancellation, Ctrl-C, breaking out of ``stream``) sends a
``cancel``; the server interrupts the kernel.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import zmq

from kernelsup.adapters import io_errors, runtime
from kernelsup.core import events as ev
from kernelsup.core import protocol as proto
from kernelsup.core.config import Config, load_config
from kernelsup.core.errors import (
    AuthenticationError,
    ClientError,
    KernelsupError,
    ProtocolError,
    Rejected,
    Unreachable,
)
from kernelsup.core.events import Event
from kernelsup.core.interface import StreamItem
from kernelsup.core.results import ExecuteResult, Output

# How long connecting waits for the server's answer to ``hello``.
CONNECT_TIMEOUT_S = 5.0
# A request that hears nothing for this long (at least; two ping intervals if the server
# pings less often) looks whether the supervisor process still exists (rule 2 above).
QUIET_CHECK_S = 2.0
# How long a request waits for a connection that is down to come back (rule 3).
RECONNECT_WAIT_S = 5.0
# zmq heartbeats on a TCP connection: a ping this often, and a peer that answers none for
# the timeout is gone (rule 1). Generous: a supervisor stopped for a while is not gone.
TCP_HEARTBEAT_IVL_S = 2.0
TCP_HEARTBEAT_TIMEOUT_S = 60.0
# The zmq connection events the client follows (rule 1).
MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
# Outputs/events one request may hold unread before they are counted instead (the final
# result is always complete).
STREAM_BUFFER = 256
# Bound on a clean-up exchange (closing a session) when the block that opened it ends.
CLEANUP_TIMEOUT_S = 10.0
# How long a plain connect() to an IPC socket file may take to be refused, retrying every
# PROBE_RETRY_S while the listen backlog is full.
PROBE_TIMEOUT_S = 1.0
PROBE_RETRY_S = 0.005


# --- finding the supervisor ----------------------------------------------------------


@attrs.frozen
class Address:
    """Where a supervisor listens and the key it signs with."""

    endpoint: str
    key: bytes = attrs.field(repr=False)
    source: str = ""


def resolve(
    target: Config | str | os.PathLike[str] = "supervisor.toml",
    *,
    key: bytes | str | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> Address:
    """The endpoint and key for ``target``: a config (object or path) or an endpoint.

    For a config, the endpoint is the one the running server wrote beside its key (else
    the configured one) and the key is read from its key file. For an ``ipc://`` endpoint
    the key file is ``control.key`` beside the socket; a ``tcp://`` endpoint needs
    ``key`` or ``key_file``. Raises ConfigError (bad config), Unreachable (no key file:
    no supervisor is running) or ClientError (``key_missing``).
    """
    explicit = key.encode() if isinstance(key, str) else key
    if not isinstance(target, Config):
        text = os.fspath(target)
        if text.startswith(("ipc://", "tcp://")):
            return _resolve_endpoint(text, explicit, key_file)
        target = load_config(text)
    source = target.source or "<config>"
    rdir = runtime.runtime_dir_for(target, create=False)
    endpoint = runtime.control_endpoint(target)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        written = (rdir / proto.ENDPOINT_FILE).read_text().strip()
        if written:
            endpoint = written
    if explicit is None:
        kfile = Path(key_file) if key_file is not None else runtime.key_file(target)
        explicit = _read_key(kfile, endpoint, f"start one with: kernelsup run {source}")
    return Address(endpoint, explicit, source)


def _resolve_endpoint(
    endpoint: str, key: bytes | None, kfile: str | os.PathLike[str] | None
) -> Address:
    if key is None:
        if kfile is None:
            if not endpoint.startswith("ipc://"):
                raise ClientError(
                    f"{endpoint}: a tcp endpoint needs key= or key_file= (or "
                    "connect with the config file's path)",
                    code="key_missing",
                    endpoint=endpoint,
                )
            kfile = Path(endpoint[len("ipc://") :]).with_name("control.key")
        key = _read_key(Path(kfile), endpoint, "is the supervisor running?")
    return Address(endpoint, key, endpoint)


def _read_key(path: Path, endpoint: str, hint: str) -> bytes:
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        raise Unreachable(
            f"no supervisor at {endpoint}: its key file {path} does not exist ({hint})",
            endpoint=endpoint,
            key_file=str(path),
        ) from None
    except OSError as exc:
        raise Unreachable(
            f"cannot read the key file {path} for {endpoint}: {exc.strerror or exc}",
            endpoint=endpoint,
            key_file=str(path),
        ) from None
    if not key:
        raise Unreachable(
            f"the key file {path} for {endpoint} is empty", endpoint=endpoint, key_file=str(path)
        )
    return key


@attrs.frozen
class ServerProcess:
    """The process serving an IPC endpoint, as this client's machine sees it."""

    pid: int
    started: str  # field 22 of /proc/PID/stat: its start time, in clock ticks since boot

    @classmethod
    def of(cls, pid: int) -> ServerProcess | None:
        state = _proc_stat(pid)
        return None if state is None else cls(pid, state[1])

    def alive(self) -> bool:
        """Whether it still exists: not gone, not a zombie, not a new process on its pid."""
        state = _proc_stat(self.pid)
        return state is not None and state[0] not in ("Z", "X", "x") and state[1] == self.started


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parens
    return (fields[0], fields[19]) if len(fields) > 19 else None


def probe(endpoint: str) -> ServerProcess | None:
    """Fail fast (Unreachable) if an IPC endpoint's socket file is missing or nobody
    listens on it; else the process listening on it (None if it cannot be seen from here:
    another pid namespace, no /proc). Blocks at most PROBE_TIMEOUT_S; None for TCP."""
    if not endpoint.startswith("ipc://"):
        return None
    name = endpoint[len("ipc://") :]
    address = "\0" + name[1:] if name.startswith("@") else name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    try:
        while True:
            try:
                sock.connect(address)
                break
            except BlockingIOError:
                # The listen backlog is full: someone listens, busy (a flood, or a
                # supervisor stopped for now). zmq's own connect will wait for it.
                if time.monotonic() > deadline:
                    return None
                time.sleep(PROBE_RETRY_S)
            except OSError as exc:
                raise io_errors.map_error(exc, "probe", endpoint) from None
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
    finally:
        sock.close()
    pid = struct.unpack("3i", creds)[0]
    return ServerProcess.of(pid) if pid > 0 else None


# --- one request's replies -----------------------------------------------------------


@attrs.define
class _Lag:
    dropped: int


class Inbox:
    """Replies to one request, filed by the reader, taken by the caller."""

    def __init__(self, limit: int = STREAM_BUFFER) -> None:
        self._items: collections.deque[proto.Reply | _Lag] = collections.deque()
        self._streamed = 0
        self._limit = limit
        self._final: proto.Reply | None = None
        self._failure: KernelsupError | None = None
        self.done = False
        self.wake: Callable[[], None] | None = None

    def push(self, reply: proto.Reply) -> None:
        if isinstance(reply, proto.FINAL_REPLIES):
            self._final = reply
        elif isinstance(reply, proto.Lagged):
            self._lag(reply.dropped)
        elif isinstance(reply, (proto.OutputMsg, proto.EventMsg)):
            if self._streamed >= self._limit:
                self._lag(1)
            else:
                self._items.append(reply)
                self._streamed += 1
        else:
            self._items.append(reply)
        self._notify()

    def fail(self, exc: KernelsupError) -> None:
        if self._failure is None:
            self._failure = exc
        self._notify()

    def take(self) -> proto.Reply | None:
        """The next reply in order (the final one last), None if there is none yet;
        raises the connection's failure once the replies that came before it are taken."""
        if self._items:
            item = self._items.popleft()
            if isinstance(item, _Lag):
                return proto.Lagged(item.dropped)
            if isinstance(item, (proto.OutputMsg, proto.EventMsg)):
                self._streamed -= 1
            return item
        if self._final is not None:
            final, self._final = self._final, None
            self.done = True
            return final
        if self._failure is not None:
            self.done = True
            raise self._failure
        return None

    def _lag(self, n: int) -> None:
        if self._items and isinstance(self._items[-1], _Lag):
            self._items[-1].dropped += n
        else:
            self._items.append(_Lag(n))

    def _notify(self) -> None:
        if self.wake is not None:
            self.wake()


class Connection:
    """What both clients share: the codec, the inboxes, dispatch and liveness."""

    def __init__(
        self, address: Address, now: Callable[[], float], server: ServerProcess | None = None
    ) -> None:
        self.endpoint = address.endpoint
        self.codec = proto.Codec(address.key)
        self.inboxes: dict[str, Inbox] = {}
        self.now = now
        self.last_heard = now()
        self.quiet_check_s = QUIET_CHECK_S
        self.broken: KernelsupError | None = None
        self.max_bytes: int | None = None  # the server's limit, from hello
        self.server = server  # the supervisor process (IPC), for rule 2
        self.up = False  # the zmq connection is established (rule 1)
        self.down_since = now()
        self.welcomed = False  # hello was answered: a broken connection now fails requests

    def on_frames(self, frames: list[bytes]) -> None:
        self.last_heard = self.now()
        try:
            received = self.codec.decode_reply(frames)
        except AuthenticationError:
            # Only the server is connected to us: it signs with another key now, so it
            # was restarted. Nothing more it sends can be trusted.
            self.fail(
                AuthenticationError(
                    f"the server at {self.endpoint} signs with another key: it was restarted; "
                    "connect again",
                    endpoint=self.endpoint,
                )
            )
            return
        except ProtocolError:  # a reply that failed to verify or decode: dropped
            return
        if isinstance(received.reply, proto.Notice):
            self.fail(_notice_error(received.reply))
            return
        if received.request_id is None:
            return  # a ping
        inbox = self.inboxes.get(received.request_id)
        if inbox is not None:
            inbox.push(received.reply)

    def on_monitor(self, event: int) -> None:
        """Take in a zmq connection event of the DEALER (see MONITOR_EVENTS)."""
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.up = True
        elif event == zmq.EVENT_DISCONNECTED:
            was_up, self.up = self.up, False
            self.down_since = self.now()
            if was_up and self.welcomed:
                self.lose(
                    Unreachable(
                        f"the connection to the supervisor at {self.endpoint} broke (it "
                        "exited, or closed the connection): the requests in flight may or "
                        "may not have run",
                        endpoint=self.endpoint,
                    )
                )

    def unmonitored(self) -> None:
        """No connection events can be had (the monitor could not be made): take the
        connection as up, and rely on rule 2."""
        self.up = True

    def fail(self, exc: KernelsupError) -> None:
        """The connection is unusable from now on: every request fails with ``exc``."""
        self.broken = exc
        self.lose(exc)

    def lose(self, exc: KernelsupError) -> None:
        """The requests in flight are lost (later ones may still be sent)."""
        for inbox in list(self.inboxes.values()):
            inbox.fail(exc)

    def begin(self, request: proto.Request) -> tuple[str, list[bytes], Inbox]:
        if self.broken is not None:
            raise self.broken
        rid, frames = self.codec.encode_request(request)
        size = sum(len(f) for f in frames)
        if self.max_bytes is not None and size > self.max_bytes:
            # Sent anyway, zmq would drop the connection without a word (MAXMSGSIZE).
            raise ProtocolError(
                f"the request is {size} bytes; the supervisor at "
                f"{self.endpoint} accepts at most {self.max_bytes} "
                "([server] max_message_bytes)",
                code="oversized",
                size=size,
            )
        inbox = self.inboxes[rid] = Inbox()
        return rid, frames, inbox

    def remaining(self, started: float, deadline: float | None) -> float:
        """Seconds the caller may wait before looking again (see the rules at the top);
        raises Unreachable when the supervisor is gone."""
        now = self.now()
        if deadline is not None:
            if now >= deadline:
                raise Unreachable(
                    f"no answer from the supervisor at {self.endpoint} within the connect "
                    "timeout (is it running, and not at its max_connections?)",
                    endpoint=self.endpoint,
                )
            return deadline - now
        if not self.up:
            self._check_alive()
            down_for = now - max(self.down_since, started)
            if down_for >= RECONNECT_WAIT_S:
                raise Unreachable(
                    f"no connection to the supervisor at {self.endpoint} for {down_for:.1f} s",
                    endpoint=self.endpoint,
                )
            return min(RECONNECT_WAIT_S - down_for, self.quiet_check_s)
        quiet_since = max(self.last_heard, started)
        left = quiet_since + self.quiet_check_s - now
        if left <= 0:
            self._check_alive()
            self.last_heard = now  # alive: look again after another quiet spell
            return self.quiet_check_s
        return left

    def _check_alive(self) -> None:
        if self.server is not None and not self.server.alive():
            raise Unreachable(
                f"the supervisor at {self.endpoint} is gone (its process {self.server.pid} "
                "no longer exists)",
                endpoint=self.endpoint,
                pid=self.server.pid,
            )

    def welcome(self, value: dict[str, Any]) -> None:
        """Take in the server's answer to hello."""
        self.welcomed = True
        interval = value.get("ping_interval_s")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval > 0:
            self.quiet_check_s = max(QUIET_CHECK_S, 2 * float(interval))
        limit = value.get("max_message_bytes")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self.max_bytes = limit


def _notice_error(notice: proto.Notice) -> KernelsupError:
    """A notice as the error to raise: a refused connection is Rejected (retry later)."""
    if notice.code == "too_many_connections":
        return Rejected(
            f"the supervisor refused the connection: {notice.message}", code=notice.code
        )
    return proto.notice_error(notice)


def final_value(reply: proto.Reply) -> dict[str, Any]:
    if isinstance(reply, proto.Error):
        raise reply.to_exception()
    if isinstance(reply, proto.Result):
        return reply.value
    raise ProtocolError(f"unexpected {reply.TYPE} reply", code="malformed")


def execute_result(reply: proto.Reply, session: str | None) -> ExecuteResult:
    """An execute's final reply as its result: a refusal (``server_busy``, the server
    ``shutting_down``) is a ``rejected`` result, as in-process, not an exception."""
    try:
        return ExecuteResult.from_dict(final_value(reply))
    except Rejected as exc:
        return ExecuteResult("rejected", code=exc.code, message=exc.message, session=session)


def lag_output(dropped: int) -> Output:
    return Output(
        "notice",
        name="lagged",
        text=f"{dropped} outputs were not streamed (the reader fell behind); "
        "the final result has them",
        metadata={"dropped": dropped},
    )


def lag_event(dropped: int, last: Event | None) -> Event:
    return Event(
        ev.LAGGED,
        time.time(),
        None,
        None,
        {"dropped": dropped},
        last.seq if last is not None else 0,
    )


def dealer(ctx: Any, conn: Connection) -> tuple[Any, Any | None]:
    """A DEALER socket connected to ``conn``'s endpoint, and the PAIR socket receiving its
    MONITOR_EVENTS (attached before connecting, so no event is missed), or None if no
    monitor can be made: the connection is then taken as up (:meth:`Connection.unmonitored`)
    and only rule 2 applies."""
    sock = ctx.socket(zmq.DEALER)
    mon = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if conn.endpoint.startswith("tcp://"):
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(TCP_HEARTBEAT_IVL_S * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(TCP_HEARTBEAT_TIMEOUT_S * 1000))
        try:
            mon = sock.get_monitor_socket(MONITOR_EVENTS)
        except zmq.ZMQError:
            conn.unmonitored()
        with io_errors.map_exceptions("connect", conn.endpoint):
            sock.connect(conn.endpoint)
    except BaseException:
        if mon is not None:
            mon.close(linger=0)
        sock.close(linger=0)
        raise
    return sock, mon


def monitor_event(frames: list[bytes]) -> int:
    """The event number of a monitor message (its first frame: a 16-bit event, a 32-bit
    value); 0 for anything else."""
    if not frames or len(frames[0]) < 2:
        return 0
    event: int = struct.unpack("=H", frames[0][:2])[0]
    return event


__all__ = [
    "CONNECT_TIMEOUT_S",
    "QUIET_CHECK_S",
    "RECONNECT_WAIT_S",
    "STREAM_BUFFER",
    "Address",
    "Connection",
    "Inbox",
    "ServerProcess",
    "StreamItem",
    "dealer",
    "monitor_event",
    "probe",
    "resolve",
]
