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

Liveness: while a request is in flight the server sends something at least every
``ping_interval_s`` (it says which in ``hello``), so a request that hears nothing for
``silence_s`` ends with :class:`Unreachable` instead of waiting forever on a supervisor
that died. Leaving a call early (cancellation, Ctrl-C, breaking out of ``stream``) sends a
``cancel``; the server interrupts the kernel.
"""

from __future__ import annotations

import collections
import contextlib
import os
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
# A request that hears nothing from the server for this long (at least; 5 ping intervals
# if the server pings less often) ends with Unreachable: the supervisor is gone.
SILENCE_MIN_S = 10.0
# Outputs/events one request may hold unread before they are counted instead (the final
# result is always complete).
STREAM_BUFFER = 256
# Bound on a clean-up exchange (closing a session) when the block that opened it ends.
CLEANUP_TIMEOUT_S = 10.0
# How long a plain connect() to an IPC socket file may take to be refused.
PROBE_TIMEOUT_S = 1.0


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


def probe(endpoint: str) -> None:
    """Fail fast (Unreachable) if an IPC endpoint's socket file is missing or nobody
    listens on it. Blocks at most PROBE_TIMEOUT_S; a no-op for TCP."""
    io_errors.probe_ipc(endpoint, PROBE_TIMEOUT_S)


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

    def __init__(self, address: Address, now: Callable[[], float]) -> None:
        self.endpoint = address.endpoint
        self.codec = proto.Codec(address.key)
        self.inboxes: dict[str, Inbox] = {}
        self.now = now
        self.last_heard = now()
        self.silence_s = SILENCE_MIN_S
        self.broken: KernelsupError | None = None
        self.max_bytes: int | None = None  # the server's limit, from hello
        self.discarded = 0  # replies that failed to verify or decode

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
        except ProtocolError:
            self.discarded += 1
            return
        if isinstance(received.reply, proto.Notice):
            self.fail(proto.notice_error(received.reply))
            return
        if received.request_id is None:
            return  # a ping
        inbox = self.inboxes.get(received.request_id)
        if inbox is not None:
            inbox.push(received.reply)

    def fail(self, exc: KernelsupError) -> None:
        self.broken = exc
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
        """Seconds the caller may still wait; raises Unreachable when none are left."""
        now = self.now()
        if deadline is not None:
            if now >= deadline:
                raise Unreachable(
                    f"no answer from the supervisor at {self.endpoint} within the connect timeout",
                    endpoint=self.endpoint,
                )
            return deadline - now
        quiet_since = max(self.last_heard, started)
        left = quiet_since + self.silence_s - now
        if left <= 0:
            raise Unreachable(
                f"the supervisor at {self.endpoint} stopped answering "
                f"(nothing heard for {self.silence_s:g} s)",
                endpoint=self.endpoint,
            )
        return left

    def welcome(self, value: dict[str, Any]) -> None:
        """Take in the server's answer to hello."""
        interval = value.get("ping_interval_s")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval > 0:
            self.silence_s = max(SILENCE_MIN_S, 5 * float(interval))
        limit = value.get("max_message_bytes")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self.max_bytes = limit


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


def dealer(ctx: Any, endpoint: str) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        with io_errors.map_exceptions("connect", endpoint):
            sock.connect(endpoint)
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = [
    "CONNECT_TIMEOUT_S",
    "SILENCE_MIN_S",
    "STREAM_BUFFER",
    "Address",
    "Connection",
    "Inbox",
    "StreamItem",
    "probe",
    "resolve",
]
