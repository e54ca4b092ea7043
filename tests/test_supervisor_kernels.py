"""The supervision tree with real kernels: restarts, strategies, give-up, escalation."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

import kernelsup
from kernelsup.core import events as ev
from kernelsup.tree.bus import EventBus
from tests.helpers import FAST_POOL, kernels, wait_until


def cfg(root: dict[str, Any] | None = None, **pool: Any) -> kernelsup.Config:
    return kernelsup.Config.from_dict(
        {
            "supervisor": root or {"intensity": 100},
            "pool": [{**FAST_POOL, "name": "default", "spares": 0, **pool}],
        }
    )


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all"])
async def test_sigkill_one_kernel(runtime_dir: Path, strategy: str) -> None:
    async with kernelsup.open_supervisor(
        cfg(size=3, strategy=strategy), runtime_dir=runtime_dir
    ) as sup:
        for i in range(len(kernels(sup))):
            r = await sup.execute(f"mark = {i}")  # state, to see who lost it
            assert r.status == "ok"
        before = {k["id"]: k for k in kernels(sup)}
        victim = "default-1"
        os.kill(before[victim]["pid"], signal.SIGKILL)
        await wait_until(
            sup,
            lambda: (
                all(k["state"] == "idle" for k in kernels(sup))
                and next(k for k in kernels(sup) if k["id"] == victim)["restarts"] == 1
            ),
        )
        after = {k["id"]: k for k in kernels(sup)}
        assert after[victim]["pid"] != before[victim]["pid"]
        assert after[victim]["last_exit"]["text"] == "signal(9)"
        siblings = [k for k in before if k != victim]
        if strategy == "one_for_one":
            assert all(after[k]["pid"] == before[k]["pid"] for k in siblings)
            assert all(after[k]["restarts"] == 0 for k in siblings)
        else:
            assert all(after[k]["pid"] != before[k]["pid"] for k in siblings)
            assert all(after[k]["restarts"] == 1 for k in siblings)


async def test_crash_looping_startup_code_backs_off_then_dies(runtime_dir: Path) -> None:
    bus = EventBus()
    restart = {
        "min_delay": 0.05,
        "max_delay": 0.4,
        "multiplier": 2.0,
        "jitter": "none",
        "max_retries": 3,
    }
    crashing = {**FAST_POOL, "name": "default", "size": 1, "spares": 0, "restart": restart}
    healthy = {**FAST_POOL, "name": "ok", "size": 1, "spares": 0}
    config = kernelsup.Config.from_dict(
        {
            "supervisor": {"intensity": 100},
            "pool": [{**crashing, "startup_code": "import os; os._exit(3)"}, healthy],
        }
    )
    async with kernelsup.open_supervisor(config, runtime_dir=runtime_dir, bus=bus) as sup:
        # open_supervisor returns once the kernel has failed its first start (it does not
        # wait on a kernel that may never come); then it backs off, retries and gives up
        await wait_until(sup, lambda: kernels(sup)[0]["state"] == "dead")
        r = await sup.execute("1")
        assert r.status == "rejected" and r.code == "pool_dead"
        # another pool serves on (were every pool dead, the supervisor would give up)
        assert (await sup.execute("1 + 1", pool="ok")).result == "2"
    seen = bus.recent()
    delays = [e.data["delay"] for e in seen if e.kind == ev.RESTART_SCHEDULED]
    assert delays == [0.05, 0.1, 0.2]
    failed = [e for e in seen if e.kind == ev.KERNEL_START_FAILED]
    assert len(failed) == 4
    assert all(e.data["cause"]["code"] == 3 for e in failed)
    assert [e.kind for e in seen].count(ev.GAVE_UP) == 1


async def test_root_gives_up_when_pool_keeps_escalating(runtime_dir: Path) -> None:
    config = cfg(
        root={"intensity": 1, "period": 60.0},
        size=1,
        intensity=1,
        period=60.0,
        startup_code="import os; os._exit(3)",
        restart={"min_delay": 0.0, "max_retries": -1},
    )
    with pytest.raises(kernelsup.SupervisorGaveUp) as info:
        async with kernelsup.open_supervisor(config, runtime_dir=runtime_dir):
            await trio.sleep_forever()
    assert "escalated" in str(info.value)
    assert "\n" not in str(info.value)
