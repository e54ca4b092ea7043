"""Jobs (issue 15): detached from their client, their whole output spooled and pageable,
exactly one outcome whatever happens to the kernel, cancelled at the supervisor's stop.

In-process on real ipykernel kernels, then through a real `kernelsup run` from trio,
asyncio and the sync client: a job outlives the client that submitted it, and another
client follows it by id to its full output, in order, past ``max_output_bytes``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import kernelsup
from kernelsup.core.errors import Rejected
from kernelsup.core.records import JobInfo
from tests.helpers import FAST_POOL, kernels
from tests.supervisor_process import SupervisorProcess, supervisor

# 3,000 numbered lines of ~70 bytes: about 210 KB, far past max_output_bytes = 4096.
LINES = 3000
FLOOD = f"for i in range({LINES}): print(f'line {{i:05d}} ' + 'x' * 60)"
EXPECTED = "".join(f"line {i:05d} " + "x" * 60 + "\n" for i in range(LINES))


def config(supervisor: dict[str, Any] | None = None, **pool: Any) -> kernelsup.Config:
    merged = {**FAST_POOL, "name": "default", "max_output_bytes": 4096, **pool}
    return kernelsup.Config.from_dict(
        {"supervisor": {"intensity": 1000, **(supervisor or {})}, "pool": [merged]}
    )


async def poll_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    """Poll a condition nothing announces (a job's first output), bounded."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def read_all(sup: Any, job_id: str, limit: int = 1000) -> str:
    """Page through the job's spool to its end (the job must be done)."""
    text, offset = [], 0
    while True:
        page = await sup.job_output(job_id, offset, limit)
        assert page.next_offset >= offset
        text.append(page.text)
        offset = page.next_offset
        if page.done:
            return "".join(text)


async def test_a_job_keeps_its_whole_output_in_order(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        job = await sup.submit(FLOOD)
        assert job.status in ("queued", "running") and job.result is None
        result = await sup.wait(job.id)
        assert result is not None and result.status == "ok"
        assert result.truncated_bytes > 0  # the request's own result stays bounded
        assert await read_all(sup, job.id) == EXPECTED
        info = await sup.job(job.id)
        assert (info.status, info.output_bytes, info.dropped_bytes) == ("ok", len(EXPECTED), 0)
        assert info.started is not None and info.ended is not None
        assert info.submitted <= info.started <= info.ended
        assert JobInfo.from_dict(info.to_dict()) == info
        # a page never splits a character
        await sup.wait((await sup.submit("print('é' * 10)")).id)
        jobs = await sup.jobs()
        assert jobs[1].id == job.id  # the most recent first
        pages = [await sup.job_output(jobs[0].id, off, 3) for off in (0, 2, 4)]
        assert [p.text for p in pages] == ["é", "é", "é"]


async def test_cancel_and_bad_input(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        job = await sup.submit("print('started', flush=True); import time; time.sleep(60)")
        await poll_until(lambda: sup._jobs.get(job.id).written > 0)
        assert await sup.wait(job.id, timeout=0) is None  # still running
        assert await sup.cancel(job.id) is True
        result = await sup.wait(job.id, timeout=30)
        assert result is not None and result.status == "cancelled", result
        assert "cancel" in result.message
        assert await sup.cancel(job.id) is False  # it had ended
        assert (await sup.job_output(job.id)).text == "started\n"
        # the kernel was interrupted, not left running the sleep
        assert (await sup.execute("1 + 1")).result == "2"

        for call, code, names in [
            (lambda: sup.job("job-nope"), "unknown_job", "job-nope"),
            (lambda: sup.cancel("job-nope"), "unknown_job", "job-nope"),
            (lambda: sup.job_output(job.id, -1), "bad_request", "offset"),
            (lambda: sup.job_output(job.id, 0, 0), "bad_request", "limit"),
            (lambda: sup.job_output(job.id, 10**6), "bad_request", "past the end"),
            (lambda: sup.wait(job.id, timeout=-1), "bad_request", "timeout"),
            (lambda: sup.submit("1", timeout=0), "bad_request", "timeout"),
            (lambda: sup.submit("1", pool="nope"), "unknown_pool", "nope"),
        ]:
            with pytest.raises(Rejected) as info:
                await call()
            assert info.value.code == code and names in info.value.message, info.value


async def test_exactly_one_outcome_when_the_kernel_dies_mid_job(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=1), runtime_dir=runtime_dir) as sup:
        await sup.open_session("s")
        job = await sup.submit(
            "print('before', flush=True); import time; time.sleep(60)", session="s"
        )
        await poll_until(lambda: sup._jobs.get(job.id).written > 0)
        kernel = next(k for k in kernels(sup) if k["session"] == "s")
        os.kill(kernel["pid"], signal.SIGKILL)
        result = await sup.wait(job.id, timeout=30)
        assert result is not None and result.status == "died", result
        assert (await sup.job(job.id)).result == result  # recorded once, not replaced
        assert [j.status for j in await sup.jobs()] == ["died"]
        assert await read_all(sup, job.id) == "before\n"
        after = await sup.execute("print('again')", session="s")
        assert after.status == "ok" and after.state_lost  # never re-run, a new kernel


async def test_running_jobs_end_cancelled_at_stop(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(size=1, spares=0), runtime_dir=runtime_dir) as sup:
        running = await sup.submit("import time; time.sleep(60)")
        await poll_until(lambda: sup._jobs.get(running.id).status == "running")
        queued = await sup.submit("print('never')")  # waits behind it for the one kernel
        assert (await sup.job(queued.id)).status == "queued"
    for job_id in (running.id, queued.id):
        info = await sup.job(job_id)
        assert info.result is not None and info.status == "cancelled"
        assert info.result.code == "shutting_down" and "supervisor stopped" in info.result.message
    assert not (runtime_dir / "jobs").exists()  # the spools went with it


async def test_the_spool_is_bounded_and_says_so(runtime_dir: Path) -> None:
    cfg = config({"max_job_output_bytes": 10_000}, size=1, spares=0)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        job = await sup.submit(FLOOD)
        await sup.wait(job.id)
        info = await sup.job(job.id)
        text = await read_all(sup, job.id)
        assert info.output_bytes == len(text.encode())
        kept, _, note = text.rpartition("[kernelsup: ")
        assert EXPECTED.startswith(kept) and len(kept.encode()) <= 10_000
        assert info.dropped_bytes == len(EXPECTED) - len(kept) > 0
        assert note.startswith(f"{info.dropped_bytes} bytes of output were not kept")


async def test_all_spools_together_are_bounded(runtime_dir: Path) -> None:
    """Past max_job_spool_bytes the oldest finished job's spool goes, and says so."""
    cfg = config({"max_job_spool_bytes": 300_000}, size=1, spares=0)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        first = await sup.submit(FLOOD)
        await sup.wait(first.id)
        second = await sup.submit(FLOOD)
        await sup.wait(second.id)
        assert await read_all(sup, second.id) == EXPECTED
        gone = await sup.job_output(first.id)
        assert gone.done and "removed to keep max_job_spool_bytes" in gone.text
        assert sum(p.stat().st_size for p in (runtime_dir / "jobs").iterdir()) <= 300_000


async def test_finished_jobs_are_forgotten_after_job_retention(runtime_dir: Path) -> None:
    cfg = config({"job_retention": 0.5}, size=1, spares=0)
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        job = await sup.submit("print(1)")
        await sup.wait(job.id)
        await poll_until(lambda: job.id not in [j.id for j in sup._jobs.list()])
        with pytest.raises(Rejected) as info:
            await sup.job(job.id)
        assert info.value.code == "unknown_job"
        assert list((runtime_dir / "jobs").iterdir()) == []


# --------------------------------------------------------------------- through the endpoint


@pytest.fixture(scope="module")
def served() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=1, pool="max_output_bytes = 4096")


async def test_a_job_outlives_its_client_and_another_follows_it(
    served: SupervisorProcess, tmp_path: Path
) -> None:
    code = (
        "import time\nfor i in range(3):\n    print('tick', i, flush=True); time.sleep(0.3)\n"
        + FLOOD
    )
    with trio.fail_after(120):
        async with kernelsup.connect(served.config) as first:
            info = await first.open_session("agent", cwd=str(tmp_path), env={"K": "v"})
            job = await first.submit(code, session="agent")
        # the first client is gone; the job runs on
        async with kernelsup.connect(served.config) as second:
            assert [s.name for s in await second.sessions()] == ["agent"]
            page = await second.job_output(job.id)
            seen, offset = page.text, page.next_offset
            while not page.done:  # follow it while it runs
                page = await second.job_output(job.id, offset)
                seen, offset = seen + page.text, page.next_offset
                if not page.done and not page.text:
                    await second.wait(job.id, timeout=0.2)
            result = await second.wait(job.id)
            assert result is not None and result.status == "ok" and result.truncated_bytes > 0
            assert seen == "tick 0\ntick 1\ntick 2\n" + EXPECTED
            assert (await second.job(job.id)).status == "ok"
            assert job.id in [j.id for j in await second.jobs()]
            assert info.cwd == str(tmp_path)
            await second.restart(session="agent")
            r = await second.execute(
                "import os; print(os.getcwd(), os.environ['K'])", session="agent"
            )
            assert r.stdout.endswith(f"{tmp_path} v\n") and r.state_lost
            assert await second.close_session("agent")


def test_jobs_from_asyncio_and_the_sync_client(served: SupervisorProcess) -> None:
    async def main() -> tuple[str, bool]:
        async with kernelsup.connect(str(served.config)) as client:
            job = await client.submit("import time; time.sleep(60)")
            cancelled = await client.cancel(job.id)
            result = await asyncio.wait_for(client.wait(job.id), 30)
            assert result is not None
            return result.status, cancelled

    assert asyncio.run(main()) == ("cancelled", True)
    with kernelsup.SyncClient(served.config) as client:
        job = client.submit("print('sync')")
        result = client.wait(job.id, timeout=30)
        assert result is not None and result.stdout == "sync\n"
        assert client.job_output(job.id).text == "sync\n"
        with pytest.raises(Rejected) as info:
            client.job("job-missing")
        assert info.value.code == "unknown_job"
