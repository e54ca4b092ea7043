"""The client library against a real `kernelsup run` subprocess: trio, asyncio and sync.

One supervisor (2 kernels + 1 spare) serves the module; tests that need no supervisor,
or a misbehaving one, make their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq

import kernelsup
from kernelsup.adapters import zmqio
from kernelsup.control import connection
from kernelsup.core import protocol as proto
from kernelsup.core.errors import AuthenticationError, ClientError, ProtocolError, Rejected
from kernelsup.core.events import Event
from kernelsup.core.results import ExecuteResult, Output
from tests.supervisor_process import (
    SupervisorProcess,
    private_tmp,
    stop_and_check,
    supervisor,
    write_config,
)

CODE = "import sys\nprint('out'); print('err', file=sys.stderr)\n6 * 7"


@pytest.fixture(scope="module")
def sup() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=2, spares=1)


def check(result: ExecuteResult) -> None:
    assert result.status == "ok", result
    assert (result.stdout, result.stderr, result.result) == ("out\n", "err\n", "42")
    assert result.kernel_id is not None and result.kernel_id.startswith("default-")
    # The kernel flushes stdout and stderr on timers of its own, so how the two streams'
    # pieces interleave varies; the texts above are exact, and the value comes last.
    types = [o.type for o in result.outputs]
    assert types[-1] == "execute_result" and set(types[:-1]) == {"stream"}, types


# --- the same execute from trio, asyncio and plain sync code ----------------------------


async def test_execute_from_trio(sup: SupervisorProcess) -> None:
    with trio.fail_after(30):
        async with kernelsup.connect(sup.config) as client:
            assert client.endpoint == sup.endpoint
            check(await client.execute(CODE))


def test_execute_from_asyncio(sup: SupervisorProcess) -> None:
    async def main() -> ExecuteResult:
        async with kernelsup.connect(str(sup.config)) as client:
            return await asyncio.wait_for(client.execute(CODE), 30)

    check(asyncio.run(main()))


def test_execute_from_sync_client(sup: SupervisorProcess) -> None:
    with kernelsup.SyncClient(sup.config) as client:
        check(client.execute(CODE))


# --- streaming --------------------------------------------------------------------------

STREAM_CODE = "for i in range(3): print(i, flush=True)"


def check_stream(items: list[Any]) -> None:
    *outputs, final = items
    assert [o.text for o in outputs] == ["0\n", "1\n", "2\n"]
    assert all(isinstance(o, Output) for o in outputs)
    assert isinstance(final, ExecuteResult) and final.stdout == "0\n1\n2\n"


async def test_stream_from_trio(sup: SupervisorProcess) -> None:
    with trio.fail_after(30):
        async with kernelsup.connect(sup.config) as client:
            check_stream([item async for item in client.stream(STREAM_CODE)])


def test_stream_from_asyncio_and_sync(sup: SupervisorProcess) -> None:
    async def main() -> list[Any]:
        async with kernelsup.connect(sup.config) as client:
            return [item async for item in client.stream(STREAM_CODE)]

    check_stream(asyncio.run(main()))
    with kernelsup.SyncClient(sup.config) as client:
        check_stream(list(client.stream(STREAM_CODE)))


async def test_a_reader_that_falls_behind_gets_lagged_and_a_complete_result(
    sup: SupervisorProcess,
) -> None:
    """A stream nobody reads while the kernel floods output, and a concurrent execute on
    the same connection: the execute is complete; the stream reports ``lagged`` when read,
    and its final result has every line."""
    n = 1500
    with trio.fail_after(90):
        async with kernelsup.connect(sup.config) as client:
            flood = client.stream(f"for i in range({n}): print(i, flush=True)")
            async with aclosing(flood):
                first = await flood.__anext__()
                assert isinstance(first, Output)
                other = await client.execute("print('y' * 100_000)")
                assert other.stdout == "y" * 100_000 + "\n"
                await poll(client, lambda stats: stats["in_flight"] == 1)  # flood done
                rest = [item async for item in flood]
    *outputs, final = rest
    lagged = [o for o in outputs if isinstance(o, Output) and o.name == "lagged"]
    assert lagged and all((o.metadata or {}).get("dropped", 0) > 0 for o in lagged)
    assert lagged[0].type == "notice" and "the final result has them" in (lagged[0].text or "")
    assert isinstance(final, ExecuteResult) and final.status == "ok"
    assert final.stdout == "".join(f"{i}\n" for i in range(n))


async def poll(client: kernelsup.Client, done: Callable[[dict[str, Any]], bool]) -> None:
    """Until the server's counters satisfy ``done`` (nothing announces them)."""
    while True:
        if done(await client.server_stats()):
            return
        await trio.sleep(0.05)


