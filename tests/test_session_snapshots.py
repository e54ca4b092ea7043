"""Session state that survives a kernel's death (issue 18), on real kernels: automatic
checkpoints after each request and a restore into the replacement, explicit snapshot and
restore, fork_session, and what cannot come back named with its reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import kernelsup
from kernelsup.api import Supervisor
from kernelsup.core.errors import Rejected
from tests.helpers import FAST_POOL, kernels, wait_until
from tests.supervisor_process import SupervisorProcess, supervisor

KERNELSUP = [sys.executable, "-m", "kernelsup"]


def config(**pool: Any) -> kernelsup.Config:
    merged = {**FAST_POOL, "name": "default", "size": 1, "spares": 1, **pool}
    return kernelsup.Config.from_dict({"supervisor": {"intensity": 1000}, "pool": [merged]})


async def kill_session_kernel(sup: Supervisor, session: str) -> None:
    """SIGKILL the session's kernel, as the memory limit or a segfault would."""
    (info,) = [s for s in await sup.sessions() if s.name == session]
    (kernel,) = [k for k in sup.status_now().kernels if k["id"] == info.kernel_id]
    os.kill(kernel["pid"], signal.SIGKILL)
    # Once the supervisor has seen it die (else the next request finds it dying: `died`).
    await wait_until(sup, lambda: all(k["pid"] != kernel["pid"] for k in kernels(sup)))


FLOW = [
    # data loaded
    "import statistics as st\nrows = [{'x': i, 'y': 3 * i + 1} for i in range(2000)]\n",
    # a model fitted (least squares by hand), and a helper defined in the session
    "class Line:\n"
    "    def fit(self, rows):\n"
    "        xs = [r['x'] for r in rows]; ys = [r['y'] for r in rows]\n"
    "        mx, my = st.mean(xs), st.mean(ys)\n"
    "        self.slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / "
    "sum((x - mx) ** 2 for x in xs)\n"
    "        self.icpt = my - self.slope * mx\n"
    "        return self\n"
    "    def predict(self, x):\n"
    "        return self.slope * x + self.icpt\n"
    "model = Line().fit(rows)\n"
    "log = open('/dev/null', 'w')\n",
]


async def test_a_killed_kernel_mid_flow_comes_back_with_the_sessions_variables(
    runtime_dir: Path,
) -> None:
    """The issue's scenario: data loaded, a model fitted, the kernel killed; the next
    request continues with the same variables and is told what came back."""
    cfg = config(checkpoint="after_execute")
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        for step in FLOW:
            r = await sup.execute(step, session="agent")
            assert r.ok, r
            assert not any(o.name == "checkpoint_skipped" for o in r.outputs), r.outputs
        await kill_session_kernel(sup, "agent")
        r = await sup.execute(
            "round(model.predict(10)), len(rows), st.mean([1, 3])", session="agent"
        )
        assert r.ok, r
        assert r.result == "(31, 2000, 2)"
        assert r.state_restored and not r.state_lost and r.kernel_restarted is False
        assert set(r.restored) == {"Line", "model", "rows", "st"}
        assert r.not_restored == {}
        (notice,) = [o for o in r.outputs if o.name == "state_restored"]
        assert "model" in (notice.text or "")
        # The open file was never saved: it is not there, and the next request says nothing
        # more about restoring.
        r = await sup.execute("'log' in globals()", session="agent")
        assert r.result == "False" and not r.state_restored


async def test_without_checkpoints_the_state_is_lost_as_before(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(), runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("x = 1", session="s")).ok
        await kill_session_kernel(sup, "s")
        r = await sup.execute("x", session="s")
        assert r.state_lost and not r.state_restored
        assert r.error is not None and r.error.ename == "NameError"


async def test_snapshot_and_restore_on_request(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(), runtime_dir=runtime_dir) as sup:
        await sup.open_session("s")
        assert (await sup.execute("x = [1, 2]; y = x; g = (i for i in ())", session="s")).ok
        info = await sup.snapshot("s")
        assert info.names == ("x", "y") and set(info.skipped) == {"g"}
        assert "generator" in info.skipped["g"] and info.bytes > 0
        assert (await sup.execute("x.append(3); del y", session="s")).ok
        back = await sup.restore("s", info.id)
        assert back.snapshot_id == info.id and back.restored == ("x", "y")
        r = await sup.execute("x, y is x", session="s")
        assert r.result == "([1, 2], True)"
        with pytest.raises(Rejected) as bad:
            await sup.restore("s", "s999")
        assert bad.value.code == "unknown_snapshot"
        with pytest.raises(Rejected) as missing:
            await sup.snapshot("nobody")
        assert missing.value.code == "unknown_session"


