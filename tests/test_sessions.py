"""Sessions with a place of their own (issue 15): open_session's cwd and env hold for the
session's first kernel and every replacement, a private directory by default (removed at
close), sessions(), interrupt and restart by session, idle_timeout and lifetime, and bad
input refused with a message naming it. Real ipykernel kernels, in-process; the same
calls through the control endpoint are in test_jobs.py's end-to-end tests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from jupyter_client.kernelspec import KernelSpecManager

import kernelsup
from kernelsup.api import Supervisor
from kernelsup.core.errors import Rejected
from tests.helpers import FAST_POOL, kernels, wait_until

WHERE = "import os; print(os.getcwd()); print(os.environ.get('AGENT_TOKEN'))"


def config(supervisor: dict[str, Any] | None = None, **pool: Any) -> kernelsup.Config:
    merged = {**FAST_POOL, "name": "default", **pool}
    return kernelsup.Config.from_dict(
        {"supervisor": {"intensity": 1000, **(supervisor or {})}, "pool": [merged]}
    )


def pid_of(sup: Supervisor, kernel_id: str) -> int:
    pid = next(k["pid"] for k in kernels(sup) if k["id"] == kernel_id)
    assert isinstance(pid, int)
    return pid


def process_cwd(pid: int) -> str:
    """The directory the kernel's process itself is in, as the OS says."""
    return os.readlink(f"/proc/{pid}/cwd")


