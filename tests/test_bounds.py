"""Everything a kernel returns is bounded by the request's ``max_output_bytes``.

Real ipykernel processes send what a program can make them send: a value's text of
100-300 MB, a huge exception, a huge display, one oversized stream message, raw invalid
UTF-8 on its file descriptor. Each result stays within its budget and says what was cut
or dropped; the supervisor's memory comes back to where it was (a memory bound, measured
with psutil, not a speed assertion).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import psutil
import pytest
import trio

from kernelsup.control.sync_client import SyncClient
from kernelsup.core.results import ExecuteResult
from tests.helpers import FAST, RunningKernel, start_kernel
from tests.supervisor_process import SupervisorProcess, private_tmp, supervisor

BUDGET = 64 * 1024
MB = 1_000_000


def reply_size(r: ExecuteResult) -> int:
    """What the result weighs on the wire: its JSON."""
    return len(json.dumps(r.to_dict(), ensure_ascii=False).encode())


def notices(r: ExecuteResult, name: str) -> list[str]:
    return [o.text or "" for o in r.outputs if o.type == "notice" and o.name == name]


def within_budget(r: ExecuteResult) -> None:
    # stdout, stderr and result repeat what is in outputs: three times the budget at most,
    # plus the notices and the JSON's own keys.
    assert reply_size(r) <= 3 * BUDGET + 16 * 1024, reply_size(r)


@pytest.fixture
async def small(nursery: trio.Nursery, runtime_dir: Path) -> AsyncIterator[RunningKernel]:
    """A real kernel whose requests keep at most BUDGET bytes of output."""
    rk = await start_kernel(nursery, runtime_dir, attrs.evolve(FAST, max_output_bytes=BUDGET))
    yield rk
    rk.handle.kill("test finished")
    with trio.move_on_after(10):
        await rk.done.wait()


async def still_works(rk: RunningKernel) -> None:
    r = await rk.handle.execute("print('alive'); 6 * 7")
    assert (r.status, r.stdout, r.result, r.truncated_bytes) == ("ok", "alive\n", "42", 0), r


async def test_a_100mb_value_is_dropped_with_a_notice(small: RunningKernel) -> None:
    r = await small.handle.execute("'y' * 100_000_000", timeout=120)
    assert r.status == "ok", r.message
    within_budget(r)
    assert r.result is None  # the value's text did not fit: it is not there at all
    assert r.truncated_bytes >= 100 * MB
    (dropped,) = notices(r, "oversized")
    assert "execute_result" in dropped and f"{r.truncated_bytes:,}" in dropped, dropped
    assert r.execution_count is not None
    await still_works(small)


async def test_a_value_a_little_over_the_budget_keeps_its_head_and_tail(
    small: RunningKernel,
) -> None:
    r = await small.handle.execute("'<' + 'v' * 100_000 + '>'")
    assert r.status == "ok"
    within_budget(r)
    assert r.result is not None and r.result.startswith("'<vvv") and r.result.endswith("vvv>'")
    assert "bytes cut" in r.result
    assert len(r.result.encode()) <= BUDGET // 2 + 200
    assert 100_003 - BUDGET // 2 <= r.truncated_bytes <= 100_003


async def test_a_huge_exception_is_bounded_and_keeps_its_name(small: RunningKernel) -> None:
    r = await small.handle.execute("raise ValueError('e' * 30_000_000)", timeout=120)
    assert r.status == "error" and r.code == "execution_error"
    within_budget(r)
    assert r.error is not None and r.error.ename == "ValueError", r.error
    assert r.truncated_bytes >= 30 * MB
    assert notices(r, "oversized")
    await still_works(small)


async def test_an_exception_over_the_budget_is_cut_not_dropped(small: RunningKernel) -> None:
    r = await small.handle.execute("raise KeyError('k' * 50_000)")
    assert r.status == "error"
    within_budget(r)
    assert r.error is not None and r.error.ename == "KeyError"
    assert r.error.evalue.startswith("'kkk") and "bytes cut" in r.error.evalue
    assert "KeyError: 'kkk" in "\n".join(r.error.traceback)
    assert r.truncated_bytes > 0


async def test_a_huge_display_is_bounded(small: RunningKernel) -> None:
    code = (
        "from IPython.display import display\n"
        "display({'text/plain': 'd' * 40_000_000, 'text/html': '<p>' * 1000}, raw=True)\n"
        "display({'text/plain': 'small'}, raw=True)\n"
    )
    r = await small.handle.execute(code, timeout=120)
    assert r.status == "ok"
    within_budget(r)
    assert r.truncated_bytes >= 40 * MB
    (dropped,) = notices(r, "oversized")
    assert "display_data" in dropped
    shown = [o.data for o in r.outputs if o.type == "display_data"]
    assert shown == [{"text/plain": "small"}]


async def test_a_display_over_the_budget_keeps_its_text(small: RunningKernel) -> None:
    code = (
        "from IPython.display import display\n"
        "display({'text/plain': 'p' * 100_000, 'text/html': 'h' * 1000}, raw=True)\n"
    )
    r = await small.handle.execute(code)
    within_budget(r)
    (shown,) = [o.data for o in r.outputs if o.type == "display_data"]
    assert shown is not None and list(shown) == ["text/plain"]
    assert shown["text/plain"].startswith("ppp") and "bytes cut" in shown["text/plain"]
    assert r.truncated_bytes >= 100_000 - BUDGET // 2 + 1000


async def test_one_oversized_stream_message_keeps_its_head_and_tail(
    small: RunningKernel,
) -> None:
    # 50 MB in one stream message: never decoded whole, but its text's head and tail are
    # read from the raw message, as if it had been printed in pieces.
    code = "print('<' + 's' * 50_000_000 + '>', flush=True); print('after')"
    r = await small.handle.execute(code, timeout=120)
    assert r.status == "ok"
    within_budget(r)
    assert r.stdout.startswith("<sss") and r.stdout.endswith("sss>\nafter\n"), r.stdout[-100:]
    assert "[kernelsup: output truncated" in r.stdout
    assert 50 * MB + 2 - BUDGET <= r.truncated_bytes <= 50 * MB + 2, r.truncated_bytes
    assert len(r.stdout.encode()) <= BUDGET + 200
    assert not notices(r, "oversized")


async def test_a_reply_over_the_cap_is_dropped_and_the_shell_reopened(
    small: RunningKernel,
) -> None:
    # A payload (here set_next_input's text) travels in the execute_reply on the shell
    # channel: over the cap, zmq drops it and the connection; the request still ends (its
    # idle came on iopub) and says so, and the shell is reopened for the next request.
    code = "get_ipython().set_next_input('z' * 200_000_000); print('ran')"
    r = await small.handle.execute(code, timeout=120)
    assert (r.status, r.stdout) == ("ok", "ran\n"), r
    (dropped,) = notices(r, "message_dropped")
    assert "on shell" in dropped, dropped
    await still_works(small)


async def test_invalid_utf8_counts_the_bytes_the_program_wrote(
    nursery: trio.Nursery, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ipykernel decodes what reaches its stdout fd with errors="replace": each invalid
    # byte arrives as U+FFFD (3 bytes of UTF-8). The count is of the bytes written.
    # (ipykernel does not watch its fds when it sees PYTEST_CURRENT_TEST in its environment.)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    rk = await start_kernel(nursery, runtime_dir, attrs.evolve(FAST, max_output_bytes=BUDGET))
    n = 20 * MB
    r = await rk.handle.execute(f"import os; os.write(1, b'\\xff' * {n})", timeout=120)
    rk.handle.kill("test finished")
    assert r.status == "ok"
    within_budget(r)
    # ipykernel batches what its fd watcher reads: small messages are kept (head and tail),
    # big ones are dropped whole; either way the count is of the bytes written.
    assert "\ufffd" in r.stdout or notices(r, "oversized")
    # ipykernel's fd watcher may still hold up to a pipe's worth (64 KiB) at the end; a
    # message dropped whole counts its JSON too (about 30 bytes).
    envelopes = 100 * len(notices(r, "oversized"))
    assert n - BUDGET - 70_000 <= r.truncated_bytes <= n + envelopes, r.truncated_bytes


# --- the supervisor's memory after a 300 MB value, through `kernelsup run` ---------------


@pytest.fixture(scope="module")
def sup() -> Iterator[SupervisorProcess]:
    directory = private_tmp()
    try:
        yield from supervisor(directory, size=1, spares=0)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def peak_rss(pid: int) -> int:
    """The process's peak resident memory since the last reset_peak (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := the RSS now


