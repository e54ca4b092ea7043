"""What callers of a kernel actor hold and send: its options, its handle, its requests.

``run_kernel`` (in ``kernel.py``) takes a :class:`KernelOptions` and hands back a
:class:`KernelHandle`; ``handle.execute`` sends the actor an :class:`ExecuteRequest`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from kernelsup.adapters.containment import Unit
from kernelsup.core.errors import Rejected
from kernelsup.core.outputs import message_limit
from kernelsup.core.results import ExecuteResult, ExitCause, Output
from kernelsup.core.slot import KernelState

if TYPE_CHECKING:
    from kernelsup.core.config import PoolConfig
    from kernelsup.tree.kernel import KernelActor

# Messages our iopub SUB may queue while the supervisor is busy elsewhere: twice zmq's
# default, so several kernels printing at once lose nothing in normal load, while memory
# stays bounded (a flood's messages are ~4 KB: ~8 MB queued at most; a queue of 20,000
# let a CI run's supervisor grow by 80 MB during a flood). Beyond it the kernel's PUB
# socket drops, and the request's result reports how many messages were lost.
IOPUB_RCVHWM = 2000

# The largest frame zmq takes from a kernel on any channel, whatever its request's budget
# (see message_cap): zmq assembles a whole message in memory before we see any of it, so
# without this one print of an 800 MB string cost the supervisor 800 MB. A kernel that
# sends a bigger frame is disconnected by zmq, and reconnected by the kernel actor about a
# second later (tree/kernel.py _reopen_dropped): that message, and whatever the kernel
# sent meanwhile, is lost, and the request says so (message_dropped, with output_lost or
# output_incomplete). Under the cap, a message too big for its request is still received
# (a transient peak of about twice its size), counted, and said with its size (``oversized``
# notices, core/wire.py). The floor keeps that for a 100 MB value at the default budget.
MESSAGE_CAP_FLOOR = 128 * 1024 * 1024

# The heartbeat only ever echoes our pings (a few bytes each), one at a time.
HEARTBEAT_MAXMSGSIZE = 4096
HEARTBEAT_RCVHWM = 16


def message_cap(max_output_bytes: int) -> int:
    """The largest frame taken from a kernel whose pool keeps ``max_output_bytes`` per
    request: four times the largest message ever decoded for it (core/outputs.py's
    ``message_limit``), and never under ``MESSAGE_CAP_FLOOR``; a message between the two
    is still counted and noticed as ``oversized``."""
    return max(MESSAGE_CAP_FLOOR, 4 * message_limit(max_output_bytes))


# Set by a job's task (tree/jobs.py) for the requests it makes: the largest kernel message
# decoded whole for them, so the job's spool gets its output whole (ExecuteRequest's
# ``message_bytes``). A context variable, so it follows the job's own task down through
# the supervisor, the pool and the session without a parameter at every level.
JOB_MESSAGE_BYTES: contextvars.ContextVar[int] = contextvars.ContextVar(
    "JOB_MESSAGE_BYTES", default=0
)


@attrs.frozen
class KernelOptions:
    """Everything the actor needs to know, usually derived from a pool's config."""

    kernel_name: str = "python3"
    transport: str = "ipc"
    interrupt_mode: str = ""
    env: dict[str, str] = attrs.field(factory=dict)
    cwd: str | None = None
    start_timeout: float = 60.0
    startup_code: str = ""
    exec_timeout: float = 600.0
    interrupt_grace: float = 5.0
    max_output_bytes: int = 1048576
    heartbeat_interval: float = 1.0
    heartbeat_misses: int = 3
    shutdown_grace: float = 2.0
    term_timeout: float = 2.0
    memory_limit_mb: int = 0
    pids_limit: int = 0
    cpu_limit: float = 0.0
    containment: str = "auto"  # auto | cgroup | subreaper (adapters/containment.py)
    user: str = ""  # run the kernel as this user ("": as the supervisor; adapters/launch.py)
    iopub_rcvhwm: int = IOPUB_RCVHWM

    @classmethod
    def from_pool(cls, pool: PoolConfig) -> KernelOptions:
        return cls(
            kernel_name=pool.kernel,
            # A kernel on a Ray node is reached over TCP, whatever `transport` says.
            transport="tcp" if pool.placement == "ray" else pool.transport,
            interrupt_mode=pool.interrupt_mode,
            env=dict(pool.env),
            start_timeout=pool.start_timeout,
            startup_code=pool.startup_code,
            exec_timeout=pool.exec_timeout,
            interrupt_grace=pool.interrupt_grace,
            max_output_bytes=pool.max_output_bytes,
            heartbeat_interval=pool.heartbeat.interval,
            heartbeat_misses=pool.heartbeat.misses,
            shutdown_grace=pool.shutdown.grace,
            term_timeout=pool.shutdown.term_timeout,
            memory_limit_mb=pool.memory_limit_mb,
            pids_limit=pool.pids_limit,
            cpu_limit=pool.cpu_limit,
            containment=pool.containment,
            user=pool.user,
        )


