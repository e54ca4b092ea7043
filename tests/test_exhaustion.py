"""Exhaustion: the control endpoint under connection floods and too few file descriptors.

Each test runs a real ``kernelsup run`` (tests/supervisor_process.py) under an
RLIMIT_NOFILE set on its process, with real kernels and a session holding a variable, and
checks that the supervisor serves on with its kernels and sessions intact: the connection
bound refuses (and counts) what it cannot take, and the endpoint never lets libzmq abort
the process on EMFILE (see kernelsup/control/gate.py).
"""

from __future__ import annotations

import resource
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import psutil
import pytest

import kernelsup
from kernelsup.core.errors import KernelsupError
from tests.supervisor_process import (
    START_TIMEOUT_S,
    SupervisorProcess,
    private_tmp,
    processes_of,
    stop_and_check,
    supervisor,
    write_config,
)

FLOOD = 1_000
FLOOD_SECONDS = 60.0
CLIENTS = 40
CLIENT_JOIN_S = 120.0


def bare_flood(path: str, count: int, seconds: float) -> tuple[list[socket.socket], int]:
    """``count`` unix connects that never send a byte, each retried while the listen
    backlog is full (EAGAIN), all within ``seconds``. Returns the connected sockets (the
    caller closes them) and how many connects were refused or never got in."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    try:
        while len(socks) < count and time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            while True:
                try:
                    s.connect(path)
                except BlockingIOError:  # the backlog is full: the server has not caught up
                    if time.monotonic() > deadline:
                        s.close()
                        break
                    time.sleep(0.001)
                    continue
                except OSError:
                    s.close()
                    return socks, count - len(socks)
                socks.append(s)
                break
    except BaseException:
        close_all(socks)
        raise
    return socks, count - len(socks)


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def ipc_path(sup: SupervisorProcess) -> str:
    assert sup.endpoint.startswith("ipc://"), sup.endpoint
    return sup.endpoint[len("ipc://") :]


def session_intact(sup: SupervisorProcess) -> None:
    """The session ``keep`` still holds its variable, and a plain execute runs."""
    with kernelsup.SyncClient(sup.config) as c:
        r = c.execute("secret + 1", session="keep", timeout=30)
        assert (r.status, r.result) == ("ok", "42"), r
        assert c.execute("2 + 2", timeout=30).result == "4"


def open_session(sup: SupervisorProcess) -> None:
    with kernelsup.SyncClient(sup.config) as c:
        r = c.execute("secret = 41", session="keep", timeout=30)
        assert r.status == "ok", r


def fds_of(pid: int) -> int:
    return psutil.Process(pid).num_fds()


# --- a flood of bare connections under `ulimit -n 1024` --------------------------------


@pytest.fixture
def sup_1024() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=2, spares=1, open_files=(1024, 1024))


def test_a_flood_of_bare_connections_is_refused_and_clients_are_served(
    sup_1024: SupervisorProcess,
) -> None:
    """1,000 connects that never speak, held open, under soft = hard = 1024: libzmq's IPC
    listener used to abort the process (EMFILE in accept). Now the gate admits at most
    max_connections, closes silent ones to make room, and a real client is served while
    the flood is still connected; the session keeps its variable."""
    sup = sup_1024
    open_session(sup)
    socks, _ = bare_flood(ipc_path(sup), FLOOD, FLOOD_SECONDS)
    try:
        assert len(socks) > 0
        assert sup.proc is not None and sup.proc.poll() is None, sup.stderr()
        session_intact(sup)  # while the flood's connections are still open
        with kernelsup.SyncClient(sup.config) as c:
            stats = c.server_stats()
        assert stats["connections"] <= stats["max_connections"], stats
        # Every flood connection beyond the bound was closed by the server, and counted.
        shed = stats["connections_evicted"] + stats["connections_refused"]
        assert shed >= len(socks) - stats["max_connections"], stats
        assert fds_of(sup.pid) < 1024
    finally:
        close_all(socks)
    assert sup.proc.poll() is None, sup.stderr()
    session_intact(sup)


# --- 40 clients under a limit too low for them all -------------------------------------


LOW_LIMIT = 112


@pytest.fixture
def sup_low() -> Iterator[SupervisorProcess]:
    # 2 kernels + a spare, forked (the zygote's socket, a pidfd and pipes each, and a
    # monitor pair for each of shell and iopub), and the test's session take about 81
    # descriptors, the reserve 16: room for a few clients of
    # the 40 (the old server aborted with 40 connected at once under soft = hard = 80;
    # raising the limit cannot help there).
    yield from supervisor(size=2, spares=1, open_files=(LOW_LIMIT, LOW_LIMIT))


def test_forty_clients_under_a_low_fd_limit_are_served_or_refused(
    sup_low: SupervisorProcess,
) -> None:
    """40 clients connect at once, each holding its connection until all have tried: each
    is served or refused at once with too_many_connections (a clear error, exit 3); the
    supervisor serves on and the refusals are counted."""
    sup = sup_low
    open_session(sup)
    outcomes: list[str] = []
    tried = threading.Semaphore(0)
    everyone_tried = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        try:
            c = kernelsup.SyncClient(sup.config, timeout=30)
        except KernelsupError as exc:
            with lock:
                outcomes.append(exc.code)
            tried.release()
            return
        tried.release()
        try:
            everyone_tried.wait(CLIENT_JOIN_S)
            r = c.execute("1 + 1", timeout=60)
            with lock:
                outcomes.append(r.status if r.status != "ok" or r.result == "2" else repr(r))
        except KernelsupError as exc:
            with lock:
                outcomes.append(f"after connect: {exc.code} {exc.message}")
        finally:
            c.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + CLIENT_JOIN_S
    for _ in threads:
        assert tried.acquire(timeout=max(0.0, deadline - time.monotonic()))
    everyone_tried.set()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads)
    counts = Counter(outcomes)
    assert set(counts) <= {"ok", "too_many_connections"}, counts
    assert counts["ok"] >= 1 and counts["too_many_connections"] >= 1, counts
    assert sup.proc is not None and sup.proc.poll() is None, sup.stderr()
    session_intact(sup)
    with kernelsup.SyncClient(sup.config) as c:
        stats = c.server_stats()
    assert stats["connections_refused"] >= counts["too_many_connections"], (stats, counts)
    assert stats["open_files_limit"] == LOW_LIMIT


# --- exhaustion at any moment: the limit lowered under a running supervisor -------------


@pytest.fixture
def sup_plain() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=2, spares=1)


def test_fds_exhausted_under_a_running_supervisor(sup_plain: SupervisorProcess) -> None:
    """The soft limit of a running supervisor is lowered to what it already holds, then
    bare connects and clients come: none may abort it. Once the limit is back, the
    session still has its variable. (The kernels are all up first: a kernel start while
    out of descriptors is the tree's to survive, not the endpoint's.)"""
    sup = sup_plain
    open_session(sup)
    with kernelsup.SyncClient(sup.config) as c:  # the spare that replaced the session's
        deadline = time.monotonic() + START_TIMEOUT_S
        while {k["state"] for k in c.status().kernels} != {"idle"}:
            assert time.monotonic() < deadline, c.status().kernels
            time.sleep(0.05)
    soft, hard = resource.prlimit(sup.pid, resource.RLIMIT_NOFILE)
    socks: list[socket.socket] = []
    try:
        resource.prlimit(sup.pid, resource.RLIMIT_NOFILE, (fds_of(sup.pid) + 2, hard))
        socks, _ = bare_flood(ipc_path(sup), 200, FLOOD_SECONDS)
        refused = 0
        for _ in range(5):
            try:
                with kernelsup.SyncClient(sup.config, timeout=10) as c:
                    c.execute("1", timeout=30)
            except KernelsupError as exc:
                assert exc.code in ("too_many_connections", "unreachable"), exc
                refused += 1
        assert refused >= 1
        assert sup.proc is not None and sup.proc.poll() is None, sup.stderr()
    finally:
        close_all(socks)
        if sup.proc is not None and sup.proc.poll() is None:
            resource.prlimit(sup.pid, resource.RLIMIT_NOFILE, (soft, hard))
    session_intact(sup)


# --- `kernelsup run` under `ulimit -n 64` -----------------------------------------------


def test_run_under_ulimit_64_runs_or_names_the_limit() -> None:
    """Under soft = hard = 64, ``kernelsup run`` of five kernels either runs (and serves),
    or exits 1 with one line naming the limit: never a traceback (it used to die with an
    OSError or a ZMQError, "Too many open files", wherever the 64th descriptor ran out)."""
    directory = private_tmp()
    runtime_dir = directory / "rt"
    sup = SupervisorProcess(
        write_config(directory, runtime_dir, size=4, spares=1), runtime_dir, open_files=(64, 64)
    )
    try:
        try:
            sup.start()
        except AssertionError:  # no ready line: it exited
            assert sup.proc is not None
            code = sup.proc.wait(timeout=START_TIMEOUT_S)
            err = sup.stderr_path.read_text()
            assert code == 1, (code, err)
            assert "Traceback" not in err, err
            lines = err.strip().splitlines()
            assert lines and lines[-1].startswith("fd_limit "), err
            assert "64" in lines[-1] and "ulimit -n" in lines[-1], err
            assert not processes_of(runtime_dir)
            return
        with kernelsup.SyncClient(sup.config) as c:
            assert c.execute("1 + 1", timeout=30).result == "2"
        stop_and_check(sup)
    finally:
        sup.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
