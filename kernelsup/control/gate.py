"""The gate: the control endpoint's listening socket, held by kernelsup in front of zmq.

Theory of operation
-------------------
libzmq aborts the whole process when ``accept`` on an IPC listener fails with EMFILE:
``ipc_listener_t::accept`` (src/ipc_listener.cpp, libzmq 4.3.5, the one pyzmq ships)
asserts that errno is EAGAIN, EINTR, ECONNABORTED, EPROTO or ENFILE, and EMFILE is not
among them ("Too many open files (src/ipc_listener.cpp:297)", then SIGABRT). Its TCP
listener lists EMFILE but then retries the pending connection on every turn of its loop.
So a flood of connections, or any moment the process is out of descriptors while a
connection waits, took every kernel and session down with the supervisor.

Hence no zmq socket of the supervisor listens. The gate does, on a plain socket (the
endpoint's unix socket file, or its TCP address), and decides what may come in before
zmq spends a descriptor on it:

* **admitted**: at most ``max_connections`` at once, and only while, with the
  connection's ``FDS_PER_CONNECTION``, ``FD_RESERVE`` descriptors stay free below
  RLIMIT_NOFILE (counted in /proc/self/fd), so the kernels' own sockets always find one.
  When an admitted connection speaks, the gate *relays* it to the server's ROUTER socket:
  it listens on a private socket file in the runtime directory, the ROUTER *connects* to
  it (zmq's connecting side never aborts; on EMFILE it just fails that connection), and
  the gate copies bytes both ways. Backpressure, disconnects (each side's close closes
  the other) and zmq's heartbeats pass through unchanged.
* **refused**: past the bound, the client is told why. The gate speaks just enough ZMTP
  3.0 (greeting, READY, then one message once the client's READY is in) to hand it a
  ``too_many_connections`` notice, which a kernelsup client raises as ``Rejected``.
* **evicted**: a connection that has sent nothing (a bare connect) gives its place to a
  new one when the gate is full, and is closed after ``SILENT_TIMEOUT_S`` anyway. A real
  client's zmq sends its greeting the moment it connects, so a flood of bare connects
  cannot lock clients out.

Out of descriptors all the same (the limit lowered under us, kernels restarting), accept
itself fails with EMFILE. The gate then frees the one descriptor it keeps in reserve,
accepts and closes the pending connection (counted as refused), takes the reserve back,
and if even that fails, waits ``SHED_BACKOFF_S`` instead of spinning.

Shutdown: the gate's tasks run in a shielded scope of their own (:attr:`Gate.scope`), so
the server's last replies still pass: :meth:`Gate.close_listener` stops admitting, the
ROUTER closes (zmq then closes its side of each relay once its queue is sent), and
:meth:`Gate.drain` waits a bounded time for the relays to end before cancelling the rest.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import resource
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from kernelsup.adapters.io_errors import map_exceptions
from kernelsup.core import protocol as proto

# Descriptors one relayed connection holds: the client's, the relay's end of the hop to
# zmq, and zmq's end; while it is being joined, also the relay's listening socket.
FDS_PER_CONNECTION = 4
# Descriptors no connection may take: a kernel restart opens about ten before it closes
# the old ones, and refusals in progress hold one each.
FD_RESERVE = 16
# Refusals told in ZMTP at once; more are closed without a word (each holds a descriptor
# for up to REFUSE_TIMEOUT_S).
MAX_REFUSING = 8
# How long a refused client has to send its greeting and READY and read the notice.
REFUSE_TIMEOUT_S = 1.0
# A connection that sends nothing for this long is closed (a zmq client speaks at once).
SILENT_TIMEOUT_S = 10.0
# A connection is evicted for silence only once it has had this long to speak: a real
# client's zmq greeting comes within milliseconds, a flood's never; without the grace a
# burst of real clients at the bound evicted each other (and they saw `unreachable`).
EVICT_GRACE_S = 0.5
# How long the ROUTER has to connect to an admitted connection's relay socket.
JOIN_TIMEOUT_S = 5.0
# Out of descriptors with nothing to free: wait this long before accepting again.
SHED_BACKOFF_S = 0.1
# Bytes copied per read in a relay (a socket buffer's worth).
RELAY_CHUNK = 256 * 1024
# Chunks a relay copies without waiting before it lets other tasks run.
RELAY_BURST = 16
# Pending connections the kernel queues before connect() waits.
LISTEN_BACKLOG = 128
# Connections decided on per wake-up before other tasks get a turn.
ACCEPT_BATCH = 64

_NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN})
_GONE = (OSError, trio.ClosedResourceError, trio.BrokenResourceError)


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE now (it may be changed under a running process)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files() -> int:
    """Descriptors this process holds now (Linux: /proc/self/fd); 0 if it cannot tell."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError:
        return 0


