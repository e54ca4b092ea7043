"""The control server: a ZeroMQ ROUTER socket through which clients reach the supervisor.

Theory of operation
-------------------
``serve`` listens on the endpoint (IPC in the private runtime directory unless
configured) through the gate (control/gate.py: no zmq socket here listens, since libzmq
aborts the process on EMFILE in an IPC accept; the gate bounds connections at
``max_connections`` and relays each admitted one to the ROUTER, which connects to it),
writes a fresh random key to a 0600 file beside it, and runs two kinds of task:

* one receiver: takes each message off the socket, decodes it (``core/protocol.py``), and
  either starts a task for the request or answers the error at once. Nothing a peer sends
  can stop it: every refusal is counted in :class:`Counters` (``server_stats``) and
  answered where a reply is possible -- a signed ``error`` once the signature is good, an
  unsigned notice before that (see core/protocol.py);
* one writer per client (a ROUTER identity with requests in flight or replies queued),
  draining that client's :class:`Outbox`.

Requests run concurrently, one task each, at most ``MAX_REQUESTS`` in all and
``MAX_REQUESTS_PER_CLIENT`` per client; past that they are refused (``server_busy``).

Slow clients. The socket sets ``ROUTER_MANDATORY``, so a send to a client whose pipe is
full fails with EAGAIN instead of being dropped silently (or blocking everyone). The
writer then backs off and retries that client only. Meanwhile its Outbox (core/outbox.py)
fills; streamed outputs and events beyond ``CLIENT_BUFFER`` are dropped and counted, and the
client gets a ``lagged`` reply with the count before the next item of that request. Final
replies are never dropped; they are bounded by the request limits (a request counts until
its final reply is handed to zmq).

Disconnects. A send to a client whose connection is gone fails with EHOSTUNREACH (again
``ROUTER_MANDATORY``). While a client has requests in flight and nothing was sent to it
for ``PING_INTERVAL_S``, its writer sends a ``ping``: so a client that went away is noticed
within about a ping interval, and its requests are cancelled (a running execute's kernel
is interrupted). A client's connection closing (its relay ends) is seen the same way.
zmq's own heartbeats (``HEARTBEAT_IVL``, on a TCP endpoint) turn a silently dead TCP peer
into a closed connection. The pings also reset a waiting client's quiet clock (its rule
for a supervisor that is gone is in connection.py).

Shutdown. When ``serve`` is cancelled, each request still running is answered
``shutting_down``, queued replies get one last non-blocking send, the socket closes
(lingering briefly so zmq can deliver them) and the socket, key and endpoint files are
removed.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Any

import attrs
import trio
import zmq

from kernelsup.adapters import zmqio
from kernelsup.adapters.io_errors import map_exceptions, probe_ipc
from kernelsup.adapters.runtime import control_endpoint, key_file, runtime_dir_for
from kernelsup.api import Supervisor
from kernelsup.control import gate as gate_mod
from kernelsup.control.agent_requests import agent_request
from kernelsup.control.gate import Gate, open_listener
from kernelsup.core import protocol as proto
from kernelsup.core.config import Config
from kernelsup.core.errors import ConfigError, KernelsupError, Unreachable
from kernelsup.core.outbox import Outbox, OutItem
from kernelsup.core.results import ExecuteResult, Output

# Requests running at once over all clients: each holds a task and, for an execute, a
# place in a pool queue; the pools' own queue_limit is the real bound on waiting work.
MAX_REQUESTS = 1024
# One client may not take more than this share; its final replies count until sent, so
# this also bounds the finals queued for a client that never reads.
MAX_REQUESTS_PER_CLIENT = 128
# Messages zmq may hold for one client (its pipe) before sends to it fail with EAGAIN.
SEND_HWM = 256
# Events a watch may fall behind the bus by before the bus drops them (it then says
# ``lagged`` itself); the forwarder reads promptly, so this only covers bursts.
WATCH_BUFFER = 256
# How long a client with requests in flight may go without a message from us.
PING_INTERVAL_S = 1.0
# Backoff while a client's pipe is full (EAGAIN): from MIN, doubling, up to MAX.
SEND_RETRY_MIN_S = 0.002
SEND_RETRY_MAX_S = 0.1
# zmq-level heartbeats, so a dead TCP peer's connection closes (milliseconds).
ZMQ_HEARTBEAT_IVL_MS = 2000
ZMQ_HEARTBEAT_TIMEOUT_MS = 6000
# On shutdown, how long zmq may keep delivering the last replies after close.
CLOSE_LINGER_MS = 500
# How long the check for a live supervisor on our IPC socket file may block the start.
SERVED_PROBE_TIMEOUT_S = 1.0
# After the ROUTER's linger, how much longer the relays may take to hand on its last
# replies before they are cut.
DRAIN_EXTRA_S = 0.5
# sun_path holds 108 bytes with its NUL.
MAX_IPC_PATH_BYTES = 107
# Descriptors `kernelsup run` holds besides its kernels (measured: 17, with the event log,
# the runtime directory's lock, trio's and zmq's own), and per kernel (measured: 10, its
# zmq sockets with their mailboxes, its pidfd and pipes); a supervisor needs room for at
# least MIN_CONNECTIONS clients on top.
FDS_BASE = 24
FDS_PER_KERNEL = 10
MIN_CONNECTIONS = 2


def descriptors_needed(config: Config) -> int:
    """The open files limit under which ``config``'s supervisor cannot serve: its kernels,
    the gate's reserve and room for MIN_CONNECTIONS clients."""
    kernels = sum(pool.size + pool.spares for pool in config.pools)
    return (
        FDS_BASE
        + FDS_PER_KERNEL * kernels
        + gate_mod.FD_RESERVE
        + gate_mod.FDS_PER_CONNECTION * MIN_CONNECTIONS
    )


