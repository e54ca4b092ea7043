"""Containment: a kernel and everything it starts are one unit that kernelsup enumerates,
limits and kills, whatever process group, session or environment they moved to.

Run for each kind of unit this machine can give (a cgroup where it allows one, the
subreaper fallback always); see kernelsup/adapters/containment.py.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
import trio

from kernelsup.adapters import containment
from kernelsup.adapters.containment import Limits, Unit
from tests.helpers import (
    ESCAPE,
    FAST,
    LAUNCHES,
    RunningKernel,
    alive,
    launched_by,
    launcher_for,
    leftovers_of,
    sigkill_supervisor,
    start_kernel,
    wait_all_gone,
)

KINDS = [
    pytest.param(
        "cgroup",
        marks=pytest.mark.skipif(
            containment.available() != "cgroup", reason="no writable cgroup hierarchies here"
        ),
    ),
    "subreaper",
]
cgroup_only = pytest.mark.skipif(
    containment.available() != "cgroup", reason="no writable cgroup hierarchies here"
)


def options(kind: str, **extra: object) -> object:
    return attrs.evolve(FAST, containment=kind, **extra)


async def contained_kernel(
    nursery: trio.Nursery, runtime_dir: Path, launch: str, kind: str, **extra: object
) -> RunningKernel:
    """A kernel in a unit of ``kind``, exec'ed or forked (checked: no silent fallback)."""
    launcher = await launcher_for(nursery, launch)
    rk = await start_kernel(nursery, runtime_dir, options(kind, **extra), launcher=launcher)
    assert launched_by(rk) == launch
    assert rk.handle.containment == kind
    return rk


async def escaped(rk: object) -> list[int]:
    r = await rk.handle.execute(ESCAPE)  # type: ignore[attr-defined]
    assert r.status == "ok", r
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    return pids


@pytest.mark.parametrize("launch", LAUNCHES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["shutdown", "kill"])
async def test_escaped_processes_end_with_their_kernel(
    nursery: trio.Nursery, runtime_dir: Path, kind: str, how: str, launch: str
) -> None:
    rk = await contained_kernel(nursery, runtime_dir, launch, kind)
    pids = await escaped(rk)
    try:
        if how == "shutdown":
            rk.handle.shutdown()
        else:
            rk.handle.kill("test")
        await rk.wait_exit()
        assert wait_all_gone(pids) == []
        assert leftovers_of(runtime_dir) == []  # its cgroups went with it
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@cgroup_only
@pytest.mark.parametrize("launch", LAUNCHES)
async def test_escaped_processes_end_when_the_kernel_dies_by_itself(
    nursery: trio.Nursery, runtime_dir: Path, launch: str
) -> None:
    rk = await contained_kernel(nursery, runtime_dir, launch, "cgroup")
    pids = await escaped(rk)
    try:
        r = await rk.handle.execute("import os; os._exit(1)")
        assert r.status == "died", r
        cause = await rk.wait_exit()
        assert cause.code == 1
        assert wait_all_gone(pids) == []
        assert leftovers_of(runtime_dir) == []
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("launch", LAUNCHES)
@pytest.mark.parametrize("kind", KINDS)
async def test_the_memory_limit_counts_a_double_forked_daemon(
    nursery: trio.Nursery, runtime_dir: Path, kind: str, launch: str
) -> None:
    """The kernel is small; a daemon it left behind (own session, no environment) takes
    400 MB. Under memory_limit_mb = 250 it may not keep it: the unit is killed (the watch)
    or the daemon is (the cgroup's OOM killer), and a kernel that died says `limit`."""
    rk = await contained_kernel(nursery, runtime_dir, launch, kind, memory_limit_mb=250)
    hog = ESCAPE.replace(
        'os.execve("/bin/sleep", ["sleep", "4243"], {})',
        'import time; b = b"x" * (400 * 2**20); time.sleep(120); os._exit(0)',
    )
    r = await rk.handle.execute(hog)
    assert r.status == "ok", r
    pids = [int(p) for p in r.stdout.split()]
    try:
        with trio.fail_after(60):
            while alive(pids[1]):
                await trio.sleep(0.05)  # nothing announces the OOM killer's work
        if rk.done.is_set():
            assert rk.cause is not None and rk.cause.kind == "limit", rk.cause
    finally:
        rk.handle.kill("test")
        await rk.wait_exit()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@cgroup_only
@pytest.mark.parametrize("launch", LAUNCHES)
async def test_pids_limit_bounds_everything_the_kernel_starts(
    nursery: trio.Nursery, runtime_dir: Path, launch: str
) -> None:
    rk = await contained_kernel(nursery, runtime_dir, launch, "cgroup", pids_limit=24)
    code = textwrap.dedent("""
        import subprocess
        started, refused = [], 0
        for _ in range(60):
            try:
                started.append(subprocess.Popen(["sleep", "60"], start_new_session=True))
            except OSError:
                refused += 1
        for p in started:
            p.kill(); p.wait()
        print(len(started), refused)
    """)
    r = await rk.handle.execute(code)
    assert r.status == "ok", r
    started, refused = map(int, r.stdout.split())
    assert refused > 0 and started + refused == 60
    assert started < 24  # the kernel's own threads count too
    r = await rk.handle.execute("print('still here')")
    assert r.stdout == "still here\n"


@cgroup_only
async def test_cpu_limit_throttles_the_kernel(nursery: trio.Nursery, runtime_dir: Path) -> None:
    rk = await start_kernel(nursery, runtime_dir, options("cgroup", cpu_limit=0.2))
    unit = rk.handle.unit
    assert (unit.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "20000"
    r = await rk.handle.execute(
        "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.0: pass"
    )
    assert r.status == "ok", r
    stat = dict(line.split() for line in (unit.dirs["cpu"] / "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) > 0


@cgroup_only
async def test_an_oom_kill_in_the_unit_is_counted(runtime_dir: Path) -> None:
    """The OOM killer's kill inside a unit is what the kernel actor classifies `limit`."""
    unit = Unit.create("cgroup", runtime_dir, "oom-test", Limits(memory_mb=64))
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", "b = b'x' * (512 * 2**20)"], preexec_fn=unit.join_in_child
    )
    unit.pid = proc.pid
    try:
        with trio.fail_after(60):
            code = await proc.wait()
        assert code == -signal.SIGKILL
        assert unit.oom_kills() >= 1
    finally:
        await unit.kill_all()
        unit.remove()
    assert not any(d.exists() for d in unit.dirs.values())


SUPERVISOR = textwrap.dedent("""
    import sys, trio, kernelsup
    from tests.helpers import ESCAPE
    async def main():
        cfg = kernelsup.Config.from_dict({"pool": [{"size": 1, "spares": 0}]})
        async with kernelsup.open_supervisor(cfg, runtime_dir=sys.argv[1]) as sup:
            r = await sup.execute(ESCAPE)
            print(*r.stdout.split(), flush=True)
            await trio.sleep_forever()
    trio.run(main)
""")


@cgroup_only
@pytest.mark.timeout(60)
def test_a_sigkilled_supervisor_leaves_no_escaped_process(runtime_dir: Path) -> None:
    assert sigkill_supervisor(SUPERVISOR, runtime_dir, expect=2) == []
