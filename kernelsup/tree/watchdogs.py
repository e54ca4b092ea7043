"""The kernel actor's two watchdogs: is the kernel frozen, is it over its memory limit?

Each runs beside the kernel until it finds the kernel at fault and returns the
:class:`ExitCause` to finish it with; the actor cancels them when the kernel ends for any
other reason. Neither ever touches the process: killing is the actor's job.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from kernelsup.adapters import zmqio
from kernelsup.core.results import ExitCause

# How often a kernel's memory (its whole process tree) is checked against memory_limit_mb:
# often enough that a runaway allocation is stopped within a few hundred MB of the limit.
MEMORY_POLL_S = 0.2


async def watch_heartbeat(
    sock: zmqio.Socket, interval: float, misses: int, on_miss: Callable[[], None] = lambda: None
) -> ExitCause:
    """Ping the kernel's heartbeat socket until it is frozen; return the ``heartbeat`` cause.

    Frozen = no reply for ``misses * interval`` seconds. Pings go out every half interval,
    each waiting at most that long, so a freeze is seen between ``(misses - 0.5)`` and
    ``(misses + 0.5)`` intervals after it began (whenever it falls between two pings),
    never later. A reply to an older ping does not count. ``on_miss`` is called for each
    ping left unanswered.

    The supervisor's own loop can stall (parsing one huge output message on a loaded
    machine took seconds, measured): a ping's wait starts once it is sent, and a wait we
    wake from late is given another half interval, so only a kernel that had the whole
    wait to answer in is blamed.
    """
    period = interval / 2
    limit = interval * misses
    last_reply = trio.current_time()
    seq = 0
    while True:
        seq += 1
        ping = b"kernelsup-%d" % seq
        round_start = trio.current_time()
        await sock.send_multipart([ping])
        answered = await _reply_within(sock, ping, period)
        now = trio.current_time()
        if answered:
            last_reply = now
            await trio.sleep_until(round_start + period)
            continue
        on_miss()
        if now - last_reply >= limit:
            return ExitCause(
                "heartbeat",
                detail=(
                    f"no heartbeat reply for {now - last_reply:.2f} s "
                    f"(limit {misses} x {interval:g} s)"
                ),
            )


async def _reply_within(sock: zmqio.Socket, ping: bytes, period: float) -> bool:
    """Wait ``period`` for the reply to ``ping``. Each time we wake more than half a
    period past the deadline (our loop was busy elsewhere), wait another ``period``."""
    deadline = trio.current_time() + period
    while True:
        with trio.move_on_at(deadline):
            while True:
                frames = await sock.recv_multipart()
                if frames and frames[-1] == ping:
                    return True
        now = trio.current_time()
        if now - deadline <= period / 2:
            return False
        deadline = now + period


async def watch_memory(used_bytes: Callable[[], int], limit_mb: int) -> ExitCause:
    """Poll ``used_bytes()`` (the resident memory of a kernel's whole containment unit:
    everything it started, daemons that left its group included); return the ``limit``
    cause once it exceeds ``limit_mb``."""
    while True:
        used = used_bytes()
        if used > limit_mb * 2**20:
            return ExitCause(
                "limit",
                detail=f"memory {used / 2**20:.0f} MB exceeded memory_limit_mb = {limit_mb}",
            )
        await trio.sleep(MEMORY_POLL_S)