@attrs.define
class Counters:
    """What the server has seen; ``server_stats`` returns these plus gauges."""

    received: int = 0  # messages taken off the socket
    requests: int = 0  # valid requests started
    replies: int = 0  # messages handed to zmq
    unsigned: int = 0
    bad_signature: int = 0
    replayed: int = 0
    malformed: int = 0
    oversized: int = 0
    unknown_type: int = 0
    protocol_version: int = 0
    busy: int = 0  # refused: MAX_REQUESTS / MAX_REQUESTS_PER_CLIENT
    dropped: int = 0  # streamed outputs/events dropped for slow clients
    notices_dropped: int = 0  # error notices not sent: the peer did not read
    clients_gone: int = 0  # clients that disconnected with requests in flight
    cancelled: int = 0  # requests cancelled (by the client or its going away)
    internal_errors: int = 0  # a handler raised: a bug, answered internal_error

    def count_refusal(self, exc: KernelsupError) -> None:
        if exc.code == "auth_failed":
            reason = exc.data.get("reason")
            field = reason if reason in ("unsigned", "replayed") else "bad_signature"
        elif exc.code in ("oversized", "unknown_type", "protocol_version"):
            field = exc.code
        else:
            field = "malformed"
        setattr(self, field, getattr(self, field) + 1)


# --- the server -------------------------------------------------------------------------


@attrs.define(eq=False)
class _Client:
    identity: bytes
    outbox: Outbox = attrs.field(factory=Outbox)
    requests: dict[str, tuple[trio.CancelScope, proto.Request]] = attrs.field(factory=dict)
    wake: trio.Event = attrs.field(factory=trio.Event)
    last_sent: float = 0.0
    gone: bool = False

    @property
    def load(self) -> int:
        return len(self.requests) + self.outbox.finals


class _Gone(Exception):
    """The client's connection is closed (EHOSTUNREACH)."""


