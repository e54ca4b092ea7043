"""The pool supervisor in virtual time, with scripted children.

Test names follow the Erlang/OTP supervisor_SUITE cases they port (one_for_one,
one_for_all, rest_for_one, restart intensity/escalation, child shutdown order).
Real kernels are exercised in test_supervisor_kernels.py.
"""

from __future__ import annotations

import itertools
import random
import sys
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from kernelsup.core.config import RestartConfig, Supervision
from kernelsup.core.errors import KernelStartError
from kernelsup.core.results import ExitCause
from kernelsup.core.slot import SlotState
from kernelsup.tree.bus import EventBus
from kernelsup.tree.pool_supervisor import PoolEscalated, PoolSupervisor

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

START_S = 0.5  # virtual seconds a scripted child takes to become ready


class ScriptedKernel:
    """A child handle whose exit the test decides."""

    _pids = itertools.count(1000)

    def __init__(self, kernel_id: str) -> None:
        self.kernel_id = kernel_id
        self.pid = next(self._pids)
        self.state = "idle"
        self.cause: ExitCause | None = None
        self.exited = trio.Event()

    def shutdown(self) -> None:
        self.exit(ExitCause("normal", code=0))

    def kill(self, reason: str = "killed") -> None:
        self.exit(ExitCause("failure", signal=9, detail=reason))

    def exit(self, cause: ExitCause) -> None:
        if self.cause is None:
            self.cause = cause
        self.exited.set()


