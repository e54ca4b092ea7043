"""The kernel actor against real ipykernel processes (and the fake kernel for faults)."""

from __future__ import annotations

import gc
import os
import signal
import time
import weakref
from pathlib import Path

import attrs
import psutil
import pytest
import trio

from kernelsup.core.errors import KernelStartError
from kernelsup.core.results import ExecuteResult
from kernelsup.tree.kernel import run_kernel
from kernelsup.tree.kernel_handle import KernelOptions
from tests.fakekernel import install_kernelspec
from tests.helpers import FAST, LAUNCHES, RunningKernel, start_kernel

# Tests of launch, death, kill and containment run on exec'ed and forked kernels alike.
FORK_TOO = pytest.mark.parametrize("kernel", LAUNCHES, indirect=True)


def _alive_now(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


async def _descendants_alive(pids: list[int], within: float = 5.0) -> list[int]:
    """Processes still alive once a SIGKILL had time to land (it is delivered async)."""
    with trio.move_on_after(within):
        while _alive_now(pids):
            await trio.sleep(0.02)
    return _alive_now(pids)


@FORK_TOO
async def test_print_and_result(kernel: RunningKernel) -> None:
    r = await kernel.handle.execute('print("hi"); 40 + 2')
    assert r.status == "ok", r
    assert r.stdout == "hi\n"
    assert r.result == "42"
    assert isinstance(r.execution_count, int) and r.execution_count >= 1
    assert r.code is None and r.kernel_id == "k0"
    r2 = await kernel.handle.execute("1")
    assert r2.execution_count == r.execution_count + 1


async def test_error_has_plain_traceback(kernel: RunningKernel) -> None:
    r = await kernel.handle.execute("1/0")
    assert r.status == "error"
    assert r.code == "execution_error"
    assert r.error is not None and r.error.ename == "ZeroDivisionError"
    text = "\n".join(r.error.traceback)
    assert "ZeroDivisionError" in text
    assert "\x1b[" not in text


async def test_png_display(kernel: RunningKernel) -> None:
    code = (
        "import base64\n"
        "from IPython.display import Image, display\n"
        "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
        "z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==')\n"
        "display(Image(data=png))\n"
    )
    r = await kernel.handle.execute(code)
    assert r.status == "ok", r
    images = [o for o in r.outputs if o.data and "image/png" in o.data]
    assert len(images) == 1
    assert images[0].type == "display_data"
    assert images[0].data is not None and images[0].data["image/png"].startswith("iVBOR")


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld ✓ 日本語",
        "emoji 🐍🚀 and zero-width \u200b joiner",
        "escapes \\n \\t \x1b[31mred\x1b[0m \r carriage",
        "x" * 100_000,
    ],
)
async def test_text_round_trips(kernel: RunningKernel, text: str) -> None:
    r = await kernel.handle.execute(f"import sys; sys.stdout.write({text!r}); {text!r}")
    assert r.status == "ok", r
    assert r.stdout == text
    assert r.result == repr(text)


async def test_empty_code(kernel: RunningKernel) -> None:
    r = await kernel.handle.execute("")
    assert r.status == "ok"
    assert r.stdout == "" and r.result is None


@FORK_TOO
async def test_os_exit_mid_request_is_died(kernel: RunningKernel) -> None:
    r = await kernel.handle.execute("print('before', flush=True); import os; os._exit(1)")
    assert r.status == "died"
    assert r.code == "kernel_died"
    assert r.state_lost
    assert r.cause is not None and r.cause.describe() == "exit(1)"
    cause = await kernel.wait_exit()
    assert cause.kind == "failure" and cause.describe() == "exit(1)"


@FORK_TOO
async def test_sigkill_while_idle(kernel: RunningKernel) -> None:
    assert kernel.handle.pid is not None
    os.kill(kernel.handle.pid, signal.SIGKILL)
    cause = await kernel.wait_exit()
    assert cause.kind == "failure"
    assert cause.describe() == "signal(9)"


@FORK_TOO
async def test_sigstop_is_heartbeat(kernel: RunningKernel) -> None:
    pid = kernel.handle.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        cause = await kernel.wait_exit()
    finally:
        os.kill(pid, signal.SIGCONT) if psutil.pid_exists(pid) else None
    assert cause.kind == "heartbeat"
    assert kernel.handle.stats.heartbeat_misses >= FAST.heartbeat_misses


