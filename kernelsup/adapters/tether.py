"""Nothing a kernel started may outlive the supervisor, however the supervisor ends.

Theory of operation
-------------------
Every kernel is launched with ``KERNELSUP_TETHER=<runtime dir>`` in its environment, and
every process it starts inherits it: ``!pip install``, a ``subprocess.Popen(["sleep",
"1000"])``, a double-forked daemon that left the kernel's process group and session. The
process table is therefore the manifest: :func:`sweep` SIGKILLs every process that carries
this supervisor's marker.

Three layers use it:

* a kernel's own exit: its process group is killed by the actor (launch.py);
* the supervisor's exit, however it happens: a small *reaper* process (``python -m
  kernelsup.adapters.tether DIR``), started in its own session, holds the read end of a
  pipe whose write end only the supervisor holds. When the supervisor dies (SIGKILL
  included) the pipe reaches EOF and the reaper sweeps. Kernels themselves also die at
  once through ``PR_SET_PDEATHSIG``;
* the next start with the same runtime directory sweeps again, in case even the reaper was
  killed. A lock file makes sure two supervisors never share (and sweep) one directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import trio

from kernelsup.adapters.containment import sweep_groups
from kernelsup.adapters.runtime import ipc_dir_for, user_dirs
from kernelsup.core.errors import RuntimeDirBusy

__all__ = ["TETHER_ENV", "RuntimeDirBusy", "Tether", "marker", "sweep", "tethered_pids"]

TETHER_ENV = "KERNELSUP_TETHER"


def marker(runtime_dir: Path) -> bytes:
    return f"{TETHER_ENV}={runtime_dir}".encode()


def tethered_pids(runtime_dir: Path) -> list[int]:
    """Pids of live processes carrying this runtime directory's marker."""
    needle = marker(runtime_dir)
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep(runtime_dir: Path) -> list[int]:
    """SIGKILL every process tethered to ``runtime_dir``; returns their pids."""
    killed = []
    for pid in tethered_pids(runtime_dir):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


class Tether:
    """Owns the runtime directory for one supervisor: the lock, the reaper, the sweeps."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self._lock_fd: int | None = None
        self._reaper: subprocess.Popen[bytes] | None = None

    def acquire(self) -> None:
        """Take the directory's lock, sweep what a previous supervisor left, start the
        reaper. Raises :class:`RuntimeDirBusy` if another supervisor holds the lock."""
        fd = os.open(self.runtime_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeDirBusy(
                f"another supervisor (pid {holder}) is running with runtime directory "
                f"{self.runtime_dir}; stop it or use another config file",
                runtime_dir=str(self.runtime_dir),
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        sweep(self.runtime_dir)  # what a supervisor killed before us left running
        sweep_groups(self.runtime_dir)
        remove_ipc_dir(self.runtime_dir)  # stale sockets of a previous supervisor's kernels
        read_end, write_end = os.pipe()
        try:
            self._reaper = subprocess.Popen(
                [sys.executable, "-m", "kernelsup.adapters.tether", str(self.runtime_dir)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(read_end)
        os.set_inheritable(write_end, False)
        self._pipe = write_end

    async def release(self) -> None:
        """Clean stop: let the reaper do a last sweep, wait for it, drop the lock."""
        if self._reaper is not None:
            os.close(self._pipe)
            reaper = self._reaper
            self._reaper = None
            with trio.move_on_after(10):
                await trio.to_thread.run_sync(reaper.wait)
            if reaper.returncode is None:
                reaper.kill()
                await trio.to_thread.run_sync(reaper.wait)
        # The reaper swept already; what it could not remove yet (a cgroup whose last
        # member was still leaving), and the IPC directories, go now.
        sweep_groups(self.runtime_dir)
        remove_ipc_dir(self.runtime_dir)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _reaper_main(runtime_dir: str) -> None:
    """Block until the supervisor's end of the pipe closes, then sweep."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while os.read(0, 4096):
        pass
    # Kernels and what they started: repeat briefly, a dying kernel may still fork.
    for _ in range(3):
        if not sweep(Path(runtime_dir)):
            break
    sweep_groups(Path(runtime_dir))  # and whatever left the marker behind, by cgroup
    remove_ipc_dir(Path(runtime_dir))


def remove_ipc_dir(runtime_dir: Path) -> None:
    """Remove the short IPC socket directory of ``runtime_dir`` (if it has one of its own)
    and the directories of its pools that run as another user, once its kernels are gone;
    what is left in them are stale socket and connection files. (``rmtree`` does not follow
    symlinks a kernel may have left there.)"""
    ipc_dir = ipc_dir_for(runtime_dir)
    if ipc_dir != runtime_dir:
        shutil.rmtree(ipc_dir, ignore_errors=True)
    for path in user_dirs(runtime_dir):
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    _reaper_main(sys.argv[1])
