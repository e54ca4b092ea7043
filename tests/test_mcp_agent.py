"""An agent's flow over MCP, with the `mcp` package's own client, against a real
`kernelsup run`: sessions with a cwd and env, files in and out, a long job followed with
job_output while other calls run, cancelled; a disconnect; and from a new client, the
session and a finished job's whole output found again. Also the state model (one session
per MCP connection, closed with it) and the budget with real kernels.

Every test is bounded by trio.fail_after; the supervisor fixture stops `kernelsup run`
and checks that nothing is left, pass or fail.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import trio

from kernelsup.mcp.handlers import META_JOB, META_OUTPUT, META_SESSION, META_SESSIONS
from tests.supervisor_process import SupervisorProcess, private_tmp, supervisor
from tests.test_mcp import (  # noqa: F401  (_patient_client: an autouse fixture)
    PNG,
    STOPPED_LINE,
    TOOLS,
    Mcp,
    Workdir,
    _patient_client,
    check_ok,
    images_of,
    open_mcp,
    summary_of,
    text_of,
)

LONG_JOB = (
    "import time\n"
    "for i in range(100_000):\n"
    "    print(f'tick {i}', flush=True)\n"
    "    time.sleep(0.05)"
)
# A job with far more output than one result shows (about 700 KB): its whole output must
# come back, in order, through job_output.
MANY_LINES = 50_000
MANY = f"for i in range({MANY_LINES}):\n    print(f'line {{i:06d}}')"


@pytest.fixture
def sup() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=1, pool="max_sessions = 6")


@pytest.fixture
def user_dir() -> Iterator[Path]:
    path = private_tmp() / "project"
    path.mkdir()
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


def work_of(sup: SupervisorProcess) -> Workdir:
    return Workdir(sup.config, sup.runtime_dir)


async def poll(
    call: Callable[[], Awaitable[types.CallToolResult]],
    done: Callable[[types.CallToolResult], bool],
    timeout: float = 30,
) -> types.CallToolResult:
    """Call until ``done`` says yes (bounded); the last result."""
    with trio.fail_after(timeout):
        while True:
            result = await call()
            if done(result):
                return result
            await trio.sleep(0.1)


def job_of(result: types.CallToolResult) -> dict[str, Any]:
    assert result.meta is not None, text_of(result)
    job: dict[str, Any] = result.meta[META_JOB]
    return job


def output_meta(result: types.CallToolResult) -> dict[str, Any]:
    assert result.meta is not None, text_of(result)
    meta: dict[str, Any] = result.meta[META_OUTPUT]
    return meta


def session_names(result: types.CallToolResult) -> set[str]:
    assert result.meta is not None, text_of(result)
    return {s["name"] for s in result.meta[META_SESSIONS]}


async def read_whole_output(client: Mcp, job_id: str) -> str:
    """Page through a finished job's output with job_output, from offset 0 to done."""
    pages, offset = [], 0
    with trio.fail_after(60):
        while True:
            result = await client.call(
                "job_output", {"job_id": job_id, "offset": offset, "max_output_chars": 200_000}
            )
            assert not result.is_error, text_of(result)
            meta = output_meta(result)
            text = text_of(result)
            pages.append(text[: text.rindex("[kernelsup: ")])
            if meta["done"]:
                return "".join(pages)
            assert meta["next_offset"] > offset, text[-300:]
            offset = meta["next_offset"]


