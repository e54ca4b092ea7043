"""Worst-day faults: memory hogs, a SIGKILLed supervisor, processes kernels leave behind."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

import kernelsup
from kernelsup.adapters.tether import RuntimeDirBusy, Tether, tethered_pids
from tests.helpers import (
    FAST_POOL,
    LEAVE_BEHIND,
    alive,
    kernels,
    sigkill_supervisor,
    wait_all_gone,
    wait_until,
)


async def test_memory_limit_kills_only_the_hog(runtime_dir: Path) -> None:
    cfg = kernelsup.Config.from_dict(
        {"pool": [{**FAST_POOL, "size": 2, "spares": 0, "memory_limit_mb": 512}]}
    )
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        await sup.execute("x = 'still here'", session="other")
        r = await sup.execute("a = bytearray(4 * 2**30)", session="hog")
        assert r.status == "died"
        assert r.code == "memory_limit"
        assert r.cause is not None and r.cause.kind == "limit"
        assert "memory_limit_mb = 512" in r.message
        other = await sup.execute("x", session="other")
        assert other.result == "'still here'"  # the other kernel kept working
        again = await sup.execute("1 + 1", session="hog")
        assert again.status == "ok" and again.state_lost  # on a fresh kernel


async def test_children_and_daemons_die_with_their_kernel(runtime_dir: Path) -> None:
    cfg = kernelsup.Config.from_dict({"pool": [{**FAST_POOL, "size": 1, "spares": 0}]})
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        r = await sup.execute(LEAVE_BEHIND)
        assert r.status == "ok", r
        child, daemon = map(int, r.stdout.split())
        assert alive(child) and alive(daemon)
        pid = kernels(sup)[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        await wait_until(
            sup, lambda: kernels(sup)[0]["restarts"] == 1 and kernels(sup)[0]["state"] == "idle"
        )
        # the plain child died with the kernel's process group
        assert wait_all_gone([child]) == []
    # the daemon escaped the group, but not the supervisor's exit sweep
    assert wait_all_gone([daemon]) == []
    assert tethered_pids(runtime_dir) == []


SUPERVISOR = textwrap.dedent("""
    import sys, trio, kernelsup
    from tests.helpers import LEAVE_BEHIND
    async def main():
        cfg = kernelsup.Config.from_dict({"pool": [{"size": 2, "spares": 0}]})
        async with kernelsup.open_supervisor(cfg, runtime_dir=sys.argv[1]) as sup:
            pids = [k["pid"] for k in sup.status_now().kernels]
            r = await sup.execute(LEAVE_BEHIND)
            print(*pids, *r.stdout.split(), flush=True)
            await trio.sleep_forever()
    trio.run(main)
""")


@pytest.mark.timeout(60)
def test_sigkilled_supervisor_leaves_nothing(runtime_dir: Path) -> None:
    assert sigkill_supervisor(SUPERVISOR, runtime_dir, expect=4) == []
    assert tethered_pids(runtime_dir) == []


async def test_a_second_supervisor_on_the_same_dir_is_refused(runtime_dir: Path) -> None:
    first = Tether(runtime_dir)
    first.acquire()
    try:
        with pytest.raises(RuntimeDirBusy) as info:
            Tether(runtime_dir).acquire()
        assert str(os.getpid()) in str(info.value)
    finally:
        await first.release()