# --- sessions ---------------------------------------------------------------------------


async def test_two_clients_in_different_sessions_see_only_their_own_state(
    sup: SupervisorProcess,
) -> None:
    seen: dict[str, list[Any]] = {}

    async def agent(name: str, value: int) -> None:
        async with kernelsup.connect(sup.config) as client:
            async with client.session(f"agent-{name}") as session:
                assert (await session.execute(f"x = {value}; only_{name} = True")).ok
                for _ in range(5):
                    r = await session.execute("x += 1; x")
                    assert r.session == f"agent-{name}"
                other = "b" if name == "a" else "a"
                missing = await session.execute(f"only_{other}")
                seen[name] = [
                    (await session.execute("x")).result,
                    missing.status,
                    missing.error.ename if missing.error else None,
                    (await session.execute(f"only_{name}")).result,
                ]

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent, "a", 100)
            nursery.start_soon(agent, "b", 200)
    assert seen["a"] == ["105", "error", "NameError", "True"]
    assert seen["b"] == ["205", "error", "NameError", "True"]
    with kernelsup.SyncClient(sup.config) as client:  # both sessions were closed
        assert client.status().to_dict()["pools"][0]["sessions"] == []
        assert client.close_session("agent-a") is False


def test_sync_session(sup: SupervisorProcess) -> None:
    with kernelsup.SyncClient(sup.config) as client, client.session("sync-1") as session:
        session.execute("y = 'kept'")
        assert session.execute("y").result == "'kept'"
        items = list(session.stream("print(y)"))
        assert isinstance(items[-1], ExecuteResult) and items[-1].stdout == "kept\n"


# --- status, interrupt, restart, watch -------------------------------------------------


async def test_status_has_the_contract_shape(sup: SupervisorProcess) -> None:
    async with kernelsup.connect(sup.config) as client:
        report = await client.status()
    data = report.to_dict()
    assert set(data) >= {"kernels", "pools"}
    for k in data["kernels"]:
        assert {
            "id",
            "pool",
            "role",
            "state",
            "pid",
            "restarts",
            "session",
            "uptime_s",
            "last_exit",
        } <= set(k)
        assert k["state"] in ("starting", "idle", "busy", "backoff", "dead", "stopping")
        assert k["role"] in ("pool", "spare", "session")
    assert sorted(k["role"] for k in data["kernels"]) == ["pool", "pool", "spare"]


async def test_unknown_kernel_is_rejected(sup: SupervisorProcess) -> None:
    async with kernelsup.connect(sup.config) as client:
        for action in (client.interrupt, client.restart):
            with pytest.raises(Rejected) as info:
                await action("no-such-kernel")
            assert info.value.code == "unknown_kernel"
            assert "no-such-kernel" in info.value.describe()


async def settled(client: kernelsup.Client) -> kernelsup.StatusReport:
    """The status once every kernel is idle (earlier tests may leave one starting)."""
    while True:
        report = await client.status()
        if all(k["state"] == "idle" for k in report.kernels):
            return report
        await trio.sleep(0.05)


async def test_watch_sees_a_restart(sup: SupervisorProcess) -> None:
    with trio.fail_after(60):
        async with kernelsup.connect(sup.config) as client:
            report = await settled(client)
            spare = next(k for k in report.kernels if k["role"] == "spare")
            kinds: list[str] = []
            async with client.subscribe() as events:
                await client.restart(spare["id"])
                async for event in events:
                    assert isinstance(event, Event)
                    if event.kernel_id == spare["id"]:
                        kinds.append(event.kind)
                    if event.kind == "kernel_started" and event.kernel_id == spare["id"]:
                        break
            after = await client.status()
    assert kinds[0] == "kernel_exited" and kinds[-1] == "kernel_started", kinds
    restarted = next(k for k in after.kernels if k["id"] == spare["id"])
    assert restarted["pid"] != spare["pid"] and restarted["restarts"] == spare["restarts"] + 1


def test_sync_watch_and_interrupt(sup: SupervisorProcess) -> None:
    with kernelsup.SyncClient(sup.config) as client:
        with client.subscribe() as events:
            kid = client.status().kernels[0]["id"]
            client.interrupt(kid)  # an idle kernel: nothing to interrupt, no error
            client.restart(kid)
            first = next(iter(events))
        assert first.kind == "kernel_exited" and first.kernel_id == kid
        assert client.execute("'after'").result == "'after'"


# --- refusals and a supervisor that is not there ----------------------------------------


