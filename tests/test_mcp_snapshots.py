"""`kernelsup mcp`'s snapshot tools through the `mcp` package's own stdio client, on a
pool with checkpoints: a model's session whose kernel is killed mid-flow comes back with
its variables (and the result says so); snapshot_session, restore_session, fork_session."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator

import pytest
import trio

from kernelsup.adapters.tether import sweep
from kernelsup.mcp.snapshot_tools import META_RESTORE, META_SNAPSHOT
from tests.supervisor_process import private_tmp, write_config
from tests.test_mcp import (  # noqa: F401  (_patient_client: an autouse fixture)
    Mcp,
    Workdir,
    _patient_client,
    check_ok,
    embedded,
    status_of,
    summary_of,
    text_of,
)

TIMEOUT_S = 120


@pytest.fixture
def work() -> Iterator[Workdir]:
    runtime_dir = private_tmp() / "rt"
    config = write_config(
        runtime_dir.parent, runtime_dir, size=1, spares=1, pool='checkpoint = "after_execute"'
    )
    w = Workdir(config, runtime_dir)
    try:
        yield w
    except BaseException:
        print(w.stderr())  # the server's own account of what went wrong
        raise
    finally:
        sweep(w.runtime_dir)
        shutil.rmtree(w.path, ignore_errors=True)


async def kill_own_kernel(client: Mcp) -> None:
    """SIGKILL the kernel of the connection's own session, and wait for the supervisor
    to see it go."""
    kernels = status_of(await client.call("status"))["kernels"]
    (own,) = [k for k in kernels if str(k.get("session") or "").startswith("mcp-")]
    os.kill(own["pid"], signal.SIGKILL)
    while any(k["pid"] == own["pid"] for k in status_of(await client.call("status"))["kernels"]):
        await trio.sleep(0.05)


async def test_a_models_session_survives_its_kernels_death(work: Workdir) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with embedded(work) as client:
            check_ok(await client.call("execute", {"code": "data = [3, 1, 2]\nimport json"}))
            check_ok(await client.call("execute", {"code": "model = sorted(data)"}))
            await kill_own_kernel(client)
            result = await client.call("execute", {"code": "json.dumps(model)"})
            text = check_ok(result)
            summary = summary_of(result)
            assert summary["state_restored"] and not summary["state_lost"], text
            assert set(summary["restored"]) == {"data", "json", "model"}
            assert "'[1, 2, 3]'" in text and "state restored" in text, text


async def test_snapshot_restore_and_fork_tools(work: Workdir) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with embedded(work) as client:
            check_ok(await client.call("execute", {"code": "x = 1; g = (i for i in ())"}))
            snap = await client.call("snapshot_session")
            assert not snap.is_error, text_of(snap)
            assert snap.meta is not None
            info = snap.meta[META_SNAPSHOT]
            assert info["names"] == ["x"] and "g" in info["skipped"]
            assert "not saved: g: TypeError" in text_of(snap)
            check_ok(await client.call("execute", {"code": "x = 2"}))
            back = await client.call("restore_session", {"snapshot_id": info["id"]})
            assert not back.is_error and back.meta is not None, text_of(back)
            assert back.meta[META_RESTORE]["restored"] == ["x"]
            assert "x is 1" in check_ok(await client.call("execute", {"code": "f'x is {x}'"}))
            fork = await client.call("fork_session", {"name": "branch"})
            assert not fork.is_error, text_of(fork)
            check_ok(await client.call("execute", {"code": "x = 50", "session": "branch"}))
            own = check_ok(await client.call("execute", {"code": "f'x is {x}'"}))
            assert "x is 1" in own and "x is 50" not in own
            closed = await client.call("close_session", {"session": "branch"})
            assert not closed.is_error
            bad = await client.call("restore_session", {"session": "nobody"})
            assert bad.is_error and "unknown_session" in text_of(bad)