async def test_fork_session_starts_from_the_sources_state_and_goes_its_own_way(
    runtime_dir: Path,
) -> None:
    async with kernelsup.open_supervisor(config(spares=2), runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("data = {'n': 1}", session="main")).ok
        forked = await sup.fork_session("main", "trial")
        assert forked.restored == ("data",) and forked.session == "trial"
        assert (await sup.execute("data['n'] = 99", session="trial")).ok
        assert (await sup.execute("data['n']", session="main")).result == "1"
        assert (await sup.execute("data['n']", session="trial")).result == "99"
        names = {s.name for s in await sup.sessions()}
        assert names == {"main", "trial"}
        with pytest.raises(Rejected) as exists:
            await sup.fork_session("main", "trial")
        assert exists.value.code == "session_exists"


async def test_too_big_is_said_and_the_last_snapshot_that_fit_comes_back(
    runtime_dir: Path,
) -> None:
    cfg = config(checkpoint="after_execute", checkpoint_max_bytes=200_000)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("small = 7", session="s")).ok
        r = await sup.execute("big = b'x' * 1_000_000", session="s")
        assert r.ok
        (skipped,) = [o for o in r.outputs if o.name == "checkpoint_skipped"]
        assert "checkpoint_max_bytes = 200000" in (skipped.text or "")
        await kill_session_kernel(sup, "s")
        r = await sup.execute("small, 'big' in globals()", session="s")
        assert r.result == "(7, False)" and r.state_restored and r.restored == ("small",)


async def test_a_module_that_no_longer_imports_is_named_not_restored(
    runtime_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "helpermod.py").write_text("VALUE = 5\n")
    cfg = config(checkpoint="after_execute")
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        await sup.open_session("s", cwd=str(tmp_path))
        r = await sup.execute("import helpermod\nkept = helpermod.VALUE", session="s")
        assert r.ok, r
        (tmp_path / "helpermod.py").unlink()
        await kill_session_kernel(sup, "s")
        r = await sup.execute("kept", session="s")
        assert r.result == "5" and r.state_restored
        assert r.restored == ("kept",)
        assert "ModuleNotFoundError" in r.not_restored["helpermod"]


async def test_closing_a_session_removes_its_snapshots(runtime_dir: Path) -> None:
    cfg = config(checkpoint="after_execute")
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("x = 1", session="s")).ok
        folder = sup.pools["default"].checkpoints.dir_for("s")
        assert any(p.suffix == ".pkl" for p in folder.iterdir())
        assert await sup.close_session("s")
        assert not folder.exists()


async def test_a_snapshot_never_blocks_another_kernel(runtime_dir: Path) -> None:
    """While one session's snapshot is slow (a namespace that takes a while to pickle),
    another session's requests run."""
    cfg = config(spares=2)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        slow = (
            "import time\n"
            "class Slow:\n"
            "    def __reduce__(self):\n"
            "        open(GATE + '.in', 'w').close()\n"
            "        while not __import__('os').path.exists(GATE + '.out'): time.sleep(0.01)\n"
            "        return (int, (1,))\n"
            "s = Slow()\n"
        )
        gate = runtime_dir / "gate"
        assert (await sup.execute(f"GATE = {str(gate)!r}\n" + slow, session="a")).ok
        assert (await sup.execute("y = 2", session="b")).ok
        async with trio.open_nursery() as nursery:
            box: dict[str, Any] = {}

            async def take() -> None:
                box["info"] = await sup.snapshot("a")

            nursery.start_soon(take)
            with trio.fail_after(30):
                while not Path(str(gate) + ".in").exists():
                    await trio.sleep(0.01)
            # a's kernel is inside its snapshot: b answers meanwhile
            assert (await sup.execute("y + 1", session="b")).result == "3"
            Path(str(gate) + ".out").touch()
        assert "s" in box["info"].names


