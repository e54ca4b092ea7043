"""The control server: files and modes, refusals, hostile peers, slow and vanishing clients.

The server runs in-process here (``open_supervisor`` + ``serve`` in the test's trio run,
real kernels) so tests can look at its counters and at the supervisor directly; raw zmq
sockets play the misbehaving peers. ``tests/test_client.py`` and ``tests/test_cli.py``
drive a real ``kernelsup run`` subprocess.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import socket
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import zmq

import kernelsup
from kernelsup.adapters import zmqio
from kernelsup.control import gate
from kernelsup.control import server as srv
from kernelsup.control.server import serve
from kernelsup.core import protocol as proto
from kernelsup.core.config import Config
from kernelsup.core.errors import AuthenticationError, ConfigError, KernelsupError, Rejected
from kernelsup.core.results import Output

FAST_POOL: dict[str, Any] = {
    "name": "default",
    "heartbeat": {"interval": 0.2, "misses": 3},
    "shutdown": {"grace": 1.0, "term_timeout": 1.0},
    "interrupt_grace": 2.0,
    "restart": {"min_delay": 0.0, "max_delay": 0.5},
}
MAX_MESSAGE = 65536


def make_config(runtime_dir: Path, *, size: int = 1, spares: int = 0, **server: Any) -> Config:
    return Config.from_dict(
        {
            "supervisor": {"runtime_dir": str(runtime_dir)},
            "server": {"max_message_bytes": MAX_MESSAGE, **server},
            "pool": [{**FAST_POOL, "size": size, "spares": spares}],
        },
        source=str(runtime_dir / "supervisor.toml"),
    )


@attrs.define
class Served:
    sup: kernelsup.Supervisor
    config: Config
    endpoint: str
    scope: trio.CancelScope
    done: trio.Event = attrs.field(factory=trio.Event)

    async def stop(self) -> None:
        """Stop the server, then the supervisor; wait for both."""
        self.scope.cancel()
        with trio.fail_after(30):
            await self.done.wait()

    @property
    def key(self) -> bytes:
        return (self.config_dir / "control.key").read_bytes().strip()

    @property
    def config_dir(self) -> Path:
        return Path(self.config.supervisor.runtime_dir)

    def kernel_states(self) -> list[str]:
        return [k["state"] for k in self.sup.status_now().kernels]


async def start_served(nursery: trio.Nursery, cfg: Config) -> Served:
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[Served]) -> None:
        try:
            async with kernelsup.open_supervisor(cfg) as sup:
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as inner:
                        endpoint = await inner.start(serve, sup, cfg)
                        task_status.started(Served(sup, cfg, endpoint, scope, done))
        finally:
            done.set()

    served: Served = await nursery.start(run)
    return served


@pytest.fixture
async def served(nursery: trio.Nursery, runtime_dir: Path) -> AsyncIterator[Served]:
    s = await start_served(nursery, make_config(runtime_dir, size=2))
    yield s
    await s.stop()


def raw_dealer(endpoint: str, **options: int) -> zmqio.Socket:
    sock = zmqio.context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    return zmqio.Socket(sock)


async def poll(predicate: Callable[[], Any], seconds: float = 30) -> None:
    """For conditions nothing announces (a counter, a kernel turning busy): check every
    20 ms, fail after ``seconds``. ``predicate`` may be async."""
    with trio.fail_after(seconds):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return
            await trio.sleep(0.02)


async def stats(endpoint: str) -> dict[str, Any]:
    async with kernelsup.connect(endpoint) as c:
        return await c.server_stats()


def test_counters_sort_refusals() -> None:
    c = srv.Counters()
    for exc in (
        AuthenticationError("", reason="unsigned"),
        AuthenticationError("", reason="bad_signature"),
        AuthenticationError("", reason="replayed"),
        kernelsup.ProtocolError("", code="oversized"),
        kernelsup.ProtocolError("", code="unknown_type"),
        kernelsup.ProtocolError("", code="protocol_version"),
        kernelsup.ProtocolError("", code="malformed"),
    ):
        c.count_refusal(exc)
    assert (
        c.unsigned,
        c.bad_signature,
        c.replayed,
        c.oversized,
        c.unknown_type,
        c.protocol_version,
        c.malformed,
    ) == (1, 1, 1, 1, 1, 1, 1)


# --- endpoint, key and files -------------------------------------------------------------


async def test_files_modes_and_removal(nursery: trio.Nursery, runtime_dir: Path) -> None:
    cfg = make_config(runtime_dir)
    s = await start_served(nursery, cfg)
    sock = runtime_dir / "control.sock"
    assert s.endpoint == f"ipc://{sock}"
    assert stat.S_IMODE(os.stat(runtime_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    key_path = runtime_dir / "control.key"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = key_path.read_bytes().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    assert (runtime_dir / "control.endpoint").read_text().strip() == s.endpoint
    async with kernelsup.connect(cfg) as client:
        assert (await client.execute("6 * 7")).result == "42"
    await s.stop()
    assert not sock.exists() and not key_path.exists()
    assert not (runtime_dir / "control.endpoint").exists()
    # A fresh key at every start.
    s2 = await start_served(nursery, cfg)
    assert key_path.read_bytes().strip() != key
    await s2.stop()


async def test_tcp_loopback_with_any_port(nursery: trio.Nursery, runtime_dir: Path) -> None:
    cfg = make_config(runtime_dir, endpoint="tcp://127.0.0.1:*")
    s = await start_served(nursery, cfg)
    assert s.endpoint.startswith("tcp://127.0.0.1:") and not s.endpoint.endswith("*")
    async with kernelsup.connect(cfg) as client:  # finds the port and the key
        assert client.endpoint == s.endpoint
        assert (await client.execute("1 + 1")).result == "2"
    with pytest.raises(KernelsupError) as info:
        async with kernelsup.connect(s.endpoint):
            pass
    assert info.value.code == "key_missing"
    async with kernelsup.connect(s.endpoint, key=s.key) as client:
        assert (await client.execute("2 + 2")).result == "4"
    await s.stop()


def test_non_loopback_tcp_is_refused_without_allow_remote() -> None:
    with pytest.raises(ConfigError):
        srv._check_endpoint("tcp://0.0.0.0:5599", allow_remote=False)
    with pytest.raises(ConfigError):
        srv._check_endpoint("tcp://10.1.2.3:5599", allow_remote=False)
    srv._check_endpoint("tcp://0.0.0.0:5599", allow_remote=True)
    srv._check_endpoint("tcp://127.0.0.1:5599", allow_remote=False)
    srv._check_endpoint("tcp://[::1]:5599", allow_remote=False)
    with pytest.raises(ConfigError):  # the config refuses it already
        Config.from_dict({"server": {"endpoint": "tcp://0.0.0.0:5599"}})


async def test_a_second_server_does_not_steal_the_endpoint(served: Served) -> None:
    with pytest.raises(KernelsupError) as info:
        await serve(served.sup, served.config)
    assert info.value.code == "endpoint_in_use"
    async with kernelsup.connect(served.config) as client:  # the first one still serves
        assert (await client.execute("'still'")).result == "'still'"


async def test_ipc_path_too_long_is_a_config_error(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    cfg = make_config(runtime_dir, endpoint="ipc://" + str(runtime_dir / ("x" * 120)))
    async with kernelsup.open_supervisor(cfg) as sup:
        with pytest.raises(ConfigError) as info:
            await serve(sup, cfg)
    assert "too long" in info.value.message


# --- the gate: connections bounded, silent ones evicted, no descriptor to spare ----------


async def test_connections_past_the_bound_are_refused_with_a_notice(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    """max_connections = 2: a third client is told too_many_connections at once (Rejected,
    exit 3), counted; once one leaves, a new client gets in."""
    cfg = make_config(runtime_dir, max_connections=2)
    s = await start_served(nursery, cfg)
    with trio.fail_after(30):
        async with kernelsup.connect(cfg) as first:
            async with kernelsup.connect(cfg) as second:
                with pytest.raises(Rejected) as info:
                    async with kernelsup.connect(cfg, timeout=20):
                        pass
                assert info.value.code == "too_many_connections"
                assert "max_connections = 2" in info.value.message
                counters = await first.server_stats()
                assert counters["connections_refused"] >= 1
                assert counters["connections"] == 2 and counters["max_connections"] == 2
                assert (await second.execute("1 + 1")).result == "2"
            # The second left; once the server has seen it go, there is room again.
            await poll(lambda: _connections(first, 1))
            async with kernelsup.connect(cfg) as third:
                assert (await third.execute("2 + 2")).result == "4"
    await s.stop()


async def _connections(client: kernelsup.Client, n: int) -> bool:
    return bool((await client.server_stats())["connections"] == n)


async def test_a_silent_connection_gives_way_to_a_client(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    """Bare connects that never speak fill max_connections: a real client still gets in,
    in the place of the oldest, which is closed and counted, once they have had the
    grace every connection gets to speak (a burst of real clients must not evict each
    other before their first bytes arrive)."""
    cfg = make_config(runtime_dir, max_connections=2)
    s = await start_served(nursery, cfg)
    path = s.endpoint[len("ipc://") :]
    bare = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    try:
        for b in bare:
            b.connect(path)
        # The gate accepts in order: the third, past the bound while the first two are in
        # their grace, is refused with a notice. Its first bytes say all three were seen.
        with trio.fail_after(30):
            assert await _recv1(bare[2]), "the refused connection was told nothing"
        await trio.sleep(gate.EVICT_GRACE_S)  # the rule under test is this grace itself
        with trio.fail_after(30):
            async with kernelsup.connect(cfg) as client:
                assert (await client.execute("3 + 3")).result == "6"
                counters = await client.server_stats()
        # However many connections the client opened, each found a silent one to replace
        # or a place one of its own had left; the oldest silent one is gone for sure.
        assert counters["connections_evicted"] >= 1, counters
        assert counters["connections"] <= 2, counters
        with trio.fail_after(30):
            assert await _recv1(bare[0]) == b"", "the oldest silent one was not closed"
    finally:
        for b in bare:
            b.close()
    await s.stop()


async def _recv1(sock: socket.socket) -> bytes:
    """One byte from a plain socket the test holds, without blocking the server's loop."""
    with trio.socket.from_stdlib_socket(sock.dup()) as own:
        return await own.recv(1)


