"""`kernelsup mcp` as a real subprocess, driven by the `mcp` package's own stdio client.

Embedded (`--embedded`: the tree runs inside the MCP server) and against a real
`kernelsup run`. Every test is bounded by trio.fail_after; the fixtures kill whatever is
left of a runtime directory and remove it, pass or fail. The end of each embedded test
closes the server's stdin and checks that it stopped by itself, promptly, with no kernel
left running. Rendering (pure) is tested with plain values at the bottom.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import mcp.client.stdio
import mcp_types as types
import psutil
import pytest
import trio
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.shared.dispatcher import ProgressFnT

from kernelsup.adapters.tether import TETHER_ENV, sweep
from kernelsup.core.results import ErrorInfo, ExecuteResult, ExitCause, Output
from kernelsup.mcp import render
from kernelsup.mcp.server import META_RESULT, META_STATUS
from tests.helpers import wait_all_gone
from tests.supervisor_process import SupervisorProcess, private_tmp, supervisor, write_config

TOOLS = {
    "execute",
    "job_status",
    "job_output",
    "cancel_job",
    "list_jobs",
    "open_session",
    "list_sessions",
    "close_session",
    "put_file",
    "get_file",
    "list_files",
    "status",
    "interrupt",
    "restart",
    # kernelsup/mcp/notebook_tools.py
    "run_notebook",
    "notebook_status",
    "cancel_notebook",
    "run_cell",
    # kernelsup/mcp/snapshot_tools.py
    "snapshot_session",
    "restore_session",
    "fork_session",
}
# How long the client waits for the server to exit by itself after closing its stdin
# before it escalates to SIGTERM (the mcp default, 2 s, is tight for stopping kernels on a
# busy CI machine). A test fails if the server needed the escalation.
GRACEFUL_EXIT_S = 20.0
STOPPED_LINE = "kernelsup mcp: stopped (the client closed stdin)"
# A 1x1 PNG.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
    "RU5ErkJggg=="
)


# --- fixtures and helpers --------------------------------------------------------------


class Workdir:
    """A directory with a config (by default a new short private one with a small, fast
    config, its runtime dir ``rt``); the MCP server's stderr goes to ``mcp.stderr``."""

    def __init__(self, config: Path | None = None, runtime_dir: Path | None = None) -> None:
        if config is None:
            runtime_dir = private_tmp() / "rt"
            config = write_config(runtime_dir.parent, runtime_dir, size=1, spares=1)
        assert runtime_dir is not None
        self.path = config.parent
        self.runtime_dir = runtime_dir
        self.config = config
        self.stderr_path = self.path / "mcp.stderr"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()[-4000:]
        except OSError:
            return ""


@pytest.fixture
def work() -> Iterator[Workdir]:
    w = Workdir()
    try:
        yield w
    finally:
        sweep(w.runtime_dir)  # only if a test failed: kernels and what they started
        shutil.rmtree(w.path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _patient_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mcp.client.stdio, "PROCESS_TERMINATION_TIMEOUT", GRACEFUL_EXIT_S)


def tethered(runtime_dir: Path) -> list[psutil.Process]:
    """Live processes carrying the runtime dir's tether marker (kernels and what they
    started)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(TETHER_ENV) == str(runtime_dir):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def pipes_of(pid: int) -> set[str]:
    """The pipes a process holds an end of, as ``pipe:[inode]``."""
    links = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return {link for link in links if link.startswith("pipe:")}


def mcp_server_process() -> psutil.Process:
    """Our `kernelsup mcp` child (the stdio client does not hand out its process)."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "mcp" in child.cmdline() and "kernelsup" in child.cmdline():
                return child
    raise AssertionError("no `kernelsup mcp` child process")


class Mcp:
    """An initialized client session plus what the tests need to check the server."""

    def __init__(self, session: ClientSession, work: Workdir, init: types.InitializeResult) -> None:
        self.session = session
        self.work = work
        self.instructions = init.instructions or ""
        self.process = mcp_server_process()

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        progress_callback: ProgressFnT | None = None,
    ) -> types.CallToolResult:
        return await self.session.call_tool(
            name, arguments or {}, progress_callback=progress_callback
        )

    async def execute(
        self, code: str, *, progress_callback: ProgressFnT | None = None, **arguments: Any
    ) -> types.CallToolResult:
        return await self.call(
            "execute", {"code": code, **arguments}, progress_callback=progress_callback
        )