@pytest.fixture(scope="module")
def served() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=1, pool='checkpoint = "after_execute"')


def test_snapshots_through_the_endpoint(served: SupervisorProcess) -> None:
    """The same calls from the sync client against `kernelsup run`: an automatic restore
    after a kill, an explicit snapshot and restore, a fork."""
    with kernelsup.SyncClient(served.config) as client:
        name = client.open_session().name
        assert client.execute("import math\nradius = 2.0", session=name).ok
        (info,) = [s for s in client.sessions() if s.name == name]
        (kernel,) = [k for k in client.status().kernels if k["id"] == info.kernel_id]
        os.kill(kernel["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60  # poll until the supervisor has seen it die
        while any(k["pid"] == kernel["pid"] for k in client.status().kernels):
            assert time.monotonic() < deadline, "the kill was never noticed"
            time.sleep(0.05)
        r = client.execute("round(math.pi * radius ** 2, 2)", session=name)
        assert r.result == "12.57" and r.state_restored, r
        assert set(r.restored) == {"math", "radius"}

        snap = client.snapshot(name)
        assert set(snap.names) == {"radius"} and snap.modules == ("math",)
        assert client.execute("radius = 5", session=name).ok
        assert client.restore(name, snap.id).restored == ("math", "radius")
        assert client.execute("radius", session=name).result == "2.0"

        forked = client.fork_session(name, name + "-fork")
        assert forked.session == name + "-fork" and "radius" in forked.restored
        assert client.execute("radius * 10", session=name + "-fork").result == "20.0"
        with pytest.raises(Rejected) as exc:
            client.restore("no-such-session")
        assert exc.value.code == "unknown_session"
        assert client.close_session(name + "-fork") and client.close_session(name)


def test_snapshot_restore_and_fork_from_the_command_line(served: SupervisorProcess) -> None:
    config = str(served.config)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KERNELSUP, *args, "-c", config], capture_output=True, text=True, timeout=60
        )

    with kernelsup.SyncClient(served.config) as client:
        name = client.open_session().name
        assert client.execute("n = 41; g = (i for i in ())", session=name).ok
    done = cli("snapshot", name, "--json")
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert snap["names"] == ["n"] and "generator" in snap["skipped"]["g"]
    text = cli("snapshot", name)
    assert text.returncode == 0 and "not saved: g (TypeError" in text.stdout
    forked = cli("fork", name, name + "-b")
    assert forked.returncode == 0 and f"session {name}-b from snapshot" in forked.stdout
    back = cli("restore", name, snap["id"], "--json")
    assert back.returncode == 0 and json.loads(back.stdout)["restored"] == ["n"]
    missing = cli("restore", "no-such-session")
    assert missing.returncode == 3
    assert missing.stderr.startswith("unknown_session Rejected:")
    with kernelsup.SyncClient(served.config) as client:
        assert client.execute("n + 1", session=name + "-b").result == "42"
        assert client.close_session(name + "-b") and client.close_session(name)


async def test_a_snapshot_of_a_session_busy_past_the_bound_is_refused(runtime_dir: Path) -> None:
    """A job may run for days: a snapshot (or restore, or fork) waits for it at most
    checkpoint_timeout, then says the session is busy; the job runs on."""
    cfg = config(checkpoint_timeout=0.5)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        await sup.open_session("s")
        gate = runtime_dir / "gate"
        hold = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)"
        job = await sup.submit(hold, session="s")
        with trio.fail_after(30):
            while (await sup.job(job.id)).status != "running":
                await trio.sleep(0.01)
        for call in (
            lambda: sup.snapshot("s"),
            lambda: sup.restore("s"),
            lambda: sup.fork_session("s", "t"),
        ):
            with pytest.raises(Rejected) as busy:
                await call()
            assert busy.value.code == "session_busy"
            assert "checkpoint_timeout = 0.5 s" in busy.value.message
        gate.touch()
        result = await sup.wait(job.id, timeout=30)
        assert result is not None and result.ok
        assert (await sup.snapshot("s")).id == "s1"
        assert [s.name for s in await sup.sessions()] == ["s"]