class Server:
    """The control server's state; :func:`serve` runs it."""

    def __init__(
        self,
        sup: Supervisor,
        codec: proto.Codec,
        sock: zmqio.Socket,
        max_message_bytes: int,
        gate: Gate | None = None,
    ) -> None:
        self.sup = sup
        self.gate = gate
        self.codec = codec
        self.sock = sock
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        self.clients: dict[bytes, _Client] = {}
        self.in_flight = 0
        self._nursery: trio.Nursery | None = None

    # ---------------------------------------------------------------- receiving
    async def run(
        self,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                frames = await self.sock.recv_multipart()
                self.on_message(frames)

    def on_message(self, frames: list[bytes]) -> None:
        """Handle one message from the socket. Synchronous and never raises."""
        self.counters.received += 1
        identity, body = frames[0], frames[1:]
        try:
            incoming = self.codec.decode_request(body, max_bytes=self.max_message_bytes)
        except proto.DECODE_ERRORS as exc:
            self.counters.count_refusal(exc)
            self._refuse(identity, exc)
            return
        client = self._client(identity)
        if client.load >= MAX_REQUESTS_PER_CLIENT or self.in_flight >= MAX_REQUESTS:
            self.counters.busy += 1
            if client.outbox.finals < MAX_REQUESTS_PER_CLIENT:
                # else the client is not reading its replies: answering would only queue
                self._send_final(
                    client,
                    incoming.request_id,
                    proto.Error(
                        "server_busy",
                        f"too many requests in flight ({client.load} from this "
                        f"client, {self.in_flight} in all); retry later",
                        "Rejected",
                    ),
                )
            return
        if incoming.request_id in client.requests:
            self.counters.malformed += 1
            return  # a duplicate id cannot get a reply of its own; the first one will
        assert self._nursery is not None
        self.counters.requests += 1
        scope = trio.CancelScope()
        client.requests[incoming.request_id] = (scope, incoming.request)
        self.in_flight += 1
        self._nursery.start_soon(self._run_request, client, incoming, scope)

    def _refuse(self, identity: bytes, exc: KernelsupError) -> None:
        request_id = exc.data.get("request_id")
        if isinstance(request_id, str):  # signed: the peer holds the key, answer in kind
            client = self._client(identity)
            if client.outbox.finals < MAX_REQUESTS_PER_CLIENT:
                self._send_final(client, request_id, proto.Error.from_exception(exc))
            else:
                self.counters.notices_dropped += 1
            return
        client = self._client(identity)
        if not client.outbox.put_notice(proto.Notice(exc.code, exc.message)):
            self.counters.notices_dropped += 1
        client.wake.set()

    def _client(self, identity: bytes) -> _Client:
        client = self.clients.get(identity)
        if client is None:
            assert self._nursery is not None
            client = self.clients[identity] = _Client(identity, last_sent=trio.current_time())
            self._nursery.start_soon(self._writer, client)
        return client

    # ---------------------------------------------------------------- requests
    async def _run_request(
        self, client: _Client, incoming: proto.Incoming, scope: trio.CancelScope
    ) -> None:
        rid = incoming.request_id
        final: proto.Reply | None = None
        try:
            with scope:
                final = await self._handle(client, rid, incoming.request)
        except KernelsupError as exc:
            final = proto.Error.from_exception(exc)
        except Exception as exc:  # a bug in a handler must not take the server down
            self.counters.internal_errors += 1
            final = proto.Error(
                "internal_error",
                f"the server failed to handle this request: {type(exc).__name__}: {exc}",
                "KernelsupError",
            )
        finally:
            client.requests.pop(rid, None)
            self.in_flight -= 1
            if final is None and not scope.cancelled_caught and not client.gone:
                # serve() itself is being cancelled: the supervisor is stopping
                self._send_final(
                    client,
                    rid,
                    proto.Error("shutting_down", "the supervisor is shutting down", "Rejected"),
                )
        if final is None:  # cancelled by a cancel request, or the client went away
            self.counters.cancelled += 1
            if isinstance(incoming.request, proto.Execute):
                final = proto.Result(
                    ExecuteResult(
                        "cancelled",
                        code="cancelled",
                        session=incoming.request.session,
                        message="cancelled by the client",
                    ).to_dict()
                )
            else:
                final = proto.Result({"cancelled": True})
        self._send_final(client, rid, final)

    async def _handle(self, client: _Client, rid: str, req: proto.Request) -> proto.Reply:
        sup = self.sup
        if isinstance(req, proto.Execute):
            on_output = None
            if req.stream:

                def on_output(out: Output) -> None:
                    self._stream(client, rid, proto.OutputMsg(out))

            result = await sup.execute(
                req.code,
                pool=req.pool,
                session=req.session,
                timeout=req.timeout,
                on_output=on_output,
                fresh=req.fresh,
            )
            return proto.Result(result.to_dict())
        if isinstance(req, proto.Watch):
            return await self._watch(client, rid)
        if isinstance(req, proto.Status):
            return proto.Result(sup.status_now().to_dict())
        if isinstance(req, proto.Interrupt):
            await sup.interrupt(req.kernel_id, session=req.session)
            return proto.Result({})
        if isinstance(req, proto.Restart):
            await sup.restart(req.kernel_id, session=req.session)
            return proto.Result({})
        if isinstance(req, proto.CloseSession):
            return proto.Result({"closed": await sup.close_session(req.session)})
        agent = await agent_request(sup, req)  # sessions, jobs, files
        if agent is not None:
            return agent
        if isinstance(req, proto.Cancel):
            target = client.requests.get(req.request_id)
            if target is not None:
                target[0].cancel()
            return proto.Result({"cancelled": target is not None})
        if isinstance(req, proto.Hello):
            return proto.Result(
                {
                    "protocol": proto.PROTOCOL_VERSION,
                    "server": "kernelsup",
                    "ping_interval_s": PING_INTERVAL_S,
                    "max_message_bytes": self.max_message_bytes,
                }
            )
        if isinstance(req, proto.ServerStats):
            return proto.Result(self.stats())
        raise AssertionError(f"unhandled request {req!r}")

    async def _watch(self, client: _Client, rid: str) -> proto.Reply:
        with self.sup.bus.subscribe(WATCH_BUFFER, name="watch") as sub:
            client.outbox.put_control(rid, proto.Subscribed())
            client.wake.set()
            async for event in sub:
                self._stream(client, rid, proto.EventMsg(event.to_dict()))
        return proto.Result({})  # the bus closed: the supervisor stopped

    def stats(self) -> dict[str, Any]:
        return {
            **attrs.asdict(self.counters),
            **(self.gate.snapshot() if self.gate is not None else {}),
            "clients": len(self.clients),
            "in_flight": self.in_flight,
            "queued": sum(len(c.outbox) for c in self.clients.values()),
        }

    # ---------------------------------------------------------------- sending
    def _stream(self, client: _Client, rid: str, reply: proto.Reply) -> None:
        if client.gone:
            return
        if not client.outbox.put(rid, reply):
            self.counters.dropped += 1
        self._send_now(client)

    def _send_final(self, client: _Client, rid: str, reply: proto.Reply) -> None:
        if client.gone:
            return
        client.outbox.put_final(rid, reply)
        self._send_now(client)

    def _send_now(self, client: _Client) -> None:
        """Hand what the client's outbox holds to zmq now, as far as its pipe takes it
        (a full pipe refuses at once), rather than a task wake-up later (bench/execute);
        then wake the writer, which keeps what is left, pings, and finds out when the
        client is gone."""
        try:
            while (item := client.outbox.peek()) is not None and self._try_send(client, item):
                client.outbox.pop()
        except (_Gone, trio.ClosedResourceError):
            pass  # the writer's next send says so, and it cleans up
        client.wake.set()

    def _try_send(self, client: _Client, item: OutItem | None) -> bool:
        """Hand one message (a ping if ``item`` is None) to zmq. False: the client's pipe
        is full. Raises _Gone if its connection is closed."""
        try:
            frames = self._encode(client, item)
        except (TypeError, ValueError) as exc:  # a value that has no JSON form: a bug
            self.counters.internal_errors += 1
            if item is None or item.droppable:
                return True  # skip it
            frames = self.codec.encode_reply(
                proto.Error("internal_error", f"the reply could not be encoded: {exc}"),
                request_id=item.request_id,
                identity=client.identity,
            )
        try:
            sent = self.sock.try_send_multipart(frames)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                self.counters.internal_errors += 1
            raise _Gone() from None
        if sent:
            self.counters.replies += 1
            client.last_sent = trio.current_time()
        return sent

    def _encode(self, client: _Client, item: OutItem | None) -> list[bytes]:
        if item is None:
            return self.codec.encode_reply(proto.Ping(), request_id=None, identity=client.identity)
        if isinstance(item.reply, proto.Notice):
            return proto.encode_notice(
                item.reply.code, item.reply.message, identity=client.identity
            )
        return self.codec.encode_reply(
            item.reply, request_id=item.request_id, identity=client.identity
        )

    async def _writer(self, client: _Client) -> None:
        """Drain one client's outbox; ping it while it has requests; forget it when idle
        or gone. (When cancelled, at shutdown, the client stays for :meth:`flush`.)"""
        backoff = SEND_RETRY_MIN_S
        try:
            while True:
                item = client.outbox.peek()
                if item is None:
                    if not client.requests:
                        break
                    client.wake = trio.Event()
                    idle_until = client.last_sent + PING_INTERVAL_S
                    with trio.move_on_at(idle_until):
                        await client.wake.wait()
                    if (
                        client.outbox.peek() is None
                        and client.requests
                        and trio.current_time() >= idle_until
                    ):
                        self._try_send(client, None)  # full pipe: alive, just slow
                        client.last_sent = trio.current_time()
                    continue
                if self._try_send(client, item):
                    client.outbox.pop()
                    backoff = SEND_RETRY_MIN_S
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, SEND_RETRY_MAX_S)
        except (_Gone, trio.ClosedResourceError):
            if client.requests:
                self.counters.clients_gone += 1
            for scope, _ in client.requests.values():
                scope.cancel()
        client.gone = True
        if self.clients.get(client.identity) is client:
            del self.clients[client.identity]

    def flush(self) -> None:
        """One last non-blocking pass over every outbox (at shutdown)."""
        for client in list(self.clients.values()):
            try:
                while (item := client.outbox.peek()) is not None:
                    if not self._try_send(client, item):
                        break
                    client.outbox.pop()
            except (_Gone, zmq.ZMQError, trio.ClosedResourceError):
                continue


