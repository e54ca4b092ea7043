"""The kernel actor's watchdogs against a real zmq heartbeat peer and real processes.

The peer is a ROUTER in the test's trio run that echoes pings for as long as the test
lets it: the tests count pings, never measure time.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import psutil
import trio
import zmq

from kernelsup.adapters.containment import Limits, Unit
from kernelsup.adapters.zmqio import Socket, context
from kernelsup.tree.watchdogs import watch_heartbeat, watch_memory

INTERVAL = 0.05


@attrs.define
class Echo:
    """A heartbeat peer: answers ``answer`` pings, then goes quiet (frozen); or, with
    ``stale``, answers each ping with the previous one's payload."""

    answer: int = 10**9
    stale: bool = False
    answered: int = 0
    seen: int = 0
    enough: trio.Event = attrs.field(factory=trio.Event)

    async def serve(self, router: Socket, enough_after: int) -> None:
        previous = b"never-sent"
        while True:
            ident, ping = await router.recv_multipart()
            self.seen += 1
            if self.answered < self.answer:
                await router.send_multipart([ident, previous if self.stale else ping])
                self.answered += 1
            previous = ping
            if self.seen >= enough_after:
                self.enough.set()


@asynccontextmanager
async def heartbeat_pair() -> AsyncIterator[tuple[Socket, Socket]]:
    address = f"inproc://watchdog-{uuid.uuid4().hex}"
    with (
        Socket(context().socket(zmq.ROUTER)) as router,
        Socket(context().socket(zmq.DEALER)) as dealer,
    ):
        router.zmq.bind(address)
        dealer.zmq.connect(address)
        yield dealer, router


async def test_an_answering_peer_is_never_frozen() -> None:
    """Ten pings answered, and no verdict: a freeze would need the test's own process to
    stall for three 0.2 s intervals, so a loaded machine cannot fake one."""
    echo = Echo()
    verdicts: list[object] = []

    async def watch(dealer: Socket) -> None:
        verdicts.append(await watch_heartbeat(dealer, 0.2, 3))

    async with heartbeat_pair() as (dealer, router), trio.open_nursery() as nursery:
        nursery.start_soon(echo.serve, router, 10)
        nursery.start_soon(watch, dealer)
        with trio.fail_after(30):
            await echo.enough.wait()
        nursery.cancel_scope.cancel()
    assert echo.answered >= 10
    assert verdicts == []


async def test_a_peer_that_stops_answering_is_frozen() -> None:
    echo = Echo(answer=5)
    missed: list[int] = []
    async with heartbeat_pair() as (dealer, router), trio.open_nursery() as nursery:
        nursery.start_soon(echo.serve, router, 10**9)
        with trio.fail_after(30):
            cause = await watch_heartbeat(dealer, INTERVAL, 3, lambda: missed.append(1))
        nursery.cancel_scope.cancel()
    assert cause.kind == "heartbeat"
    assert cause.detail.startswith("no heartbeat reply for ")
    assert cause.detail.endswith("(limit 3 x 0.05 s)")
    assert echo.answered == 5
    assert missed  # each unanswered ping was reported


async def test_replies_to_older_pings_do_not_count() -> None:
    echo = Echo(stale=True)
    async with heartbeat_pair() as (dealer, router), trio.open_nursery() as nursery:
        nursery.start_soon(echo.serve, router, 10**9)
        with trio.fail_after(30):
            cause = await watch_heartbeat(dealer, INTERVAL, 3)
        nursery.cancel_scope.cancel()
    assert cause.kind == "heartbeat"
    assert echo.answered >= 5  # every ping got an answer, each one ping late


async def test_memory_over_the_limit_counts_children_too() -> None:
    """The parent is small; its child holds 80 MB. A 50 MB limit catches the tree."""
    code = (
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', "
        "'b = bytearray(80 * 2**20); import time; time.sleep(60)'])\n"
    )
    proc = await trio.lowlevel.open_process([sys.executable, "-c", code])
    try:
        with trio.fail_after(30):
            unit = Unit("subreaper", {}, Limits())
            unit.pid = proc.pid
            cause = await watch_memory(unit.memory_bytes, 50)
        assert cause is not None and cause.kind == "limit"
        assert cause.detail.endswith("exceeded memory_limit_mb = 50")
    finally:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in family:
            p.kill()
        await trio.to_thread.run_sync(lambda: psutil.wait_procs(family, timeout=10))
        await proc.wait()


class StallingSocket(Socket):
    """A socket whose next ``stalls`` sends first stop the whole trio loop for ``stall``
    seconds: the supervisor busy elsewhere (one huge output message to parse) at the
    moment a ping goes out."""

    stalls = 0
    stall = 1.0

    async def send_multipart(self, frames: Sequence[bytes]) -> None:
        await trio.lowlevel.checkpoint()
        if self.stalls:
            self.stalls -= 1
            time.sleep(self.stall)  # noqa: ASYNC251 -- the fault: a stalled loop
        await super().send_multipart(frames)


async def test_a_stalled_supervisor_does_not_blame_the_kernel() -> None:
    """The loop stops for longer than the whole limit (3 x 0.2 s) around three pings
    while the peer answers every one: that proves nothing about the kernel."""
    echo = Echo(stale=False)
    verdicts: list[object] = []
    address = f"inproc://watchdog-{uuid.uuid4().hex}"
    with (
        Socket(context().socket(zmq.ROUTER)) as router,
        StallingSocket(context().socket(zmq.DEALER)) as dealer,
    ):
        router.zmq.bind(address)
        dealer.zmq.connect(address)

        async def watch() -> None:
            verdicts.append(await watch_heartbeat(dealer, 0.2, 3))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo.serve, router, 10**9)
            nursery.start_soon(watch)
            for _ in range(3):
                answered = echo.answered
                with trio.fail_after(30):
                    while echo.answered < answered + 3 and not verdicts:  # healthy rounds
                        await trio.sleep(0.01)
                dealer.stalls = 1
            with trio.fail_after(30):
                while echo.answered < answered + 10 and not verdicts:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert verdicts == []