async def test_agent_flow_sessions_files_jobs_and_reconnect(
    sup: SupervisorProcess, user_dir: Path
) -> None:
    work = work_of(sup)
    with trio.fail_after(240):
        async with open_mcp(work) as client:
            assert {t.name for t in (await client.session.list_tools()).tools} == TOOLS

            # A session with a working directory and an environment of its own.
            result = await client.call(
                "open_session",
                {"name": "agent", "cwd": str(user_dir), "env": {"AGENT_TOKEN": "t-123"}},
            )
            assert not result.is_error, text_of(result)
            assert result.meta is not None
            info = result.meta[META_SESSION]
            assert (info["name"], info["cwd"], info["env"]) == (
                "agent",
                str(user_dir),
                ["AGENT_TOKEN"],
            )

            # Files in: text, and binary as base64; the code reads them where it runs.
            result = await client.call(
                "put_file", {"session": "agent", "path": "data/in.csv", "text": "a,b\n1,2\n3,4\n"}
            )
            assert not result.is_error and "wrote 12 bytes" in text_of(result), text_of(result)
            blob = bytes(range(256)) * 4
            result = await client.call(
                "put_file",
                {"session": "agent", "path": "blob.bin", "base64": base64.b64encode(blob).decode()},
            )
            assert not result.is_error, text_of(result)
            assert (user_dir / "data" / "in.csv").read_text() == "a,b\n1,2\n3,4\n"
            code = (
                "import csv, os\n"
                "print(os.getcwd(), os.environ['AGENT_TOKEN'])\n"
                "rows = list(csv.reader(open('data/in.csv')))\n"
                "blob = open('blob.bin', 'rb').read()\n"
                "print('sum', sum(int(r[0]) for r in rows[1:]), 'blob', len(blob))\n"
                "open('out.txt', 'w').write('written by the kernel\\n')\n"
                f"import base64; open('plot.png', 'wb').write(base64.b64decode({PNG!r}))"
            )
            text = check_ok(await client.execute(code, session="agent"))
            assert f"{user_dir} t-123\n" in text and "sum 4 blob 1024\n" in text, text

            # Files out: text as text, an image as an image, other bytes as base64.
            result = await client.call("get_file", {"session": "agent", "path": "out.txt"})
            assert text_of(result) == "written by the kernel\n", text_of(result)
            result = await client.call("get_file", {"session": "agent", "path": "plot.png"})
            [image] = images_of(result)
            assert image.mime_type == "image/png" and image.data == PNG
            result = await client.call("get_file", {"session": "agent", "path": "blob.bin"})
            assert base64.b64decode(text_of(result)) == blob
            result = await client.call("get_file", {"session": "agent", "path": "../escape"})
            assert result.is_error and "path_outside_session" in text_of(result), text_of(result)
            result = await client.call("list_files", {"session": "agent"})
            assert {"data/", "blob.bin", "out.txt", "plot.png"} <= set(text_of(result).split())

            # A long job: execute hands back a job id after block_for; the code goes on.
            result = await client.execute(LONG_JOB, session="long", block_for=1)
            assert not result.is_error, text_of(result)
            job = job_of(result)
            assert job["status"] in ("queued", "running") and job["session"] == "long"
            assert f"after 1 s, as job {job['id']} in session long" in text_of(result)

            # Other calls run meanwhile: the connection's own session keeps its state.
            check_ok(await client.execute("x = 41"))
            assert "42" in check_ok(await client.execute("x + 1"))
            check_ok(await client.execute("print('agent still here')", session="agent"))

            # job_output follows it: each page starts where the last ended, new ticks come.
            first = await poll(
                lambda: client.call("job_output", {"job_id": job["id"]}),
                lambda r: "tick 0\n" in text_of(r),
            )
            assert text_of(first).startswith("tick 0\n") and "job running" in text_of(first)
            offset = output_meta(first)["next_offset"]
            later = await poll(
                lambda: client.call("job_output", {"job_id": job["id"], "offset": offset}),
                lambda r: "tick" in text_of(r),
            )
            ticks = [
                int(line.split()[1])
                for line in text_of(later).splitlines()
                if line.startswith("tick ")
            ]
            last_first = max(
                int(ln.split()[1]) for ln in text_of(first).splitlines() if ln.startswith("tick ")
            )
            assert ticks[0] == last_first + 1 and ticks == list(
                range(ticks[0], ticks[0] + len(ticks))
            )

            result = await client.call("cancel_job", {"job_id": job["id"]})
            assert not result.is_error and "cancelled" in text_of(result), text_of(result)
            status = await poll(
                lambda: client.call("job_status", {"job_id": job["id"]}),
                lambda r: job_of(r)["status"] != "running",
            )
            assert job_of(status)["status"] == "cancelled", text_of(status)

            # A job with more output than a result shows: head and tail, the cut marked.
            result = await client.execute(
                MANY, session="agent", max_output_chars=2000, block_for=60
            )
            text = check_ok(result)
            many_id = summary_of(result)["job_id"]
            assert len(text) <= 2000
            assert text.startswith("line 000000\n") and "line 049999\n" in text
            assert "cut from the middle here, to keep this result within 2,000 characters; " in text
            assert f'the whole output: job_output(job_id="{many_id}", offset=0)]' in text

            sessions = session_names(await client.call("list_sessions"))
            own = {name for name in sessions if name.startswith("mcp-")}
            assert {"agent", "long"} <= sessions and len(own) == 1
        assert STOPPED_LINE in work.stderr(), work.stderr()

        # A new client: the named sessions and the finished job are there; the old
        # connection's own session was closed with it.
        async with open_mcp(work) as client:
            sessions = session_names(await client.call("list_sessions"))
            assert {"agent", "long"} <= sessions and not own & sessions
            jobs = await client.call("list_jobs")
            assert many_id in text_of(jobs) and job["id"] in text_of(jobs)
            whole = await read_whole_output(client, many_id)
            assert whole == "".join(f"line {i:06d}\n" for i in range(MANY_LINES))
            assert "rows" in check_ok(
                await client.execute("print('rows' if rows else '')", session="agent")
            )
            for name in ("agent", "long"):
                result = await client.call("close_session", {"session": name})
                assert "closed" in text_of(result), text_of(result)
    assert (user_dir / "out.txt").exists()  # a directory the user gave is kept


