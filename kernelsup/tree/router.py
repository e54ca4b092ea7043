"""The router: pools, spares, sessions and queues. Every request gets exactly one outcome.

Theory of operation
-------------------
A pool's children (see pool_supervisor.py) each have a *role*: ``pool`` (in the shared
rotation), ``spare`` (started and ready, not yet in rotation) or ``session`` (bound to one
named session). The router owns the roles, all in one :class:`Roles` record; the
supervisor owns the slots and their processes, and the router asks it for changes
(add, make temporary, remove, restart) through its methods.

* An execute for the pool takes an idle ``pool`` kernel. If none is idle it waits in the
  pool's FIFO queue (at most ``queue_limit`` waiting, each at most ``queue_timeout``);
  whenever a kernel frees up or becomes ready, the head of the queue is handed that kernel
  directly (no race between waking and taking). Requests wait at the pool, never at a
  kernel, so a kernel that dies strands nothing: a request the kernel had not taken yet
  (the actor's inbox is unbuffered) is simply dispatched again. A request the kernel had
  taken is answered by the actor (``died``, ``timeout``, ...) and never re-run.
* When a ``pool`` kernel is not available (exited, restarting, dead) and a spare is ready,
  they swap roles at once: the spare serves, and the old one restarts in place (same id)
  and becomes a spare when ready.
* Isolation: a session's kernel has never run anyone else's code. Every incarnation of a
  kernel knows whether it was ever handed a user request (``Child.used``, marked in the
  same step as the hand-over; the warm-up does not count). A session binds only a kernel
  that was never used: a ready spare, else an idle pool kernel that never ran a request
  (the pool adds a new child in the role it took, so spares refill in the background),
  else a kernel started for the session alone, waited for at most ``queue_timeout``
  (``queue_timeout`` when it is not ready in time, ``kernel_unavailable`` when it fails to
  start; either way it is removed and the code did not run). Anonymous requests share
  the pool's kernels by design: one may see what another left.
* Session kernels are ``temporary``: when one exits, or its session is closed or
  expires, it is removed, never handed to anyone else. The session's next request binds a
  kernel by the same rule, and its result carries ``state_lost = True`` with a marker
  line, unless the result that reported the loss (``died``, or a timeout that killed the
  kernel) already said so.
* Bounds on what clients create: at most ``max_sessions`` open sessions per pool (a new
  one beyond it is rejected ``pool_exhausted``; 0 in the config sizes it from the
  machine's memory); idle ones close after ``session_idle_timeout``; the names of
  expired sessions remembered are bounded too (``EXPIRED_SESSIONS_REMEMBERED``).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from kernelsup.adapters.forkserver import ForkServer
from kernelsup.adapters.launch import RunAs
from kernelsup.adapters.ray_host import RayLauncher
from kernelsup.adapters.started import EXEC, Launcher
from kernelsup.core import events as ev
from kernelsup.core.config import Config, PoolConfig
from kernelsup.core.errors import PoolEscalated, Rejected, SupervisorGaveUp
from kernelsup.core.policy import IntensityWindow, RestartPolicy
from kernelsup.core.records import SessionInfo
from kernelsup.core.results import ExecuteResult, ExitCause, Output
from kernelsup.core.slot import SlotState
from kernelsup.core.snapshots import RestoreInfo, SnapshotInfo
from kernelsup.tree.bus import EventBus
from kernelsup.tree.checkpoints import Checkpoints, with_restore
from kernelsup.tree.kernel import run_kernel
from kernelsup.tree.kernel_handle import KernelHandle, KernelOptions
from kernelsup.tree.pool_supervisor import Child, PoolSupervisor
from kernelsup.tree.sessions import (
    ADAPT_TIMEOUT_S,
    adapt_code,
    is_python,
    make_private_dir,
    remove_private_dir,
    session_options,
    session_root,
)

# Names of sessions that expired, remembered so their next request is told its state is
# gone; bounded because names come from clients.
EXPIRED_SESSIONS_REMEMBERED = 1024

# How much of a start failure's detail a rejection quotes (it can hold a traceback).
_DETAIL_SHOWN = 300

STATE_LOST_MARKER = (
    "[kernelsup: this session's kernel was replaced; "
    "variables and imports from earlier requests are gone]\n"
)
STATE_LOST_TEXT = STATE_LOST_MARKER.strip()


Role = Literal["pool", "spare", "session", "fresh"]
# What a kernel taken for one fresh request is bound to (not a valid session name).
FRESH = "(fresh)"


def total_memory() -> int:
    """The machine's physical memory in bytes; 0 if the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


class Roles:
    """Who does what: each kernel's role, and the session a session kernel serves.

    The router's one record of roles; the supervisor knows nothing of them. Kernels are
    forgotten here when their slot is removed, so this holds at most the pool's kernels.
    """

    def __init__(self) -> None:
        self._role: dict[Child, Role] = {}
        self._session: dict[Child, str] = {}

    def of(self, child: Child) -> Role | None:
        return self._role.get(child)

    def session(self, child: Child) -> str | None:
        return self._session.get(child)

    def assign(self, child: Child, role: Role) -> None:
        self._role[child] = role

    def bind(self, child: Child, session: str) -> None:
        """``child`` now serves ``session`` alone."""
        self._role[child] = "session"
        self._session[child] = session

    def swap(self, a: Child, b: Child) -> None:
        self._role[a], self._role[b] = self._role[b], self._role[a]

    def forget(self, child: Child) -> None:
        self._role.pop(child, None)
        self._session.pop(child, None)

    def clear(self) -> None:
        self._role.clear()
        self._session.clear()


@attrs.define(eq=False)
class _Waiter:
    event: trio.Event = attrs.field(factory=trio.Event)
    child: Child | None = None
    rejection: Rejected | None = None


