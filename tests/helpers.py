"""What several test modules share: fast kernel settings, starting a kernel actor, waiting on
a supervisor, a kernel that leaves processes behind, and the no-leftover-process check.

Fixtures stay in conftest.py; everything a test imports by name lives here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import psutil
import trio

from kernelsup.adapters.containment import leftover_groups
from kernelsup.adapters.forkserver import ForkServer
from kernelsup.adapters.runtime import ipc_dir_for, user_dirs
from kernelsup.adapters.started import EXEC, Launcher
from kernelsup.api import Supervisor
from kernelsup.core.results import ExitCause
from kernelsup.tree.kernel import run_kernel
from kernelsup.tree.kernel_handle import KernelHandle, KernelOptions

# Fast failure detection for tests; real timing is measured in bench/, not here.
FAST = KernelOptions(
    heartbeat_interval=0.2,
    heartbeat_misses=3,
    start_timeout=30.0,
    interrupt_grace=3.0,
    shutdown_grace=2.0,
    term_timeout=1.0,
)

FAST_POOL: dict[str, Any] = {
    "heartbeat": {"interval": 0.2, "misses": 3},
    "shutdown": {"grace": 1.0, "term_timeout": 1.0},
    "interrupt_grace": 2.0,
    "restart": {"min_delay": 0.0, "max_delay": 0.5, "max_retries": -1},
}


# The ways a kernel process comes to exist (adapters/started.py): tests of launch, death,
# kill and containment run over each.
LAUNCHES = ["exec", "fork"]


async def launcher_for(
    nursery: trio.Nursery, launch: str, preload: tuple[str, ...] = ()
) -> Launcher:
    """``exec``, or a fork server running in ``nursery`` (its zygote goes with it)."""
    if launch == "exec":
        return EXEC
    server = ForkServer(preload)
    nursery.start_soon(server.run)
    return server


def launched_by(rk: RunningKernel) -> str:
    """How the kernel's process was started: ``exec`` or ``fork``."""
    proc = rk.handle._actor.proc
    assert proc is not None
    return proc.launch


@attrs.define
class RunningKernel:
    """A kernel actor started in the test's nursery, with its exit cause once it ends."""

    handle: KernelHandle
    done: trio.Event
    cause: ExitCause | None = None

    async def wait_exit(self, timeout: float = 30.0) -> ExitCause:
        with trio.fail_after(timeout):
            await self.done.wait()
        assert self.cause is not None
        return self.cause


async def start_kernel(
    nursery: trio.Nursery,
    runtime_dir: Path,
    options: KernelOptions = FAST,
    kernel_id: str = "k0",
    launcher: Launcher = EXEC,
) -> RunningKernel:
    done = trio.Event()
    box: dict[str, Any] = {}

    async def runner(task_status: trio.TaskStatus[KernelHandle]) -> None:
        try:
            box["cause"] = await run_kernel(
                kernel_id, options, runtime_dir, launcher=launcher, task_status=task_status
            )
        finally:
            done.set()
            if "rk" in box:
                box["rk"].cause = box.get("cause")

    handle = await nursery.start(runner)
    rk = RunningKernel(handle, done)
    box["rk"] = rk
    return rk


async def wait_until(sup: Supervisor, predicate: Callable[[], bool], timeout: float = 60) -> None:
    pool = next(iter(sup.pools.values()))
    with trio.fail_after(timeout):
        while not predicate():
            await pool.wait_changed()


def kernels(sup: Supervisor) -> list[dict[str, Any]]:
    return list(sup.status_now().kernels)


# A kernel's code that leaves two things behind: a plain child, and a double-forked daemon
# in a session of its own (so not in the kernel's process group). Returns both pids.
LEAVE_BEHIND = textwrap.dedent("""
    import os, subprocess
    child = subprocess.Popen(["sleep", "1000"]).pid
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode()); os.close(w)
            os.execvp("sleep", ["sleep", "1001"])
        os._exit(0)
    os.close(w)
    daemon = int(os.read(r, 32)); os.close(r)
    os.waitpid(-1, 0)
    print(child, daemon)
""")


