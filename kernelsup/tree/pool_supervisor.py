"""The pool supervisor: keeps a pool's kernels running, per its strategy and policies.

Theory of operation
-------------------
A pool supervisor owns an ordered list of children (kernel slots). A child keeps its id
across restarts; each *incarnation* (one kernel process, from start to exit) runs as one
task in the supervisor's nursery under its own cancel scope:

    [backoff delay] -> [count the restart in the intensity window] -> start -> run -> exit

A child's state is a :class:`~kernelsup.core.slot.SlotState` and changes only through
:func:`~kernelsup.core.slot.transition`: ``core/slot.py`` draws the whole life of a slot.
This module feeds it events and does the waiting.

When an incarnation ends by itself (the kernel exited, froze, or failed to start), the
supervisor hands the cause to the child's pure :class:`RestartPolicy`, which answers
*when* (Restart after a delay), or that the exit is final (NoRestart, GiveUp -> ``dead``).
The strategy then says *who* restarts:

* ``one_for_one``  the child alone;
* ``one_for_all``  every child: the others are stopped in reverse start order, then all
                   start again, in start order, after the one delay;
* ``rest_for_one`` the child and every child started after it, likewise.

A group restart counts once in the window. The :class:`IntensityWindow` decides whether
the supervisor itself is broken: when a restart would be the (intensity+1)-th within
``period``, the supervisor stops all children in reverse start order and ``run`` raises
:class:`PoolEscalated` for its parent to handle. Stopping cancels a pending backoff at
once. Temporary children (session kernels, see :meth:`PoolSupervisor.make_temporary`)
are removed when they exit instead of being restarted; the router replaces them. Roles
(pool, spare, session) are the router's business: the supervisor only keeps slots alive.

The kernels of a pool do not depend on each other, so a group starts concurrently
(launched in start order) rather than one after another: a crash storm of N kernels
recovers in about one cold start instead of N.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from kernelsup.core import events as ev
from kernelsup.core.config import RestartConfig, Supervision
from kernelsup.core.errors import KernelStartError, PoolEscalated
from kernelsup.core.policy import GiveUp, IntensityWindow, NoRestart, Restart, RestartPolicy
from kernelsup.core.results import ExitCause
from kernelsup.core.slot import (
    ACTIVE,
    KernelState,
    KernelStatus,
    SlotEvent,
    SlotState,
    status_of,
    transition,
)
from kernelsup.tree.bus import EventBus


class ChildHandle(Protocol):
    """What the supervisor needs of a running child (a KernelHandle, or a test double)."""

    @property
    def pid(self) -> int | None: ...
    @property
    def state(self) -> KernelState: ...
    def shutdown(self) -> None: ...
    def kill(self, reason: str = ...) -> None: ...


StartChild = Callable[..., Awaitable[ExitCause]]
"""``async def start(kernel_id, *, on_exit, task_status) -> ExitCause`` (like
``run_kernel``); ``on_exit(cause)`` may be called as soon as the child knows it is dying."""


@attrs.define(eq=False)
class Child:
    """One kernel slot. Its supervisor writes it (but for ``used``); anyone may read it."""

    id: str
    policy: RestartPolicy
    state: SlotState = SlotState.NEW
    # Removed, never restarted, when its kernel exits (a session's kernel).
    temporary: bool = False
    handle: ChildHandle | None = None
    generation: int = 0  # incarnations so far
    # The current incarnation was handed a user request (the warm-up does not count): set
    # by whoever hands it one (the router, see mark_used), cleared when a new incarnation
    # starts. A session binds only a kernel that was never used.
    used: bool = False
    restarts: int = 0
    started_at: float | None = None
    last_exit: ExitCause | None = None
    # Why the last start failed (the KernelStartError's message); None once one succeeds.
    start_error: str | None = None
    next_try: float | None = None
    scope: trio.CancelScope | None = None  # the current incarnation's

    @property
    def status(self) -> KernelStatus:
        """The ``state`` a status report shows (see ``core/slot.py``)."""
        return status_of(self.state, self.handle.state if self.handle is not None else None)

    @property
    def ready(self) -> bool:
        """Up and able to take a request now (idle, or busy with one)."""
        return (
            self.state is SlotState.RUNNING
            and self.handle is not None
            and self.handle.state in ("idle", "busy")
        )

    def uptime(self, now: float) -> float | None:
        return now - self.started_at if self.started_at is not None and self.handle else None

    def mark_used(self) -> None:
        """This incarnation is about to be handed a user request. Call it in the same step
        as the hand-over (no checkpoint between), so it marks the incarnation that gets it."""
        self.used = True


Listener = Callable[[Child], None]
_SET = trio.Event()
_SET.set()
# Stopping or removing: the incarnation is asked to end, and waited for.
_ENDING = (SlotState.STOPPING, SlotState.REMOVING)


class PoolSupervisor:
    """Supervises one pool's children; see the module docstring."""

    def __init__(
        self,
        name: str,
        start: StartChild,
        restart: RestartConfig,
        supervision: Supervision,
        bus: EventBus,
        *,
        rng: random.Random | None = None,
        on_change: Listener | None = None,
        policies: dict[str, RestartPolicy] | None = None,
    ) -> None:
        self.name = name
        # Each slot's restart policy, by slot id. The pool passes the same dict to the
        # supervisor that replaces this one after an escalation, so a kernel's failures
        # keep counting towards max_retries across pool restarts (a kernel that can never
        # start ends dead instead of restarting forever).
        self._policies = policies if policies is not None else {}
        self._start = start
        self._restart_cfg = restart
        self.supervision = supervision
        self.window = IntensityWindow(supervision.intensity, supervision.period)
        self._bus = bus
        self._rng = rng or random.Random()
        self._on_change = on_change or (lambda child: None)
        self.children: list[Child] = []
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._escalation: str | None = None
        self._stopping = False
        self._next_index = 0
        self._changed = trio.Event()
        self._group_scope: trio.CancelScope | None = None
        # Launch order: an incarnation spawned without delay enters its start function
        # only after the one spawned before it did (trio does not run tasks in the order
        # they were started), so kernels launch in start order yet start concurrently.
        self._last_gate = trio.Event()
        self._last_gate.set()

    # ------------------------------------------------------------------- public
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the children added so far (in order), report started once each is ready,
        dead, gone or failed to start, and supervise until :meth:`stop`. Raises
        :class:`PoolEscalated` on escalation."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                first = [c for c in self.children if c.state is SlotState.NEW]
                for child in first:
                    self._spawn(child, delay=0.0, restart=False)
                for child in first:
                    await self._settled(child)
                task_status.started()
                await self._stop.wait()
                await self._stop_all()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
        if self._escalation is not None:
            raise PoolEscalated(
                f"pool {self.name} escalated: {self._escalation}",
                pool=self.name,
                reason=self._escalation,
            )

    def stop(self) -> None:
        """Stop every child (reverse start order) and make :meth:`run` return. From now
        on nothing is started or restarted (a SIGTERM during a crash loop starts no
        kernel)."""
        self._stopping = True
        self._stop.set()

    def add_child(self) -> Child:
        """A new child, started now if the supervisor runs (a refill), else by :meth:`run`."""
        child = Child(
            id=f"{self.name}-{self._next_index}",
            policy=self._policies.setdefault(
                f"{self.name}-{self._next_index}", RestartPolicy(self._restart_cfg, self._rng)
            ),
        )
        self._next_index += 1
        self.children.append(child)
        if self._nursery is not None and not self._stopping:
            self._spawn(child, delay=0.0, restart=False)
        return child

    def make_temporary(self, child: Child) -> None:
        """When this child's kernel exits, remove the child instead of restarting it (a
        session's kernel: its state is gone with it, so it is never handed to anyone)."""
        child.temporary = True

    async def remove_child(self, child: Child) -> None:
        """Stop a child for good (a closed session's kernel) and forget it. Returns once
        its kernel is gone; removing a removed child does nothing."""
        await self._stop_child(child, SlotEvent.REMOVE)

    def remove_child_soon(self, child: Child) -> None:
        """:meth:`remove_child` without waiting: the kernel is on its way out on return
        (for a caller that is being cancelled)."""
        self._begin_stop(child, SlotEvent.REMOVE)

    async def restart_child(self, child: Child) -> None:
        """An operator's restart: stop the kernel now and start it again at once,
        clearing its failure streak (a ``dead`` kernel comes back too)."""
        await self._stop_child(child, SlotEvent.STOP)
        if self._stopping or child.state not in (SlotState.STOPPED, SlotState.DEAD):
            return  # removed meanwhile, or another restart got there first
        child.policy.reset()
        self._spawn(child, delay=0.0, restart=True, count=False)

    def child(self, kernel_id: str) -> Child | None:
        return next((c for c in self.children if c.id == kernel_id), None)

    @property
    def quiet(self) -> bool:
        """No child has a kernel or a pending restart of its own (after :meth:`stop`)."""
        return not any(c.state in ACTIVE for c in self.children)

    # ------------------------------------------------------------------- incarnations
    def _transition(self, child: Child, event: SlotEvent) -> None:
        child.state = transition(child.state, event)
        if child.state is SlotState.REMOVED and child in self.children:
            self.children.remove(child)
            self._policies.pop(child.id, None)  # bounded: only live slots have one

    def _spawn(self, child: Child, *, delay: float, restart: bool, count: bool = True) -> None:
        assert self._nursery is not None
        if delay > 0:
            self._transition(child, SlotEvent.BACK_OFF)
            child.next_try = trio.current_time() + delay
        else:
            self._transition(child, SlotEvent.START)
        child.generation += 1
        child.used = False
        # Made here, not in the task: a stop before the task runs must reach it.
        child.scope = scope = trio.CancelScope()
        after, gate = self._last_gate, trio.Event()
        if delay == 0:
            self._last_gate = gate
        else:
            after = _SET
        self._nursery.start_soon(
            self._incarnation, child, scope, delay, restart, count, after, gate
        )

    async def _incarnation(
        self,
        child: Child,
        scope: trio.CancelScope,
        delay: float,
        restart: bool,
        count: bool,
        after: trio.Event,
        gate: trio.Event,
    ) -> None:
        cause: ExitCause | None = None
        exit_seen = False
        try:
            with scope:
                if delay > 0:
                    self._notify(child)
                    await trio.sleep(delay)
                child.next_try = None
                if restart:
                    child.restarts += 1
                    if count and self.window.record(trio.current_time()):
                        self._escalate(child)
                        return
                if child.state is SlotState.BACKOFF:
                    self._transition(child, SlotEvent.START)
                await after.wait()
                if self._stopping:
                    return  # stopped while it waited its turn: it never launches
                cause, exit_seen = await self._run_once(child, gate)
        finally:
            gate.set()
            child.scope = None
            child.handle = None
            self._transition(child, SlotEvent.ENDED)
            # A cause means the body ran to its end: no exception is on its way out.
            if cause is not None and not scope.cancelled_caught:
                self._on_exit(child, cause, exit_seen)
            self._notify(child)

    async def _run_once(self, child: Child, gate: trio.Event) -> tuple[ExitCause, bool]:
        """Start the kernel and run it to its end; return why it ended, and whether
        its exit was already reported (published) before the end."""
        t0 = trio.current_time()
        self._publish(ev.KERNEL_STARTING, child, restarts=child.restarts)
        self._notify(child)
        box: dict[str, ExitCause] = {}
        exit_seen = False

        def on_exit(cause: ExitCause) -> None:
            nonlocal exit_seen
            if child.handle is None or exit_seen:
                return  # a start failure: reported as kernel_start_failed instead
            exit_seen = True
            self._exit_seen(child, cause)

        async def runner(task_status: trio.TaskStatus[ChildHandle]) -> None:
            gate.set()
            box["cause"] = await self._start(child.id, on_exit=on_exit, task_status=task_status)

        failure: KernelStartError | None = None
        try:
            async with trio.open_nursery() as n:
                try:
                    child.handle = await n.start(runner)
                except KernelStartError as exc:
                    failure = exc
                else:
                    now = trio.current_time()
                    child.start_error = None
                    child.started_at = now
                    child.policy.on_started(now)
                    self._transition(child, SlotEvent.READY)
                    self._publish(
                        ev.KERNEL_STARTED,
                        child,
                        pid=child.handle.pid,
                        start_s=round(now - t0, 4),
                        restarts=child.restarts,
                    )
                    self._notify(child)
        finally:
            child.handle = None
        if failure is not None:
            child.start_error = failure.message
            cause = failure.data.get("cause")
            if not isinstance(cause, ExitCause):
                cause = ExitCause("start_failure", detail=str(failure))
            self._publish(
                ev.KERNEL_START_FAILED, child, cause=cause.to_dict(), message=str(failure)
            )
            return cause, False
        return box["cause"], exit_seen

    def _exit_seen(self, child: Child, cause: ExitCause) -> None:
        """The child reports its death the moment it sees it, before its clean-up:
        publish it, and let the router stop using it (a spare steps in) at once."""
        child.last_exit = cause
        self._publish(
            ev.KERNEL_EXITED,
            child,
            cause=cause.to_dict(),
            text=cause.describe(),
            restarts=child.restarts,
        )
        self._transition(child, SlotEvent.EXIT_SEEN)
        self._notify(child)

    def _on_exit(self, child: Child, cause: ExitCause, published: bool) -> None:
        """The incarnation ended by itself: decide what comes next (see core/slot.py)."""
        now = trio.current_time()
        child.last_exit = cause
        child.started_at = None
        if not published:
            self._publish(
                ev.KERNEL_EXITED,
                child,
                cause=cause.to_dict(),
                text=cause.describe(),
                restarts=child.restarts,
            )
        if child.state is not SlotState.EXITED or self._stopping:
            return  # we stopped it ourselves, or the whole pool is stopping
        if child.temporary:
            self._transition(child, SlotEvent.DISCARD)
            return
        decision = child.policy.on_exit(now, cause)
        if isinstance(decision, GiveUp | NoRestart):
            self._transition(child, SlotEvent.GIVE_UP)
            if isinstance(decision, GiveUp):
                self._publish(ev.GAVE_UP, child, reason=decision.reason)
            return
        assert isinstance(decision, Restart)
        self._publish(
            ev.RESTART_SCHEDULED,
            child,
            delay=round(decision.delay, 4),
            attempt=decision.attempt,
            next_try=time.time() + decision.delay,
        )
        strategy = self.supervision.strategy
        if strategy == "one_for_one":
            self._spawn(child, delay=decision.delay, restart=True)
            return
        self._transition(child, SlotEvent.HOLD)
        index = self.children.index(child)
        group = [
            c
            for c in (self.children if strategy == "one_for_all" else self.children[index:])
            if not c.temporary and c.state not in (SlotState.REMOVING, SlotState.REMOVED)
        ]
        assert self._nursery is not None
        self._nursery.start_soon(self._group_restart, child, group, decision.delay)

    async def _group_restart(self, failed: Child, group: list[Child], delay: float) -> None:
        for other in reversed(group):
            if other is not failed:
                await self._stop_child(other, SlotEvent.STOP)
        if self._stopping:
            return
        # Those now stopped (or dead) wait for the group; one restarted meanwhile by an
        # operator, or removed, is left alone.
        next_try = trio.current_time() + delay if delay > 0 else None
        for c in group:
            if c.state in (SlotState.STOPPED, SlotState.DEAD):
                self._transition(c, SlotEvent.HOLD)
            if c.state is SlotState.HELD:
                c.next_try = next_try
                self._notify(c)
        with trio.CancelScope() as scope:
            self._group_scope = scope
            await trio.sleep(delay)
        if scope.cancelled_caught or self._stopping:
            return
        if self.window.record(trio.current_time()):
            self._escalate(failed)
            return
        for c in group:
            if c.state is SlotState.HELD:
                self._spawn(c, delay=0.0, restart=False)
                c.restarts += 1

    async def _stop_child(self, child: Child, event: SlotEvent) -> None:
        """STOP or REMOVE a child: a graceful stop of its current incarnation, or the
        cancel of a start or a pending backoff; returns once the incarnation is over."""
        self._begin_stop(child, event)
        while child.state in _ENDING:
            await self._changed.wait()

    def _begin_stop(self, child: Child, event: SlotEvent) -> None:
        """The part of :meth:`_stop_child` that does not wait: the transition, and the
        shutdown (or cancel) of the incarnation."""
        before = child.state
        self._transition(child, event)
        if child.state not in _ENDING:
            if child.state is not before:
                self._notify(child)
            return
        if child.handle is not None:
            child.handle.shutdown()
        elif child.scope is not None:
            child.scope.cancel()

    def _escalate(self, child: Child) -> None:
        s = self.supervision
        self._escalation = (
            f"more than {s.intensity} restarts within {s.period:g} s "
            f"(last: {child.id}, {child.last_exit})"
        )
        self._publish(ev.POOL_ESCALATED, None, reason=self._escalation)
        self._stop.set()

    async def _stop_all(self) -> None:
        self._stopping = True
        if self._group_scope is not None:
            self._group_scope.cancel()
        for child in reversed(list(self.children)):
            await self._stop_child(child, SlotEvent.STOP)

    async def _settled(self, child: Child) -> None:
        """Wait until a fresh child is ready, dead, gone, or has failed a start (it keeps
        retrying with backoff, but nobody should wait on it: see Pool.unavailable)."""
        settled = (SlotState.DEAD, SlotState.REMOVING, SlotState.REMOVED)
        while not (
            child.ready
            or child.state in settled
            or child.start_error is not None
            or self._stop.is_set()
        ):
            await self._changed.wait()

    # ------------------------------------------------------------------- events
    def _notify(self, child: Child) -> None:
        """A child changed state: tell the router, wake whoever waits for a change."""
        self._on_change(child)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait for the next change of any child's state."""
        await self._changed.wait()

    def _publish(self, kind: str, child: Child | None, **data: Any) -> None:
        self._bus.publish(kind, pool=self.name, kernel_id=child.id if child else None, **data)
