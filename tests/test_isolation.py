"""Sessions are isolated, and clients cannot create without bound (issue 14).

A session's kernel has never run anyone else's code: sessions bind only spares or kernels
that never ran a request, else a kernel started for them; a session's replacement kernel
is fresh too. Anonymous requests share the pool's kernels by design. Sessions per pool
are capped (``max_sessions``, beyond it ``pool_exhausted``) and their names are checked.
Real kernels throughout.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from jupyter_client.kernelspec import KernelSpecManager

import kernelsup
from kernelsup.api import Supervisor
from tests.helpers import FAST_POOL, kernels, wait_until

# What a sample prints first: every global another caller could have left behind.
LEAKS = "print(sorted(n for n in globals() if n.startswith(('SAMPLE_', 'ANON_', 'SECRET'))))"


def config(**pool: Any) -> kernelsup.Config:
    merged = {**FAST_POOL, "name": "default", **pool}
    return kernelsup.Config.from_dict({"supervisor": {"intensity": 1000}, "pool": [merged]})


def roles(sup: Supervisor) -> list[str]:
    return sorted(k["role"] for k in kernels(sup))


async def settled(sup: Supervisor, expected: list[str]) -> None:
    """Wait until the pool holds kernels of exactly these roles, every one idle."""
    await wait_until(
        sup,
        lambda: roles(sup) == expected and all(k["state"] == "idle" for k in kernels(sup)),
    )


# --------------------------------------------------------------------------- isolation
async def test_a_new_session_never_binds_a_kernel_that_ran_anonymous_code(
    runtime_dir: Path,
) -> None:
    """The reproducer: no spare, and the one pool kernel ran `SECRET = 1` for someone
    else. The session must not see it: it gets a kernel started for it."""
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        shared = await sup.execute("SECRET = 1")
        assert shared.status == "ok"
        r = await sup.execute("print(SECRET)", session="fresh")
        assert r.status == "error" and r.error is not None, r.stdout
        assert r.error.ename == "NameError"
        assert r.kernel_id != shared.kernel_id and not r.state_lost
        # The session's kernel was started for it; the pool kept its own kernel.
        by_id = {k["id"]: k for k in kernels(sup)}
        assert by_id[r.kernel_id]["role"] == "session"
        assert by_id[shared.kernel_id]["role"] == "pool"
        # Anonymous requests share the pool's kernels by design.
        again = await sup.execute("SECRET")
        assert again.result == "1" and again.kernel_id == shared.kernel_id
        assert await sup.close_session("fresh")
        await settled(sup, ["pool"])


async def test_a_session_s_replacement_kernel_is_fresh(runtime_dir: Path) -> None:
    """The second reproducer: a session's kernel dies while the pool's kernel holds
    another caller's variable; the replacement must not be that kernel."""
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        first = await sup.execute("x = 1", session="s")
        assert first.status == "ok"
        await settled(sup, ["pool", "session"])
        shared = await sup.execute("SECRET = 2")
        assert shared.status == "ok" and shared.kernel_id != first.kernel_id
        died = await sup.execute("import os; os._exit(1)", session="s")
        assert died.status == "died"
        r = await sup.execute("print(SECRET)", session="s")
        assert r.state_lost
        assert r.status == "error" and r.error is not None, r.stdout
        assert r.error.ename == "NameError"
        assert r.kernel_id not in (shared.kernel_id, first.kernel_id)
        assert (await sup.execute("SECRET")).result == "2"  # the pool kernel is untouched
        assert await sup.close_session("s")
        await settled(sup, ["pool"])


async def test_a_session_with_no_fresh_kernel_in_time_is_rejected_and_leaves_nothing(
    runtime_dir: Path,
) -> None:
    """No unused kernel, and the one started for the session is not ready within
    queue_timeout: the request is rejected (it did not run) and that kernel goes."""
    cfg = config(size=1, spares=0, queue_timeout=0.01)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("SECRET = 1")).status == "ok"
        r = await sup.execute("print(SECRET)", session="s")
        assert (r.status, r.code) == ("rejected", "queue_timeout")
        assert "fresh kernel" in r.message and "'s'" in r.message
        await settled(sup, ["pool"])


async def test_a_fresh_kernel_that_cannot_start_is_a_clear_rejection(
    runtime_dir: Path, fake_kernels: Path
) -> None:
    """The kernel started for a session fails (its kernelspec was removed after the
    pool started): the request is rejected, saying why; the pool serves on."""
    spec = KernelSpecManager().get_kernel_spec("python3")
    copy = fake_kernels / "kernels" / "py-copy"
    shutil.copytree(spec.resource_dir, copy)
    cfg = config(size=1, spares=0, kernel="py-copy")
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("SECRET = 1")).status == "ok"
        shutil.rmtree(copy)
        r = await sup.execute("print(SECRET)", session="s")
        assert (r.status, r.code) == ("rejected", "kernel_unavailable"), r
        assert "fresh kernel started for session 's' did not start" in r.message
        assert "py-copy" in r.message  # the cause: no such kernelspec
        await settled(sup, ["pool"])
        assert (await sup.execute("SECRET")).result == "1"