async def test_short_of_descriptors_a_client_is_refused_and_the_server_serves_on(
    nursery: trio.Nursery, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a connection would leave fewer than FD_RESERVE descriptors free, it is refused
    with a notice that says so; with descriptors back, clients are served."""
    s = await start_served(nursery, make_config(runtime_dir))
    with trio.fail_after(30):
        async with kernelsup.connect(s.endpoint) as client:
            monkeypatch.setattr(gate, "FD_RESERVE", 10**9)
            with pytest.raises(Rejected) as info:
                async with kernelsup.connect(s.endpoint, timeout=20):
                    pass
            assert info.value.code == "too_many_connections"
            assert "short of file descriptors" in info.value.message
            monkeypatch.setattr(gate, "FD_RESERVE", 16)
            assert (await client.execute("'still'")).result == "'still'"
            assert (await client.server_stats())["connections_refused"] >= 1
        async with kernelsup.connect(s.endpoint) as client:
            assert (await client.execute("'again'")).result == "'again'"
    await s.stop()


def test_the_refusal_is_a_zmtp_greeting_and_a_notice() -> None:
    greeting, message = gate.refusal("why")
    assert greeting[:1] == b"\xff" and greeting[9:12] == b"\x7f\x03\x00"
    assert greeting[12:16] == b"NULL" and greeting[64] == 0x04  # READY, a command
    assert b"\x05READY" in greeting and b"Socket-Type" in greeting
    assert proto.NOTICE in message and b"too_many_connections" in message


# --- refusals ---------------------------------------------------------------------------


async def test_wrong_key_gets_auth_failed_and_the_server_keeps_serving(
    served: Served,
) -> None:
    with trio.fail_after(10):
        with pytest.raises(AuthenticationError) as info:
            async with kernelsup.connect(served.endpoint, key=b"0" * 64):
                pass
    assert info.value.code == "auth_failed"
    assert "signature" in info.value.message
    async with kernelsup.connect(served.endpoint) as client:
        assert (await client.execute("'ok'")).result == "'ok'"
        counters = await client.server_stats()
    assert counters["bad_signature"] == 1


async def test_signed_bad_requests_get_error_replies_by_id(served: Served) -> None:
    """A peer holding the key gets a signed ``error`` naming its request."""
    wire = proto.Codec(served.key)._wire
    cases = {
        "protocol_version": ("status", {"v": 0}),
        "unknown_type": ("frobnicate", {"v": proto.PROTOCOL_VERSION}),
        "malformed": ("execute", {"v": proto.PROTOCOL_VERSION, "code": 1}),
    }
    client_codec = proto.Codec(served.key)
    with raw_dealer(served.endpoint) as sock, trio.fail_after(10):
        sent = {}
        for code, (msg_type, content) in cases.items():
            msg_id, frames = wire.build(msg_type, content)
            sent[msg_id] = code
            await sock.send_multipart(frames)
        for _ in cases:
            received = client_codec.decode_reply(await sock.recv_multipart())
            assert isinstance(received.reply, proto.Error)
            assert received.request_id is not None
            assert received.reply.code == sent.pop(received.request_id)
            if received.reply.code == "protocol_version":
                assert "upgrade kernelsup on the client" in received.reply.message
    counters = await stats(served.endpoint)
    assert (counters["protocol_version"], counters["unknown_type"], counters["malformed"]) == (
        1,
        1,
        1,
    )


async def test_unsigned_message_gets_an_auth_failed_notice(served: Served) -> None:
    _, frames = proto.Codec(served.key).encode_request(proto.Status())
    with raw_dealer(served.endpoint) as sock, trio.fail_after(10):
        await sock.send_multipart([frames[0], b"", *frames[2:]])
        await sock.send_multipart([b"garbage"])
        first = proto.decode_notice(await sock.recv_multipart())
        second = proto.decode_notice(await sock.recv_multipart())
    assert first.code == "auth_failed" and "not signed" in first.message
    assert second.code == "malformed"


async def test_garbage_flood_does_not_break_the_server(served: Served) -> None:
    """A few thousand garbage, unsigned, wrongly signed, half, oversized and unknown
    messages from a peer that never reads; then a normal execute works."""
    rng = random.Random(5)
    good = proto.Codec(served.key)
    bad = proto.Codec(b"not-the-key")
    wire = good._wire
    batches: list[list[bytes]] = []
    for _ in range(1000):
        batches.append([rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 8))])
    for _ in range(500):
        frames = good.encode_request(proto.Status())[1]
        batches.append([frames[0], b"", *frames[2:]])  # unsigned
    for _ in range(500):
        batches.append(bad.encode_request(proto.Execute("1"))[1])  # wrong key
    for _ in range(300):
        batches.append(good.encode_request(proto.Status())[1][:3])  # half
    for _ in range(300):
        batches.append(
            [*good.encode_request(proto.Status())[1], *[b"x" * 30000] * 3]
        )  # oversized total
    for i in range(300):
        batches.append(
            wire.build(
                "frobnicate" if i % 2 else "status", {"v": proto.PROTOCOL_VERSION if i % 2 else 99}
            )[1]
        )
    rng.shuffle(batches)
    batches += [[b"z" * (MAX_MESSAGE + 1)]] * 3  # one frame over MAXMSGSIZE: zmq drops us
    with raw_dealer(served.endpoint, RCVHWM=10) as sock, trio.fail_after(30):
        for frames in batches:
            await sock.send_multipart(frames)
        counters: dict[str, Any] = {}

        async def settled() -> bool:
            # Not "received >= 2900": each stats() call is received too, so under load the
            # polls could make up the count before the flood was all taken off the socket.
            counters.update(await stats(served.endpoint))
            return all(
                counters[k] > 0 for k in ("malformed", "unknown_type", "protocol_version")
            ) and (
                counters["unsigned"] >= 500
                and counters["bad_signature"] >= 500
                and counters["oversized"] >= 300
            )

        await poll(settled, 30)
        async with kernelsup.connect(served.endpoint) as client:
            result = await client.execute("print('alive'); 1 + 1")
    assert result.status == "ok" and result.stdout == "alive\n" and result.result == "2"
    assert counters["unsigned"] >= 500 and counters["bad_signature"] >= 500
    assert counters["oversized"] >= 300 and counters["internal_errors"] == 0
    assert counters["notices_dropped"] > 0  # the flooder never read its notices


# --- slow and vanishing clients ----------------------------------------------------------


async def test_slow_client_gets_lagged_and_a_complete_final(served: Served) -> None:
    """A peer that does not read while its request floods output: the server drops and
    counts outputs, reports ``lagged``, and the final result is delivered whole; a
    concurrent execute from another client is complete meanwhile."""
    n = 1500
    codec = proto.Codec(served.key)
    rid, frames = codec.encode_request(
        proto.Execute(f"for i in range({n}): print(i, flush=True)", stream=True)
    )
    with raw_dealer(served.endpoint, RCVHWM=1) as sock, trio.fail_after(90):
        await sock.send_multipart(frames)
        async with kernelsup.connect(served.endpoint) as client:
            other = await client.execute("print('x' * 200_000); print('done')")
            assert other.status == "ok" and other.stdout == "x" * 200_000 + "\ndone\n"
            counters: dict[str, Any] = {}

            async def finished() -> bool:
                counters.update(await client.server_stats())
                return bool(counters["in_flight"] == 1 and counters["dropped"] > 0)

            await poll(finished, 60)
        texts, lagged, final = [], [], None
        while final is None:
            received = codec.decode_reply(await sock.recv_multipart())
            if received.request_id != rid:
                continue  # pings
            reply = received.reply
            if isinstance(reply, proto.OutputMsg):
                texts.append(reply.output.text or "")
            elif isinstance(reply, proto.Lagged):
                lagged.append(reply.dropped)
            else:
                final = reply
    assert isinstance(final, proto.Result)
    result = kernelsup.ExecuteResult.from_dict(final.value)
    assert result.status == "ok"
    assert result.stdout == "".join(f"{i}\n" for i in range(n))
    assert lagged and sum(lagged) == counters["dropped"]
    assert len(texts) < n
    position = 0
    for text in texts:  # what was streamed is in the final result, in order
        position = result.stdout.index(text, position) + len(text)


async def test_a_client_that_goes_away_has_its_request_cancelled(served: Served) -> None:
    codec = proto.Codec(served.key)
    _, frames = codec.encode_request(proto.Execute("import time; time.sleep(60)"))
    sock = raw_dealer(served.endpoint)
    with trio.fail_after(30):
        await sock.send_multipart(frames)
        await poll(lambda: "busy" in served.kernel_states())
        sock.close()
        await poll(lambda: served.kernel_states() == ["idle", "idle"])
    counters = await stats(served.endpoint)
    assert counters["clients_gone"] == 1 and counters["cancelled"] == 1


async def test_cancelling_a_call_interrupts_the_kernel(served: Served) -> None:
    async with kernelsup.connect(served.endpoint) as client:
        with trio.move_on_after(0.5):
            await client.execute("import time; time.sleep(60)")
        with trio.fail_after(10):
            await poll(lambda: served.kernel_states() == ["idle", "idle"])
        code = "import time\nfor i in range(600):\n    print(i, flush=True); time.sleep(0.1)"
        async with aclosing(client.stream(code)) as items:
            async for item in items:
                assert isinstance(item, Output) and item.text == "0\n"
                break
        with trio.fail_after(10):
            await poll(lambda: served.kernel_states() == ["idle", "idle"])
        assert (await client.server_stats())["cancelled"] == 2


async def test_stopping_the_server_answers_what_is_pending(
    served: Served, runtime_dir: Path
) -> None:
    async with kernelsup.connect(served.endpoint) as client:
        async with client.subscribe() as events:
            served.scope.cancel()
            with trio.fail_after(10), pytest.raises(Rejected) as info:
                async for _ in events:
                    pass
    assert info.value.code == "shutting_down"
    await served.stop()
    assert not (runtime_dir / "control.sock").exists()


async def test_too_many_requests_are_refused_not_queued(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(srv, "MAX_REQUESTS_PER_CLIENT", 2)
    async with kernelsup.connect(served.endpoint) as client:
        results: list[Any] = []

        async def one(code: str) -> None:
            r = await client.execute(code)
            results.append(r.status if r.ok else f"{r.status}:{r.code}")

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one, "import time; time.sleep(0.5)")
        assert sorted(results) == ["ok", "ok", "rejected:server_busy", "rejected:server_busy"]
        assert (await client.server_stats())["busy"] == 2
        refused: list[Rejected] = []
        async with trio.open_nursery() as nursery:  # other requests raise it
            for _ in range(2):
                nursery.start_soon(client.execute, "import time; time.sleep(1)")
            await poll(lambda: served.kernel_states() == ["busy", "busy"])
            try:
                await client.status()
            except Rejected as exc:
                refused.append(exc)
        assert [e.code for e in refused] == ["server_busy"]


async def test_event_reply_is_json(served: Served) -> None:
    """Events cross the wire as Event.to_dict() and read back with Event.from_dict()."""
    async with kernelsup.connect(served.endpoint) as client:
        async with client.subscribe() as events:
            kid = served.sup.status_now().kernels[0]["id"]
            await client.restart(kid)
            kinds = []
            with trio.fail_after(30):
                async for event in events:
                    json.dumps(event.to_dict())
                    if event.kernel_id == kid:
                        kinds.append(event.kind)
                    if "kernel_started" in kinds:
                        break
    assert kinds[0] == "kernel_exited" and "kernel_starting" in kinds


def test_key_file_write_is_private(tmp_path: Path) -> None:
    target = tmp_path / "k"
    srv._write_private(target, b"one")
    srv._write_private(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


async def test_an_oversized_request_is_refused_before_it_is_sent(served: Served) -> None:
    """zmq would drop the connection without a word; the client knows the limit."""
    async with kernelsup.connect(served.endpoint) as client:
        with pytest.raises(kernelsup.ProtocolError) as info:
            await client.execute("x" * MAX_MESSAGE)
        assert info.value.code == "oversized" and "max_message_bytes" in info.value.message
        assert (await client.execute("1")).ok
    with pytest.raises(kernelsup.ClientError) as closed:
        await client.execute("1")
    assert closed.value.code == "client_closed"

    def sync_client() -> None:  # in a thread: the server runs in this trio loop
        with kernelsup.SyncClient(served.endpoint) as sync:
            with pytest.raises(kernelsup.ProtocolError):
                sync.execute("x" * MAX_MESSAGE)
            assert sync.execute("2").result == "2"
        with pytest.raises(kernelsup.ClientError):
            sync.execute("1")

    await trio.to_thread.run_sync(sync_client)