async def test_each_connection_has_its_own_session(sup: SupervisorProcess) -> None:
    """Without `session`, state persists between one client's calls and is invisible to
    another's; a client's own session closes when it disconnects."""
    work = work_of(sup)
    with trio.fail_after(120):
        async with open_mcp(work) as first, open_mcp(work) as second:
            check_ok(await first.execute("secret = 'first'"))
            assert "first" in check_ok(await first.execute("secret"))
            result = await second.execute("secret")
            assert result.is_error and "NameError" in text_of(result), text_of(result)
            check_ok(await second.execute("import os; os.chdir('/')"))
            assert "'/'" in check_ok(await second.execute("os.getcwd()"))
            assert "'/'" not in check_ok(await first.execute("import os; os.getcwd()"))
            sessions = session_names(await first.call("list_sessions"))
            first_own = summary_of(await first.execute("1"))["session"]
            second_own = summary_of(await second.execute("1"))["session"]
            assert {first_own, second_own} <= sessions and first_own != second_own
            result = await first.execute("import time; time.sleep(600)", block_for=0)
            orphan = job_of(result)["id"]
        async with open_mcp(work) as third:
            sessions = session_names(await third.call("list_sessions"))
            assert not {first_own, second_own} & sessions
            # The job left running in a closed connection's own session was cancelled.
            result = await third.call("job_status", {"job_id": orphan})
            assert job_of(result)["status"] == "cancelled", text_of(result)


async def test_block_for_zero_gives_a_job_at_once(sup: SupervisorProcess) -> None:
    work = work_of(sup)
    with trio.fail_after(90):
        async with open_mcp(work) as client:
            result = await client.execute("import time; time.sleep(1); print('slept')", block_for=0)
            assert not result.is_error, text_of(result)
            job_id = job_of(result)["id"]
            assert "still " in text_of(result) and job_id in text_of(result)
            status = await poll(
                lambda: client.call("job_status", {"job_id": job_id}),
                lambda r: job_of(r)["status"] not in ("queued", "running"),
            )
            assert job_of(status)["status"] == "ok" and "slept\n" in text_of(status)
            for bad in ({"block_for": -1}, {"block_for": "soon"}, {"max_output_chars": 10}):
                result = await client.call("execute", {"code": "1", **bad})
                assert result.is_error and text_of(result).startswith("bad_request"), text_of(
                    result
                )
            result = await client.call("job_output", {"job_id": "no-such-job"})
            assert result.is_error and "unknown_job" in text_of(result), text_of(result)


async def test_output_is_plain_and_budgeted_with_real_kernels(sup: SupervisorProcess) -> None:
    work = work_of(sup)
    with trio.fail_after(90):
        async with open_mcp(work) as client:
            result = await client.execute("print('\\x1b[1;31mred\\x1b[0m')\n1/0")
            text = text_of(result)
            assert result.is_error and "\x1b" not in text, repr(text)
            assert "red\n" in text and "ZeroDivisionError" in text
            # A megabyte of output: the default budget (20,000) holds; head and tail kept.
            result = await client.execute("for i in range(100_000):\n    print('row', i)")
            text = check_ok(result)
            assert len(text) <= 20_000 and text.startswith("row 0\n")
            assert "row 99999\n" in text and "cut from the middle here" in text
            result = await client.execute(
                "for i in range(100_000):\n    print('row', i)", max_output_chars=50_000
            )
            assert 40_000 < len(check_ok(result)) <= 50_000
            # A progress bar redrawn with carriage returns is one line.
            code = "import sys\nfor p in range(101):\n    sys.stdout.write(f'\\r{p:3d}%')\nprint()"
            text = check_ok(await client.execute(code))
            assert text.startswith("100%\n"), repr(text[:50])