async def test_cwd_and_env_hold_for_the_first_kernel_and_a_replacement(
    runtime_dir: Path, tmp_path: Path
) -> None:
    """A warm spare is adapted at bind; the replacement after a SIGKILL has them too."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "data.txt").write_text("hello from the project\n")
    async with kernelsup.open_supervisor(config(size=1, spares=1), runtime_dir=runtime_dir) as sup:
        info = await sup.open_session("agent", cwd=str(work), env={"AGENT_TOKEN": "t-1"})
        assert (info.name, info.pool, info.cwd, info.env) == (
            "agent",
            "default",
            str(work),
            ("AGENT_TOKEN",),
        )
        assert info.state == "idle" and info.kernel_id is not None and info.executions == 0

        first = await sup.execute(WHERE + "\nprint(open('data.txt').read())", session="agent")
        assert first.status == "ok", first
        assert first.stdout == f"{work}\nt-1\nhello from the project\n\n"
        assert first.kernel_id == info.kernel_id

        os.kill(pid_of(sup, info.kernel_id), signal.SIGKILL)
        await wait_until(sup, lambda: info.kernel_id not in [k["id"] for k in kernels(sup)])
        second = await sup.execute(WHERE, session="agent")
        assert second.status == "ok" and second.state_lost, second
        assert second.kernel_id != first.kernel_id
        assert second.stdout.endswith(f"{work}\nt-1\n")

        [listed] = await sup.sessions()
        assert listed.name == "agent" and listed.kernel_id == second.kernel_id
        assert listed.executions == 2 and listed.last_used >= listed.created
        assert await sup.close_session("agent")
    assert work.is_dir() and (work / "data.txt").exists()  # the user's directory stays


async def test_a_kernel_started_for_the_session_has_them_in_its_process(
    runtime_dir: Path, tmp_path: Path
) -> None:
    """No spare, and the pool's kernel ran someone's code: a kernel is started for the
    session, in its directory with its variables from the launch on."""
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("x = 1")).status == "ok"
        info = await sup.open_session(cwd=str(tmp_path), env={"AGENT_TOKEN": "fresh"})
        assert info.name.startswith("session-")  # made, since none was given
        assert info.kernel_id is not None
        # (a kernel forked from the pool's zygote has its variables in os.environ, not in
        # /proc/PID/environ, which keeps what the zygote was exec'ed with)
        assert process_cwd(pid_of(sup, info.kernel_id)) == str(tmp_path)
        r = await sup.execute(WHERE, session=info.name)
        assert r.stdout == f"{tmp_path}\nfresh\n"


async def test_the_default_cwd_is_private_and_goes_with_the_session(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=1), runtime_dir=runtime_dir) as sup:
        a = await sup.open_session("a")
        r = await sup.execute("print(__import__('os').getcwd())", session="a")
        # an implicit session (opened by its first execute) gets one too
        b = await sup.execute("print(__import__('os').getcwd())", session="b")
        cwd_a, cwd_b = Path(a.cwd), Path(b.stdout.strip())
        assert r.stdout.strip() == a.cwd
        assert cwd_a.parent == cwd_b.parent == runtime_dir / "sessions"
        assert cwd_a != cwd_b
        assert oct(cwd_a.stat().st_mode & 0o777) == "0o700"
        assert await sup.close_session("a")
        assert not cwd_a.exists() and cwd_b.is_dir()
    assert not cwd_b.exists()  # still open at the stop: removed with it


async def test_interrupt_and_restart_by_session(runtime_dir: Path, tmp_path: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=1), runtime_dir=runtime_dir) as sup:
        await sup.open_session("s", cwd=str(tmp_path), env={"AGENT_TOKEN": "r"})
        assert (await sup.execute("kept = 1", session="s")).status == "ok"
        async with trio.open_nursery() as nursery:
            results = []
            running = trio.Event()

            async def long() -> None:
                code = "print('go', flush=True); import time; time.sleep(60)"
                results.append(
                    await sup.execute(code, session="s", on_output=lambda out: running.set())
                )

            nursery.start_soon(long)
            with trio.fail_after(30):
                await running.wait()  # the code runs (busy is said before it starts)
            [busy] = await sup.sessions()
            assert busy.state == "busy" and busy.executions == 1
            await sup.interrupt(session="s")
        [r] = results
        assert r.status == "error" and r.error is not None and r.error.ename == "KeyboardInterrupt"
        assert (await sup.execute("print(kept)", session="s")).stdout == "1\n"  # state kept

        before = (await sup.sessions())[0].kernel_id
        await sup.restart(session="s")
        after = (await sup.sessions())[0]
        assert after.kernel_id != before and after.state == "idle"
        r = await sup.execute(WHERE + "\nprint('kept' in globals())", session="s")
        assert r.state_lost and r.stdout.endswith(f"{tmp_path}\nr\nFalse\n")

        for bad in ({}, {"kernel_id": "default-0", "session": "s"}):
            with pytest.raises(Rejected) as info:
                await sup.interrupt(**bad)
            assert info.value.code == "bad_request" and "exactly one" in info.value.message
        with pytest.raises(Rejected) as info:
            await sup.restart(session="nobody")
        assert info.value.code == "unknown_session"


async def test_idle_timeout_and_lifetime_close_a_session(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=1), runtime_dir=runtime_dir) as sup:
        await sup.open_session("short", lifetime=1.0)
        await sup.open_session("idle", idle_timeout=1.0)
        await sup.open_session("stays", idle_timeout=0)  # 0: never, overriding the pool's
        names = {s.name for s in await sup.sessions()}
        assert names == {"short", "idle", "stays"}
        await wait_until(sup, lambda: set(sup.pools["default"].sessions) == {"stays"})
        r = await sup.execute("1", session="short")
        assert r.state_lost  # it expired: its next request hears its state is gone


@pytest.mark.parametrize(
    ("kwargs", "code", "names"),
    [
        ({"cwd": "relative/dir"}, "bad_request", "absolute"),
        ({"cwd": "/nonexistent-kernelsup-dir"}, "bad_request", "not a directory"),
        ({"env": {"A=B": "x"}}, "bad_request", "'A=B'"),
        ({"env": {"A": 1}}, "bad_request", "strings"),
        ({"env": {f"V{i}": "x" for i in range(300)}}, "bad_request", "at most 256"),
        ({"idle_timeout": -1}, "bad_request", "idle_timeout"),
        ({"lifetime": 0}, "bad_request", "lifetime"),
        ({"name": "bad\nname"}, "bad_request", "printable"),
        ({"pool": "nope"}, "unknown_pool", "nope"),
    ],
)
async def test_bad_input_is_refused_naming_it(
    runtime_dir: Path, kwargs: dict[str, Any], code: str, names: str
) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        with pytest.raises(Rejected) as info:
            await sup.open_session(**kwargs)
        assert info.value.code == code and names in info.value.message, info.value
        assert await sup.sessions() == []


async def test_a_name_is_open_once(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=1), runtime_dir=runtime_dir) as sup:
        await sup.open_session("one")
        with pytest.raises(Rejected) as info:
            await sup.open_session("one")
        assert info.value.code == "session_exists"
        assert [s.to_dict()["name"] for s in await sup.sessions()] == ["one"]


async def test_another_language_gets_a_kernel_started_in_the_session_s_place(
    runtime_dir: Path, tmp_path: Path
) -> None:
    """A spare that is not Python is not adapted (nothing here knows its language): a
    kernel is started for the session, its process in the session's directory with its
    variables. calysto_scheme (on metakernel) is installed by the test extra."""
    if "calysto_scheme" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("calysto_scheme is not installed")
    cfg = config(size=1, spares=1, kernel="calysto_scheme", start_timeout=60.0)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        await wait_until(sup, lambda: all(k["state"] == "idle" for k in kernels(sup)))
        spare = next(k["id"] for k in kernels(sup) if k["role"] == "spare")
        info = await sup.open_session("scheme", cwd=str(tmp_path), env={"AGENT_TOKEN": "s"})
        assert info.kernel_id is not None and info.kernel_id != spare  # not the spare
        pid = pid_of(sup, info.kernel_id)
        assert process_cwd(pid) == str(tmp_path)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"AGENT_TOKEN=s" in environ
        r = await sup.execute("(+ 1 2)", session="scheme")
        assert r.status == "ok" and r.result == "3", r
