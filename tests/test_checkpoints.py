"""A pool's snapshot store on real ipykernels: a namespace saved in one kernel comes back
in another, bounds are kept, and the user's namespace and history are left as they were."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from kernelsup.core.errors import Rejected
from kernelsup.tree.checkpoints import KEEP, Checkpoints
from tests.helpers import start_kernel


def store(runtime_dir: Path, max_bytes: int = 1 << 30, timeout: float = 30.0) -> Checkpoints:
    return Checkpoints(runtime_dir / "snapshots", max_bytes=max_bytes, timeout=timeout)


async def test_a_namespace_saved_in_one_kernel_comes_back_in_the_next(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    snaps = store(runtime_dir)
    first = await start_kernel(nursery, runtime_dir, kernel_id="k1")
    setup = (
        "import json as js\n"
        "rows = [{'x': i, 'y': i * i} for i in range(1000)]\n"
        "alias = rows\n"
        "def fit(data):\n"
        "    return sum(r['y'] for r in data) / len(data)\n"
        "model = {'mean': fit(rows)}\n"
        "fh = open('/etc/hostname')\n"
        "gen = (i for i in range(3))\n"
    )
    assert (await first.handle.execute(setup)).ok
    names = "sorted(k for k in globals() if not k.startswith('_'))"
    before = await first.handle.execute(names)
    info = await snaps.take(first.handle, "agent")
    assert info.names == ("alias", "fit", "model", "rows")
    assert info.modules == ("js",)
    assert set(info.skipped) == {"fh", "gen"}
    assert info.bytes > 0 and info.id == snaps.latest("agent")
    # The snapshot was silent: no execution counted, nothing added to the user's names.
    after = await first.handle.execute(names)
    assert after.result == before.result
    assert before.execution_count is not None
    assert after.execution_count == before.execution_count + 1
    first.handle.kill("the test kills it")
    await first.wait_exit()

    second = await start_kernel(nursery, runtime_dir, kernel_id="k2")
    back = await snaps.restore(second.handle, "agent")
    assert back.restored == ("alias", "fit", "js", "model", "rows")
    assert back.not_restored == {}
    check = await second.handle.execute(
        "(alias is rows, fit(rows) == model['mean'], js.dumps([1]), len(rows))"
    )
    assert check.result == "(True, True, '[1]', 1000)"
    missing = await second.handle.execute("fh")
    assert missing.status == "error" and missing.error is not None
    assert missing.error.ename == "NameError"
    second.handle.kill("test done")


async def test_too_big_is_skipped_with_the_bound_named_and_the_last_snapshot_kept(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    snaps = store(runtime_dir, max_bytes=100_000)
    rk = await start_kernel(nursery, runtime_dir)
    assert (await rk.handle.execute("small = 1")).ok
    kept = await snaps.take(rk.handle, "s")
    assert (await rk.handle.execute("big = b'x' * 1_000_000")).ok
    with pytest.raises(Rejected) as info:
        await snaps.take(rk.handle, "s")
    assert info.value.code == "checkpoint_skipped"
    assert "checkpoint_max_bytes = 100000" in info.value.message
    assert snaps.ids("s") == [kept.id]
    rk.handle.kill("test done")


async def test_only_the_last_snapshots_are_kept_and_closing_removes_them(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    snaps = store(runtime_dir)
    rk = await start_kernel(nursery, runtime_dir)
    for i in range(KEEP + 2):
        assert (await rk.handle.execute(f"x = {i}")).ok
        await snaps.take(rk.handle, "s/../odd name")
    assert len(snaps.ids("s/../odd name")) == KEEP
    assert snaps.dir_for("s/../odd name").parent == runtime_dir / "snapshots"
    # restore an older one by id: the value it held comes back
    oldest = snaps.ids("s/../odd name")[0]
    await snaps.restore(rk.handle, "s/../odd name", oldest)
    assert (await rk.handle.execute("x")).result == str(KEEP + 2 - KEEP)
    with pytest.raises(Rejected) as info:
        await snaps.restore(rk.handle, "s/../odd name", "s999")
    assert info.value.code == "unknown_snapshot"
    snaps.forget("s/../odd name")
    assert not snaps.dir_for("s/../odd name").exists()
    rk.handle.kill("test done")
