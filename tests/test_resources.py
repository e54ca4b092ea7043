"""Each kernel's resources in status: memory and CPU of its whole containment unit (a
cgroup, or the kernel's process tree), its containment, and the table's columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import kernelsup
from kernelsup.adapters import containment
from kernelsup.core.config import Config
from kernelsup.core.results import StatusReport, format_status
from tests.helpers import FAST_POOL

MIB = 2**20
# A child process the kernel starts holds this much, written (so resident), until killed.
CHILD_HOLDS = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import sys, time; x = b\"x\" * (150 * 2**20); print(1, flush=True); time.sleep(1000)'], "
    "stdout=subprocess.PIPE)\n"
    "child.stdout.readline()\n"
    "child.pid"
)
# About a second of CPU on any machine, however loaded: work, not wall time.
BURN = "sum(i * i for i in range(10_000_000))"


def config(runtime_dir: Path, unit: str) -> Config:
    pool: dict[str, Any] = {
        "name": "default",
        "size": 1,
        "spares": 0,
        "containment": unit,
        **FAST_POOL,
    }
    return Config.from_dict({"supervisor": {"runtime_dir": str(runtime_dir)}, "pool": [pool]})


def units() -> list[str]:
    return ["cgroup", "subreaper"] if containment.available() == "cgroup" else ["subreaper"]


@pytest.mark.parametrize("unit", units())
async def test_status_shows_memory_and_cpu_of_the_kernels_whole_unit(
    runtime_dir: Path, unit: str
) -> None:
    async with kernelsup.open_supervisor(config(runtime_dir, unit)) as sup:
        (before,) = sup.status_now().kernels
        assert before["containment"] == unit
        assert before["memory_bytes"] > 10 * MIB  # a Python kernel (forked: its own pages)
        assert isinstance(before["cpu_seconds"], float)
        # memory of a process the kernel started counts too
        result = await sup.execute(CHILD_HOLDS)
        assert result.status == "ok", result
        (holding,) = sup.status_now().kernels
        assert holding["memory_bytes"] - before["memory_bytes"] > 120 * MIB
        # CPU: seconds used grow with work done; the percentage is over the last window
        await trio.sleep(containment.CPU_WINDOW_S)  # a window of idling, so it is fresh
        idle = sup.status_now().kernels[0]
        assert (await sup.execute(BURN)).status == "ok"
        (busy,) = sup.status_now().kernels
        assert busy["cpu_seconds"] - idle["cpu_seconds"] > 0.3
        assert busy["cpu_percent"] > 0
        table = format_status(sup.status_now())
    header, row = table.splitlines()[:2]
    assert header.split()[8:11] == ["CPU", "MEM", "UNIT"]
    cpu, mem, shown_unit = row.split()[8:11]
    assert cpu.endswith("%") and mem.endswith("M") and int(mem[:-1]) > 120
    assert shown_unit == unit


def test_the_table_shows_what_status_does_not_know_as_a_dash() -> None:
    report = StatusReport(
        kernels=(
            {"id": "p-0", "pool": "p", "role": "pool", "state": "starting", "restarts": 0},
            {
                "id": "p-1",
                "pool": "p",
                "role": "pool",
                "state": "idle",
                "restarts": 0,
                "cpu_percent": 99.6,
                "memory_bytes": 3 * 2**30 // 2,
                "containment": "cgroup",
            },
        )
    )
    lines = format_status(report).splitlines()
    assert lines[1].split()[8:11] == ["-", "-", "-"]
    assert lines[2].split()[8:11] == ["100%", "1.5G", "cgroup"]
