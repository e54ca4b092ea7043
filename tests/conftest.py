"""Shared fixtures: private runtime dirs, real kernels that are always cleaned up."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest
import trio

from kernelsup.core.results import ExitCause
from kernelsup.tree.kernel import run_kernel
from kernelsup.tree.kernel_handle import KernelHandle, KernelOptions

# The fast subset, `pytest -m fast` (about 30 s on 2 cores): the modules that test pure
# decisions, virtual time (MockClock) and sockets in one process. Every other module
# starts real kernels or supervisors. A new module of that kind belongs here.
FAST_MODULES = frozenset(
    {
        "test_config",
        "test_config_fuzz",
        "test_errors",
        "test_events",
        "test_execution",
        "test_interface",
        "test_outbox",
        "test_outputs",
        "test_policy",
        "test_protocol",
        "test_slot",
        "test_supervisor",
        "test_unasync",
        "test_watchdogs",
        "test_wire",
        "test_zmqio",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in FAST_MODULES:
            item.add_marker(pytest.mark.fast)


# Fast failure detection for tests; real timing is measured in bench/, not here.
FAST = KernelOptions(
    heartbeat_interval=0.2,
    heartbeat_misses=3,
    start_timeout=30.0,
    interrupt_grace=3.0,
    shutdown_grace=2.0,
    term_timeout=1.0,
)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short, under /tmp: IPC socket paths are limited to about 100 bytes.
    path = Path(tempfile.mkdtemp(prefix="ks-", dir="/tmp"))
    path.chmod(0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A JUPYTER_PATH root where tests install fake kernelspecs (see fakekernel.py)."""
    root = tmp_path / "jupyter"
    root.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(root) + os.pathsep + os.environ.get("JUPYTER_PATH", ""))
    return root


@attrs.define
class RunningKernel:
    """A kernel actor started in the test's nursery, with its exit cause once it ends."""

    handle: KernelHandle
    done: trio.Event
    cause: ExitCause | None = None

    async def wait_exit(self, timeout: float = 30.0) -> ExitCause:
        with trio.fail_after(timeout):
            await self.done.wait()
        assert self.cause is not None
        return self.cause


async def start_kernel(
    nursery: trio.Nursery, runtime_dir: Path, options: KernelOptions = FAST, kernel_id: str = "k0"
) -> RunningKernel:
    done = trio.Event()
    box: dict[str, Any] = {}

    async def runner(task_status: trio.TaskStatus[KernelHandle]) -> None:
        try:
            box["cause"] = await run_kernel(
                kernel_id, options, runtime_dir, task_status=task_status
            )
        finally:
            done.set()
            if "rk" in box:
                box["rk"].cause = box.get("cause")

    handle = await nursery.start(runner)
    rk = RunningKernel(handle, done)
    box["rk"] = rk
    return rk


@pytest.fixture
async def kernel(nursery: trio.Nursery, runtime_dir: Path) -> AsyncIterator[RunningKernel]:
    """A real ipykernel under a kernel actor; killed when the test ends, pass or fail."""
    rk = await start_kernel(nursery, runtime_dir)
    yield rk
    rk.handle.kill("test finished")
    with trio.move_on_after(10):
        await rk.done.wait()


# --------------------------------------------------------------------------- bench runs
@pytest.fixture
def bench_tmp() -> Iterator[Path]:
    """A private directory for one benchmark run (its KERNELSUP_BENCH_TMP). Afterwards,
    pass or fail, any process still mentioning it is killed and it is removed."""
    path = Path(tempfile.mkdtemp(prefix="kbt", dir="/tmp"))
    yield path
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(path) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        except psutil.Error:
            continue
    shutil.rmtree(path, ignore_errors=True)


def _leftovers(path: Path) -> list[str]:
    """Live processes whose command line mentions ``path`` (kernels, workers, supervisors)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if str(path) in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.info['pid']}: {cmd}")
        except psutil.Error:
            continue
    return found


def assert_nothing_left(path: Path) -> None:
    """No live process mentions ``path``; one being reaped a moment late gets 5 s."""
    deadline = time.monotonic() + 5
    while _leftovers(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(path), _leftovers(path)