async def test_wrong_key_is_refused_and_others_are_served(sup: SupervisorProcess) -> None:
    with trio.fail_after(10), pytest.raises(AuthenticationError) as info:
        async with kernelsup.connect(sup.endpoint, key="f" * 64):
            pass
    assert info.value.describe().startswith("auth_failed AuthenticationError: ")
    async with kernelsup.connect(sup.config) as client:
        assert (await client.execute("1")).ok
        assert (await client.server_stats())["bad_signature"] >= 1


async def test_an_old_client_is_told_to_upgrade(
    sup: SupervisorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proto, "PROTOCOL_VERSION", 0)
    with trio.fail_after(10), pytest.raises(ProtocolError) as info:
        async with kernelsup.connect(sup.config):
            pass
    assert info.value.code == "protocol_version"
    assert "upgrade kernelsup on the client" in info.value.message


@pytest.fixture
def no_supervisor() -> Iterator[Path]:
    """A config nobody runs."""
    directory = private_tmp()
    try:
        yield write_config(directory, directory / "rt")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _assert_unreachable(exc: BaseException, endpoint_part: str) -> None:
    assert isinstance(exc, kernelsup.Unreachable), exc
    assert exc.code == "unreachable"
    assert endpoint_part in exc.message


async def test_no_supervisor_is_unreachable_at_once(no_supervisor: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(kernelsup.Unreachable) as info:
        async with kernelsup.connect(no_supervisor):
            pass
    _assert_unreachable(info.value, f"ipc://{no_supervisor.parent}/rt/control.sock")
    assert "key file" in info.value.message
    with pytest.raises(kernelsup.Unreachable):
        kernelsup.SyncClient(no_supervisor)

    async def main() -> None:
        async with kernelsup.connect(no_supervisor):
            pass

    with pytest.raises(kernelsup.Unreachable):
        await trio.to_thread.run_sync(asyncio.run, main())
    assert time.monotonic() - t0 < 5


async def test_stale_socket_file_is_unreachable(no_supervisor: Path) -> None:
    """What a SIGKILLed supervisor leaves: a key file and a socket file nobody serves."""
    rt = no_supervisor.parent / "rt"
    rt.mkdir(mode=0o700)
    (rt / "control.key").write_text("k" * 64)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(rt / "control.sock"))
    stale.close()
    with trio.fail_after(5), pytest.raises(kernelsup.Unreachable) as info:
        async with kernelsup.connect(no_supervisor):
            pass
    _assert_unreachable(info.value, str(rt / "control.sock"))
    assert "nothing listens" in info.value.message
    with pytest.raises(kernelsup.Unreachable):
        kernelsup.SyncClient(f"ipc://{rt}/control.sock")  # key beside the socket
    with pytest.raises(ClientError) as missing:
        kernelsup.SyncClient("tcp://127.0.0.1:1")
    assert missing.value.code == "key_missing"


async def test_a_silent_endpoint_is_unreachable_within_the_timeout() -> None:
    """A TCP listener that never speaks: the handshake times out, naming the endpoint."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        t0 = time.monotonic()
        with trio.fail_after(10), pytest.raises(kernelsup.Unreachable) as info:
            async with kernelsup.connect(endpoint, key=b"k", timeout=0.5):
                pass
        _assert_unreachable(info.value, endpoint)
        with pytest.raises(kernelsup.Unreachable):
            kernelsup.SyncClient(endpoint, key=b"k", timeout=0.5)
        assert time.monotonic() - t0 < 5


@contextlib.asynccontextmanager
async def fake_server(key: bytes, *, vanish: bool) -> AsyncIterator[str]:
    """A TCP ROUTER that answers ``hello``, takes the next request and answers nothing;
    if ``vanish``, it then closes its socket. Yields its endpoint."""
    codec = proto.Codec(key)
    router = zmqio.Socket(zmqio.context().socket(zmq.ROUTER))
    router.zmq.setsockopt(zmq.LINGER, 0)
    port = router.zmq.bind_to_random_port("tcp://127.0.0.1")

    async def serve() -> None:
        ident, *frames = await router.recv_multipart()
        hello = codec.decode_request(frames, max_bytes=1 << 20)
        await router.send_multipart(
            codec.encode_reply(
                proto.Result({"ping_interval_s": 0.05}), request_id=hello.request_id, identity=ident
            )
        )
        await router.recv_multipart()
        if vanish:
            router.close()

    with router:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield f"tcp://127.0.0.1:{port}"
            nursery.cancel_scope.cancel()


async def test_a_silent_but_connected_server_keeps_the_request_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that answers hello, then nothing, while its connection holds (zmq answers
    the heartbeats): the supervisor is there, just slow, so the request waits. (It used to
    end with Unreachable after 10 s of silence, though the supervisor might resume.)"""
    monkeypatch.setattr(connection, "QUIET_CHECK_S", 0.1)
    monkeypatch.setattr(connection, "TCP_HEARTBEAT_IVL_S", 0.1)
    monkeypatch.setattr(connection, "TCP_HEARTBEAT_TIMEOUT_S", 1.0)
    key = b"silent-server-key"
    async with fake_server(key, vanish=False) as endpoint:
        async with kernelsup.connect(endpoint, key=key) as client:
            # Longer than the old rule's 10 s; 100 quiet checks, 10 heartbeat timeouts.
            with trio.move_on_after(12.0) as waited:
                await client.execute("1")
    assert waited.cancelled_caught


