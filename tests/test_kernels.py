"""Kernels that are not ipykernel, installed from PyPI by the test extra, under supervision.

bash_kernel (bash, a Python program driving bash through pexpect), calysto_scheme (Scheme,
on metakernel) and xeus-python (the Jupyter protocol in C++, for Python): ok, error,
timeout, death and replacement, session state, over IPC and TCP (ipykernel beside them);
output limits and the memory limit on bash. Nothing here knows a language's syntax beyond
the snippets each scenario sends. The same from the command line: tests/test_kernels_cli.py.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import kernelsup
from kernelsup.adapters import containment
from kernelsup.api import Supervisor
from kernelsup.core.errors import KernelStartError, Rejected, SupervisorGaveUp
from kernelsup.tree.bus import EventBus
from kernelsup.tree.kernel import IPC_HINT
from tests.helpers import FAST, FAST_POOL, install_bash_kernelspec, start_kernel

# Launch to ready takes up to ~4 s for bash (it sources ~/.bashrc) on a loaded machine.
START_TIMEOUT = 60.0


@attrs.frozen
class Lang:
    """What each scenario sends to one kernel, in that kernel's language."""

    kernel: str
    hello: str  # prints "hello" on stdout
    raises: str  # an error in the code
    set_x: str  # x = 41
    get_x: str  # prints or returns 42
    loop: str  # runs until interrupted
    die: str  # kills the kernel process itself
    # False: the kernel exits when interrupted (xeus-python on SIGINT; README says so)
    survives_interrupt: bool = True


BASH = Lang(
    kernel="bash",
    hello="echo hello",
    raises="ls /no/such/dir-kernelsup",
    set_x="X=41",
    get_x="echo $((X + 1))",
    loop="sleep 30",
    die="kill -9 $PPID",  # bash's parent is the kernel process
)
SCHEME = Lang(
    kernel="calysto_scheme",
    hello='(display "hello")',
    raises="(car '())",
    set_x="(define x 41)",
    get_x="(+ x 1)",
    loop="(define (f) (f)) (f)",
    die='(import "os") (os._exit 3)',
)
XPYTHON = Lang(
    kernel="xpython",
    hello="print('hello')",
    raises="1 / 0",
    set_x="x = 41",
    get_x="x + 1",
    loop="import time; time.sleep(30)",
    die="import os; os._exit(3)",
    survives_interrupt=False,
)
IPYKERNEL = attrs.evolve(XPYTHON, kernel="python3", survives_interrupt=True)


@pytest.fixture(scope="module")
def kernelspecs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """bash_kernel's kernelspec, installed with its own installer into a private prefix
    (pip installs the package; the kernelspec is a separate step, as its README says).
    calysto_scheme and xeus-python ship theirs in the wheel."""
    yield install_bash_kernelspec(tmp_path_factory.mktemp("specs"))


@pytest.fixture
def jupyter_path(kernelspecs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "JUPYTER_PATH", f"{kernelspecs}{os.pathsep}{os.environ.get('JUPYTER_PATH', '')}"
    )


def pool(lang: Lang, transport: str, **extra: Any) -> kernelsup.Config:
    spec = {
        **FAST_POOL,
        "name": "p",
        "kernel": lang.kernel,
        "size": 1,
        "spares": 0,
        "transport": transport,
        "start_timeout": START_TIMEOUT,
        "interrupt_grace": 10.0,
        **extra,
    }
    return kernelsup.Config.from_dict({"supervisor": {"intensity": 100}, "pool": [spec]})


async def run(sup: Supervisor, code: str, **kw: Any) -> kernelsup.ExecuteResult:
    return await sup.execute(code, pool="p", **kw)


