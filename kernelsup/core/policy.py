"""Restart decisions: pure functions and small state machines, no I/O.

Theory of operation
===================

Two layers decide what happens after a kernel exits, and they are kept apart:

1. **Per kernel, when** — :class:`RestartPolicy`. The actor calls ``on_started(now)`` when
   its kernel is ready and ``on_exit(now, cause)`` when it exits or fails to start, and
   gets a decision back: :class:`Restart` (after ``delay`` seconds), :class:`NoRestart`
   (the restart type says the exit is final) or :class:`GiveUp` (too many failures in a
   row: the kernel is ``dead``). Nothing here sleeps or reads a clock; ``now`` is any
   monotonic clock in seconds (``trio.current_time()`` in the actors, a float in tests).

   - Restart types (Erlang): ``permanent`` restarts after every exit, ``transient``
     after every exit but ``normal``, ``temporary`` never (:func:`should_restart`).
   - Every exit that gets a restart counts as a *failure* of the current streak, a
     normal exit of a permanent kernel included (a kernel that keeps quitting loops just
     like one that keeps crashing). A failed start (``start_failure``/``start_timeout``)
     has no uptime and always counts.
   - The streak ends, and the count goes back to 0, when the kernel has been up for
     ``reset_after`` seconds, measured from ``on_started`` to ``on_exit``.
   - Restart ``k`` of a streak (``k = 0, 1, ...``; ``Restart.attempt = k + 1``) waits
     :func:`backoff_delay` ``(k)``: the base ``min(max_delay, min_delay * multiplier**k)``
     with jitter applied inside the cap (``full``: uniform in ``[0, base]``; ``equal``:
     ``base/2`` plus uniform in ``[0, base/2]``; ``none``: ``base``).
   - ``max_retries`` is the number of restarts allowed in one streak: the exit that
     follows restart number ``max_retries`` gives up (``0``: the first failure gives up;
     ``-1``: never give up). After ``GiveUp`` the policy stays given up until ``reset()``.

2. **Per supervisor, whether the supervisor itself is broken** — :class:`IntensityWindow`.
   The supervisor calls ``record(now)`` each time it actually runs a restart (after the
   backoff delay, failed starts included). More than ``intensity`` restarts within the
   last ``period`` seconds (a sliding window: a restart exactly ``period`` seconds old has
   left it) means the supervisor gives up on its children and escalates. The window
   keeps at most ``intensity + 1`` timestamps.

How backoff and the intensity window interact
---------------------------------------------

Take one kernel that dies the moment it starts (a crash loop), and let ``s >= 0`` be the
time from running a restart to seeing the kernel gone (start time plus uptime; about
0.7 s for a failing ipykernel, 0 in the tests). Write ``d_k`` for the jitter-free delay
before restart ``k``, ``I`` for ``intensity`` and ``P`` for ``period``. Restart ``k``
runs at ``t_k = t_(k-1) + s + d_k``, and the window trips at restart ``k >= I`` exactly
when ``t_k - t_(k-I) < P``, i.e. when ``sum(s + d_j for j in k-I+1 .. k) < P``. The delays
never decrease with ``j``, so the smallest of those sums is the first one (``k = I``),
and:

    A crash-looping kernel trips the window  <=>  its streak reaches restart ``I``
    (``max_retries == -1`` or ``max_retries >= I + 1``)  and
    ``I*s + d_1 + d_2 + ... + d_I < P``.

(tests/test_policy.py checks this closed form against a simulation.) Once the delays
have saturated at the cap, consecutive restarts are ``s + max_delay`` apart, at most ``ceil(P / (s +
max_delay))`` of them fall into any window, and the window never trips iff ``I * (s +
max_delay) >= P``; ``max_delay >= P / I`` is enough whatever ``s`` is. So a capped delay
bounds the restart rate at about ``1/max_delay``, and only a burst before saturation can
trip the window.

Worked example: ``min_delay = 1, multiplier = 2, max_delay = 30``, ``intensity = 10``,
``period = 60``, ``s = 0``. The delays are 1, 2, 4, 8, 16, 30, 30, ... and the restarts
run at t = 1, 3, 7, 15, 31, 61, 91, ... Eleven consecutive restarts span at least
``d_1 + ... + d_10 = 2 + 4 + 8 + 16 + 6*30 = 210 s >= 60``: the window never trips, and
after saturation any 60 s window holds at most ``ceil(60/30) = 2`` restarts. With
``intensity = 3`` instead, ``d_1 + d_2 + d_3 = 14 < 60``: the burst t = 1, 3, 7, 15 puts 4
restarts within 14 s and trips the window at t = 15, although the saturated rate
(``3 * 30 = 90 >= 60``) alone never would.

The shipped defaults have ``min_delay = 0``, so every delay is 0 and only ``s`` spaces the
restarts: ``I*s < P`` for any realistic ``s``. One crash-looping kernel still cannot trip
the default window, because ``max_retries = 10`` gives up after 10 restarts and the
window (``intensity = 10``) needs 11; several kernels of one pool can.

The window counts a whole supervisor's restarts, so kernels crash-looping together add
up: ``N`` of them saturated at the cap put at most ``N * ceil(P / (s + max_delay))``
restarts in any window, which never trips while that is ``<= I``. Jitter only shortens
delays: with ``equal`` the guarantees above hold with ``max_delay/2`` and ``d_j/2`` in
place of ``max_delay`` and ``d_j``; with ``full`` a delay can be arbitrarily short, so
they hold on average only and a burst can trip the window by chance.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import TypeAlias

import attrs

from kernelsup.core.config import RestartConfig, RestartType
from kernelsup.core.results import ExitCause

__all__ = [
    "Decision",
    "GiveUp",
    "IntensityWindow",
    "NoRestart",
    "Restart",
    "RestartPolicy",
    "backoff_delay",
    "base_delay",
    "should_restart",
]


@attrs.frozen
class Restart:
    """Start the kernel again after ``delay`` seconds; ``attempt`` counts from 1 within
    the current streak of failures (compare with ``max_retries``)."""

    delay: float
    attempt: int


@attrs.frozen
class GiveUp:
    """Too many failures in a row: the kernel is ``dead`` until someone resets it."""

    reason: str


@attrs.frozen
class NoRestart:
    """The restart type says this exit is final (not a failure of the supervisor)."""

    reason: str


Decision: TypeAlias = Restart | GiveUp | NoRestart


def should_restart(restart_type: RestartType, cause: ExitCause) -> bool:
    """permanent: always; transient: unless the exit was ``normal``; temporary: never."""
    if restart_type == "permanent":
        return True
    if restart_type == "transient":
        return cause.kind != "normal"
    return False


def base_delay(n: int, cfg: RestartConfig) -> float:
    """The jitter-free delay before restart ``n`` (from 0) of a streak:
    ``min(max_delay, min_delay * multiplier**n)``, without overflowing for large ``n``."""
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    if cfg.min_delay == 0.0:
        return 0.0
    try:
        grown = cfg.min_delay * float(cfg.multiplier) ** n
    except OverflowError:
        grown = math.inf
    return min(cfg.max_delay, grown)


def backoff_delay(n: int, cfg: RestartConfig, rng: random.Random) -> float:
    """The delay before restart ``n`` (from 0) of a streak, jitter applied inside the cap.

    Draws one ``rng.uniform`` for ``full`` and ``equal`` jitter, none for ``none``.
    """
    base = base_delay(n, cfg)
    if cfg.jitter == "full":
        return rng.uniform(0.0, base)
    if cfg.jitter == "equal":
        half = base / 2
        return half + rng.uniform(0.0, half)
    return base


class RestartPolicy:
    """When to restart one kernel: backoff, reset after healthy uptime, give-up.

    One per kernel, kept across its restarts. Pure: every method takes ``now``.
    """

    def __init__(self, cfg: RestartConfig, rng: random.Random) -> None:
        self._cfg = cfg
        self._rng = rng
        self._failures = 0
        self._attempt = 0
        self._started_at: float | None = None
        self._given_up = False

    @property
    def config(self) -> RestartConfig:
        return self._cfg

    @property
    def failures(self) -> int:
        """Exits counted in the current streak (the one that gave up included)."""
        return self._failures

    @property
    def attempt(self) -> int:
        """Restarts issued in the current streak: the ``attempt`` of the last Restart."""
        return self._attempt

    @property
    def given_up(self) -> bool:
        return self._given_up

    def on_started(self, now: float) -> None:
        """The kernel became ready (``kernel_info_reply`` received)."""
        self._started_at = now

    def reset(self) -> None:
        """Forget everything, a given-up state included (an operator's manual restart)."""
        self._failures = 0
        self._attempt = 0
        self._started_at = None
        self._given_up = False

    def on_exit(self, now: float, cause: ExitCause) -> Decision:
        """The kernel exited, or failed to start; decide what happens next."""
        started, self._started_at = self._started_at, None
        if started is not None and now - started >= self._cfg.reset_after:
            self._failures = 0
            self._attempt = 0
        if not should_restart(self._cfg.type, cause):
            why = "exited normally" if cause.kind == "normal" else f"exited: {cause}"
            return NoRestart(f"{self._cfg.type} kernel {why}; not restarted")
        if self._given_up:
            return GiveUp(f"already given up; last exit: {cause}")
        self._failures += 1
        limit = self._cfg.max_retries
        if limit != -1 and self._attempt >= limit:
            self._given_up = True
            return GiveUp(
                f"{self._failures} failures in a row (max_retries = {limit}); last exit: {cause}"
            )
        delay = backoff_delay(self._attempt, self._cfg, self._rng)
        self._attempt += 1
        return Restart(delay=delay, attempt=self._attempt)


class IntensityWindow:
    """More than ``intensity`` restarts within ``period`` seconds = a broken supervisor.

    A sliding window over the times restarts actually ran; memory is bounded by
    ``intensity + 1`` timestamps. ``now`` must not go backwards.
    """

    def __init__(self, intensity: int, period: float) -> None:
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0 (got {intensity})")
        if not period > 0:
            raise ValueError(f"period must be > 0 (got {period})")
        self._intensity = intensity
        self._period = period
        self._times: deque[float] = deque(maxlen=intensity + 1)

    @property
    def intensity(self) -> int:
        return self._intensity

    @property
    def period(self) -> float:
        return self._period

    def record(self, now: float) -> bool:
        """Count a restart run at ``now``; True when the window has tripped."""
        self._times.append(now)
        return len(self._times) > self._intensity and now - self._times[0] < self._period

    def count(self, now: float) -> int:
        """Restarts recorded within the window ending at ``now`` (at most intensity + 1)."""
        return sum(1 for t in self._times if now - t < self._period)

    def reset(self) -> None:
        self._times.clear()