# --- serve ----------------------------------------------------------------------------


async def serve(
    sup: Supervisor, config: Config, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the control endpoint until cancelled.

    Signals ``task_status.started(endpoint)`` with the bound endpoint (a ``tcp://...:*``
    endpoint shows its port) once clients can connect. Raises :class:`ConfigError` for an
    endpoint it may not or cannot bind (a non-loopback TCP host without ``allow_remote``,
    an IPC path too long), and :class:`KernelsupError` (``endpoint_in_use``) if another
    supervisor serves it. Never raises for anything a client sends. On cancellation the
    socket is closed and its files are removed.

    The endpoint's listener is the gate's (control/gate.py), never zmq's: no zmq socket
    here listens, so libzmq cannot abort the process for want of a descriptor.
    """
    endpoint = control_endpoint(config)
    runtime_dir = runtime_dir_for(config)
    _check_endpoint(endpoint, config.server.allow_remote)
    _check_relay_paths(runtime_dir)
    if endpoint.startswith("ipc://"):
        _check_not_served(endpoint)
    key = secrets.token_hex(32).encode()
    kfile = key_file(config)
    efile = runtime_dir / proto.ENDPOINT_FILE
    owned: list[Path] = []  # files to remove at the end: only those this server made
    listener, bound_endpoint, socket_file = open_listener(endpoint)
    if socket_file is not None:
        owned.append(socket_file)
    try:
        with map_exceptions("bind", endpoint):  # EMFILE: no descriptor for its mailbox
            sock = zmqio.Socket(zmqio.context().socket(zmq.ROUTER))
    except BaseException:
        listener.close()
        if socket_file is not None:
            socket_file.unlink(missing_ok=True)
        raise
    try:
        z = sock.zmq
        z.setsockopt(zmq.ROUTER_MANDATORY, 1)
        z.setsockopt(zmq.MAXMSGSIZE, config.server.max_message_bytes)
        z.setsockopt(zmq.SNDHWM, SEND_HWM)
        z.setsockopt(zmq.LINGER, 0)
        # The ROUTER connects to each admitted client's relay (control/gate.py). IMMEDIATE:
        # a client's pipe exists only while its connection does, so a relay that closes
        # ends the pipe from zmq's own side, after the messages already in it are read,
        # and the gate's disconnect() afterwards only stops the redialling. (Ending a pipe
        # from the socket's side, as disconnect() or RECONNECT_IVL = -1 do otherwise, can
        # cut a multipart message being read: libzmq asserts !_more in fq.cpp and aborts.)
        z.setsockopt(zmq.IMMEDIATE, 1)
        if bound_endpoint.startswith("tcp://"):
            # A unix connection closes when its peer dies; a TCP peer can vanish silently.
            z.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_IVL_MS)
            z.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)
        gate = Gate(
            listener,
            runtime_dir,
            connect=z.connect,
            disconnect=z.disconnect,
            max_connections=config.server.max_connections,
        )
        # The key goes to disk only now: a client cannot sign for a socket not yet bound.
        owned += [kfile, efile]
        _write_private(kfile, key + b"\n")
        _write_private(efile, bound_endpoint.encode() + b"\n")
        server = Server(sup, proto.Codec(key), sock, config.server.max_message_bytes, gate)
        sup.stats_sources["control"] = server.stats  # read by the metrics (kernelsup/metrics/)
        async with trio.open_nursery() as relays:
            # The gate's tasks are shielded from our cancellation (Gate.scope) so that the
            # last replies still reach their clients; drain() ends them, bounded.
            await relays.start(gate.run)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.run)
                    task_status.started(bound_endpoint)
            finally:
                gate.close_listener()
                server.flush()
                sock.close(linger=CLOSE_LINGER_MS)
                await gate.drain(CLOSE_LINGER_MS / 1000 + DRAIN_EXTRA_S)
    finally:
        sup.stats_sources.pop("control", None)
        listener.close()
        sock.close()
        for path in owned:
            try:
                path.unlink()
            except OSError:
                pass


def _check_endpoint(endpoint: str, allow_remote: bool) -> None:
    if not endpoint.startswith("tcp://"):
        return
    host = endpoint[len("tcp://") :].rpartition(":")[0].strip("[]")
    if host in ("localhost", "::1") or host.startswith("127."):
        return
    if not allow_remote:
        raise ConfigError(
            f"$.server.endpoint: {endpoint} is not a loopback address; set "
            "allow_remote = true to serve it",
            path="$.server.endpoint",
        )


def _check_relay_paths(runtime_dir: Path) -> None:
    """The gate's relay sockets live in the runtime directory: their paths must fit."""
    longest = runtime_dir / f"r-{2**63}"
    if len(os.fsencode(longest)) > MAX_IPC_PATH_BYTES:
        raise ConfigError(
            f"$.supervisor.runtime_dir: {runtime_dir} is too long for the control "
            f"endpoint's relay sockets ({len(os.fsencode(longest))} > {MAX_IPC_PATH_BYTES} "
            "bytes); set a shorter [supervisor] runtime_dir",
            path="$.supervisor.runtime_dir",
        )


def _check_not_served(endpoint: str) -> None:
    """Refuse to take over the socket of a supervisor that is still running (zmq would
    silently unlink it and bind anew)."""
    try:
        listening = probe_ipc(endpoint, SERVED_PROBE_TIMEOUT_S)
    except Unreachable:
        return  # no socket file, or a stale one: nothing listens there
    if listening:
        raise KernelsupError(
            f"another supervisor is already serving {endpoint}",
            code="endpoint_in_use",
            endpoint=endpoint,
        )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


__all__ = [
    "MAX_REQUESTS",
    "MAX_REQUESTS_PER_CLIENT",
    "PING_INTERVAL_S",
    "Counters",
    "Server",
    "descriptors_needed",
    "serve",
]