@attrs.define(eq=False)
class Session:
    name: str
    pool: str
    child: Child | None = None
    generation: int = 0
    lost: bool = False
    last_used: float = 0.0
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    # Its place (tree/sessions.py): every kernel it gets runs in cwd with env.
    cwd: str = ""
    env: Mapping[str, str] = attrs.field(factory=dict)
    own_dir: bool = False  # cwd is a private directory made for it: removed at close
    idle_timeout: float | None = None  # None: the pool's session_idle_timeout
    lifetime: float | None = None  # closed this long after it opened; None: no bound
    created: float = 0.0  # trio clock
    created_wall: float = 0.0  # epoch seconds, for SessionInfo
    last_used_wall: float = 0.0
    executions: int = 0
    binding: bool = False
    # A snapshot id to load into its kernel before its next request (restore, fork_session).
    restore_from: str | None = None
    checkpoint_unsupported: bool = False  # said once: its kernel's language has no snapshots

    def info(self) -> SessionInfo:
        child = self.child
        if self.lock.locked() and not self.binding:
            state = "busy"
        elif self.binding:
            state = "starting"
        elif child is not None and child.ready and child.generation == self.generation:
            state = "idle"
        else:
            state = "unbound"
        return SessionInfo(
            name=self.name,
            pool=self.pool,
            kernel_id=child.id if child is not None else None,
            cwd=self.cwd,
            env=tuple(sorted(self.env)),
            created=self.created_wall,
            last_used=self.last_used_wall,
            state=state,
            executions=self.executions,
        )


def _handle(child: Child) -> KernelHandle:
    """The router's children are always kernel actors (the supervisor is generic)."""
    assert isinstance(child.handle, KernelHandle)
    return child.handle


