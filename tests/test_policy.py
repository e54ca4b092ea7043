"""The pure restart policy: restart types, backoff, reset, give-up, intensity window."""

from __future__ import annotations

import random
from typing import get_args

import pytest

from kernelsup.core.config import RestartConfig, RestartType
from kernelsup.core.policy import (
    Decision,
    GiveUp,
    IntensityWindow,
    NoRestart,
    Restart,
    RestartPolicy,
    backoff_delay,
    base_delay,
    should_restart,
)
from kernelsup.core.results import ExitCause, ExitKind

KINDS: tuple[ExitKind, ...] = get_args(ExitKind)
TYPES: tuple[RestartType, ...] = get_args(RestartType)

# Which (restart type, exit kind) pairs restart, written out rather than derived.
RESTARTS = {
    ("permanent", "normal"): True,
    ("permanent", "failure"): True,
    ("permanent", "heartbeat"): True,
    ("permanent", "start_timeout"): True,
    ("permanent", "start_failure"): True,
    ("permanent", "limit"): True,
    ("permanent", "node_lost"): True,
    ("permanent", "host_lost"): True,
    ("permanent", "no_capacity"): True,
    ("transient", "normal"): False,
    ("transient", "failure"): True,
    ("transient", "heartbeat"): True,
    ("transient", "start_timeout"): True,
    ("transient", "start_failure"): True,
    ("transient", "limit"): True,
    ("transient", "node_lost"): True,
    ("transient", "host_lost"): True,
    ("transient", "no_capacity"): True,
    ("temporary", "normal"): False,
    ("temporary", "failure"): False,
    ("temporary", "heartbeat"): False,
    ("temporary", "start_timeout"): False,
    ("temporary", "start_failure"): False,
    ("temporary", "limit"): False,
    ("temporary", "node_lost"): False,
    ("temporary", "host_lost"): False,
    ("temporary", "no_capacity"): False,
}

FAIL = ExitCause("failure", code=1)
NO_START = ExitCause("start_failure", code=1)


def test_the_table_covers_every_type_and_kind() -> None:
    assert set(RESTARTS) == {(t, k) for t in TYPES for k in KINDS}
    assert len(KINDS) == 9 and len(TYPES) == 3


@pytest.mark.parametrize(("restart_type", "kind"), sorted(RESTARTS))
def test_restart_types_against_exit_causes(restart_type: RestartType, kind: ExitKind) -> None:
    cause = ExitCause(kind)
    expected = RESTARTS[(restart_type, kind)]
    assert should_restart(restart_type, cause) is expected

    policy = RestartPolicy(RestartConfig(type=restart_type), random.Random(42))
    policy.on_started(0.0)
    decision = policy.on_exit(1.0, cause)
    if expected:
        assert isinstance(decision, Restart) and decision.attempt == 1
        assert (policy.failures, policy.attempt) == (1, 1)
    else:
        assert isinstance(decision, NoRestart) and restart_type in decision.reason
        assert (policy.failures, policy.attempt) == (0, 0)


# --- backoff ---------------------------------------------------------------------------

CAPPED = RestartConfig(min_delay=1.0, max_delay=30.0, multiplier=2.0, max_retries=-1)
# min(30, 1 * 2**n) for n = 0..9, by hand
BASES = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0]


def expected_delays(jitter: str) -> list[float]:
    """Each delay from its definition, drawing from a second Random(42) in the same order:
    uniform(a, b) is a + (b - a) * random()."""
    ref = random.Random(42)
    if jitter == "full":
        return [0.0 + (b - 0.0) * ref.random() for b in BASES]
    if jitter == "equal":
        return [b / 2 + (0.0 + (b / 2 - 0.0) * ref.random()) for b in BASES]
    return list(BASES)


@pytest.mark.parametrize("jitter", ["full", "equal", "none"])
def test_backoff_sequence_per_jitter_mode(jitter: str) -> None:
    cfg = RestartConfig(
        min_delay=1.0, max_delay=30.0, multiplier=2.0, jitter=jitter, max_retries=-1
    )  # type: ignore[arg-type]
    rng = random.Random(42)
    delays = [backoff_delay(n, cfg, rng) for n in range(10)]
    assert delays == expected_delays(jitter)
    assert all(0.0 <= d <= b for d, b in zip(delays, BASES, strict=True))
    if jitter == "equal":
        assert all(d >= b / 2 for d, b in zip(delays, BASES, strict=True))

    # the policy hands out the same sequence for consecutive failed starts
    policy = RestartPolicy(cfg, random.Random(42))
    decisions = [policy.on_exit(float(t), NO_START) for t in range(10)]
    assert decisions == [Restart(delay=d, attempt=i + 1) for i, d in enumerate(delays)]