def output(r: kernelsup.ExecuteResult) -> str:
    return (r.stdout + (r.result or "")).strip()


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("lang", [IPYKERNEL, BASH, SCHEME, XPYTHON], ids=lambda lang: lang.kernel)
async def test_a_kernel_of_another_language_is_supervised(
    jupyter_path: None, runtime_dir: Path, lang: Lang, transport: str
) -> None:
    with trio.fail_after(240):
        async with kernelsup.open_supervisor(pool(lang, transport), runtime_dir=runtime_dir) as sup:
            # ok: it started without any Python warm-up, and answers
            r = await run(sup, lang.hello)
            assert (r.status, output(r)) == ("ok", "hello"), r

            # error in the code
            r = await run(sup, lang.raises)
            assert r.status == "error" and r.code == "execution_error", r

            # session state
            r = await run(sup, lang.set_x, session="s")
            assert r.status == "ok", r
            r = await run(sup, lang.get_x, session="s")
            assert (r.status, output(r)) == ("ok", "42"), r

            # timeout: interrupted, the kernel and its state survive
            r = await run(sup, lang.loop, session="s", timeout=1.0)
            if lang.survives_interrupt:
                assert (r.status, r.interrupted, r.kernel_restarted) == ("timeout", True, False), r
                r = await run(sup, lang.get_x, session="s")
                assert (r.status, output(r)) == ("ok", "42"), r
            else:  # the interrupt ended the kernel: said so, and the session goes on afresh
                assert r.status == "died", r
                r = await run(sup, lang.hello, session="s")
                assert (r.status, r.state_lost) == ("ok", True), r
                r = await run(sup, lang.set_x, session="s")
                assert r.status == "ok", r

            # death: the request says so, the session's next one runs on a fresh kernel
            r = await run(sup, lang.die, session="s")
            assert r.status == "died", r
            r = await run(sup, lang.hello, session="s")
            assert (r.status, r.state_lost) == ("ok", True), r
            marker, said = output(r).split("\n")  # the state-lost marker line comes first
            assert ("replaced" in marker, said) == (True, "hello"), r

            # the pool's own kernel was untouched by the session's death
            r = await run(sup, lang.hello)
            assert (r.status, output(r)) == ("ok", "hello"), r


async def test_xeus_python_over_ipc_from_a_long_runtime_dir(
    jupyter_path: None, runtime_dir: Path
) -> None:
    """A C++ implementation of the protocol copies its endpoint into a 32-byte buffer: over
    IPC it starts only when every endpoint fits (here the runtime dir is far too long for
    that, so its sockets go to a short private directory)."""
    deep = runtime_dir / ("d" * 60)
    with trio.fail_after(120):
        async with kernelsup.open_supervisor(pool(XPYTHON, "ipc"), runtime_dir=deep) as sup:
            r = await run(sup, XPYTHON.set_x, session="s")
            assert r.status == "ok", r
            r = await run(sup, XPYTHON.get_x, session="s")
            assert (r.status, r.result) == ("ok", "42"), r
            r = await run(sup, XPYTHON.raises)
            assert r.status == "error" and r.error is not None, r
            assert "ZeroDivisionError" in r.error.ename, r  # "<class 'ZeroDivisionError'>"


@pytest.mark.parametrize("lang", [IPYKERNEL, BASH], ids=lambda lang: lang.kernel)
async def test_an_interrupt_from_outside_marks_the_request_interrupted(
    jupyter_path: None, runtime_dir: Path, lang: Lang
) -> None:
    cfg = pool(lang, "ipc")
    with trio.fail_after(120):
        async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
            kernel_id = sup.status_now().kernels[0]["id"]
            async with trio.open_nursery() as nursery:
                got: list[kernelsup.ExecuteResult] = []

                async def running() -> None:
                    got.append(await run(sup, lang.loop))

                nursery.start_soon(running)
                while sup.status_now().kernels[0]["state"] != "busy":
                    await trio.sleep(0.01)  # nothing announces "busy" to a caller
                await sup.interrupt(kernel_id)
            (r,) = got
            assert (r.status, r.interrupted) == ("error", True), r
            if lang.kernel == "python3":
                assert r.error is not None and r.error.ename == "KeyboardInterrupt"
            r = await run(sup, lang.hello)  # the same kernel, still there
            assert (r.status, r.kernel_id, output(r)) == ("ok", kernel_id, "hello"), r


LINE = "abcdefghij" * 5


async def test_output_limits_hold_for_bash(jupyter_path: None, runtime_dir: Path) -> None:
    """max_output_bytes on a kernel that is not Python: the head and the tail are kept, the
    middle is cut and counted."""
    cfg = pool(BASH, "ipc", max_output_bytes=2048)
    with trio.fail_after(120):
        async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
            # 400 lines of 56 bytes (few enough messages that none is lost on the way)
            r = await run(sup, f"seq -f '%04g {LINE}' 1 400")
            assert r.status == "ok", r
            whole = 400 * (5 + len(LINE) + 1)
            assert r.truncated_bytes > whole - 2 * 2048, (r.truncated_bytes, whole)
            assert r.stdout.startswith(f"0001 {LINE}\n0002 {LINE}\n"), r.stdout[:200]
            assert r.stdout.endswith(f"0399 {LINE}\n0400 {LINE}\n"), r.stdout[-200:]
            assert "truncated" in r.stdout and len(r.stdout) < 2048 + 200  # + the marker