async def test_a_server_that_goes_away_mid_request_is_unreachable_at_once() -> None:
    """The server closes its socket while a request waits: the connection broke, so the
    request ends with Unreachable saying so, without waiting for any timeout."""
    key = b"vanishing-server-key"
    async with fake_server(key, vanish=True) as endpoint:
        async with kernelsup.connect(endpoint, key=key) as client:
            with (
                trio.fail_after(connection.RECONNECT_WAIT_S),
                pytest.raises(kernelsup.Unreachable) as info,
            ):
                await client.execute("1")
    assert "broke" in info.value.message and endpoint in info.value.message


# --- a supervisor that stalls, and one that dies ----------------------------------------

STALL_S = 15.0
SLOW_CODE = "import time; time.sleep(1); 'done'"


@pytest.fixture
def lone_sup() -> Iterator[SupervisorProcess]:
    """A supervisor of its own (the tests below stop or kill it)."""
    directory = private_tmp()
    runtime_dir = directory / "rt"
    process = SupervisorProcess(write_config(directory, runtime_dir, size=2, spares=1), runtime_dir)
    try:
        yield process.start()
    finally:
        if process.proc is not None and process.proc.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # whatever a failed test left stopped
        process.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


async def wait_in_flight(client: kernelsup.Client, n: int) -> None:
    """Until the server has ``n`` requests in flight besides the stats request asking."""
    with trio.fail_after(30):
        while (await client.server_stats())["in_flight"] < n + 1:
            await trio.sleep(0.02)


async def test_requests_survive_a_supervisor_stopped_for_15_s(lone_sup: SupervisorProcess) -> None:
    """Requests in flight from trio, asyncio and a SyncClient; the supervisor is stopped
    (SIGSTOP) for 15 s, then continued: every request gets its real outcome, ok. (Each
    used to end with Unreachable after 10 s of silence, while the supervisor later ran
    its code.)"""
    config = lone_sup.config
    results: list[Any] = []

    def from_sync() -> None:
        with kernelsup.SyncClient(config) as c:
            results.append(c.execute(SLOW_CODE))

    async def from_asyncio() -> None:
        async with kernelsup.connect(config) as c:
            results.append(await c.execute(SLOW_CODE))

    with trio.fail_after(STALL_S + 60):
        async with kernelsup.connect(config) as client:

            async def from_trio() -> None:
                results.append(await client.execute(SLOW_CODE))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(from_trio)
                nursery.start_soon(from_trio)
                nursery.start_soon(trio.to_thread.run_sync, from_sync)
                nursery.start_soon(trio.to_thread.run_sync, asyncio.run, from_asyncio())
                await wait_in_flight(client, 4)
                os.kill(lone_sup.pid, signal.SIGSTOP)
                try:
                    await trio.sleep(STALL_S)  # the fault: the supervisor stays stopped
                finally:
                    os.kill(lone_sup.pid, signal.SIGCONT)
    assert [(r.status, r.result) for r in results] == [("ok", "'done'")] * 4, results
    stop_and_check(lone_sup)


async def test_a_killed_supervisor_is_unreachable_at_once(lone_sup: SupervisorProcess) -> None:
    """SIGKILL while requests wait (trio and a SyncClient): each ends with Unreachable as
    soon as the connection closes, well before the old 10 s of silence."""
    config = lone_sup.config
    errors: list[BaseException] = []

    def from_sync() -> None:
        with kernelsup.SyncClient(config) as c:
            try:
                c.execute("import time; time.sleep(60)")
            except kernelsup.Unreachable as exc:
                errors.append(exc)

    async with kernelsup.connect(config) as client:

        async def from_trio() -> None:
            with pytest.raises(kernelsup.Unreachable) as info:
                await client.execute("import time; time.sleep(60)")
            errors.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(from_trio)
            nursery.start_soon(trio.to_thread.run_sync, from_sync)
            await wait_in_flight(client, 2)
            os.kill(lone_sup.pid, signal.SIGKILL)
            with trio.fail_after(5):  # the rule: at once (the connection closes)
                while len(errors) < 2:
                    await trio.sleep(0.02)
    assert all("broke" in e.message or "is gone" in e.message for e in errors), errors