@pytest.mark.parametrize(
    "code",
    [
        "import time; time.sleep(5); 'done'",
        "n = 0\nfor i in range(60_000_000): n += i\n'done'",
    ],
)
async def test_busy_kernel_is_not_frozen(kernel: RunningKernel, code: str) -> None:
    r = await kernel.handle.execute(code)
    assert r.status == "ok", r
    assert r.result == "'done'"
    assert r.run_s > 10 * FAST.heartbeat_interval  # long enough for many heartbeats
    assert kernel.handle.stats.heartbeat_misses == 0
    assert not kernel.done.is_set()


@FORK_TOO
async def test_timeout_interrupts_and_keeps_state(kernel: RunningKernel) -> None:
    assert (await kernel.handle.execute("kept = 41")).status == "ok"
    r = await kernel.handle.execute("while True: pass", timeout=1.0)
    assert r.status == "timeout"
    assert r.code == "timeout"
    assert r.interrupted and not r.state_lost and not r.kernel_restarted
    assert r.error is not None and r.error.ename == "KeyboardInterrupt"
    r2 = await kernel.handle.execute("kept + 1")
    assert r2.result == "42"


@FORK_TOO
async def test_timeout_kills_kernel_that_ignores_sigint(kernel: RunningKernel) -> None:
    r = await kernel.handle.execute(
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", timeout=1.0
    )
    assert r.status == "timeout"
    assert r.interrupted and r.state_lost and r.kernel_restarted
    cause = await kernel.wait_exit()
    assert cause.kind == "failure"
    assert cause.signal == signal.SIGKILL


async def test_output_flood_is_bounded(nursery: trio.Nursery, runtime_dir: Path) -> None:
    limit = 64 * 1024
    rk = await start_kernel(nursery, runtime_dir, attrs.evolve(FAST, max_output_bytes=limit))
    me = psutil.Process()
    await rk.handle.execute("1")
    rss_before = me.memory_info().rss
    r = await rk.handle.execute("while True: print('x' * 1000)", timeout=4.0)
    rss_after = me.memory_info().rss
    assert r.status == "timeout" and r.interrupted, (r.status, r.cause, r.message)
    assert r.truncated_bytes > 10 * limit
    assert "[kernelsup: output truncated" in r.stdout
    assert len(r.stdout.encode()) <= limit + 200
    assert r.stdout.startswith("x" * 1000)
    # Far more went through than was kept; the supervisor's memory did not follow it.
    assert rss_after - rss_before < 16 * 2**20, (rss_before, rss_after, r.truncated_bytes)
    rk.handle.kill("done")


async def test_input_fails_fast(kernel: RunningKernel) -> None:
    with trio.fail_after(10):
        r = await kernel.handle.execute("input('name? ')")
    assert r.status == "error"
    assert r.error is not None and "Stdin" in r.error.ename


def _children_of_kernel(kernel_pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(kernel_pid).children(recursive=True)]


@pytest.mark.parametrize("how", ["shutdown", "kill"])
@FORK_TOO
async def test_background_children_are_reaped(kernel: RunningKernel, how: str) -> None:
    r = await kernel.handle.execute(
        "import subprocess; p = subprocess.Popen(['sleep', '1000']); p.pid"
    )
    assert r.status == "ok"
    child = int(r.result or "0")
    pid = kernel.handle.pid
    assert pid is not None
    assert child in _children_of_kernel(pid)
    if how == "shutdown":
        kernel.handle.shutdown()
        cause = await kernel.wait_exit()
        assert cause.kind == "normal"
    else:
        os.kill(pid, signal.SIGKILL)
        await kernel.wait_exit()
    assert await _descendants_alive([pid, child]) == []


@FORK_TOO
async def test_graceful_shutdown_is_normal(kernel: RunningKernel) -> None:
    kernel.handle.shutdown()
    cause = await kernel.wait_exit()
    assert cause.kind == "normal"
    assert cause.signal is None  # it left on the shutdown_request, no signal was needed