def text_of(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


def summary_of(result: types.CallToolResult) -> dict[str, Any]:
    """An execute result's fields, from ``_meta`` (never ``structuredContent``, which some
    clients hand the model instead of the text)."""
    assert result.structured_content is None
    assert result.meta is not None, result
    summary: dict[str, Any] = result.meta[META_RESULT]
    return summary


def status_of(result: types.CallToolResult) -> dict[str, Any]:
    assert result.meta is not None, result
    status: dict[str, Any] = result.meta[META_STATUS]
    return status


def images_of(result: types.CallToolResult) -> list[types.ImageContent]:
    return [block for block in result.content if isinstance(block, types.ImageContent)]


@contextlib.asynccontextmanager
async def open_mcp(work: Workdir, *args: str) -> AsyncIterator[Mcp]:
    """`kernelsup mcp -c CONFIG ARGS` with an initialized session. On a clean exit from the
    block the client closes the server's stdin; the server must stop by itself."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "kernelsup", "mcp", "-c", str(work.config), *args],
        cwd=str(work.path),
    )
    with work.stderr_path.open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                yield Mcp(session, work, init)


@contextlib.asynccontextmanager
async def embedded(work: Workdir) -> AsyncIterator[Mcp]:
    """An embedded server; after the block: it exited by itself on stdin EOF, leaving no
    kernel (nor anything a kernel started) running."""
    async with open_mcp(work, "--embedded") as client:
        report = await client.call("status")
        pids = [k["pid"] for k in status_of(report)["kernels"]]
        assert pids and all(psutil.pid_exists(pid) for pid in pids)
        yield client
        t0 = time.monotonic()
    assert time.monotonic() - t0 < GRACEFUL_EXIT_S, "the server had to be killed"
    assert not client.process.is_running()
    assert STOPPED_LINE in work.stderr(), work.stderr()
    left = tethered(work.runtime_dir)
    assert not left, f"left running: {[p.cmdline() for p in left]}"
    # killed with the server; a forked kernel may be a zombie a moment (its zygote died)
    assert wait_all_gone(pids) == []


def check_ok(result: types.CallToolResult) -> str:
    text = text_of(result)
    assert not result.is_error, text
    assert summary_of(result)["status"] == "ok", text
    return text


# --- embedded: the tools ---------------------------------------------------------------


async def test_embedded_fresh_execute_sees_nothing_and_keeps_nothing(work: Workdir) -> None:
    with trio.fail_after(90):
        async with embedded(work) as client:
            check_ok(await client.execute("SECRET = 1"))
            first = await client.execute("print(sorted(globals())[-1]); FRESH = 2", fresh=True)
            text = check_ok(first)
            assert "SECRET" not in text and "job_id" not in summary_of(first)
            text = check_ok(await client.execute("print('FRESH' in globals())", fresh=True))
            assert text.startswith("False\n"), text
            assert "1" in check_ok(await client.execute("print(SECRET)"))
            refused = await client.execute("1", fresh=True, session="s")
            assert refused.is_error and "fresh and session" in text_of(refused)


async def test_embedded_tools_results_and_clean_exit(work: Workdir) -> None:
    with trio.fail_after(90):
        async with embedded(work) as client:
            tools = (await client.session.list_tools()).tools
            assert {tool.name for tool in tools} == TOOLS
            # The instructions tell the state model as it is.
            assert "this connection's own session" in client.instructions
            assert "closed" in client.instructions and "`block_for`" in client.instructions
            execute = next(tool for tool in tools if tool.name == "execute")
            assert execute.input_schema["required"] == ["code"]

            text = check_ok(await client.execute("print(1)"))
            assert text.startswith("1\n"), text
            assert "[kernelsup: ok, kernel default-" in text

            result = await client.execute("1/0")
            assert result.is_error
            assert "ZeroDivisionError" in text_of(result)
            assert summary_of(result)["status"] == "error"

            result = await client.execute("while True: pass", timeout=1)
            text = text_of(result)
            assert result.is_error, text
            assert summary_of(result)["status"] == "timeout"
            assert "timeout ExecTimeout: execution exceeded its 1 s timeout" in text
            assert "interrupted" in text

            text = check_ok(await client.execute("6 * 7"))
            assert "Out[" in text and "]: 42" in text


async def test_embedded_images(work: Workdir) -> None:
    code = (
        "from IPython.display import Image, display\nimport base64\n"
        f"display(Image(base64.b64decode({PNG!r})))"
    )
    with trio.fail_after(90):
        async with embedded(work) as client:
            result = await client.execute(code)
            text = check_ok(result)
            [image] = images_of(result)
            assert image.mime_type == "image/png"
            assert base64.b64decode(image.data).startswith(b"\x89PNG\r\n\x1a\n")
            assert "[image 1: image/png" in text
            if importlib.util.find_spec("matplotlib") is not None:
                result = await client.execute(
                    "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()", timeout=60
                )
                check_ok(result)
                [image] = images_of(result)
                assert base64.b64decode(image.data).startswith(b"\x89PNG")


async def test_kernel_writes_to_fd_1_do_not_corrupt_the_protocol(work: Workdir) -> None:
    """A kernel writing to its own fd 1 and children writing to theirs (one of them after
    the call returned) never reach the MCP stream: the client keeps working."""
    junk = '{"jsonrpc": "2.0", "id": 2, "result": {}}\\nnot json at all\\n'
    code = (
        "import os, subprocess, sys\n"
        f"os.write(1, b'{junk}')\n"
        "subprocess.run(['echo', 'junk from a child'])\n"
        "subprocess.Popen(['sh', '-c', 'sleep 0.3; echo late junk; echo more >&2'])\n"
        "os.write(2, b'junk on fd 2\\n')\n"
        "sys.__stdout__.write('junk via sys.__stdout__\\n'); sys.__stdout__.flush()\n"
        "print('after the junk')"
    )
    with trio.fail_after(90):
        async with embedded(work) as client:
            # The kernels hold no end of the server's stdin or stdout pipes (whose other
            # ends are ours), and the server's own fd 1 points at its stderr while serving.
            ours = pipes_of(os.getpid())
            for kernel in status_of(await client.call("status"))["kernels"]:
                assert os.readlink(f"/proc/{kernel['pid']}/fd/0") == "/dev/null"
                assert not pipes_of(kernel["pid"]) & ours
            server = client.process.pid
            assert len(pipes_of(server) & ours) == 2  # the control: stdin and stdout
            assert os.readlink(f"/proc/{server}/fd/1") == os.readlink(f"/proc/{server}/fd/2")

            text = check_ok(await client.execute(code))
            assert "after the junk" in text
            await trio.sleep(0.6)  # the late child writes meanwhile
            for i in range(3):
                text = check_ok(await client.execute(f"print({i} + 40)"))
                assert f"{i + 40}\n" in text
            assert status_of(await client.call("status"))["kernels"]


async def test_progress_sessions_and_kernel_tools(work: Workdir) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    with trio.fail_after(90):
        async with embedded(work) as client:
            code = "import time\nfor i in range(4):\n    print('step', i); time.sleep(0.6)"
            text = check_ok(await client.execute(code, timeout=30, progress_callback=on_progress))
            assert "step 3" in text
            assert len(seen) >= 3, seen
            values = [value for value, _, _ in seen]
            assert values == sorted(values) and len(set(values)) == len(values)
            assert all(total == 30 for _, total, _ in seen)
            messages = {message for _, _, message in seen} - {None}
            assert messages and messages <= {f"step {i}" for i in range(4)}, seen

            check_ok(await client.execute("x = 41", session="agent"))
            text = check_ok(await client.execute("x + 1", session="agent"))
            assert "42" in text and "session agent" in text
            result = await client.call("close_session", {"session": "agent"})
            assert not result.is_error and "closed" in text_of(result)
            result = await client.execute("x", session="agent")
            assert result.is_error and "NameError" in text_of(result)

            result = await client.call("interrupt", {"kernel_id": "nope"})
            assert result.is_error
            assert text_of(result).startswith("unknown_kernel Rejected:")
            result = await client.call("execute", {"code": "1", "timeout": -1})
            assert result.is_error and text_of(result).startswith("bad_request")
            result = await client.call("execute", {})
            assert result.is_error and "'code' is required" in text_of(result)

            status = status_of(await client.call("status"))
            kernel = next(k for k in status["kernels"] if k["role"] == "pool")
            result = await client.call("restart", {"kernel_id": kernel["id"]})
            assert not result.is_error, text_of(result)
            check_ok(await client.execute("print('still serving')"))


async def test_embedded_sessions_files_and_jobs(work: Workdir) -> None:
    """The session, file and job tools on the in-process supervisor (the agent flow
    against `kernelsup run` is tests/test_mcp_agent.py)."""
    project = work.path / "project"
    project.mkdir()
    with trio.fail_after(120):
        async with embedded(work) as client:
            result = await client.call(
                "open_session", {"name": "s", "cwd": str(project), "env": {"FLAVOUR": "mint"}}
            )
            assert not result.is_error and "session 's' open" in text_of(result), text_of(result)
            result = await client.call("put_file", {"session": "s", "path": "in.txt", "text": "hi"})
            assert not result.is_error, text_of(result)
            code = "import os\nprint(open('in.txt').read(), os.environ['FLAVOUR'], os.getcwd())"
            text = check_ok(await client.execute(code, session="s"))
            assert f"hi mint {project}\n" in text, text
            result = await client.call("list_files", {"session": "s"})
            assert text_of(result).split() == ["in.txt"]

            # interrupt and restart by session; without one, the connection's own.
            result = await client.call("restart", {})
            assert result.is_error and "no session of its own yet" in text_of(result)
            result = await client.call("interrupt", {"session": "s"})
            assert text_of(result) == "interrupted session s's kernel; its state is kept"
            check_ok(await client.execute("mine = 1"))
            result = await client.call("restart", {})
            assert not result.is_error and "variables are gone" in text_of(result), text_of(result)
            result = await client.execute("mine")
            assert result.is_error and "NameError" in text_of(result), text_of(result)

            result = await client.execute(
                "import time\nprint('begun', flush=True)\ntime.sleep(600)", session="s", block_for=0
            )
            job_id = result.meta["kernelsup/job"]["id"] if result.meta else ""
            assert job_id and job_id in text_of(result), text_of(result)
            with trio.fail_after(30):
                while "begun" not in text_of(
                    out := await client.call("job_output", {"job_id": job_id})
                ):
                    await trio.sleep(0.1)
            assert "job running" in text_of(out), text_of(out)
            assert job_id in text_of(await client.call("list_jobs"))
            result = await client.call("cancel_job", {"job_id": job_id})
            assert "cancelled" in text_of(result), text_of(result)
            with trio.fail_after(30):
                while "cancelled" not in text_of(
                    status := await client.call("job_status", {"job_id": job_id})
                ):
                    await trio.sleep(0.1)
            assert status.is_error is not True

            # An execute the client gives up on while it waits cancels its job: nobody
            # has the job's id to follow or stop it.
            with trio.move_on_after(30) as waiting:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        functools.partial(
                            client.execute,
                            "import time; time.sleep(600)",
                            session="s",
                            block_for=600,
                        )
                    )
                    while not (jobs := await running_jobs(client)):
                        await trio.sleep(0.1)
                    nursery.cancel_scope.cancel()
            assert not waiting.cancelled_caught
            with trio.fail_after(30):
                while await running_jobs(client):
                    await trio.sleep(0.1)
            [job] = [j for j in jobs_of(await client.call("list_jobs")) if j["id"] == jobs[0]]
            assert job["status"] == "cancelled", job

            result = await client.call("close_session", {"session": "s"})
            assert "closed" in text_of(result), text_of(result)
    assert (project / "in.txt").read_text() == "hi"  # a directory the user gave is kept


def jobs_of(result: types.CallToolResult) -> list[dict[str, Any]]:
    assert result.meta is not None, text_of(result)
    jobs: list[dict[str, Any]] = result.meta["kernelsup/jobs"]
    return jobs


async def running_jobs(client: Mcp) -> list[str]:
    return [j["id"] for j in jobs_of(await client.call("list_jobs")) if j["status"] == "running"]


async def test_sigterm_stops_the_embedded_tree_mid_call(work: Workdir) -> None:
    with trio.fail_after(90):
        async with open_mcp(work, "--embedded") as client:
            pids = [k["pid"] for k in status_of(await client.call("status"))["kernels"]]

            async def forever() -> None:
                with pytest.raises(MCPError, match="Connection closed"):
                    await client.execute("import time\nwhile True: time.sleep(0.1)")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(forever)
                await trio.sleep(0.5)
                client.process.send_signal(signal.SIGTERM)
                await trio.to_thread.run_sync(client.process.wait, 30)
    assert "kernelsup mcp: stopped (received SIGTERM)" in work.stderr(), work.stderr()
    assert not tethered(work.runtime_dir)
    # killed with the server; a forked kernel may be a zombie a moment (its zygote died)
    assert wait_all_gone(pids) == []


# --- against `kernelsup run` -----------------------------------------------------------


@pytest.fixture
def sup() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=1)


async def test_remote_execute_through_kernelsup_run(sup: SupervisorProcess) -> None:
    work = Workdir(sup.config, sup.runtime_dir)
    with trio.fail_after(60):
        async with open_mcp(work) as client:
            text = check_ok(await client.execute("import os\nprint('pid', os.getpid())"))
            pid = int(text.split()[1])
            status = status_of(await client.call("status"))
            assert pid in [k["pid"] for k in status["kernels"]]
            result = await client.execute("while True: pass", timeout=1)
            assert result.is_error and summary_of(result)["status"] == "timeout"
            check_ok(await client.execute("print('ok again')"))
    assert STOPPED_LINE in work.stderr(), work.stderr()
    assert sup.proc is not None and sup.proc.poll() is None  # the supervisor serves on


async def test_unreachable_supervisor_is_a_tool_error(work: Workdir) -> None:
    with trio.fail_after(60):
        async with open_mcp(work) as client:
            for _ in range(2):  # and the server is still there to answer
                result = await client.execute("print(1)")
                assert result.is_error
                assert text_of(result).startswith("unreachable Unreachable: "), text_of(result)
                result = await client.call("status")
                assert result.is_error and "unreachable" in text_of(result)
            assert {t.name for t in (await client.session.list_tools()).tools} == TOOLS
    assert STOPPED_LINE in work.stderr(), work.stderr()


def test_bad_config_exits_2(work: Workdir) -> None:
    work.config.write_text("[pool]\nnope = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kernelsup", "mcp", "--embedded", "-c", str(work.config)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.startswith("config_invalid ConfigError:"), proc.stderr


# --- rendering (pure) ------------------------------------------------------------------


def test_render_orders_outputs_and_reports_the_kernel() -> None:
    result = ExecuteResult(
        "ok",
        kernel_id="default-0",
        session="s",
        execution_count=3,
        run_s=0.25,
        result="42",
        outputs=(
            Output("stream", name="stdout", text="a"),
            Output("display_data", data={"text/plain": "<table>"}),
            Output("stream", name="stderr", text="warn\n"),
            Output("execute_result", data={"text/plain": "42"}),
        ),
    )
    r = render.render_result(result)
    assert r.text == (
        "a\n<table>\nwarn\nOut[3]: 42\n[kernelsup: ok, kernel default-0, session s, 0.25 s]\n"
    )
    assert not r.is_error and r.images == ()
    assert r.summary["status"] == "ok" and r.summary["execution_count"] == 3


def test_render_problems_say_what_happened() -> None:
    died = ExecuteResult(
        "died",
        kernel_id="default-1",
        code="kernel_died",
        message="the kernel died",
        cause=ExitCause("failure", signal=9),
        kernel_restarted=True,
        state_lost=True,
        truncated_bytes=10,
        outputs=(
            Output("notice", name="state_lost", text="[kernelsup: state gone]"),
            Output("stream", name="stdout", text="x\n[kernelsup: output truncated]\n"),
            Output("notice", name="truncated", text="[kernelsup: output truncated]"),
        ),
    )
    text = render.render_result(died).text
    assert text.count("output truncated]") == 1  # the marker in place, not the notice too
    assert "[kernelsup: state gone]\n" in text
    assert "kernel_died KernelDied: the kernel died (cause: signal(9))\n" in text
    assert "kernel restarted, state lost" in text and "10 bytes dropped" in text
    error = ExecuteResult(
        "error", code="execution_error", error=ErrorInfo("ZeroDivisionError", "division by zero")
    )
    r = render.render_result(error)
    assert r.is_error and "ZeroDivisionError: division by zero\n" in r.text
    rejected = render.render_result(
        ExecuteResult("rejected", code="queue_full", message="the queue is full")
    )
    assert "queue_full Rejected: the queue is full" in rejected.text


def test_render_images_within_the_cap() -> None:
    big = base64.b64encode(b"\x89PNG" + b"\0" * 3000).decode()
    result = ExecuteResult(
        "ok",
        outputs=(
            Output("display_data", data={"image/png": PNG + "\n", "text/plain": "<Image>"}),
            Output("display_data", data={"image/png": big}),
            Output("display_data", data={"image/jpeg": PNG}),
        ),
    )
    r = render.render_result(result, max_image_bytes=len(PNG) * 2 + 10)
    assert [i.mime_type for i in r.images] == ["image/png", "image/jpeg"]
    assert r.images[0].data == PNG  # whitespace removed
    assert "<Image>" not in r.text
    assert "[image 1: image/png" in r.text and "[image 2: image/jpeg" in r.text
    assert "image/png image of 2.9 KiB left out: over the" in r.text
    assert (r.summary["images"], r.summary["images_omitted"]) == (2, 1)


def test_progress_message_is_one_short_line() -> None:
    assert render.progress_message(Output("stream", name="stdout", text="a\nb\n\n")) == "b"
    assert render.progress_message(Output("stream", name="stdout", text="\n")) is None
    long = render.progress_message(Output("stream", name="stdout", text="x" * 1000))
    assert long is not None and len(long) == render.PROGRESS_MESSAGE_CHARS
    assert render.progress_message(Output("display_data", data={"image/png": PNG})) == "<image/png>"
    assert (
        render.progress_message(Output("error", text="Traceback\nValueError: bad"))
        == "ValueError: bad"
    )
