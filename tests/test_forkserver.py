"""The fork server (adapters/forkserver.py, adapters/zygote.py) and fresh-state execution.

What the exec path's tests check of a forked kernel (death, kill, containment) runs in
test_kernel_actor.py and test_containment.py over both launches; here is what only the
fork path has: the zygote's own supervision and fallbacks, the child's re-seeding, and
``execute(fresh=True)``. Real kernels and real zygotes throughout.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest
import trio

import kernelsup
from kernelsup.adapters.forkserver import ForkServer, forkable
from kernelsup.adapters.launch import plan_launch
from kernelsup.adapters.tether import TETHER_ENV
from kernelsup.core.errors import ConfigError
from kernelsup.core.results import format_status
from kernelsup.tree.bus import EventBus
from kernelsup.tree.router import Pool
from tests.fakekernel import install_kernelspec
from tests.helpers import (
    ESCAPE,
    FAST,
    FAST_POOL,
    alive,
    kernels,
    launched_by,
    launcher_for,
    start_kernel,
    wait_all_gone,
    wait_until,
)


def config(**pool: Any) -> kernelsup.Config:
    merged = {**FAST_POOL, "name": "default", **pool}
    return kernelsup.Config.from_dict({"supervisor": {"intensity": 1000}, "pool": [merged]})


async def ready_server(server: ForkServer) -> None:
    """Wait (bounded) until the fork server's zygote is ready."""
    with trio.fail_after(60):
        await server.wait_ready()


