"""Kernels cannot outlive a SIGKILLed supervisor, and are not killed by their tether early.

The supervisor here is a real separate process (a SIGKILL of the test process itself would
end the test run), driving one kernel actor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from kernelsup.adapters.containment import sweep_groups

SUPERVISOR = textwrap.dedent("""
    import sys, trio
    from pathlib import Path
    from kernelsup.tree.kernel import run_kernel
    from kernelsup.tree.kernel_handle import KernelOptions

    async def main():
        async with trio.open_nursery() as n:
            h = await n.start(run_kernel, "k0", KernelOptions(), Path(sys.argv[1]))
            print("pid", h.pid, flush=True)
            for line in sys.stdin:   # one request per line, answered on stdout
                r = await h.execute(line)
                print("result", r.status, r.result, flush=True)

    trio.run(main)
""")


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (kill -0 succeeds on a zombie)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.timeout(150)
def test_kernel_lives_a_minute_and_dies_with_a_sigkilled_supervisor(runtime_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(runtime_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    kernel_pid = 0
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.startswith("pid "), line
        kernel_pid = int(line.split()[1])
        # The trap this guards against: a tether tied to a worker thread that exits after
        # ~10 s idle would SIGKILL the kernel long before a minute has passed.
        time.sleep(61)
        assert _alive(kernel_pid)
        proc.stdin.write("6 * 7\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["result", "ok", "42"]

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_gone(kernel_pid, within=2.0), "kernel outlived its supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if kernel_pid and _alive(kernel_pid):
            os.killpg(kernel_pid, signal.SIGKILL)
        # This supervisor is a bare kernel actor, with no tether to sweep its kernel's
        # cgroup after a SIGKILL (api.open_supervisor's reaper does): remove it here.
        sweep_groups(runtime_dir)
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()
