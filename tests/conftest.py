"""Shared fixtures: private runtime dirs, real kernels that are always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
import trio

from tests.helpers import (
    RunningKernel,
    launched_by,
    launcher_for,
    processes_mentioning,
    start_kernel,
)

# The fast subset, `pytest -m fast` (under a minute on 2 cores): the modules that test pure
# decisions, virtual time (MockClock) and sockets in one process. Every other module
# starts real kernels or supervisors. A new module of that kind belongs here.
FAST_MODULES = frozenset(
    {
        "test_config",
        "test_config_fuzz",
        "test_docs",
        "test_errors",
        "test_events",
        "test_execution",
        "test_interface",
        "test_mcp_text",
        "test_notebook_document",
        "test_metrics_collect",
        "test_lean",
        "test_outbox",
        "test_outputs",
        "test_policy",
        "test_protocol",
        "test_ray_host",
        "test_records",
        "test_slot",
        "test_snapshots",
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


@pytest.fixture
async def kernel(
    request: pytest.FixtureRequest, nursery: trio.Nursery, runtime_dir: Path
) -> AsyncIterator[RunningKernel]:
    """A real ipykernel under a kernel actor; killed when the test ends, pass or fail.
    Exec'ed, or forked with ``@pytest.mark.parametrize("kernel", LAUNCHES, indirect=True)``
    (then it is checked to have been forked, not exec'ed as a fallback)."""
    launch = getattr(request, "param", "exec")
    rk = await start_kernel(nursery, runtime_dir, launcher=await launcher_for(nursery, launch))
    assert launched_by(rk) == launch
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
    for proc in processes_mentioning(path):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(path, ignore_errors=True)