def _percent(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _owner(cfg: PoolConfig) -> tuple[int, int] | None:
    """Who writes the pool's snapshots: its kernels' user, when it has one."""
    user = getattr(cfg, "user", "")
    if not user:
        return None
    run_as = RunAs.lookup(user)
    return (run_as.uid, run_as.gid)


def rejected(code: str, message: str, **data: Any) -> ExecuteResult:
    return ExecuteResult("rejected", code=code, message=message, **data)


class Pool:
    """One pool: its supervisor (restarted by the root on escalation) and its routing."""

    def __init__(
        self, cfg: PoolConfig, config: Config, bus: EventBus, runtime_dir: Path, rng: random.Random
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._config = config
        self._bus = bus
        self._runtime_dir = runtime_dir
        self._rng = rng
        self._options = KernelOptions.from_pool(cfg)
        # How the pool's kernels come to exist (adapters/started.py): the seam a fork
        # server or a remote placement plugs into.
        self.launcher: Launcher = EXEC
        # launch = "fork": Python kernels forked from the pool's zygote (exec for a pool
        # that runs its kernels as another user, or elsewhere).
        self.fork_server: ForkServer | None = None
        if cfg.launch == "fork" and cfg.placement == "local" and not getattr(cfg, "user", ""):
            self.fork_server = ForkServer(cfg.preload)
            self.launcher = self.fork_server
        if cfg.placement == "ray":  # each kernel in a host actor on a node of the cluster
            self.launcher = RayLauncher(config.ray, cfg)
        pool: tuple[Role, ...] = ("pool",)
        spare: tuple[Role, ...] = ("spare",)
        fresh: tuple[Role, ...] = ("fresh",)
        self._initial_roles = pool * cfg.size + spare * cfg.spares + fresh * cfg.fresh_spares
        self.total_memory = total_memory()
        self.max_sessions = cfg.effective_max_sessions(self.total_memory)
        self._stopping = False
        # Restart policies by slot id, kept across escalations (see PoolSupervisor).
        self._policies: dict[str, RestartPolicy] = {}
        self.sup = self._new_supervisor()
        self._roles = Roles()
        self._busy: set[Child] = set()
        self._queue: collections.deque[_Waiter] = collections.deque()
        self.sessions: dict[str, Session] = {}
        # Each session's snapshots (tree/checkpoints.py), taken after each successful
        # request when checkpoint = "after_execute", or on request.
        self.checkpoints = Checkpoints(
            runtime_dir / "snapshots" / cfg.name,
            max_bytes=cfg.checkpoint_max_bytes,
            timeout=cfg.checkpoint_timeout,
            owner=_owner(cfg),
        )
        self._changed = trio.Event()
        self._expired: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Heartbeat pings left unanswered over the pool's life: those of kernels that
        # ended (kept as each ends) and those of the running ones (their actors count).
        self._misses_ended = 0
        self._ended: weakref.WeakSet[KernelHandle] = weakref.WeakSet()

    def _new_supervisor(self) -> PoolSupervisor:
        return PoolSupervisor(
            self.name,
            self._start_kernel,
            self.cfg.restart,
            self._config.supervision(self.cfg),
            self._bus,
            rng=self._rng,
            on_change=self._on_change,
            policies=self._policies,
        )

    async def _start_kernel(
        self,
        kernel_id: str,
        *,
        on_exit: Callable[[ExitCause], None],
        task_status: trio.TaskStatus[KernelHandle],
    ) -> Any:
        def exited(cause: ExitCause) -> None:
            for c in self.sup.children:  # its actor counted its heartbeat misses: keep them
                if c.id == kernel_id and isinstance(c.handle, KernelHandle):
                    if c.handle not in self._ended:
                        self._ended.add(c.handle)
                        self._misses_ended += c.handle.stats.heartbeat_misses
            on_exit(cause)

        return await run_kernel(
            kernel_id,
            self._options_for(kernel_id),
            self._runtime_dir,
            on_state=lambda state: self._dispatch(),
            on_exit=exited,
            launcher=self.launcher,
            task_status=task_status,
        )

    def _options_for(self, kernel_id: str) -> KernelOptions:
        """A session's kernel starts in the session's directory with its variables."""
        child = self.sup.child(kernel_id)
        name = self._roles.session(child) if child is not None else None
        session = self.sessions.get(name) if name is not None else None
        if session is None:
            return self._options
        return session_options(self._options, session.cwd, session.env)

    # ------------------------------------------------------------------- supervision
    async def run(
        self,
        root_window: IntensityWindow,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the pool's supervisor (and its fork server); restart the supervisor when it
        escalates, under the root's window. Raises :class:`SupervisorGaveUp` when that
        window trips."""
        async with trio.open_nursery() as nursery:
            if self.fork_server is not None:
                nursery.start_soon(self.fork_server.run)
            try:
                await self._supervise(root_window, task_status)
            finally:
                nursery.cancel_scope.cancel()  # the zygote goes after the kernels

    async def _supervise(
        self, root_window: IntensityWindow, task_status: trio.TaskStatus[None]
    ) -> None:
        first = True
        while True:
            self._roles.clear()
            for role in self._initial_roles:
                self._roles.assign(self.sup.add_child(), role)
            try:
                if first:
                    first = False
                    await self.sup.run(task_status=task_status)
                else:
                    await self.sup.run()
                return
            except PoolEscalated as exc:
                self._lose_sessions()
                if self._stopping:
                    return  # escalated as the supervisor stops: nothing starts again
                if root_window.record(trio.current_time()):
                    self._reject_queue("supervisor_gave_up", str(exc))
                    raise SupervisorGaveUp(
                        f"{exc}; the root supervisor exceeded its own restart intensity "
                        f"({root_window.intensity} in {root_window.period:g} s)",
                        pool=self.name,
                    ) from None
                self._bus.publish(ev.POOL_RESTARTED, pool=self.name, reason=str(exc))
                keep = {f"{self.name}-{i}" for i in range(len(self._initial_roles))}
                for slot_id in set(self._policies) - keep:  # sessions' slots are gone
                    del self._policies[slot_id]
                self.sup = self._new_supervisor()

    def stop(self) -> None:
        self._stopping = True
        self._reject_queue("shutting_down", "the supervisor is shutting down")
        self.sup.stop()

    # ------------------------------------------------------------------- routing
    def _available(self, child: Child) -> bool:
        return (
            child.ready
            and child not in self._busy
            and child.handle is not None
            and child.handle.state == "idle"
        )

    def _on_change(self, child: Child) -> None:
        if child.state is SlotState.REMOVED:
            self._roles.forget(child)
        self._rebalance()
        self._dispatch()

    def _first_available(self, role: Role) -> Child | None:
        return next(
            (c for c in self.sup.children if self._roles.of(c) == role and self._available(c)),
            None,
        )

    def _first_unused(self, role: Role) -> Child | None:
        """An idle kernel of ``role`` whose incarnation never ran a request."""
        return next(
            (
                c
                for c in self.sup.children
                if self._roles.of(c) == role and self._available(c) and not c.used
            ),
            None,
        )

    def _rebalance(self) -> None:
        """Put ready spares in place of pool kernels that cannot serve."""
        # Only kernels that have exited: at start-up, whichever is ready first keeps its role.
        for gone in [
            c
            for c in self.sup.children
            if self._roles.of(c) == "pool"
            and not c.ready
            and (c.last_exit is not None or c.state is SlotState.DEAD)
        ]:
            spare = self._first_available("spare")
            if spare is None:
                return
            self._roles.swap(spare, gone)

    def _wake(self) -> None:
        """Something changed that a waiting session may care about (a kernel freed up or
        became ready, a session closed)."""
        self._changed.set()
        self._changed = trio.Event()

    def _dispatch(self) -> None:
        self._wake()
        while self._queue:
            child = self._first_available("pool")
            if child is None:
                if self.dead:
                    self._reject_queue(
                        "pool_dead",
                        f"every kernel of pool {self.name} is dead (gave up restarting)",
                    )
                elif (why := self.unavailable) is not None:
                    self._reject_queue("pool_unavailable", why)
                return
            waiter = self._queue.popleft()
            self._busy.add(child)
            waiter.child = child
            waiter.event.set()

    def _reject_queue(self, code: str, message: str) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            waiter.rejection = Rejected(message, code=code, pool=self.name)
            waiter.event.set()

    @property
    def dead(self) -> bool:
        shared = [c for c in self.sup.children if self._roles.of(c) in ("pool", "spare")]
        return bool(shared) and all(c.state is SlotState.DEAD for c in shared)

    def dead_reason(self) -> str:
        """Why the pool is dead, in a line: its newest start error, or how its kernels
        last ended."""
        shared = [c for c in self.sup.children if self._roles.of(c) in ("pool", "spare")]
        for c in reversed(shared):
            if c.start_error:
                return str(c.start_error).splitlines()[0]
        for c in reversed(shared):
            if c.last_exit is not None:
                return f"its kernels gave up restarting; the last ended {c.last_exit.describe()}"
        return "its kernels gave up restarting"

    @property
    def unavailable(self) -> str | None:
        """While no kernel of the pool can start (every one's last start failed, none is
        up), why: the newest start error. Requests are then refused at once
        (``pool_unavailable``) rather than left to wait out ``queue_timeout`` for a kernel
        that is not coming. None as soon as any kernel is up or starts normally."""
        shared = [c for c in self.sup.children if self._roles.of(c) in ("pool", "spare")]
        if not shared or any(c.ready or c.start_error is None for c in shared):
            return None
        return (
            f"no kernel of pool {self.name} can start (each failed, retrying with backoff); "
            f"the latest: {shared[-1].start_error}"
        )

    def _release(self, child: Child) -> None:
        self._busy.discard(child)
        self._dispatch()

    async def _acquire(self) -> Child:
        child = self._first_available("pool")
        if child is not None and not self._queue:
            self._busy.add(child)
            return child
        if self.dead:
            raise Rejected(
                f"every kernel of pool {self.name} is dead (gave up restarting)",
                code="pool_dead",
                pool=self.name,
            )
        if (why := self.unavailable) is not None:
            raise Rejected(why, code="pool_unavailable", pool=self.name)
        if len(self._queue) >= self.cfg.queue_limit:
            raise Rejected(
                f"pool {self.name}'s queue is full ({self.cfg.queue_limit} waiting)",
                code="queue_full",
                pool=self.name,
            )
        waiter = _Waiter()
        self._queue.append(waiter)
        self._dispatch()
        timeout = self.cfg.queue_timeout if self.cfg.queue_timeout > 0 else math.inf
        try:
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        except BaseException:
            if waiter.child is not None:  # handed a kernel just as we were cancelled
                self._release(waiter.child)
            raise
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)
        if waiter.rejection is not None:
            raise waiter.rejection
        if waiter.child is None:
            raise Rejected(
                f"no kernel of pool {self.name} became free within "
                f"queue_timeout = {self.cfg.queue_timeout:g} s",
                code="queue_timeout",
                pool=self.name,
            )
        return waiter.child

    async def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_output: Callable[[Output], None] | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> ExecuteResult:
        t0 = trio.current_time()
        while True:
            try:
                child = await self._acquire()
            except Rejected as exc:
                return rejected(exc.code, exc.message, queued_s=trio.current_time() - t0)
            queued = trio.current_time() - t0
            handle = _handle(child)
            child.mark_used()  # no checkpoint between this and the hand-over
            try:
                if on_start is not None:
                    on_start(child.id)
                result = await handle.execute(code, timeout=timeout, on_output=on_output)
            except Rejected:
                # The kernel went away before taking it: it never ran. Yield before
                # dispatching again, so the task that removes that kernel can run.
                await trio.lowlevel.checkpoint()
                continue
            finally:
                self._release(child)
            return attrs.evolve(result, kernel_id=child.id, queued_s=queued)

    # ------------------------------------------------------------------- fresh
    _FRESH_FROM: tuple[Role, ...] = ("fresh", "spare")

    async def fresh_execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_output: Callable[[Output], None] | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> ExecuteResult:
        """Run ``code`` on a kernel that never ran anything, and remove that kernel after
        (killed: its state is nobody's). The kernel: a ready ``fresh`` kernel
        (``fresh_spares``) or spare, whose role is refilled at once, else one started for
        this request alone, waited for at most ``queue_timeout``."""
        t0 = trio.current_time()
        if self._stopping:
            return rejected("shutting_down", "the supervisor is shutting down")
        if self.dead:
            return rejected("pool_dead", f"every kernel of pool {self.name} is dead")
        if (why := self.unavailable) is not None:
            return rejected("pool_unavailable", why)
        sup = self.sup
        for role in self._FRESH_FROM:
            child = self._first_unused(role)
            if child is not None:
                self._roles.bind(child, FRESH)
                sup.make_temporary(child)
                self._roles.assign(sup.add_child(), role)
                self._rebalance()
                break
        else:
            child = sup.add_child()
            self._roles.bind(child, FRESH)
            sup.make_temporary(child)
            try:
                await self._wait_fresh(child)
            except Rejected as exc:
                sup.remove_child_soon(child)
                return rejected(exc.code, exc.message, queued_s=trio.current_time() - t0)
            except BaseException:
                sup.remove_child_soon(child)
                raise
        queued = trio.current_time() - t0
        handle = _handle(child)
        child.mark_used()
        try:
            if on_start is not None:
                on_start(child.id)
            result = await handle.execute(code, timeout=timeout, on_output=on_output)
        except Rejected:
            return rejected(
                "kernel_unavailable",
                f"the fresh kernel {child.id} went away before it ran the code; it did not run",
                queued_s=queued,
            )
        finally:
            sup.remove_child_soon(child)
            handle.kill("a fresh kernel is used once")
        return attrs.evolve(result, kernel_id=child.id, queued_s=queued)

    async def _wait_fresh(self, child: Child) -> None:
        """Wait until ``child``, started for one fresh request, is ready. Raises Rejected
        when it fails to start or is not ready within ``queue_timeout``."""
        timeout = self.cfg.queue_timeout if self.cfg.queue_timeout > 0 else math.inf
        with trio.move_on_after(timeout):
            while not child.ready:
                if child.state not in (SlotState.NEW, SlotState.STARTING):
                    cause = child.last_exit
                    why = child.status if cause is None else cause.describe()
                    raise Rejected(
                        f"the fresh kernel started for this request did not start ({why}); "
                        "the code did not run",
                        code="shutting_down" if self._stopping else "kernel_unavailable",
                        pool=self.name,
                    )
                await self._changed.wait()
            return
        raise Rejected(
            "no fresh kernel was ready and the one started for this request was not ready "
            f"within queue_timeout = {self.cfg.queue_timeout:g} s; the code did not run",
            code="queue_timeout",
            pool=self.name,
        )

    # ------------------------------------------------------------------- sessions
    async def session_execute(
        self,
        name: str,
        code: str,
        *,
        timeout: float | None = None,
        on_output: Callable[[Output], None] | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> ExecuteResult:
        """Run ``code`` in session ``name`` (opened with the defaults if it is not open).
        ``on_start`` is called with the kernel's id as the kernel is handed the code."""
        session = self.sessions.get(name)
        if session is None:
            try:
                session = self._new_session(name)
            except Rejected as exc:
                return rejected(exc.code, exc.message + "; the code did not run", session=name)
        t0 = trio.current_time()
        async with self._held(session):
            session.last_used = trio.current_time()
            session.last_used_wall = time.time()
            told = False  # the state-lost notice streamed to on_output
            while True:
                child = session.child
                # A kernel that is not ready is gone for the session (it exited, or is
                # being removed); a new generation means it was restarted: state lost.
                try:
                    child = await self._kernel_for(session)
                except Rejected as exc:
                    return rejected(exc.code, exc.message, session=name)
                queued = trio.current_time() - t0
                handle = _handle(child)
                child.mark_used()
                try:
                    restore = await self._restore_due(session, handle)
                    if on_start is not None:
                        on_start(child.id)
                    lost = session.lost and not isinstance(restore, RestoreInfo)
                    if lost and on_output is not None and not told:
                        # streamed first, as it comes first in the result (below): a
                        # caller printing as outputs come sees it before the new output
                        told = True
                        on_output(Output("notice", name="state_lost", text=STATE_LOST_TEXT))
                    result = await handle.execute(code, timeout=timeout, on_output=on_output)
                except Rejected:
                    # Never started: its kernel is on its way out. Bind a fresh one, after
                    # yielding so the task removing the old one can run.
                    session.child = None
                    session.lost = True
                    await trio.lowlevel.checkpoint()
                    continue
                break
            session.last_used = trio.current_time()
            session.last_used_wall = time.time()
            session.executions += 1
            result = attrs.evolve(result, kernel_id=child.id, session=name, queued_s=queued)
            result = with_restore(result, restore)
            if isinstance(restore, RestoreInfo):
                session.lost = False
            if self.cfg.checkpoint == "after_execute" and result.status == "ok":
                result = await self._checkpoint(session, handle, result)
            if session.lost and not result.state_lost:
                result = attrs.evolve(
                    result,
                    state_lost=True,
                    stdout=STATE_LOST_MARKER + result.stdout,
                    outputs=(
                        Output("notice", name="state_lost", text=STATE_LOST_TEXT),
                        *result.outputs,
                    ),
                )
            session.lost = False
            return result

    async def _kernel_for(self, session: Session) -> Child:
        """The session's kernel, bound now if it has none that is ready (its previous one
        exited or was restarted: its state is lost). Call with the session's lock held.
        Raises Rejected (nothing ran)."""
        child = session.child
        # A kernel that is not ready is gone for the session (it exited, or is being
        # removed); a new generation means it was restarted: state lost.
        if child is not None and child.ready and child.generation == session.generation:
            return child
        if child is not None:
            session.lost = True
        if self.sessions.get(session.name) is not session:
            raise self._session_closed(session)
        try:
            session.binding = True
            child = await self._bind(session)
        finally:
            session.binding = False
        if self.sessions.get(session.name) is not session:
            # closed while we waited for a kernel: that kernel is nobody's
            await self.sup.remove_child(child)
            raise self._session_closed(session)
        return child

    # ------------------------------------------------------------------ snapshots
    async def _restore_due(
        self, session: Session, handle: KernelHandle
    ) -> RestoreInfo | str | None:
        """Before a request: load the snapshot the session asked for, or, when its kernel
        was lost under checkpoint = "after_execute", its latest. Returns what came back,
        why nothing did (the request still runs, its state lost), or None when no restore
        was due. Raises Rejected only when the kernel went away before taking it."""
        snapshot_id = session.restore_from
        if snapshot_id is None:
            if not (session.lost and self.cfg.checkpoint == "after_execute"):
                return None
            snapshot_id = self.checkpoints.latest(session.name)
            if snapshot_id is None:
                return None
        try:
            info = await self.checkpoints.restore(handle, session.name, snapshot_id)
        except Rejected as exc:
            if exc.code == "kernel_unavailable":
                raise
            session.restore_from = None
            return exc.message
        session.restore_from = None
        return info

    async def _checkpoint(
        self, session: Session, handle: KernelHandle, result: ExecuteResult
    ) -> ExecuteResult:
        """checkpoint = "after_execute": snapshot the session after a successful request;
        a snapshot not taken is said in the result (once per session for a kernel whose
        language has none)."""
        if session.checkpoint_unsupported:
            return result
        try:
            await self.checkpoints.take(handle, session.name)
        except Rejected as exc:
            if exc.code == "kernel_unavailable":
                return result  # the kernel went away after the request: nothing to save
            if exc.code == "checkpoint_unsupported":
                session.checkpoint_unsupported = True
            notice = Output("notice", name="checkpoint_skipped", text=exc.message)
            return attrs.evolve(result, outputs=(*result.outputs, notice))
        return result

    def _open_session(self, name: str) -> Session:
        session = self.sessions.get(name)
        if session is None:
            raise Rejected(f"no open session {name!r} in pool {self.name}", code="unknown_session")
        return session

    @contextlib.asynccontextmanager
    async def _held(self, session: Session) -> AsyncIterator[None]:
        """Hold the session's lock; releasing it wakes the pool: the session's idle clock
        starts then (expire_sessions computed no deadline for it while it was held)."""
        try:
            async with session.lock:
                yield
        finally:
            self._wake()

    @contextlib.asynccontextmanager
    async def _quiet(self, session: Session, what: str) -> AsyncIterator[None]:
        """Hold the session's lock for a snapshot, restore or fork: once its running
        request (if any) ends, waiting at most ``checkpoint_timeout`` (a job may run for
        days). Raises Rejected (``session_busy``) when it does not end in time."""
        bound = self.cfg.checkpoint_timeout
        acquired = False
        with trio.move_on_after(bound):
            await session.lock.acquire()
            acquired = True
        if not acquired:
            raise Rejected(
                f"session {session.name!r} is still running a request after "
                f"checkpoint_timeout = {bound:g} s, so no {what} was made; wait for it, "
                "cancel it or interrupt the session",
                code="session_busy",
            )
        try:
            yield
        finally:
            session.lock.release()
            self._wake()

    async def snapshot_session(self, name: str) -> SnapshotInfo:
        """Snapshot session ``name``'s namespace now (waits for its running request).
        Raises Rejected: unknown_session, checkpoint_unsupported, checkpoint_skipped,
        checkpoint_failed, kernel_unavailable (it has no kernel: nothing to save)."""
        session = self._open_session(name)
        async with self._quiet(session, "snapshot"):
            child = session.child
            if child is None or not child.ready or child.generation != session.generation:
                raise Rejected(
                    f"session {name!r} has no running kernel, so no state to snapshot",
                    code="kernel_unavailable",
                )
            return await self.checkpoints.take(_handle(child), name)

    async def restore_session(self, name: str, snapshot_id: str | None = None) -> RestoreInfo:
        """Load a snapshot of session ``name`` (its latest by default) into its kernel,
        binding one if it has none. Raises Rejected (unknown_session, unknown_snapshot,
        checkpoint_*)."""
        session = self._open_session(name)
        async with self._quiet(session, "restore"):
            for _attempt in range(3):  # a kernel that goes away first: bind another
                child = await self._kernel_for(session)
                try:
                    info = await self.checkpoints.restore(_handle(child), name, snapshot_id)
                except Rejected as exc:
                    if exc.code != "kernel_unavailable":
                        raise
                    session.child = None
                    session.lost = True
                    await trio.lowlevel.checkpoint()
                    continue
                session.lost = False
                return info
        raise Rejected(f"session {name!r} has no kernel to restore into", code="kernel_unavailable")

    async def fork_session(self, source: str, name: str) -> RestoreInfo:
        """Open session ``name`` from session ``source``'s state: a snapshot of it taken
        now if it has a running kernel, else its latest. Raises Rejected."""
        origin = self._open_session(source)
        if name in self.sessions:
            raise Rejected(f"session {name!r} is open already", code="session_exists")
        async with self._quiet(origin, "fork"):
            child = origin.child
            if child is not None and child.ready and child.generation == origin.generation:
                await self.checkpoints.take(_handle(child), source)
        snapshot_id = self.checkpoints.copy_latest(source, name)
        self._new_session(name)
        try:
            return await self.restore_session(name, snapshot_id)
        except BaseException:
            await self.close_session(name)
            raise

    def _new_session(
        self,
        name: str,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        lifetime: float | None = None,
    ) -> Session:
        """Open session ``name`` (not open yet) with no kernel: its first request binds
        one. With no ``cwd``, a private directory is made for it. Raises Rejected
        (``pool_exhausted``, or ``rejected`` when the directory cannot be made)."""
        if len(self.sessions) >= self.max_sessions:
            raise Rejected(
                f"pool {self.name} holds {len(self.sessions)} open sessions "
                f"(max_sessions = {self.max_sessions}), so session {name!r} was not "
                "opened; close a session, or wait for idle ones to expire "
                f"(session_idle_timeout = {self.cfg.session_idle_timeout:g} s)",
                code="pool_exhausted",
                pool=self.name,
            )
        own = cwd is None
        if cwd is None:
            root = session_root(self.cfg.workdir, self._runtime_dir, self.cfg.user)
            try:
                cwd = str(make_private_dir(root, name, self.cfg.user))
            except OSError as exc:
                raise Rejected(
                    f"cannot make a directory for session {name!r} under {str(root)!r} "
                    f"(pool {self.name}'s workdir): {exc.strerror or exc}",
                    code="rejected",
                    pool=self.name,
                ) from None
        now, wall = trio.current_time(), time.time()
        session = self.sessions[name] = Session(
            name,
            self.name,
            last_used=now,
            cwd=cwd,
            env=dict(env or {}),
            own_dir=own,
            idle_timeout=idle_timeout,
            lifetime=lifetime,
            created=now,
            created_wall=wall,
            last_used_wall=wall,
        )
        if self._expired.pop(name, 0) is None:
            session.lost = True  # it existed, expired, and its kernel is gone
        self._bus.publish(ev.SESSION_OPENED, pool=self.name, session=name)
        self._wake()  # the expiry loop learns its deadlines
        return session

    async def open_session(
        self,
        name: str,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        lifetime: float | None = None,
    ) -> SessionInfo:
        """Open session ``name`` and bind it a kernel in its directory with its variables;
        returns once that kernel is ready. Raises Rejected: ``session_exists``,
        ``pool_exhausted``, or why no kernel could be had (then the session is closed)."""
        if name in self.sessions:
            raise Rejected(
                f"session {name!r} is already open in pool {self.name}",
                code="session_exists",
                session=name,
            )
        session = self._new_session(
            name, cwd=cwd, env=env, idle_timeout=idle_timeout, lifetime=lifetime
        )
        async with self._held(session):
            session.binding = True
            try:
                child = await self._bind(session)
            except Rejected:
                with trio.CancelScope(shield=True):
                    await self.close_session(name)
                raise
            finally:
                session.binding = False
            if self.sessions.get(name) is not session:
                await self.sup.remove_child(child)
                raise self._session_closed(session)
        return session.info()

    def session_infos(self) -> list[SessionInfo]:
        return [s.info() for s in self.sessions.values()]

    def session_cwd(self, name: str) -> str | None:
        session = self.sessions.get(name)
        return session.cwd if session is not None else None

    def _session_kernel(self, name: str) -> Child:
        session = self.sessions.get(name)
        if session is None:
            raise Rejected(f"no open session {name!r}", code="unknown_session", session=name)
        child = session.child
        if child is None or not child.ready or child.generation != session.generation:
            raise Rejected(
                f"session {name!r} has no kernel running now (its next request binds one)",
                code="kernel_unavailable",
                session=name,
            )
        return child

    async def interrupt_session(self, name: str) -> None:
        """Interrupt what session ``name``'s kernel runs. Raises Rejected
        (``unknown_session``, ``kernel_unavailable``)."""
        await self.interrupt(self._session_kernel(name).id)

    async def restart_session(self, name: str) -> None:
        """Replace session ``name``'s kernel: the one it has is shut down (a request it
        runs ends ``died``) and a new one is bound now, in the session's directory with
        its variables; its state is gone (the next result says ``state_lost``). Raises
        Rejected (``unknown_session``, or why no kernel could be had)."""
        session = self.sessions.get(name)
        if session is None:
            raise Rejected(f"no open session {name!r}", code="unknown_session", session=name)
        old = session.child
        if old is not None:
            session.child = None
            session.lost = True
            await self.sup.remove_child(old)
        async with self._held(session):
            if session.child is None and self.sessions.get(name) is session:
                session.binding = True
                try:
                    child = await self._bind(session)
                finally:
                    session.binding = False
                if self.sessions.get(name) is not session:
                    await self.sup.remove_child(child)

    def drop_session_dirs(self) -> None:
        """At the supervisor's stop: remove the private directories of sessions still open
        (blocking; their kernels are gone)."""
        for session in self.sessions.values():
            if session.own_dir:
                remove_private_dir(Path(session.cwd))

    _BIND_FROM: tuple[Role, ...] = ("spare", "pool")

    async def _bind(self, session: Session) -> Child:
        """Give the session a kernel of its own that never ran anyone's code: a ready
        spare, else an idle pool kernel that never ran a request (its role is refilled),
        else a kernel started for the session, waited for at most ``queue_timeout``.
        Raises Rejected (the code did not run)."""
        if self.sessions.get(session.name) is not session:
            raise self._session_closed(session)
        if self._stopping:
            raise Rejected("the supervisor is shutting down", code="shutting_down", pool=self.name)
        if self.dead:
            raise Rejected(
                f"every kernel of pool {self.name} is dead", code="pool_dead", pool=self.name
            )
        if (why := self.unavailable) is not None:
            raise Rejected(why, code="pool_unavailable", pool=self.name)
        for role in self._BIND_FROM:
            child = self._first_unused(role)
            if child is None or not is_python(_handle(child)):
                continue  # another language is started afresh in the session's place
            self._roles.bind(child, session.name)
            self.sup.make_temporary(child)
            self._roles.assign(self.sup.add_child(), role)
            self._rebalance()
            if await self._adapt(child, session):
                session.child, session.generation = child, child.generation
                return child
            break  # it failed (and is going): start one for the session
        sup = self.sup  # the pool's supervisor may be replaced (escalation) while we wait
        child = sup.add_child()
        self._roles.bind(child, session.name)
        sup.make_temporary(child)
        try:
            await self._wait_started(child, session)
        except BaseException:
            sup.remove_child_soon(child)  # nobody's: it goes, whatever stopped us
            raise
        session.child, session.generation = child, child.generation
        return child

    async def _adapt(self, child: Child, session: Session) -> bool:
        """Give a warm Python kernel, already bound to ``session``, the session's directory
        and variables (tree/sessions.py). False, with the kernel on its way out, when that
        fails: the caller starts a fresh one."""
        code = adapt_code(session.cwd, session.env)
        generation = child.generation
        try:
            result = await _handle(child).execute(code, timeout=ADAPT_TIMEOUT_S, silent=True)
        except Rejected:
            result = None  # it went away first
        except BaseException:
            self.sup.remove_child_soon(child)
            raise
        if result is not None and result.ok and child.generation == generation:
            return True
        self.sup.remove_child_soon(child)
        return False

    async def _wait_started(self, child: Child, session: Session) -> None:
        """Wait until ``child``, started for ``session``, is ready. Raises Rejected when
        it fails to start, is not ready within ``queue_timeout``, or the session closes."""
        timeout = self.cfg.queue_timeout if self.cfg.queue_timeout > 0 else math.inf
        with trio.move_on_after(timeout):
            while True:
                if self.sessions.get(session.name) is not session:
                    raise self._session_closed(session)
                if child.ready:
                    return
                if child.state not in (SlotState.NEW, SlotState.STARTING):
                    cause = child.last_exit
                    why = child.status if cause is None else cause.describe()
                    if cause is not None and cause.detail:
                        why += f": {cause.detail[:_DETAIL_SHOWN]}"
                    if self._stopping:
                        code = "shutting_down"
                    elif cause is not None and cause.kind == "no_capacity":
                        code = "no_capacity"  # no Ray node had room (adapters/ray_host.py)
                    else:
                        code = "kernel_unavailable"
                    raise Rejected(
                        f"the fresh kernel started for session {session.name!r} did not "
                        f"start ({why}); the code did not run",
                        code=code,
                        pool=self.name,
                    )
                await self._changed.wait()
        raise Rejected(
            f"no spare was ready and the fresh kernel started for session "
            f"{session.name!r} was not ready within queue_timeout = "
            f"{self.cfg.queue_timeout:g} s; the code did not run",
            code="queue_timeout",
            pool=self.name,
        )

    def _session_closed(self, session: Session) -> Rejected:
        return Rejected(
            f"session {session.name!r} was closed while this request waited for a kernel; "
            "it did not run",
            code="session_closed",
            pool=self.name,
        )

    async def close_session(self, name: str, *, expired: bool = False) -> bool:
        """Close session ``name`` and shut its kernel down. An ``expired`` session is
        remembered (before any wait, so no request slips in between) and its next
        request hears that its state is gone."""
        session = self.sessions.pop(name, None)
        if session is None:
            return False
        if expired:
            self._expired[name] = None
            while len(self._expired) > EXPIRED_SESSIONS_REMEMBERED:
                self._expired.popitem(last=False)
        self._wake()
        self._bus.publish(ev.SESSION_CLOSED, pool=self.name, session=name)
        if session.child is not None:
            await self.sup.remove_child(session.child)
        if session.own_dir:
            await trio.to_thread.run_sync(remove_private_dir, Path(session.cwd))
        await trio.to_thread.run_sync(self.checkpoints.forget, name)
        return True

    def expired_recently(self, name: str) -> bool:
        """Whether session ``name`` expired here and is still remembered."""
        return name in self._expired

    def _lose_sessions(self) -> None:
        for session in self.sessions.values():
            session.child = None
            session.lost = True

    def _due(self, s: Session) -> float:
        """When session ``s`` expires: at the end of its ``lifetime``, or once idle (not
        running a request) for its idle timeout (its own, else ``session_idle_timeout``;
        0 = never)."""
        due = math.inf if s.lifetime is None else s.created + s.lifetime
        idle = s.idle_timeout if s.idle_timeout is not None else self.cfg.session_idle_timeout
        if idle > 0 and not s.lock.locked():
            due = min(due, s.last_used + idle)
        return due

    async def expire_sessions(self) -> None:
        """Close sessions as they expire (:meth:`_due`)."""
        while True:
            now = trio.current_time()
            for s in [s for s in self.sessions.values() if self._due(s) <= now]:
                # Closing one waits for its kernel; a request may take another meanwhile.
                if self.sessions.get(s.name) is s and self._due(s) <= trio.current_time():
                    await self.close_session(s.name, expired=True)
            now = trio.current_time()
            next_due = min((self._due(s) for s in self.sessions.values()), default=math.inf)
            # A change (a request ending, a session opening) may move a deadline.
            with trio.move_on_at(max(next_due, now + 0.01)):
                await self._changed.wait()

    # ------------------------------------------------------------------- kernels
    def kernel_count(self) -> int:
        return len(self.sup.children)

    def has_kernel(self, kernel_id: str) -> bool:
        return self.sup.child(kernel_id) is not None

    def _kernel(self, kernel_id: str) -> Child:
        child = self.sup.child(kernel_id)
        if child is None:
            raise Rejected(
                f"no kernel with id {kernel_id!r}", code="unknown_kernel", kernel_id=kernel_id
            )
        return child

    async def interrupt(self, kernel_id: str) -> None:
        """Interrupt whatever the kernel runs. Raises Rejected (``unknown_kernel``, or
        ``kernel_unavailable`` when it has no process now)."""
        child = self._kernel(kernel_id)
        if child.handle is None:
            raise Rejected(
                f"kernel {kernel_id} is not running ({child.status})",
                code="kernel_unavailable",
                kernel_id=kernel_id,
            )
        await _handle(child).interrupt()

    async def restart(self, kernel_id: str) -> None:
        """Restart the kernel now (a dead one too); returns once it is starting. Raises
        Rejected (``unknown_kernel``)."""
        await self.sup.restart_child(self._kernel(kernel_id))

    async def wait_changed(self) -> None:
        """Wait for the next change: a kernel's state (ready, idle, busy, exited...), or a
        session closing."""
        await self._changed.wait()

    async def wait_stopped(self) -> None:
        """After :meth:`stop`: wait until no kernel of the pool runs."""
        while not self.sup.quiet:
            await self.wait_changed()

    # ------------------------------------------------------------------- status
    def kernel_status(self, now: float) -> list[dict[str, Any]]:
        out = []
        for c in self.sup.children:
            uptime = c.uptime(now)
            usage = _handle(c).unit.usage() if c.handle is not None else None
            out.append(
                {
                    "id": c.id,
                    "pool": self.name,
                    "role": self._roles.of(c),
                    "state": c.status,
                    "pid": c.handle.pid if c.handle is not None else None,
                    "restarts": c.restarts,
                    "session": self._roles.session(c),
                    "uptime_s": round(uptime, 3) if uptime is not None else None,
                    "last_exit": c.last_exit.to_dict() if c.last_exit else None,
                    "next_try_s": round(c.next_try - now, 3) if c.next_try is not None else None,
                    "start_error": c.start_error,
                    "containment": _handle(c).containment if c.handle is not None else None,
                    "launch": _handle(c).launch if c.handle is not None else None,
                    "node": _handle(c).node if c.handle is not None else None,
                    "memory_bytes": usage.memory_bytes if usage else None,
                    "cpu_percent": _percent(usage.cpu_percent) if usage else None,
                    "cpu_seconds": round(usage.cpu_seconds, 3) if usage else None,
                }
            )
        return out

    def heartbeat_misses(self) -> int:
        """Heartbeat pings the pool's kernels left unanswered, ever (it only grows)."""
        live = sum(
            c.handle.stats.heartbeat_misses
            for c in self.sup.children
            if isinstance(c.handle, KernelHandle) and c.handle not in self._ended
        )
        return self._misses_ended + live

    def pool_status(self) -> dict[str, Any]:
        kids = self.sup.children
        return {
            "name": self.name,
            "kernel": self.cfg.kernel,
            "size": self.cfg.size,
            "spares": self.cfg.spares,
            "queued": len(self._queue),
            "sessions": sorted(self.sessions),
            "max_sessions": self.max_sessions,
            "ready": sum(1 for c in kids if c.ready),
            "dead": self.dead,
            "unavailable": self.unavailable,
            "strategy": self.sup.supervision.strategy,
            "heartbeat_misses": self.heartbeat_misses(),
            "launch": self._launch_status(),
            "user": self.cfg.user or None,
        }

    def _launch_status(self) -> dict[str, Any]:
        """How the pool's kernels are started: ``exec``, ``ray``, or ``fork`` with its
        zygote's state, counts and the reason it last failed (a preload that does not
        import, a thread started at import...), so a pool that fell back is said."""
        fork = self.fork_server
        if fork is None:
            return {"mode": "ray" if self.cfg.placement == "ray" else "exec"}
        return {
            "mode": "fork",
            "zygote": fork.state,
            "zygote_pid": fork.zygote_pid,
            "forked": fork.forked,
            "exec_fallbacks": fork.fallbacks,
            "last_error": fork.last_error,
        }
