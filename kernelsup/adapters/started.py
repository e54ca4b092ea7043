"""The seam between the tree and how a kernel process comes to exist.

The kernel actor (tree/kernel.py) never starts a process itself: it asks a
:class:`Launcher` to start one from a :class:`~kernelsup.adapters.launch.LaunchPlan`
(connection file written, sockets named) inside a containment
:class:`~kernelsup.adapters.containment.Unit`, and holds the :class:`StartedKernel` it
gets back. Everything the actor does to the process after that (watch its exit, signal
its group, kill and reap it with its unit, keep its output's tail, remove its files) goes
through this one small interface.

Implementations:

* ``exec``: :data:`EXEC` here, the kernelspec's argv started on the spawner thread
  (``launch.spawn``, ``launch.KernelProcess``);
* ``fork``: ``adapters/forkserver.py``, a child forked by the pool's zygote, which has
  imported ipykernel already (falls back to ``exec`` whenever the zygote is not healthy
  or the kernel is not one it can fork).

A new way to start kernels (another host, a container) implements :class:`Launcher`
and :class:`StartedKernel` and is handed to the pool; the tree does not change.
"""

from __future__ import annotations

from typing import Protocol

import trio

from kernelsup.adapters.containment import Unit
from kernelsup.adapters.launch import LaunchPlan, spawn


class StartedKernel(Protocol):
    """A started kernel process, as the kernel actor holds it."""

    pid: int
    plan: LaunchPlan
    unit: Unit
    returncode: int | None  # None until it exited and was reaped
    launch: str  # how it was started: "exec", "fork", ... (shown in status)

    async def wait(self) -> int:
        """Wait (cancellably) for the kernel to exit; kill what is left of its process
        group, reap it, return its status (negative: the signal that ended it)."""
        ...

    async def kill_and_reap(self) -> int:
        """SIGKILL the kernel's whole containment unit and reap the leader. Bounded."""
        ...

    def signal_group(self, sig: int) -> None:
        """Signal the kernel's whole process group; a group that is gone is fine."""
        ...

    async def drain_output(self, stream: trio.abc.ReceiveStream) -> None:
        """Read the kernel's stdout/stderr (the stream its launcher returned) until EOF,
        keeping only a bounded tail."""
        ...

    def output_tail(self, limit: int = 2000) -> str:
        """The end of what the kernel wrote, for error messages."""
        ...

    def cleanup_files(self) -> None:
        """Remove the connection file, IPC socket files and the unit, once it is gone."""
        ...


class Launcher(Protocol):
    """Starts kernel processes for one pool."""

    async def start(
        self, plan: LaunchPlan, unit: Unit
    ) -> tuple[StartedKernel, trio.abc.ReceiveStream]:
        """Start the kernel described by ``plan`` inside ``unit``; return it and the
        stream of its stdout/stderr. Raises ``KernelStartError`` (or a kernelsup
        ``OSError`` mapping) when it cannot; never leaves a process behind when it
        raises, even if cancelled."""
        ...


class ExecLauncher:
    """The kernelspec's argv, exec'ed (``launch.spawn``): every kind of kernel."""

    async def start(
        self, plan: LaunchPlan, unit: Unit
    ) -> tuple[StartedKernel, trio.abc.ReceiveStream]:
        return await spawn(plan, unit)


EXEC: Launcher = ExecLauncher()

__all__ = ["EXEC", "ExecLauncher", "Launcher", "StartedKernel"]