def test_no_jitter_draws_nothing() -> None:
    rng = random.Random(42)
    backoff_delay(3, RestartConfig(min_delay=1.0, jitter="none"), rng)
    assert rng.random() == random.Random(42).random()


@pytest.mark.parametrize(
    ("cfg", "n", "expected"),
    [
        (RestartConfig(), 0, 0.5),  # the defaults: 0.5 s, doubling, capped at 30 s
        (RestartConfig(), 5, 16.0),
        (RestartConfig(), 50, 30.0),
        (RestartConfig(), 10**9, 30.0),
        (RestartConfig(min_delay=0.0), 50, 0.0),  # min_delay = 0: no backoff at all
        (CAPPED, 0, 1.0),
        (CAPPED, 4, 16.0),
        (CAPPED, 5, 30.0),
        (CAPPED, 2000, 30.0),  # 2.0**2000 overflows a float
        (CAPPED, 10**9, 30.0),
        (RestartConfig(min_delay=0.5, max_delay=10.0, multiplier=1.0), 100, 0.5),
        (RestartConfig(min_delay=0.25, max_delay=1.0, multiplier=3.0), 1, 0.75),
        (RestartConfig(min_delay=2.0, max_delay=2.0), 0, 2.0),
    ],
)
def test_base_delay(cfg: RestartConfig, n: int, expected: float) -> None:
    assert base_delay(n, cfg) == expected
    assert (
        backoff_delay(
            n,
            RestartConfig(
                min_delay=cfg.min_delay,
                max_delay=cfg.max_delay,
                multiplier=cfg.multiplier,
                jitter="none",
            ),
            random.Random(0),
        )
        == expected
    )


def test_base_delay_rejects_negative_n() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        base_delay(-1, CAPPED)


# --- reset, give-up --------------------------------------------------------------------


def fail_n(policy: RestartPolicy, n: int, now: float = 0.0) -> list[Decision]:
    return [policy.on_exit(now + i, NO_START) for i in range(n)]


NONE = RestartConfig(min_delay=1.0, max_delay=30.0, jitter="none", reset_after=60.0, max_retries=5)


@pytest.mark.parametrize(
    ("uptime", "resets"),
    [(0.0, False), (59.999, False), (60.0, True), (3600.0, True)],
)
def test_failure_count_resets_after_healthy_uptime(uptime: float, resets: bool) -> None:
    policy = RestartPolicy(NONE, random.Random(42))
    assert [d.delay for d in fail_n(policy, 3) if isinstance(d, Restart)] == [1.0, 2.0, 4.0]
    policy.on_started(100.0)
    decision = policy.on_exit(100.0 + uptime, FAIL)
    if resets:
        assert decision == Restart(delay=1.0, attempt=1)
        assert (policy.failures, policy.attempt) == (1, 1)
    else:
        assert decision == Restart(delay=8.0, attempt=4)
        assert (policy.failures, policy.attempt) == (4, 4)


def test_short_uptime_and_failed_starts_both_count() -> None:
    policy = RestartPolicy(NONE, random.Random(42))
    assert policy.on_exit(0.0, NO_START) == Restart(1.0, 1)  # never started
    policy.on_started(1.0)
    assert policy.on_exit(5.0, FAIL) == Restart(2.0, 2)  # up 4 s < reset_after
    assert policy.on_exit(7.0, ExitCause("start_timeout")) == Restart(4.0, 3)
    policy.on_started(11.0)
    assert policy.on_exit(12.0, ExitCause("heartbeat")) == Restart(8.0, 4)