@pytest.mark.timeout(300)
async def test_evaluation_samples_in_their_own_sessions_see_no_other_globals(
    runtime_dir: Path,
) -> None:
    """An evaluation run in miniature (seeded): 30 samples, each in its own session, three
    at a time, anonymous requests in between, some samples' kernels dying mid-way. No
    sample sees another's globals or an anonymous caller's, before or after a death."""
    rng = random.Random(14)
    n_samples = 30
    dies = {i for i in range(n_samples) if rng.random() < 0.2}
    limiter = trio.CapacityLimiter(3)
    anon_kernels: set[str] = set()
    session_kernels: set[str] = set()
    seen: dict[int, list[str]] = {}
    cfg = config(size=2, spares=1, queue_timeout=120.0)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:

        async def anonymous(k: int) -> None:
            r = await sup.execute(f"ANON_{k} = {k}")
            assert r.status == "ok", r
            anon_kernels.add(r.kernel_id)

        async def sample(i: int) -> None:
            async with limiter:
                await anonymous(i)
                name = f"sample-{i}"
                r = await sup.execute(f"{LEAKS}\nSAMPLE_{i} = {i}", session=name)
                assert r.status == "ok", r
                seen[i] = [r.stdout]
                session_kernels.add(r.kernel_id)
                if i in dies:
                    died = await sup.execute("import os; os._exit(1)", session=name)
                    assert died.status == "died", died
                    await anonymous(n_samples + i)
                    r = await sup.execute(LEAKS, session=name)
                    assert r.status == "ok" and r.state_lost, r
                    seen[i].append(r.stdout.splitlines()[-1] + "\n")
                    session_kernels.add(r.kernel_id)
                else:
                    r = await sup.execute(f"SAMPLE_{i}", session=name)
                    assert r.result == str(i), r
                assert await sup.close_session(name)

        async with trio.open_nursery() as n:
            for i in range(n_samples):
                n.start_soon(sample, i)
        await settled(sup, ["pool", "pool", "spare"])
    assert sorted(seen) == list(range(n_samples))
    assert {i: out for i, out in seen.items() if out != ["[]\n"] * len(out)} == {}
    assert dies  # the seed kills some
    # No kernel that served an anonymous request ever served a session, or the reverse.
    assert anon_kernels and session_kernels and not (anon_kernels & session_kernels)


# --------------------------------------------------------------------------- limits
async def test_max_sessions_reached_is_pool_exhausted(runtime_dir: Path) -> None:
    cfg = config(size=1, spares=1, max_sessions=2)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        assert (await sup.execute("a = 1", session="a")).status == "ok"
        assert (await sup.execute("b = 1", session="b")).status == "ok"
        before = len(kernels(sup))
        r = await sup.execute("c = 1", session="c")
        assert (r.status, r.code) == ("rejected", "pool_exhausted")
        assert "max_sessions = 2" in r.message and "'c'" in r.message
        assert len(kernels(sup)) == before  # no kernel was started for it
        assert sup.status_now().pools[0]["sessions"] == ["a", "b"]
        assert sup.status_now().pools[0]["max_sessions"] == 2
        # Open sessions keep working at the limit; anonymous requests too.
        assert (await sup.execute("a", session="a")).result == "1"
        assert (await sup.execute("1 + 1")).result == "2"
        assert await sup.close_session("a")
        assert (await sup.execute("c = 1", session="c")).status == "ok"
        for name in ("b", "c"):
            assert await sup.close_session(name)


async def test_max_sessions_default_is_sized_from_memory(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        pool = sup.status_now().pools[0]
        assert pool["max_sessions"] == kernelsup.Config.default().pools[0].effective_max_sessions(
            sup.pools["default"].total_memory
        )
        assert 4 <= pool["max_sessions"] <= 1024


BAD_NAMES = [
    "",
    "x" * 129,
    "x" * 100_000,
    "a\nb",
    "tab\there",
    "nul\x00",
    "\x1b[2Jclear",
    "del\x7f",
]


async def test_session_names_are_checked(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        for name in BAD_NAMES:
            r = await sup.execute("1", session=name)
            assert (r.status, r.code) == ("rejected", "bad_request"), name[:20]
            assert "1 to 128 printable characters" in r.message
            assert len(r.message) < 300  # the name is shown shortened
            assert f"{len(name)} characters" in r.message
            with pytest.raises(kernelsup.Rejected) as info:
                await sup.close_session(name)
            assert info.value.code == "bad_request"
            with pytest.raises(kernelsup.Rejected):
                async with sup.session(name):
                    pass
            items = [item async for item in sup.stream("1", session=name)]
            assert isinstance(items[-1], kernelsup.ExecuteResult)
            assert items[-1].code == "bad_request"
        assert sup.status_now().pools[0]["sessions"] == []
        assert len(kernels(sup)) == 1  # nothing was started for them
        for good in ("x" * 128, "agent 1: été", "a"):
            r = await sup.execute("1", session=good)
            assert r.status == "ok", r
            assert await sup.close_session(good)