@attrs.define
class Factory:
    """Starts scripted children and logs every start and stop, in order."""

    log: list[tuple[str, str]] = attrs.field(factory=list)
    live: dict[str, ScriptedKernel] = attrs.field(factory=dict)
    failing_starts: set[str] = attrs.field(factory=set)

    async def start(
        self,
        kernel_id: str,
        *,
        on_exit: Any = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> ExitCause:
        self.log.append(("start", kernel_id))
        await trio.sleep(START_S)
        if kernel_id in self.failing_starts:
            self.log.append(("start_failed", kernel_id))
            raise KernelStartError(
                "scripted start failure",
                code="start_failure",
                cause=ExitCause("start_failure", code=3),
            )
        k = ScriptedKernel(kernel_id)
        self.live[kernel_id] = k
        try:
            task_status.started(k)
            await k.exited.wait()
            assert k.cause is not None
            return k.cause
        finally:
            self.log.append(("stop", kernel_id))
            self.live.pop(kernel_id, None)

    def crash(self, kernel_id: str) -> None:
        self.live[kernel_id].exit(ExitCause("failure", signal=9))

    def stops(self) -> list[str]:
        return [k for what, k in self.log if what == "stop"]

    def starts(self) -> list[str]:
        return [k for what, k in self.log if what == "start"]


def make_sup(
    factory: Factory,
    *,
    strategy: str = "one_for_one",
    intensity: int = 10,
    period: float = 60.0,
    **restart: Any,
) -> PoolSupervisor:
    return PoolSupervisor(
        "p",
        factory.start,
        RestartConfig(**restart),
        Supervision(strategy, intensity, period),  # type: ignore[arg-type]
        EventBus(),
        rng=random.Random(0),
    )


async def wait_until(sup: PoolSupervisor, predicate: Any) -> None:
    while not predicate():
        await sup.wait_changed()


async def run(sup: PoolSupervisor, nursery: trio.Nursery, n: int) -> None:
    """Add ``n`` children and start the supervisor (returns once they are ready)."""
    for _ in range(n):
        sup.add_child()
    await nursery.start(sup.run)


async def test_start_order_and_reverse_stop_order(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f)
    async with trio.open_nursery() as n:
        await run(sup, n, 3)
        assert f.starts() == ["p-0", "p-1", "p-2"]
        assert all(c.ready for c in sup.children)
        sup.stop()
    assert f.stops() == ["p-2", "p-1", "p-0"]


async def test_one_for_one(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f)
    async with trio.open_nursery() as n:
        await run(sup, n, 3)
        pids = {c.id: c.handle.pid for c in sup.children if c.handle}
        f.crash("p-1")
        c1 = sup.child("p-1")
        assert c1 is not None
        await wait_until(sup, lambda: c1.ready and c1.restarts == 1)
        assert f.starts() == ["p-0", "p-1", "p-2", "p-1"]
        assert f.stops() == ["p-1"]
        assert c1.handle is not None and c1.handle.pid != pids["p-1"]
        assert [c.handle.pid for c in sup.children if c.id != "p-1" and c.handle] == [
            pids["p-0"],
            pids["p-2"],
        ]
        assert c1.last_exit == ExitCause("failure", signal=9)
        sup.stop()


async def test_one_for_all(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f, strategy="one_for_all")
    async with trio.open_nursery() as n:
        await run(sup, n, 3)
        f.log.clear()
        f.crash("p-1")
        await wait_until(sup, lambda: all(c.ready and c.restarts == 1 for c in sup.children))
        # the failed one first, then the others in reverse start order; restart in order
        assert f.stops() == ["p-1", "p-2", "p-0"]
        assert f.starts() == ["p-0", "p-1", "p-2"]
        assert sup.window.count(trio.current_time()) == 1  # a group restart counts once
        sup.stop()


async def test_rest_for_one(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f, strategy="rest_for_one")
    async with trio.open_nursery() as n:
        await run(sup, n, 4)
        p0 = sup.children[0].handle
        f.log.clear()
        f.crash("p-1")
        await wait_until(
            sup, lambda: all(c.ready for c in sup.children) and sup.children[3].restarts == 1
        )
        assert f.stops() == ["p-1", "p-3", "p-2"]
        assert f.starts() == ["p-1", "p-2", "p-3"]
        assert sup.children[0].handle is p0 and sup.children[0].restarts == 0
        sup.stop()


async def test_backoff_grows_then_gives_up(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f, min_delay=1.0, max_delay=8.0, multiplier=2.0, jitter="none", max_retries=3)
    async with trio.open_nursery() as n:
        await run(sup, n, 2)
        c0 = sup.children[0]
        delays = []
        for _ in range(3):
            f.crash("p-0")
            await wait_until(sup, lambda: c0.state is SlotState.BACKOFF)
            assert c0.next_try is not None
            delays.append(round(c0.next_try - trio.current_time(), 6))
            await wait_until(sup, lambda: c0.ready)
        assert delays == [1.0, 2.0, 4.0]
        f.crash("p-0")
        await wait_until(sup, lambda: c0.state is SlotState.DEAD)
        assert c0.status == "dead"
        assert sup.children[1].ready  # the sibling is untouched
        sup.stop()


async def test_restart_escalation_when_starts_keep_failing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Factory()
    sup = make_sup(f, intensity=3, period=60.0, max_retries=-1, min_delay=0.0)
    with pytest.RaisesGroup(PoolEscalated) as info:
        async with trio.open_nursery() as n:
            await run(sup, n, 2)
            f.failing_starts.add("p-0")
            f.crash("p-0")
            await trio.sleep_forever()
    assert "more than 3 restarts within 60 s" in str(info.value.exceptions[0])
    assert f.starts().count("p-0") == 1 + 3  # the first start and 3 restarts; the 4th trips
    assert "p-1" in f.stops()  # the healthy sibling was stopped too
    assert f.live == {}


async def test_pending_backoff_cancelled_by_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Factory()
    sup = make_sup(f, min_delay=1000.0, max_delay=1000.0, jitter="none")
    async with trio.open_nursery() as n:
        await run(sup, n, 1)
        f.crash("p-0")
        await wait_until(sup, lambda: sup.children[0].state is SlotState.BACKOFF)
        t0 = trio.current_time()
        sup.stop()
    assert trio.current_time() - t0 < 1.0
    assert f.starts() == ["p-0"]


async def test_temporary_child_is_removed(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f)
    async with trio.open_nursery() as n:
        await run(sup, n, 1)
        c = sup.add_child()
        sup.make_temporary(c)
        await wait_until(sup, lambda: c.ready)
        f.crash(c.id)
        await wait_until(sup, lambda: c.state is SlotState.REMOVED)
        assert c not in sup.children
        assert f.starts().count(c.id) == 1
        sup.stop()


async def test_used_belongs_to_one_incarnation(autojump_clock: trio.testing.MockClock) -> None:
    """``used`` (the kernel ran a user request) is cleared by every new incarnation: a
    crash restart, an operator's restart, a group restart."""
    f = Factory()
    sup = make_sup(f, strategy="one_for_all")
    async with trio.open_nursery() as n:
        await run(sup, n, 2)
        a, b = sup.children
        assert not a.used and not b.used
        a.mark_used()
        b.mark_used()
        f.crash(a.id)  # one_for_all: both restart
        await wait_until(sup, lambda: a.ready and b.ready and a.generation == b.generation == 2)
        assert not a.used and not b.used
        a.mark_used()
        await sup.restart_child(a)
        assert not a.used  # a new incarnation is starting
        await wait_until(sup, lambda: a.ready)
        assert not a.used and a.generation == 3
        sup.stop()


async def test_remove_child_soon_does_not_wait(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f)
    async with trio.open_nursery() as n:
        await run(sup, n, 1)
        c = sup.add_child()  # removed while it starts
        await trio.sleep(START_S / 2)
        t0 = trio.current_time()
        sup.remove_child_soon(c)
        assert trio.current_time() == t0
        assert c.state is SlotState.REMOVING
        await wait_until(sup, lambda: c.state is SlotState.REMOVED)
        assert c not in sup.children and f.stops() == []  # it never got to run
        d = sup.add_child()
        await wait_until(sup, lambda: d.ready)
        sup.remove_child_soon(d)  # a running one is asked to shut down
        await wait_until(sup, lambda: d.state is SlotState.REMOVED)
        assert f.stops() == [d.id]
        sup.stop()


async def test_operator_restart_revives_dead_child(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f, max_retries=0)
    async with trio.open_nursery() as n:
        await run(sup, n, 1)
        c = sup.children[0]
        f.crash("p-0")
        await wait_until(sup, lambda: c.state is SlotState.DEAD)
        await sup.restart_child(c)
        await wait_until(sup, lambda: c.ready)
        assert c.restarts == 1 and c.state is SlotState.RUNNING
        sup.stop()


async def test_backoff_and_window_interaction(autojump_clock: trio.testing.MockClock) -> None:
    """policy.py's worked example: with delays 1, 2, 4, ... capped at 30 and intensity 10
    in 60 s, a crash loop never trips the window; with intensity 3 the burst does."""
    for intensity, trips in [(10, False), (3, True)]:
        f = Factory()
        sup = make_sup(
            f,
            intensity=intensity,
            period=60.0,
            min_delay=1.0,
            max_delay=30.0,
            multiplier=2.0,
            jitter="none",
            max_retries=12,
        )
        escalated = False
        try:
            async with trio.open_nursery() as n:
                await run(sup, n, 1)
                c = sup.children[0]
                while c.state is not SlotState.DEAD:
                    if c.ready:
                        f.crash("p-0")
                    await sup.wait_changed()
                sup.stop()
        except BaseExceptionGroup as group:
            assert group.subgroup(PoolEscalated) is not None
            escalated = True
        assert escalated is trips, intensity


async def test_group_waits_held_then_restarts(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f, strategy="one_for_all", min_delay=5.0, max_delay=5.0, jitter="none")
    async with trio.open_nursery() as n:
        await run(sup, n, 3)
        f.crash("p-1")
        await wait_until(sup, lambda: all(c.state is SlotState.HELD for c in sup.children))
        now = trio.current_time()
        assert [c.status for c in sup.children] == ["backoff"] * 3
        assert all(c.next_try == now + 5.0 for c in sup.children)
        await wait_until(sup, lambda: all(c.ready for c in sup.children))
        assert trio.current_time() - now == 5.0 + START_S  # the delay, then a start
        assert [c.restarts for c in sup.children] == [1, 1, 1]
        sup.stop()


async def test_stop_before_the_incarnation_runs(autojump_clock: trio.testing.MockClock) -> None:
    """A child removed in the same step it was added never starts a kernel."""
    f = Factory()
    sup = make_sup(f)
    async with trio.open_nursery() as n:
        await run(sup, n, 1)
        c = sup.add_child()
        assert c.state is SlotState.STARTING
        with trio.fail_after(1):
            await sup.remove_child(c)
        assert c.state is SlotState.REMOVED and c not in sup.children
        assert c.id not in f.starts()
        sup.stop()


async def test_two_operator_restarts_start_one_kernel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Factory()
    sup = make_sup(f)
    async with trio.open_nursery() as n:
        await run(sup, n, 1)
        c = sup.children[0]
        async with trio.open_nursery() as both:
            both.start_soon(sup.restart_child, c)
            both.start_soon(sup.restart_child, c)
        await wait_until(sup, lambda: c.ready)
        await trio.sleep(10 * START_S)  # a second incarnation would have started by now
        assert f.starts() == ["p-0", "p-0"]
        assert c.restarts == 1 and c.generation == 2
        sup.stop()


async def test_operator_restart_of_a_held_child_is_not_started_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f = Factory()
    sup = make_sup(f, strategy="one_for_all", min_delay=5.0, max_delay=5.0, jitter="none")
    async with trio.open_nursery() as n:
        await run(sup, n, 2)
        f.crash("p-0")
        await wait_until(sup, lambda: all(c.state is SlotState.HELD for c in sup.children))
        c1 = sup.children[1]
        await sup.restart_child(c1)  # started now, not with its group
        await wait_until(sup, lambda: all(c.ready for c in sup.children))
        await trio.sleep(10.0)
        assert f.starts().count("p-1") == 2 and f.starts().count("p-0") == 2
        assert c1.generation == 2
        sup.stop()


async def test_status_follows_the_slot(autojump_clock: trio.testing.MockClock) -> None:
    f = Factory()
    sup = make_sup(f, min_delay=1.0, max_delay=1.0, jitter="none", max_retries=0)
    c = sup.add_child()
    assert (c.state, c.status) == (SlotState.NEW, "starting")
    async with trio.open_nursery() as n:
        await n.start(sup.run)
        assert (c.state, c.status) == (SlotState.RUNNING, "idle")
        f.crash("p-0")
        await wait_until(sup, lambda: c.state is SlotState.DEAD)
        assert c.status == "dead" and c.handle is None
        sup.stop()
    assert c.state is SlotState.DEAD  # a dead child has nothing to stop


async def test_nothing_starts_after_stop(autojump_clock: trio.testing.MockClock) -> None:
    """A kernel that dies in the moment between stop() (SIGTERM) and the supervisor's own
    wake-up is not restarted, and a refill added then is not started either."""
    f = Factory()
    sup = make_sup(f, min_delay=0.0)
    async with trio.open_nursery() as n:
        await run(sup, n, 2)
        f.crash("p-0")  # dies just as the stop comes in (either order)
        sup.stop()
        sup.add_child()  # a refill asked for at that moment
    assert f.starts() == ["p-0", "p-1"]
    assert all(c.handle is None for c in sup.children)