@attrs.define
class GateStats:
    """What the gate has seen; part of ``server_stats``."""

    connections_accepted: int = 0  # admitted
    connections_refused: int = 0  # past the bound or short of descriptors
    connections_evicted: int = 0  # silent ones closed to make room for a new one
    connections_silent_closed: int = 0  # closed after SILENT_TIMEOUT_S of silence
    relay_failures: int = 0  # admitted, but the ROUTER could not be joined to it


@attrs.define(eq=False)
class _Conn:
    id: int
    raw: socket.socket  # the same socket, for a non-blocking peek
    sock: trio.socket.SocketType
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    spoke: bool = False
    opened: float = attrs.field(factory=trio.current_time)


class Gate:
    """The endpoint's listener; :meth:`run` admits, relays, refuses and evicts."""

    def __init__(
        self,
        listener: socket.socket,
        relay_dir: Path,
        connect: Callable[[str], object],
        disconnect: Callable[[str], object],
        max_connections: int,
    ) -> None:
        """``connect``/``disconnect`` join the ROUTER to (and part it from) an
        ``ipc://`` relay endpoint in ``relay_dir``."""
        self._listener = listener
        self._listener.setblocking(False)
        self._relay_dir = relay_dir
        self._connect = connect
        self._disconnect = disconnect
        self.max_connections = max_connections
        self.stats = GateStats()
        self.scope = trio.CancelScope(shield=True)
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count(1)
        self._refusing = 0
        # One descriptor held back, freed to refuse a connection when accept says EMFILE.
        self._reserve: int | None = _open_reserve()
        self._closed = False
        self._changed = trio.Event()  # set when a connection ends (for drain)

    def snapshot(self) -> dict[str, Any]:
        return {
            **attrs.asdict(self.stats),
            "connections": len(self._conns),
            "max_connections": self.max_connections,
            "open_files": open_files(),
            "open_files_limit": open_files_limit(),
        }

    # ---------------------------------------------------------------- accepting
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept until the listener is closed, then wait for the relays (until
        :attr:`scope` is cancelled)."""
        with self.scope:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while not self._closed:
                    try:
                        await trio.lowlevel.wait_readable(self._listener)
                    except trio.ClosedResourceError:
                        break
                    for _ in range(ACCEPT_BATCH):
                        outcome = self._accept_one(nursery)
                        if outcome != "accepted":
                            break
                    if outcome == "out_of_descriptors":
                        await self._shed()

    def _accept_one(self, nursery: trio.Nursery) -> str:
        """Accept one pending connection and decide on it (no checkpoint in between)."""
        while True:
            try:
                raw, _ = self._listener.accept()
            except BlockingIOError:
                return "none"
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue
                if exc.errno in _NO_DESCRIPTORS:
                    return "out_of_descriptors"
                return "none"  # anything else: try again when the listener is readable
            self._admit(raw, nursery)
            return "accepted"

    async def _shed(self) -> None:
        """Out of descriptors with a connection pending: refuse it with the reserve, or
        if there is none to free, wait (a pending connection keeps the listener readable:
        without the wait this would spin)."""
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
            with contextlib.suppress(OSError):
                raw, _ = self._listener.accept()
                raw.close()
                self.stats.connections_refused += 1
            self._reserve = _open_reserve()
        if self._reserve is None:
            await trio.sleep(SHED_BACKOFF_S)
            self._reserve = _open_reserve()

    def _admit(self, raw: socket.socket, nursery: trio.Nursery) -> None:
        raw.setblocking(False)
        if len(self._conns) >= self.max_connections and not self._evict_one():
            self._refuse(
                raw,
                nursery,
                f"the supervisor has max_connections = {self.max_connections} connections "
                "open ([server] max_connections); retry later",
            )
            return
        if not self._descriptors_to_spare() and not (
            self._evict_one() and self._descriptors_to_spare()
        ):
            self._refuse(
                raw,
                nursery,
                f"the supervisor is short of file descriptors (open files limit "
                f"{open_files_limit()}, {open_files()} open); retry later",
            )
            return
        conn = _Conn(next(self._ids), raw, trio.socket.from_stdlib_socket(raw))
        self._conns[conn.id] = conn
        self.stats.connections_accepted += 1
        nursery.start_soon(self._serve, conn)

    def _forget(self, conn: _Conn) -> None:
        if self._conns.get(conn.id) is conn:
            del self._conns[conn.id]
            self._changed.set()

    @staticmethod
    def _descriptors_to_spare() -> bool:
        """Whether one more connection (already accepted, so one of its descriptors is
        counted) leaves FD_RESERVE free."""
        return open_files() + FDS_PER_CONNECTION - 1 + FD_RESERVE <= open_files_limit()

    def _evict_one(self) -> bool:
        """Close the oldest connection that has sent nothing; False if there is none."""
        now = trio.current_time()
        for conn in self._conns.values():
            if conn.spoke:
                continue
            peer = _peer(conn.raw)
            if peer == "data" or (peer == "quiet" and now - conn.opened < EVICT_GRACE_S):
                continue  # a client speaking, or one that has not had time to
            self._forget(conn)
            conn.scope.cancel()
            conn.sock.close()
            self.stats.connections_evicted += 1
            return True
        return False

    def _refuse(self, raw: socket.socket, nursery: trio.Nursery, why: str) -> None:
        self.stats.connections_refused += 1
        if self._refusing >= MAX_REFUSING:
            raw.close()
            return
        self._refusing += 1
        nursery.start_soon(self._tell_refused, trio.socket.from_stdlib_socket(raw), why)

    async def _tell_refused(self, sock: trio.socket.SocketType, why: str) -> None:
        try:
            with trio.move_on_after(REFUSE_TIMEOUT_S):
                greeting, frames = refusal(why)
                await _send_all(sock, greeting)
                if not await _read_greeting_and_command(sock):
                    return
                await _send_all(sock, frames)
                sock.shutdown(socket.SHUT_WR)
                while await sock.recv(4096):  # until the client hangs up
                    pass
        except _GONE:
            pass
        finally:
            self._refusing -= 1
            sock.close()

    # ---------------------------------------------------------------- relaying
    async def _serve(self, conn: _Conn) -> None:
        hop: trio.socket.SocketType | None = None
        endpoint: str | None = None
        try:
            with conn.scope:
                with trio.move_on_after(SILENT_TIMEOUT_S) as silent:
                    first = await conn.sock.recv(RELAY_CHUNK)
                if silent.cancelled_caught:
                    self.stats.connections_silent_closed += 1
                    return
                if not first:
                    return  # a probe, or a connect that hung up
                conn.spoke = True
                endpoint = f"ipc://{self._relay_dir / f'r-{conn.id}'}"
                hop = await self._join(endpoint)
                if hop is None:
                    self.stats.relay_failures += 1
                    return
                await _send_all(hop, first)
                await _relay(conn.sock, hop)
        except _GONE:
            pass
        finally:
            self._forget(conn)
            if hop is not None:
                hop.close()
            conn.sock.close()
            if endpoint is not None:
                with contextlib.suppress(Exception):
                    self._disconnect(endpoint)  # zmq may have dropped it already

    async def _join(self, endpoint: str) -> trio.socket.SocketType | None:
        """Have the ROUTER connect to a fresh relay socket; the hop's end, or None."""
        path = endpoint[len("ipc://") :]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await listener.bind(path)
            listener.listen(1)
            self._connect(endpoint)
            with trio.move_on_after(JOIN_TIMEOUT_S):
                while True:
                    hop, _ = await listener.accept()
                    if _peer_pid(hop) == os.getpid():  # zmq, from this process
                        return hop
                    hop.close()
            return None
        except Exception:  # out of descriptors, zmq refusing the connect...
            return None
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(path)

    # ---------------------------------------------------------------- shutdown
    def close_listener(self) -> None:
        """Stop admitting: new connects are refused by the OS from now on."""
        self._closed = True
        with contextlib.suppress(OSError):
            trio.lowlevel.notify_closing(self._listener)
        self._listener.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    async def drain(self, seconds: float) -> None:
        """Wait (shielded, at most ``seconds``) for the relays to finish, then stop all."""
        with trio.CancelScope(shield=True), trio.move_on_after(seconds):
            while self._conns:
                self._changed = trio.Event()
                await self._changed.wait()
        self.scope.cancel()