@attrs.define
class ActorStats:
    """What the actor counted about its kernel's messages (read by the tests that check
    those faults are noticed)."""

    iopub_dropped: int = 0  # iopub messages that failed to parse or verify
    heartbeat_misses: int = 0
    idle_missing: int = 0  # requests finished without their status: idle
    iopub_lost: int = 0  # iopub messages the kernel numbered that never arrived
    reconnects: int = 0  # shell or iopub connections zmq dropped and we reopened


@attrs.define(eq=False)
class ExecuteRequest:
    """One execute, travelling from a caller to the executor with its own reply channel."""

    code: str
    timeout: float
    reply: trio.MemorySendChannel[ExecuteResult]
    on_output: Callable[[Output], None] | None = None
    silent: bool = False
    # The largest kernel message decoded whole for this request, when more than its
    # max_output_bytes allows (a job's spool: tree/jobs.py); 0 = as max_output_bytes says.
    message_bytes: int = 0
    cancel_requested: bool = False
    scope: trio.CancelScope | None = None

    def cancel(self) -> None:
        """Called from the caller's side: interrupt the request if it is running."""
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel()

    def deliver(self, result: ExecuteResult) -> None:
        try:
            self.reply.send_nowait(result)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass  # the requester went away; nobody to tell


class KernelHandle:
    """What callers hold: the actor's public face while it runs."""

    def __init__(self, actor: KernelActor) -> None:
        self._actor = actor

    @property
    def kernel_id(self) -> str:
        return self._actor.kernel_id

    @property
    def pid(self) -> int | None:
        return self._actor.proc.pid if self._actor.proc else None

    @property
    def state(self) -> KernelState:
        return self._actor.state

    @property
    def unit(self) -> Unit:
        """The kernel's containment unit (adapters/containment.py)."""
        assert self._actor.proc is not None
        return self._actor.proc.unit

    @property
    def containment(self) -> str:
        """``cgroup`` or ``subreaper``: what holds the kernel and all it starts."""
        return self.unit.kind

    @property
    def launch(self) -> str:
        """How this kernel was started: ``fork`` (from its pool's zygote), ``exec`` (its
        kernelspec's argv; also a fork pool's fallback) or ``ray`` (on a Ray node)."""
        assert self._actor.proc is not None
        return self._actor.proc.launch

    @property
    def node(self) -> str | None:
        """The address of the Ray node the kernel runs on (adapters/ray_host.py); None for
        a kernel on this machine."""
        node = getattr(self._actor.proc, "node", None)
        return node if isinstance(node, str) else None

    @property
    def stats(self) -> ActorStats:
        return self._actor.stats

    @property
    def kernel_info(self) -> dict[str, Any]:
        return self._actor.kernel_info

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_output: Callable[[Output], None] | None = None,
        silent: bool = False,
    ) -> ExecuteResult:
        """Run ``code`` and return its single outcome (``silent``: the kernel neither
        counts it nor keeps it in its history, as for the supervisor's own code).

        Waits while the kernel is busy with another request. Raises ``Rejected``
        (code ``kernel_unavailable``) when the kernel stopped before taking the request:
        such a request never ran and may safely go elsewhere. If the caller is cancelled
        while the request runs, the kernel is interrupted (and killed if it ignores that).
        ``on_output`` is called (synchronously, from the actor) with each output as it
        arrives; it must not block.
        """
        send, recv = trio.open_memory_channel[ExecuteResult](1)
        req = ExecuteRequest(
            code=code,
            reply=send,
            on_output=on_output,
            silent=silent,
            message_bytes=JOB_MESSAGE_BYTES.get(),
            timeout=self._actor.options.exec_timeout if timeout is None else timeout,
        )
        with recv:
            try:
                await self._actor.inbox_send.send(req)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise Rejected(
                    f"kernel {self.kernel_id} is not running",
                    code="kernel_unavailable",
                    kernel_id=self.kernel_id,
                ) from None
            try:
                return await recv.receive()
            except trio.Cancelled:
                req.cancel()
                raise

    async def interrupt(self) -> None:
        await self._actor.interrupt()

    def shutdown(self) -> None:
        """Ask the actor to stop gracefully (the shutdown ladder). Returns at once."""
        self._actor.stop_requested.set()

    def kill(self, reason: str = "killed by request") -> None:
        """Kill the kernel now; the actor exits with cause ``failure``."""
        self._actor.finish(ExitCause("failure", detail=reason))


__all__ = ["ActorStats", "ExecuteRequest", "KernelHandle", "KernelOptions", "KernelState"]