@pytest.mark.skipif(containment.available() != "cgroup", reason="no writable cgroups here")
async def test_the_memory_limit_holds_for_what_a_bash_kernel_runs(
    jupyter_path: None, runtime_dir: Path
) -> None:
    """A command of a bash kernel that wants 400 MB under memory_limit_mb = 200: the cgroup's
    OOM killer kills that command, not the kernel; the result says so in a memory_limit
    notice, and the session's state survives."""
    cfg = pool(BASH, "ipc", memory_limit_mb=200)
    hog = f'{sys.executable} -c "x = bytearray(400 * 2**20); import time; time.sleep(5)"'
    with trio.fail_after(120):
        async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
            assert (await run(sup, BASH.set_x, session="s")).status == "ok"
            r = await run(sup, f"{hog}; echo after $?", session="s")
            assert (r.status, r.kernel_restarted) == ("ok", False), r
            assert "after 137" in r.stdout, r  # 128 + SIGKILL
            (notice,) = [o for o in r.outputs if o.name == "memory_limit"]
            assert "OOM killer killed a process" in (notice.text or ""), notice
            assert "memory_limit_mb = 200" in (notice.text or ""), notice
            r = await run(sup, BASH.get_x, session="s")
            assert (r.status, output(r), r.state_lost) == ("ok", "42", False), r
            assert not any(o.name == "memory_limit" for o in r.outputs), r


# --- start failures tell the truth ------------------------------------------------------


async def test_failing_startup_code_is_the_reason_with_its_traceback(
    nursery: trio.Nursery, runtime_dir: Path
) -> None:
    options = attrs.evolve(FAST, startup_code="def setup():\n    return 1 / 0\nsetup()")
    with pytest.raises(KernelStartError) as info:
        await start_kernel(nursery, runtime_dir, options)
    message = info.value.message
    assert "startup_code failed: ZeroDivisionError: division by zero" in message
    assert "setup()" in message  # the traceback, not only the last line
    assert "IPKernelApp" not in message  # not the kernel's start-up banner
    assert IPC_HINT not in message  # it answered over IPC: the transport is not in question
    assert info.value.code == "start_failure"