async def _relay(client: trio.socket.SocketType, hop: trio.socket.SocketType) -> None:
    """Copy both ways until either side closes; then the other is closed too."""
    async with trio.open_nursery() as nursery:

        async def one_way(src: trio.socket.SocketType, dst: trio.socket.SocketType) -> None:
            with contextlib.suppress(*_GONE):
                await _copy(src, dst)
            nursery.cancel_scope.cancel()

        nursery.start_soon(one_way, client, hop)
        nursery.start_soon(one_way, hop, client)


async def _copy(src: trio.socket.SocketType, dst: trio.socket.SocketType) -> None:
    """Copy until ``src`` ends. Plain non-blocking reads and writes, waiting (a checkpoint)
    only when one would block: a message costs one wake-up of this task, where trio's
    socket methods also checkpoint after each call (two more trips through the scheduler
    per message). A source that never runs dry still lets other tasks run every
    RELAY_BURST chunks."""
    src_fd, dst_fd = src.fileno(), dst.fileno()
    burst = 0
    while True:
        try:
            data = os.read(src_fd, RELAY_CHUNK)
        except BlockingIOError:
            burst = 0
            await trio.lowlevel.wait_readable(src_fd)
            continue
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(dst_fd, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(dst_fd)
        burst += 1
        if burst >= RELAY_BURST:
            burst = 0
            await trio.lowlevel.checkpoint()


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


def _peer(raw: socket.socket) -> str:
    """``data`` (sent something not read yet), ``gone`` (hung up, or the connection
    failed: a probe, say) or ``quiet`` (connected, nothing yet)."""
    try:
        return "data" if raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) else "gone"
    except BlockingIOError:
        return "quiet"
    except OSError:
        return "gone"