def install_bash_kernelspec(prefix: Path) -> Path:
    """bash_kernel's kernelspec, installed by its own installer into ``prefix`` (pip
    installs the package; the kernelspec is a separate step, as its README says); returns
    the JUPYTER_PATH entry that finds it."""
    subprocess.run(
        [sys.executable, "-m", "bash_kernel.install", "--prefix", str(prefix)],
        check=True,
        capture_output=True,
    )
    return prefix / "share" / "jupyter"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_all_gone(pids: list[int], within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def processes_mentioning(path: Path) -> list[psutil.Process]:
    """Live processes whose command line mentions ``path`` (kernels, workers, supervisors)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(path) in " ".join(
                proc.info["cmdline"] or []
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _leftovers(path: Path) -> list[str]:
    return [f"{p.pid}: {' '.join(p.info['cmdline'] or [])}" for p in processes_mentioning(path)]


def leftovers_of(runtime_dir: Path) -> list[str]:
    """What a supervisor (or a kernel actor) with this runtime directory left on the
    machine besides processes: its cgroups, its own short IPC directory, the directories
    of its pools that run as another user."""
    left = [str(p) for p in leftover_groups(runtime_dir)]
    ipc = ipc_dir_for(runtime_dir)
    if ipc != runtime_dir and os.path.lexists(ipc):
        left.append(str(ipc))
    return left + [d for d in user_dirs(runtime_dir) if os.path.lexists(d)]


def _everything_left(path: Path, runtime_dirs: tuple[Path, ...]) -> list[str]:
    found = [lock.parent for lock in path.rglob("supervisor.lock")] if path.is_dir() else []
    return _leftovers(path) + [
        f"{rd}: {left}" for rd in {*runtime_dirs, *found} if (left := leftovers_of(rd))
    ]


def assert_nothing_left(path: Path, *runtime_dirs: Path) -> None:
    """No live process mentions ``path``, and no supervisor whose runtime directory is
    under ``path`` (or is one of ``runtime_dirs``) left a cgroup or an IPC directory
    (:func:`leftovers_of`); what is being reaped or removed a moment late gets 5 s."""
    deadline = time.monotonic() + 5
    while _everything_left(path, runtime_dirs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _everything_left(path, runtime_dirs), _everything_left(path, runtime_dirs)


# A kernel's code that starts two processes built to escape: one in a session of its own
# with a cleaned environment, and a double-forked setsid daemon that also drops its whole
# environment (so neither the kernel's process group nor the tether's marker finds them).
# Prints both pids.
ESCAPE = textwrap.dedent("""
    import os, subprocess
    a = subprocess.Popen(["sleep", "4242"], env={"PATH": os.environ["PATH"]},
                         start_new_session=True).pid
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode()); os.close(w)
            os.execve("/bin/sleep", ["sleep", "4243"], {})
        os._exit(0)
    os.close(w)
    b = int(os.read(r, 32)); os.close(r)
    os.waitpid(-1, 0)
    print(a, b)
""")


def sigkill_supervisor(script: str, runtime_dir: Path, expect: int) -> list[int]:
    """Run ``script`` (a supervisor in a subprocess that prints ``expect`` pids of
    processes it owns, then waits), SIGKILL it, and return those of the pids still alive
    after 10 s (having checked its reaper left nothing else: assert_nothing_left);
    everything is killed afterwards, whatever the outcome."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(runtime_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == expect and all(alive(p) for p in pids), pids
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        survivors = wait_all_gone(pids, within=10.0)
        assert_nothing_left(runtime_dir, runtime_dir)  # the reaper removed its cgroups
        return survivors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.stdout:
            proc.stdout.close()