@pytest.mark.parametrize("end", ["sigkill", "shutdown", "ignored_interrupt"])
async def test_an_ended_actor_is_freed_at_once(runtime_dir: Path, end: str) -> None:
    """A kernel's actor (its sockets, buffers, message history) is freed by reference
    counting when its handle is dropped, not at some later full garbage collection: a
    supervisor restarting kernels all day would otherwise carry dead kernels around."""
    gc.collect()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            rk = await start_kernel(nursery, runtime_dir)
            assert (await rk.handle.execute("x = 1")).status == "ok"
            actor = weakref.ref(rk.handle._actor)
            if end == "sigkill":
                assert rk.handle.pid is not None
                os.kill(rk.handle.pid, signal.SIGKILL)
            elif end == "shutdown":
                rk.handle.shutdown()
            else:
                r = await rk.handle.execute(
                    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
                    timeout=0.5,
                )
                assert r.status == "timeout" and r.kernel_restarted
                del r
            await rk.wait_exit()
            assert actor() is not None  # the handle still holds it
        del rk
        assert actor() is None
    finally:
        gc.enable()


# ----------------------------------------------------------------------- fake kernels


async def test_never_ready_is_start_timeout(fake_kernels: Path, runtime_dir: Path) -> None:
    name = install_kernelspec(fake_kernels, "never_ready")
    opts = attrs.evolve(FAST, kernel_name=name, start_timeout=1.5)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            with pytest.raises(KernelStartError) as info:
                await n.start(run_kernel, "k0", opts, runtime_dir)
    assert info.value.code == "start_timeout"
    assert info.value.data["cause"].kind == "start_timeout"


async def test_exit_at_once_is_start_failure(fake_kernels: Path, runtime_dir: Path) -> None:
    name = install_kernelspec(fake_kernels, "exit_at_once", extra_args=["--exit-code", "7"])
    opts = attrs.evolve(FAST, kernel_name=name)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            with pytest.raises(KernelStartError) as info:
                await n.start(run_kernel, "k0", opts, runtime_dir)
    err = info.value
    assert err.code == "start_failure"
    assert err.data["cause"].code == 7
    assert "exiting at once on purpose" in err.data["output_tail"]
    assert "exit(7)" in str(err)


async def test_unknown_kernelspec_is_start_failure(runtime_dir: Path) -> None:
    opts = attrs.evolve(FAST, kernel_name="no-such-kernel-xyz")
    async with trio.open_nursery() as n:
        with pytest.raises(KernelStartError) as info:
            await n.start(run_kernel, "k0", opts, runtime_dir)
    assert info.value.code == "start_failure"
    assert "no-such-kernel-xyz" in str(info.value)


async def test_ignore_sigterm_is_killed(
    nursery: trio.Nursery, fake_kernels: Path, runtime_dir: Path
) -> None:
    name = install_kernelspec(fake_kernels, "ignore_sigterm")
    opts = attrs.evolve(FAST, kernel_name=name, shutdown_grace=0.5, term_timeout=0.5)
    rk = await start_kernel(nursery, runtime_dir, opts)
    pid = rk.handle.pid
    assert pid is not None
    rk.handle.shutdown()
    cause = await rk.wait_exit()
    assert cause.kind == "normal"  # we asked it to stop...
    assert cause.signal == signal.SIGKILL  # ...and only SIGKILL did it
    assert await _descendants_alive([pid]) == []


async def test_bad_iopub_frames_are_counted(
    nursery: trio.Nursery, fake_kernels: Path, runtime_dir: Path
) -> None:
    name = install_kernelspec(fake_kernels, "bad_iopub", extra_args=["--count", "25"])
    rk = await start_kernel(nursery, runtime_dir, attrs.evolve(FAST, kernel_name=name))
    before = rk.handle.stats.iopub_dropped  # the silent warm-up execute got junk too
    r = await rk.handle.execute("hello")
    assert r.status == "ok"
    assert r.stdout == "fake:hello"
    assert "BAD-SIGNATURE" not in r.stdout
    assert rk.handle.stats.iopub_dropped - before == 50
    r2 = await rk.handle.execute("again")
    assert r2.stdout == "fake:again"
    assert rk.handle.stats.iopub_dropped - before == 100
    rk.handle.kill("done")