def _peer_pid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


# --- the listener ---------------------------------------------------------------------


def open_listener(endpoint: str) -> tuple[socket.socket, str, Path | None]:
    """Bind and listen on ``endpoint`` (``ipc://PATH``, ``ipc://@NAME``, ``tcp://HOST:PORT``
    with PORT ``*`` or 0 for any). Returns the socket, the endpoint as bound (a TCP port
    filled in) and the socket file it made (None for TCP and abstract names). The caller
    has checked that no other supervisor serves it. Raises like a bind (io_errors)."""
    with map_exceptions("bind", endpoint):
        if endpoint.startswith("ipc://"):
            return _open_ipc(endpoint)
        if endpoint.startswith("tcp://"):
            return _open_tcp(endpoint)
        raise OSError(errno.EPROTONOSUPPORT, f"not an ipc:// or tcp:// endpoint: {endpoint}")


def _open_ipc(endpoint: str) -> tuple[socket.socket, str, Path | None]:
    name = endpoint[len("ipc://") :]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if name.startswith("@"):
            sock.bind("\0" + name[1:])
            path = None
        else:
            path = Path(name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale file: nobody listens on it (checked)
            sock.bind(name)
            os.chmod(name, 0o600)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock, endpoint, path


def _open_tcp(endpoint: str) -> tuple[socket.socket, str, Path | None]:
    host, _, port_text = endpoint[len("tcp://") :].rpartition(":")
    host = host.strip("[]")
    host = "" if host in ("*", "0.0.0.0") else host
    port = 0 if port_text in ("*", "0", "") else int(port_text)
    family, kind, proto_, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto_)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return sock, f"tcp://{shown}:{bound_port}", None


# --- ZMTP, just enough to say no ------------------------------------------------------

_ZMTP_GREETING = (
    b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" * 32
)
_GREETING_SIZE = 64
# A peer's READY: its Socket-Type and Routing-Id properties; anything longer is not ours.
_MAX_COMMAND = 1024


def refusal(why: str) -> tuple[bytes, bytes]:
    """What the gate sends a refused client: the ZMTP 3.0 greeting with our READY, and
    then (after the client's READY) one message, a ``too_many_connections`` notice."""
    body = b"\x05READY" + _property(b"Socket-Type", b"ROUTER")
    frames = proto.encode_notice("too_many_connections", why)
    message = b"".join(_frame(frame, more=i < len(frames) - 1) for i, frame in enumerate(frames))
    return _ZMTP_GREETING + bytes([0x04, len(body)]) + body, message


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def _frame(data: bytes, *, more: bool) -> bytes:
    flags = 0x01 if more else 0x00
    if len(data) < 256:
        return bytes([flags, len(data)]) + data
    return bytes([flags | 0x02]) + struct.pack(">Q", len(data)) + data


async def _read_greeting_and_command(sock: trio.socket.SocketType) -> bool:
    """Read a ZMTP 3 peer's greeting and first command (its READY); False if the peer is
    not one, or hangs up."""
    buf = b""
    while True:
        if len(buf) >= _GREETING_SIZE + 2:
            if buf[10] < 3:
                return False
            flags = buf[_GREETING_SIZE]
            if flags & 0x02:
                if len(buf) >= _GREETING_SIZE + 9:
                    size = struct.unpack(">Q", buf[_GREETING_SIZE + 1 : _GREETING_SIZE + 9])[0]
                    if size > _MAX_COMMAND:
                        return False
                    if len(buf) >= _GREETING_SIZE + 9 + size:
                        return True
            elif len(buf) >= _GREETING_SIZE + 2 + buf[_GREETING_SIZE + 1]:
                return True
        data = await sock.recv(4096)
        if not data or len(buf) > _GREETING_SIZE + 9 + _MAX_COMMAND:
            return False
        buf += data


__all__ = [
    "FDS_PER_CONNECTION",
    "FD_RESERVE",
    "SILENT_TIMEOUT_S",
    "Gate",
    "GateStats",
    "open_files",
    "open_files_limit",
    "open_listener",
    "refusal",
]