async def test_a_kernel_that_exits_at_start_says_its_status_and_last_words(
    nursery: trio.Nursery, runtime_dir: Path, fake_kernels: Path
) -> None:
    spec_dir = fake_kernels / "kernels" / "quits"
    spec_dir.mkdir(parents=True)
    script = "import sys; sys.stderr.write('cannot find libfoo.so\\n'); sys.exit(3)"
    spec = {
        "argv": ["python3", "-c", script, "{connection_file}"],
        "display_name": "quits",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    options = attrs.evolve(FAST, kernel_name="quits")
    with pytest.raises(KernelStartError) as info:
        await start_kernel(nursery, runtime_dir, options)
    assert info.value.code == "start_failure"  # seen at its exit, not at start_timeout
    message = info.value.message
    assert "the kernel process ended: start_failure:exit(3)" in message
    assert "cannot find libfoo.so" in message


# A kernel that cannot use IPC, as xeus-python could not past 31 bytes: it dies at once
# over IPC with words that do not name the transport; over TCP it is ipykernel.
TCP_ONLY = """
import json, runpy, sys
path = sys.argv[1]
if json.load(open(path))["transport"] != "tcp":
    sys.exit("RuntimeError: Invalid argument")
sys.argv = ["ipykernel_launcher", "-f", path]
runpy.run_module("ipykernel_launcher", run_name="__main__")
"""


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
async def test_a_kernel_that_cannot_use_ipc_is_told_to_use_tcp(
    nursery: trio.Nursery, runtime_dir: Path, fake_kernels: Path, transport: str
) -> None:
    spec_dir = fake_kernels / "kernels" / "tcp-only"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": ["python3", "-c", TCP_ONLY, "{connection_file}"],
        "display_name": "tcp only",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    options = attrs.evolve(FAST, kernel_name="tcp-only", transport=transport)
    if transport == "tcp":
        rk = await start_kernel(nursery, runtime_dir, options)
        r = await rk.handle.execute("print('hello')")
        assert (r.status, r.stdout) == ("ok", "hello\n"), r
        rk.handle.kill("test")
        await rk.wait_exit()
        return
    with pytest.raises(KernelStartError) as info:
        await start_kernel(nursery, runtime_dir, options)
    message = info.value.message
    assert "RuntimeError: Invalid argument" in message  # its own words first
    assert message.endswith(IPC_HINT), message
    assert 'set transport = "tcp"' in message


# Exits 3 at once; a helper it started, outside its process group, says why a moment later.
LATE_WORDS = """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    os.close(w)  # out of the group now: the parent may go
    time.sleep(0.3)
    os.write(2, b"cannot find libfoo.so\\n")
    os._exit(0)
os.close(w)
os.read(r, 1)
os._exit(3)
"""


async def test_a_kernel_that_exits_at_start_is_heard_to_its_last_word(
    nursery: trio.Nursery, runtime_dir: Path, fake_kernels: Path
) -> None:
    """The kernel's exit can be seen before its output pipe is read to the end (on a loaded
    machine its last words were missing from the reason, one run in ten): the reason waits,
    bounded, for the pipe to end. Here the last words come through it after the exit."""
    spec_dir = fake_kernels / "kernels" / "late"
    spec_dir.mkdir(parents=True)
    spec = {"argv": ["python3", "-c", LATE_WORDS, "{connection_file}"], "language": "python"}
    spec["display_name"] = "late"
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.raises(KernelStartError) as info:
        await start_kernel(nursery, runtime_dir, attrs.evolve(FAST, kernel_name="late"))
    message = info.value.message
    assert "the kernel process ended: start_failure:exit(3)" in message
    assert "cannot find libfoo.so" in message, message


def failing_pool(**extra: Any) -> kernelsup.Config:
    spec = {
        **FAST_POOL,
        "name": "p",
        "size": 1,
        "spares": 0,
        "startup_code": "1 / 0",
        **extra,
    }
    return kernelsup.Config.from_dict({"supervisor": {"intensity": 1000}, "pool": [spec]})


async def test_a_pool_whose_kernels_cannot_start_refuses_at_once_with_the_reason(
    runtime_dir: Path,
) -> None:
    cfg = failing_pool(restart={"min_delay": 0.2, "max_delay": 0.5, "max_retries": -1})
    with trio.fail_after(120):
        async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
            events = sup.bus.subscribe(name="test")
            # the first request waits for the first start; when it fails, it is refused
            r = await run(sup, "1")
            assert (r.status, r.code) == ("rejected", "pool_unavailable"), r
            assert "ZeroDivisionError: division by zero" in r.message
            # later ones are refused at once, not after queue_timeout (300 s here)
            for _ in range(3):
                r = await run(sup, "1")
                assert (r.status, r.code) == ("rejected", "pool_unavailable"), r
                assert r.queued_s < sup.config.pools[0].queue_timeout
            (kernel,) = sup.status_now().kernels
            assert "ZeroDivisionError" in kernel["start_error"]
            assert sup.status_now().pools[0]["unavailable"]
            async for event in events:
                if event.kind == "kernel_start_failed":
                    assert "ZeroDivisionError" in event.data["message"]
                    break


async def test_a_kernel_that_can_never_start_ends_dead_across_pool_restarts(
    runtime_dir: Path,
) -> None:
    """max_retries counts across escalations: the pool's own intensity (2) trips before
    its kernel's max_retries (4) would, and the root restarts the pool; the kernel's
    failures keep counting, so it ends dead instead of starting forever."""
    cfg = failing_pool(
        intensity=2,
        restart={"min_delay": 0.01, "max_delay": 0.02, "jitter": "none", "max_retries": 4},
    )
    bus = EventBus()
    with trio.fail_after(120), pytest.raises(SupervisorGaveUp) as info:
        async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir, bus=bus):
            await trio.sleep_forever()  # ended by the root giving up: its only pool is dead
    message = info.value.message
    assert message.startswith("every pool is dead (its kernels gave up restarting): pool 'p':")
    assert "ZeroDivisionError: division by zero" in message
    kinds = [e.kind for e in bus.recent()]
    assert kinds.count("pool_restarted") >= 1  # the pool escalated and was restarted...
    assert kinds.count("gave_up") == 1  # ...and its kernel's failures went on counting
    stopping = [e for e in bus.recent() if e.kind == "supervisor_stopping"]
    assert [e.data["reason"] for e in stopping] == [message]


async def test_snapshots_of_another_language_are_refused_by_name(
    jupyter_path: None, runtime_dir: Path
) -> None:
    """A bash session under checkpoint = "after_execute": requests run, the first says
    once that its kernel has no snapshots; an explicit snapshot is checkpoint_unsupported."""
    cfg = pool(BASH, "ipc", checkpoint="after_execute")
    async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        first = await sup.execute("echo one", session="sh")
        assert first.ok and "one" in output(first)
        (notice,) = [o for o in first.outputs if o.name == "checkpoint_skipped"]
        assert "bash kernel" in (notice.text or "") and "Python" in (notice.text or "")
        second = await sup.execute("echo two", session="sh")
        assert second.ok and not any(o.name == "checkpoint_skipped" for o in second.outputs)
        with pytest.raises(Rejected) as info:
            await sup.snapshot("sh")
        assert info.value.code == "checkpoint_unsupported"