@pytest.mark.parametrize("max_retries", [0, 1, 3, 10])
def test_give_up_after_max_retries(max_retries: int) -> None:
    cfg = RestartConfig(min_delay=1.0, jitter="none", max_retries=max_retries)
    policy = RestartPolicy(cfg, random.Random(42))
    decisions = fail_n(policy, max_retries + 1)
    assert [type(d) for d in decisions] == [Restart] * max_retries + [GiveUp]
    assert [d.attempt for d in decisions if isinstance(d, Restart)] == list(
        range(1, max_retries + 1)
    )
    last = decisions[-1]
    assert isinstance(last, GiveUp) and f"max_retries = {max_retries}" in last.reason
    assert policy.given_up
    assert (policy.failures, policy.attempt) == (max_retries + 1, max_retries)
    # given up stays given up, even after a long healthy run
    policy.on_started(1000.0)
    assert isinstance(policy.on_exit(5000.0, FAIL), GiveUp)
    # until an operator resets it
    policy.reset()
    assert not policy.given_up and (policy.failures, policy.attempt) == (0, 0)
    after_reset = policy.on_exit(6000.0, FAIL)
    if max_retries:
        assert after_reset == Restart(1.0, 1)
    else:
        assert isinstance(after_reset, GiveUp)


def test_max_retries_zero_gives_up_at_once() -> None:
    policy = RestartPolicy(RestartConfig(max_retries=0), random.Random(42))
    assert isinstance(policy.on_exit(0.0, FAIL), GiveUp)


def test_max_retries_minus_one_never_gives_up() -> None:
    policy = RestartPolicy(CAPPED, random.Random(42))
    decisions = fail_n(policy, 5000)
    assert all(isinstance(d, Restart) for d in decisions)
    assert decisions[-1] == Restart(delay=decisions[-1].delay, attempt=5000)  # type: ignore[union-attr]
    assert all(0.0 <= d.delay <= 30.0 for d in decisions)  # type: ignore[union-attr]
    assert not policy.given_up


def test_no_restart_leaves_the_count_alone() -> None:
    policy = RestartPolicy(
        RestartConfig(type="transient", min_delay=1.0, jitter="none"), random.Random(42)
    )
    fail_n(policy, 2)
    assert isinstance(policy.on_exit(3.0, ExitCause("normal", code=0)), NoRestart)
    assert policy.on_exit(4.0, FAIL) == Restart(4.0, 3)


# --- intensity window ------------------------------------------------------------------


@pytest.mark.parametrize(("intensity", "period"), [(1, 1.0), (3, 10.0), (10, 60.0)])
def test_spaced_restarts_never_trip(intensity: int, period: float) -> None:
    window = IntensityWindow(intensity, period)
    gap = period / intensity * 1.001
    assert not any(window.record(i * gap) for i in range(1000))
    assert window.count(999 * gap) == intensity


@pytest.mark.parametrize(("intensity", "period"), [(0, 1.0), (1, 1.0), (3, 10.0), (10, 60.0)])
def test_a_burst_of_intensity_plus_one_trips(intensity: int, period: float) -> None:
    window = IntensityWindow(intensity, period)
    gap = period / (intensity + 1) * 0.999  # intensity + 1 restarts within period
    results = [window.record(100.0 + i * gap) for i in range(intensity + 1)]
    assert results == [False] * intensity + [True]


def test_the_window_slides() -> None:
    window = IntensityWindow(2, 10.0)
    assert [window.record(t) for t in (0.0, 1.0)] == [False, False]
    assert not window.record(10.0)  # 0 is exactly `period` old and has left: 1, 10 remain
    is_tripped = window.record(10.5)  # 1, 10, 10.5 -> 3 > 2 within 10 s
    assert is_tripped
    assert window.count(10.5) == 3
    assert window.count(30.0) == 0
    window.reset()
    assert window.count(10.5) == 0 and not window.record(10.6)


def test_exactly_period_old_has_left_the_window() -> None:
    window = IntensityWindow(1, 5.0)
    assert not window.record(0.0)
    assert not window.record(5.0)
    assert window.record(9.999)


def test_window_memory_is_bounded() -> None:
    window = IntensityWindow(3, 1e9)
    for t in range(10000):
        window.record(float(t))
    assert len(window._times) == 4
    assert window.count(10000.0) == 4


def test_window_from_supervision_and_validation() -> None:
    window = IntensityWindow(4, 20.0)
    assert (window.intensity, window.period) == (4, 20.0)
    with pytest.raises(ValueError):
        IntensityWindow(-1, 1.0)
    with pytest.raises(ValueError):
        IntensityWindow(1, 0.0)