def test_supervisor_memory_returns_after_a_100mb_value(sup: SupervisorProcess) -> None:
    # Before: the value came back whole and the supervisor stayed 100 MB bigger. Now the
    # message is received (libzmq's buffer and pyzmq's copy: a transient peak of twice its
    # size), never decoded, and freed at once.
    with SyncClient(sup.config) as client:
        for _ in range(3):  # warm: imports, first results, buffers reach their size
            assert client.execute("'w' * 2_000_000").status == "ok"
        before = rss(sup.pid)
        r = client.execute("'y' * 100_000_000", timeout=300)
        after = rss(sup.pid)
        assert r.status == "ok", r.message
        assert reply_size(r) < 4 * 2**20  # the default budget is 1 MiB
        assert r.truncated_bytes >= 100 * MB
        assert after <= before * 1.10, (before, after)
        assert client.execute("1 + 1").result == "2"


def test_a_message_over_the_cap_never_reaches_the_supervisors_memory(
    sup: SupervisorProcess,
) -> None:
    """Over the cap (128 MiB at the default budget) zmq refuses the message as its size
    arrives: before, one print of 300 MB cost the supervisor 300 MB and more, however
    briefly (its peak is read from the kernel's count, not sampled). The request says what
    was dropped, and the kernel's next request has all its output (the connection zmq
    dropped was reopened)."""
    with SyncClient(sup.config) as client:
        for _ in range(3):
            assert client.execute("'w' * 2_000_000").status == "ok"
        before = rss(sup.pid)
        reset_peak(sup.pid)
        code = "import sys; print('before', flush=True); sys.stdout.write('y' * 300_000_000)"
        r = client.execute(code + "; sys.stdout.flush()", timeout=300)
        peak = peak_rss(sup.pid)
        assert peak - before < 64 * 2**20, (before, peak)
        assert r.status == "ok", r.message
        assert r.stdout.startswith("before\n"), r.stdout[:100]
        (dropped,) = notices(r, "message_dropped")
        assert "over 134217728 bytes on iopub" in dropped, dropped
        for _ in range(3):  # every later request has its output: nothing else is lost
            after = client.execute("print('next'); 6 * 7")
            assert (after.status, after.stdout, after.result) == ("ok", "next\n", "42"), after
            assert not [o for o in after.outputs if o.type == "notice"], after.outputs
