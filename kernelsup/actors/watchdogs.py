"""The kernel actor's two watchdogs: is the kernel frozen, is it over its memory limit?

Each runs beside the kernel until it finds the kernel at fault and returns the
:class:`ExitCause` to finish it with; the actor cancels them when the kernel ends for any
other reason. Neither ever touches the process: killing is the actor's job.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil
import trio

from kernelsup.jupyter import zmqio
from kernelsup.results import ExitCause

# How often a kernel's memory (its whole process tree) is checked against memory_limit_mb:
# often enough that a runaway allocation is stopped within a few hundred MB of the limit.
MEMORY_POLL_S = 0.2


async def watch_heartbeat(sock: zmqio.Socket, interval: float, misses: int,
                          on_miss: Callable[[], None] = lambda: None) -> ExitCause:
    """Ping the kernel's heartbeat socket until it is frozen; return the ``heartbeat`` cause.

    Frozen = no reply for ``misses * interval`` seconds. Pings go out every half interval,
    each waiting at most that long, so a freeze is seen between ``(misses - 0.5)`` and
    ``(misses + 0.5)`` intervals after it began (whenever it falls between two pings),
    never later. A reply to an older ping does not count. ``on_miss`` is called for each
    ping left unanswered.
    """
    period = interval / 2
    limit = interval * misses
    last_reply = trio.current_time()
    seq = 0
    while True:
        seq += 1
        ping = b"kernelsup-%d" % seq
        sent_at = trio.current_time()
        await sock.send_multipart([ping])
        answered = False
        with trio.move_on_at(sent_at + period):
            while not answered:
                frames = await sock.recv_multipart()
                answered = bool(frames) and frames[-1] == ping
        now = trio.current_time()
        if answered:
            last_reply = now
            await trio.sleep_until(sent_at + period)
            continue
        on_miss()
        if now - last_reply >= limit:
            return ExitCause("heartbeat", detail=(
                f"no heartbeat reply for {now - last_reply:.2f} s "
                f"(limit {misses} x {interval:g} s)"))


async def watch_memory(pid: int, limit_mb: int) -> ExitCause | None:
    """Poll the resident memory of ``pid`` and all its descendants; return the ``limit``
    cause once it exceeds ``limit_mb``, or None if the process is already gone."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    while True:
        used = _tree_rss(root)
        if used > limit_mb * 2**20:
            return ExitCause("limit", detail=f"memory {used / 2**20:.0f} MB exceeded "
                                             f"memory_limit_mb = {limit_mb}")
        await trio.sleep(MEMORY_POLL_S)


def _tree_rss(root: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # exited meanwhile
    return total


__all__ = ["MEMORY_POLL_S", "watch_heartbeat", "watch_memory"]
