"""kernelsup's side of the benchmarks: start a tree, wait for it to settle, kill a kernel
and collect what the event bus says about it.

Event times are the bus's wall-clock ``time`` (``time.time()``), so every interval here is
measured against a ``time.time()`` taken just before the signal was sent.
"""

from __future__ import annotations

import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

import kernelsup
from kernelsup.core import events as ev
from kernelsup.tree.bus import EventBus, Subscription

# Bound on any one wait for kernels to (re)start: a broken run fails instead of hanging.
SETTLE_TIMEOUT_S = 120.0
# Pause after kernels are ready before the next measurement: ipykernel finishes some
# start-up work in the background after its first reply.
SETTLE_PAUSE_S = 0.2


@asynccontextmanager
async def supervisor(
    config: dict[str, Any],
    runtime_dir: Path,
) -> AsyncIterator[tuple[kernelsup.Supervisor, EventBus]]:
    """An in-process tree on its own bus; stopped (kernels killed if need be) on exit."""
    bus = EventBus()
    cfg = kernelsup.Config.from_dict(config)
    _private_dir(runtime_dir)
    try:
        async with kernelsup.open_supervisor(cfg, runtime_dir=runtime_dir, bus=bus) as sup:
            yield sup, bus
    finally:
        bus.close()


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


async def kernels(sup: Any, pool: str | None = None) -> list[dict[str, Any]]:
    """The status JSON's kernels (of ``pool``); ``sup.status()`` may be sync or async."""
    st = sup.status()
    if inspect.isawaitable(st):
        st = await st
    data = st.to_dict() if hasattr(st, "to_dict") else st
    return [k for k in data["kernels"] if pool is None or k["pool"] == pool]


async def settle(
    sup: Any, pool: str | None = None, *, pause: float = SETTLE_PAUSE_S, exclude: Iterable[int] = ()
) -> list[dict[str, Any]]:
    """Wait until every kernel (of ``pool``) is idle with a pid not in ``exclude``."""
    gone = set(exclude)
    with trio.fail_after(SETTLE_TIMEOUT_S):
        while True:
            ks = await kernels(sup, pool)
            if ks and all(k["state"] == "idle" and k["pid"] not in gone for k in ks):
                break
            await trio.sleep(0.01)
    await trio.sleep(pause)
    return await kernels(sup, pool)


@attrs.define
class KillTrace:
    """What happened to the killed kernels, in seconds after the signal."""

    t_signal: float
    exited: dict[str, float] = attrs.field(factory=dict)
    started: dict[str, float] = attrs.field(factory=dict)
    causes: dict[str, str] = attrs.field(factory=dict)


async def watch(sub: Subscription, trace: KillTrace, ids: set[str], done: trio.Event) -> None:
    """Record the first exit and the next start of each kernel in ``ids``; set ``done``
    when every one of them has started again."""
    async for e in sub:
        if e.kernel_id not in ids:
            continue
        if e.kind == ev.KERNEL_EXITED and e.kernel_id not in trace.exited:
            trace.exited[e.kernel_id] = e.time - trace.t_signal
            trace.causes[e.kernel_id] = str(e.data.get("text", "?"))
        elif e.kind == ev.KERNEL_STARTED and e.kernel_id in trace.exited:
            trace.started.setdefault(e.kernel_id, e.time - trace.t_signal)
            if set(trace.started) >= ids:
                done.set()
                return


def send(pids: Iterable[int], sig: int) -> float:
    """Signal each pid; returns the wall-clock time taken just before the first one."""
    t = time.time()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return t


def sigkill() -> int:
    return int(signal.SIGKILL)


def sigstop() -> int:
    return int(signal.SIGSTOP)