# --------------------------------------------------------------------------- the child
async def test_a_forked_kernel_is_the_zygote_s_child_and_carries_the_tether(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    server = await launcher_for(nursery, "fork")
    rk = await start_kernel(nursery, runtime_dir, launcher=server)
    assert launched_by(rk) == "fork"
    assert isinstance(server, ForkServer)
    pid = rk.handle.pid
    assert pid is not None
    assert psutil.Process(pid).ppid() == server.zygote_pid
    # /proc/<pid>/environ is the zygote's: the reaper's sweep finds a forked kernel too.
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"{TETHER_ENV}={runtime_dir}".encode() in environ
    # Its own session and process group; its own containment unit holds it.
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert pid in rk.handle.unit.members()
    r = await rk.handle.execute("import os; print(os.getcwd(), os.environ['JPY_PARENT_PID'])")
    assert r.status == "ok"
    assert r.stdout.split()[1] == str(os.getpid())
    # Its IPython history is its own, in memory: no other kernel's code to read.
    r = await rk.handle.execute("print(get_ipython().history_manager.hist_file)")
    assert r.stdout == ":memory:\n"


async def test_two_forked_kernels_draw_different_random_numbers(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    server = await launcher_for(nursery, "fork", preload=("numpy",))
    draws = []
    for kernel_id in ("k1", "k2"):
        rk = await start_kernel(nursery, runtime_dir, launcher=server, kernel_id=kernel_id)
        assert launched_by(rk) == "fork"
        r = await rk.handle.execute(
            "import random, numpy; print(random.random(), numpy.random.random())"
        )
        assert r.status == "ok", r
        draws.append(r.stdout.split())
        rk.handle.kill("test finished")
        await rk.wait_exit()
    (py1, np1), (py2, np2) = draws
    assert py1 != py2 and np1 != np2


async def test_a_setsid_daemon_of_a_forked_kernel_dies_with_it(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    server = await launcher_for(nursery, "fork")
    rk = await start_kernel(nursery, runtime_dir, launcher=server)
    assert launched_by(rk) == "fork"
    r = await rk.handle.execute(ESCAPE)
    assert r.status == "ok", r
    pids = [int(p) for p in r.stdout.split()]
    try:
        assert all(alive(p) for p in pids)
        rk.handle.kill("test")
        await rk.wait_exit()
        assert wait_all_gone(pids) == []
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the zygote
async def test_a_killed_zygote_is_replaced_and_kernels_keep_starting(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    server = await launcher_for(nursery, "fork")
    assert isinstance(server, ForkServer)
    rk = await start_kernel(nursery, runtime_dir, launcher=server, kernel_id="k1")
    assert launched_by(rk) == "fork"
    first = server.zygote_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    # Its kernels die with it (their parent-death signal), seen at once.
    cause = await rk.wait_exit()
    assert cause.kind == "failure" and cause.describe() == "signal(9)"
    # A start meanwhile is exec'ed; then a new zygote forks again.
    rk2 = await start_kernel(nursery, runtime_dir, launcher=server, kernel_id="k2")
    assert (await rk2.handle.execute("1")).status == "ok"
    await ready_server(server)
    assert server.zygote_pid not in (None, first)
    rk3 = await start_kernel(nursery, runtime_dir, launcher=server, kernel_id="k3")
    assert launched_by(rk3) == "fork"
    assert (await rk3.handle.execute("print('ok')")).stdout == "ok\n"
    assert server.starts == 2


async def test_a_zygote_whose_preload_fails_leaves_the_pool_exec_ing(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    server = await launcher_for(nursery, "fork", preload=("no_such_module_kernelsup_test",))
    assert isinstance(server, ForkServer)
    rk = await start_kernel(nursery, runtime_dir, launcher=server)
    assert launched_by(rk) == "exec"
    assert (await rk.handle.execute("print(2)")).stdout == "2\n"
    assert "no_such_module_kernelsup_test" in server.last_error
    assert server.fallbacks == 1 and server.forked == 0


async def test_a_zygote_whose_imports_start_a_thread_refuses_to_fork(
    nursery: trio.Nursery, runtime_dir: Path, tmp_path: Path
) -> None:
    """Forking a process with another thread running copies that thread's locks held
    and its work half-done: a preload that starts one makes the zygote refuse."""
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), name='sleeper', daemon=True).start()\n"
    )
    options = attrs.evolve(FAST, env={"PYTHONPATH": str(tmp_path)})
    server = await launcher_for(nursery, "fork", preload=("starts_a_thread",))
    assert isinstance(server, ForkServer)
    rk = await start_kernel(nursery, runtime_dir, options, launcher=server)
    assert launched_by(rk) == "exec"
    assert "threads (sleeper)" in server.last_error


def test_only_ipykernel_started_the_standard_way_is_forked(
    runtime_dir: Path, fake_kernels: Path
) -> None:
    python = plan_launch("k0", "python3", runtime_dir)
    assert forkable(python)
    other = plan_launch("k1", install_kernelspec(fake_kernels, "never_ready"), runtime_dir)
    assert not forkable(other)


# --------------------------------------------------------------------------- pools
def test_the_launch_and_preload_keys_are_checked() -> None:
    assert config().pools[0].launch == "fork"
    assert config(launch="exec").pools[0].launch == "exec"
    with pytest.raises(ConfigError, match=r"preload\[1\]: must be a module name"):
        config(preload=["numpy", "os path"])
    with pytest.raises(ConfigError, match='preload: needs launch = "fork"'):
        config(launch="exec", preload=["numpy"])
    with pytest.raises(ConfigError, match="launch"):
        config(launch="spawn")


async def test_a_pool_forks_its_kernels_and_an_exec_pool_does_not(runtime_dir: Path) -> None:
    cfg = kernelsup.Config.from_dict(
        {
            "pool": [
                {**FAST_POOL, "name": "forked", "size": 1, "spares": 0},
                {**FAST_POOL, "name": "exec", "size": 1, "spares": 0, "launch": "exec"},
            ]
        }
    )
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        forked, execd = sup.pools["forked"], sup.pools["exec"]
        assert forked.fork_server is not None and execd.fork_server is None
        assert forked.fork_server.forked == 1
        pids = {k["pool"]: k["pid"] for k in kernels(sup)}
        assert psutil.Process(pids["forked"]).ppid() == forked.fork_server.zygote_pid
        assert psutil.Process(pids["exec"]).ppid() == os.getpid()
        # status says how each kernel was started
        assert {k["pool"]: k["launch"] for k in kernels(sup)} == {"forked": "fork", "exec": "exec"}


def test_a_pool_of_another_user_execs(runtime_dir: Path) -> None:
    """Its kernels start through the other user's exec path: never from our zygote."""
    cfg = config(user="nobody")
    pool = Pool(cfg.pools[0], cfg, EventBus(), runtime_dir, random.Random())
    assert pool.fork_server is None and not isinstance(pool.launcher, ForkServer)


# --------------------------------------------------------------------------- fresh
SECRETS = "print(sorted(n for n in globals() if n.startswith('SECRET')))"


async def test_fresh_never_sees_a_previous_request_s_variables(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(
        config(size=1, spares=1, fresh_spares=1), runtime_dir=runtime_dir
    ) as sup:
        assert sorted(k["role"] for k in kernels(sup)) == ["fresh", "pool", "spare"]
        assert (await sup.execute("SECRET_SHARED = 1")).status == "ok"
        seen: list[str] = []
        for i in range(4):  # more than the fresh spares: later ones start a kernel each
            r = await sup.execute(f"{SECRETS}\nSECRET_{i} = {i}", fresh=True)
            assert r.status == "ok", r
            assert r.stdout == "[]\n"
            assert r.kernel_id is not None and r.kernel_id not in seen
            seen.append(r.kernel_id)
        # Each fresh kernel is destroyed after its one request.
        await wait_until(sup, lambda: not {k["id"] for k in kernels(sup)} & set(seen))
        await wait_until(
            sup,
            lambda: sorted(k["role"] for k in kernels(sup)) == ["fresh", "pool", "spare"],
        )
        shared = await sup.execute(SECRETS)
        assert shared.stdout == "['SECRET_SHARED']\n"


async def test_fresh_outcomes_are_right_and_leave_nothing(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        loop = await sup.execute("while True: pass", fresh=True, timeout=0.5)
        assert loop.status == "timeout"
        died = await sup.execute("import os; os._exit(3)", fresh=True)
        assert died.status == "died" and died.cause is not None
        assert died.cause.describe() == "exit(3)"
        error = await sup.execute("1 / 0", fresh=True)
        assert error.status == "error" and error.error is not None
        assert error.error.ename == "ZeroDivisionError"
        daemon = await sup.execute(ESCAPE, fresh=True)
        pids = [int(p) for p in daemon.stdout.split()]
        await wait_until(sup, lambda: daemon.kernel_id not in {k["id"] for k in kernels(sup)})
        assert wait_all_gone(pids) == []  # killed with the kernel's unit
        # The pool's own kernel was never touched.
        assert [k["role"] for k in kernels(sup)] == ["pool"]


async def test_fresh_and_session_together_is_a_bad_request(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        r = await sup.execute("1", fresh=True, session="s")
        assert r.status == "rejected" and r.code == "bad_request"
        assert "fresh and session" in r.message


async def test_status_says_how_a_pool_starts_its_kernels_and_why_its_zygote_failed(
    runtime_dir: Path,
) -> None:
    """A pool whose preload does not import runs on exec'ed kernels, and its status (JSON
    and the table) says so with the reason, rather than leaving the user to wonder."""
    cfg = config(size=1, spares=0, preload=["no_such_module_kernelsup_status"])
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("1 + 1")).result == "2"
        with trio.fail_after(60):
            while "no_such_module_kernelsup_status" not in str(
                sup.status_now().pools[0]["launch"]["last_error"]
            ):
                await trio.sleep(0.05)
        launch = sup.status_now().pools[0]["launch"]
        assert launch["mode"] == "fork" and launch["zygote"] != "ready", launch
        assert launch["exec_fallbacks"] >= 1 and launch["forked"] == 0, launch
        assert [k["launch"] for k in kernels(sup)] == ["exec"]  # this kernel fell back
        table = format_status(sup.status_now())
        assert "zygote: " in table and "no_such_module_kernelsup_status" in table
    async with kernelsup.open_supervisor(
        config(size=1, spares=0, launch="exec"), runtime_dir=runtime_dir
    ) as sup:
        assert sup.status_now().pools[0]["launch"] == {"mode": "exec"}