# --- backoff x intensity ---------------------------------------------------------------


def simulate_crash_loop(
    cfg: RestartConfig, intensity: int, period: float, start_time: float
) -> float | None:
    """A kernel that dies ``start_time`` after every start; the policy's delays drive the
    clock. Returns when the window tripped, or None if it never did (gave up, or 2000
    restarts went by)."""
    policy = RestartPolicy(cfg, random.Random(42))
    window = IntensityWindow(intensity, period)
    now = 0.0
    for _ in range(2000):
        decision = policy.on_exit(now, NO_START)
        if not isinstance(decision, Restart):
            return None
        now += decision.delay
        if window.record(now):
            return now
        now += start_time
    return None


def cfg_(
    min_delay: float, max_delay: float, max_retries: int = -1, multiplier: float = 2.0
) -> RestartConfig:
    return RestartConfig(
        min_delay=min_delay,
        max_delay=max_delay,
        multiplier=multiplier,
        jitter="none",
        max_retries=max_retries,
    )


# The docstring's closed form, checked against the simulation above.
def crash_loop_trips(
    cfg: RestartConfig, intensity: int, period: float, *, start_time: float = 0.0
) -> bool:
    """Whether one kernel that dies ``start_time`` seconds after every (re)start trips an
    ``intensity``/``period`` window, with jitter-free delays (see the module docstring)."""
    if cfg.max_retries != -1 and cfg.max_retries < intensity + 1:
        return False
    span = 0.0
    for j in range(1, intensity + 1):
        span += start_time + base_delay(j, cfg)
        if span >= period:
            return False
    return span < period


# Each case states the docstring's condition by hand:
#   trips <=> (max_retries == -1 or max_retries >= I + 1) and I*s + d_1 + ... + d_I < P.
@pytest.mark.parametrize(
    ("cfg", "intensity", "period", "s", "trips_at"),
    [
        # the worked example: 2+4+8+16+6*30 = 210 >= 60, never trips, saturated or not
        (cfg_(1.0, 30.0), 10, 60.0, 0.0, None),
        # the worked example with intensity 3: 2+4+8 = 14 < 60, the burst 1,3,7,15 trips
        (cfg_(1.0, 30.0), 3, 60.0, 0.0, 15.0),
        # ... unless the kernel gives up first: 3 restarts, the window needs 4
        (cfg_(1.0, 30.0, max_retries=3), 3, 60.0, 0.0, None),
        (cfg_(1.0, 30.0, max_retries=4), 3, 60.0, 0.0, 15.0),
        # intensity 5: 2+4+8+16+30 = 60, not < 60
        (cfg_(1.0, 30.0), 5, 60.0, 0.0, None),
        (cfg_(1.0, 30.0), 5, 60.5, 0.0, 61.0),
        # saturated from the start: trips iff I * (s + max_delay) < P
        (cfg_(6.0, 6.0), 10, 60.0, 0.0, None),
        (cfg_(5.0, 5.0), 10, 60.0, 0.0, 55.0),
        (cfg_(5.0, 5.0), 10, 60.0, 1.0, None),
        # shipped defaults: 0.5 s backoff doubling to 30 s; and max_retries 10 < intensity + 1
        (RestartConfig(jitter="none"), 10, 60.0, 0.7, None),
        (cfg_(0.0, 30.0), 10, 60.0, 0.7, 7.0),
    ],
)
def test_backoff_and_intensity_interaction(
    cfg: RestartConfig, intensity: int, period: float, s: float, trips_at: float | None
) -> None:
    tripped = simulate_crash_loop(cfg, intensity, period, s)
    if trips_at is None:
        assert tripped is None
    else:
        assert tripped == pytest.approx(trips_at)
    assert crash_loop_trips(cfg, intensity, period, start_time=s) is (trips_at is not None)


@pytest.mark.parametrize("intensity", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("max_delay", [2.0, 7.0, 12.5, 30.0])
def test_saturated_delay_at_least_period_over_intensity_never_trips(
    intensity: int, max_delay: float
) -> None:
    period = 60.0
    cfg = cfg_(max_delay, max_delay)
    tripped = simulate_crash_loop(cfg, intensity, period, 0.0)
    assert (tripped is None) is (max_delay >= period / intensity)
    assert crash_loop_trips(cfg, intensity, period) is (tripped is not None)