async def test_missing_idle_is_bounded(
    nursery: trio.Nursery, fake_kernels: Path, runtime_dir: Path
) -> None:
    name = install_kernelspec(fake_kernels, "slow_idle")
    rk = await start_kernel(nursery, runtime_dir, attrs.evolve(FAST, kernel_name=name))
    before = rk.handle.stats.idle_missing  # the warm-up execute missed its idle too
    with trio.fail_after(15):
        r = await rk.handle.execute("x")
    assert r.status == "ok" and r.stdout == "fake:x"
    assert [o.name for o in r.outputs if o.type == "notice"] == ["output_incomplete"]
    assert rk.handle.stats.idle_missing - before == 1
    rk.handle.kill("done")


async def test_no_heartbeat_fake_is_heartbeat(
    nursery: trio.Nursery, fake_kernels: Path, runtime_dir: Path
) -> None:
    name = install_kernelspec(fake_kernels, "no_heartbeat")
    rk = await start_kernel(nursery, runtime_dir, attrs.evolve(FAST, kernel_name=name))
    cause = await rk.wait_exit()
    assert cause.kind == "heartbeat"


@FORK_TOO
async def test_cancelled_caller_interrupts(kernel: RunningKernel) -> None:
    with trio.move_on_after(1.0):
        await kernel.handle.execute("while True: pass")
    with trio.fail_after(10):
        r = await kernel.handle.execute("'free again'")
    assert r.result == "'free again'"
    assert not kernel.done.is_set()


async def test_startup_code_runs_before_ready(nursery: trio.Nursery, runtime_dir: Path) -> None:
    opts = attrs.evolve(FAST, startup_code="ready_marker = 'set by startup'")
    rk = await start_kernel(nursery, runtime_dir, opts)
    r = await rk.handle.execute("ready_marker")
    assert r.result == "'set by startup'"
    rk.handle.kill("done")


async def test_failing_startup_code_is_start_failure(runtime_dir: Path) -> None:
    opts = attrs.evolve(FAST, startup_code="import os; os._exit(3)")
    async with trio.open_nursery() as n:
        with pytest.raises(KernelStartError) as info:
            await n.start(run_kernel, "k0", opts, runtime_dir)
    assert info.value.code == "start_failure"
    assert info.value.data["cause"].code == 3


@FORK_TOO
async def test_files_are_private_and_removed(kernel: RunningKernel, runtime_dir: Path) -> None:
    assert oct(runtime_dir.stat().st_mode & 0o777) == oct(0o700)
    files = list(runtime_dir.iterdir())
    conn = [f for f in files if f.suffix == ".json"]
    assert len(conn) == 1
    assert oct(conn[0].stat().st_mode & 0o777) == oct(0o600)
    kernel.handle.shutdown()
    await kernel.wait_exit()
    assert list(runtime_dir.iterdir()) == []


def test_options_defaults_match_contract() -> None:
    opts = KernelOptions()
    assert opts.kernel_name == "python3" and opts.transport == "ipc"
    assert opts.heartbeat_interval == 1.0 and opts.heartbeat_misses == 3


async def test_lost_iopub_messages_are_reported(nursery: trio.Nursery, runtime_dir: Path) -> None:
    # The supervisor stalls (its event loop blocked for a moment) while a kernel floods,
    # with a receive queue of 4 messages: zmq drops silently, kernelsup notices the gap in
    # the kernel's message numbers and says how many were lost.
    rk = await start_kernel(nursery, runtime_dir, attrs.evolve(FAST, iopub_rcvhwm=4))
    code = "for i in range(40_000): print(i, flush=True)"
    results: list[ExecuteResult] = []

    async def run() -> None:
        results.append(await rk.handle.execute(code))

    async with trio.open_nursery() as n:
        n.start_soon(run)
        while rk.handle.state != "busy":
            await trio.sleep(0.01)
        time.sleep(2.0)  # noqa: ASYNC251 - the fault: a stalled supervisor loop, not a wait
    r = results[0]
    assert r.status == "ok"
    lines = r.stdout.count("\n")
    assert lines < 40_000
    lost = [o.text or "" for o in r.outputs if o.type == "notice" and o.name == "output_lost"]
    assert len(lost) == 1
    n_lost = int(lost[0].split()[1])
    assert n_lost >= 1 and rk.handle.stats.iopub_lost == n_lost
    rk.handle.kill("done")
