"""The event bus: fan-out, lag counting, close, the JSON form, describe() and the log."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kernelsup.core import events as ev
from kernelsup.core.errors import ConfigError, ProtocolError
from kernelsup.core.events import Event
from kernelsup.core.results import ExitCause
from kernelsup.tree.bus import EventBus, EventLog, Subscription

T0 = 1_700_000_000.25


def fixed_clock() -> float:
    return T0


async def drain(sub: Subscription) -> list[Event]:
    return [event async for event in sub]


def real_and_dropped(received: list[Event]) -> tuple[list[Event], int]:
    """The events that are not ``lagged``, and how many the ``lagged`` ones stand for."""
    real = [e for e in received if e.kind != ev.LAGGED]
    return real, sum(e.data["dropped"] for e in received if e.kind == ev.LAGGED)


# --- fan-out ----------------------------------------------------------------------------


async def test_fan_out_to_several_subscribers_in_order() -> None:
    with trio.fail_after(5):
        bus = EventBus()
        subs = [bus.subscribe(name=f"s{i}") for i in range(3)]
        published = [
            bus.publish(ev.KERNEL_STARTING, pool="default", kernel_id="default-0", n=i)
            for i in range(50)
        ]
        bus.close()
        assert [e.seq for e in published] == list(range(1, 51))
        for sub in subs:
            assert await drain(sub) == published
        assert bus.stats.published == 50
        assert bus.stats.dropped == 0


async def test_slow_subscriber_blocks_neither_publish_nor_others() -> None:
    with trio.fail_after(20):
        bus = EventBus()
        fast = bus.subscribe(16, name="fast")
        slow = bus.subscribe(16, name="slow")
        got: list[Event] = []

        async def read_fast() -> None:
            async for event in fast:
                got.append(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            for i in range(10_000):
                bus.publish(ev.KERNEL_STARTING, kernel_id="k", n=i)
                await trio.lowlevel.checkpoint()  # the fast reader keeps up; the slow never reads
            stats = bus.stats
            bus.close()

        assert [e.seq for e in got] == list(range(1, 10_001))
        assert [e.data["n"] for e in got] == list(range(10_000))
        assert stats.published == 10_000
        assert stats.subscribers == {"fast": 0, "slow": 10_000 - 16}

        received = await drain(slow)
        real, dropped = real_and_dropped(received)
        assert len(real) <= 16
        assert len(received) == len(real) + 1
        assert received[-1].kind == ev.LAGGED
        assert len(real) + dropped == 10_000
        assert [e.seq for e in real] == list(range(1, len(real) + 1))
        assert received[-1].seq == 10_000  # the seq of the last event it stands for


async def test_lagged_event_takes_its_place_when_room_frees() -> None:
    with trio.fail_after(5):
        bus = EventBus()
        sub = bus.subscribe(4)
        for _ in range(10):
            bus.publish(ev.KERNEL_STARTING, kernel_id="k")
        assert [(await sub.receive()).seq for _ in range(2)] == [1, 2]
        for _ in range(3):  # 11 fits after the lag notice; 12 and 13 find the buffer full
            bus.publish(ev.KERNEL_STARTING, kernel_id="k")
        bus.close()
        received = await drain(sub)
        assert [(e.kind, e.seq, e.data.get("dropped")) for e in received] == [
            (ev.KERNEL_STARTING, 3, None),
            (ev.KERNEL_STARTING, 4, None),
            (ev.LAGGED, 10, 6),
            (ev.KERNEL_STARTING, 11, None),
            (ev.LAGGED, 13, 2),
        ]
        real, dropped = real_and_dropped(received)
        assert 2 + len(real) + dropped == 13


async def test_lag_is_reported_after_a_burst_followed_by_silence() -> None:
    with trio.fail_after(5):
        bus = EventBus()
        sub = bus.subscribe(2)
        for _ in range(5):
            bus.publish(ev.KERNEL_STARTING, kernel_id="k")
        first = [await sub.receive() for _ in range(3)]
        assert [(e.kind, e.seq) for e in first] == [
            (ev.KERNEL_STARTING, 1),
            (ev.KERNEL_STARTING, 2),
            (ev.LAGGED, 5),
        ]
        assert first[2].data == {"dropped": 3}
        with trio.move_on_after(0.05) as scope:
            await sub.receive()
        assert scope.cancelled_caught
        bus.publish(ev.KERNEL_STARTED, kernel_id="k", pid=1, start_s=0.1)
        assert (await sub.receive()).seq == 6


async def test_cancelled_receive_loses_nothing() -> None:
    with trio.fail_after(5):
        bus = EventBus()
        sub = bus.subscribe()
        bus.publish(ev.KERNEL_STARTING, kernel_id="k")
        with trio.CancelScope() as scope:
            scope.cancel()
            await sub.receive()
        assert (await sub.receive()).seq == 1


# --- unsubscribe and close --------------------------------------------------------------


async def test_closing_a_subscription_stops_its_iteration(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        bus = EventBus()
        sub = bus.subscribe(name="watcher")
        other = bus.subscribe()
        done = trio.Event()
        got: list[Event] = []

        async def watch() -> None:
            async for event in sub:
                got.append(event)
            done.set()

        nursery.start_soon(watch)
        bus.publish(ev.KERNEL_STARTING, kernel_id="k")
        await trio.testing.wait_all_tasks_blocked()
        sub.close()
        await done.wait()
        assert [e.seq for e in got] == [1]
        assert "watcher" not in bus.stats.subscribers
        bus.publish(ev.KERNEL_STARTING, kernel_id="k")  # fine with a closed subscriber
        sub.close()  # idempotent
        assert [e.seq for e in [await other.receive(), await other.receive()]] == [1, 2]


async def test_leaving_the_with_block_unsubscribes() -> None:
    with trio.fail_after(5):
        bus = EventBus()
        with bus.subscribe(name="w") as sub:
            assert list(bus.stats.subscribers) == ["w"]
        assert bus.stats.subscribers == {}
        with pytest.raises(trio.ClosedResourceError):
            await sub.receive()


async def test_bus_close_delivers_what_is_buffered_then_ends(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        bus = EventBus()
        buffered = bus.subscribe()
        waiting = bus.subscribe()
        done = trio.Event()

        async def wait_for_end() -> None:
            assert [e.seq for e in await drain(waiting)] == [1]
            done.set()

        bus.publish(ev.KERNEL_STARTING, kernel_id="k")
        nursery.start_soon(wait_for_end)
        await trio.testing.wait_all_tasks_blocked()
        bus.close()
        await done.wait()
        assert [e.seq for e in await drain(buffered)] == [1]
        with pytest.raises(trio.EndOfChannel):
            await buffered.receive()

        late = bus.subscribe()
        assert await drain(late) == []
        assert bus.publish(ev.KERNEL_STARTING, kernel_id="k").seq == 2  # still numbered
        assert bus.closed
        bus.close()


def test_stats_names_and_totals() -> None:
    bus = EventBus()
    a = bus.subscribe(1, name="cli")
    b = bus.subscribe(1, name="cli")
    c = bus.subscribe(1)
    assert (a.name, b.name, c.name) == ("cli", "cli-1", "subscriber-2")
    for _ in range(3):
        bus.publish(ev.KERNEL_STARTING)
    a.close()
    stats = bus.stats
    assert stats.published == 3
    assert stats.subscribers == {"cli-1": 2, "subscriber-2": 2}
    assert stats.dropped == 6  # a's misses stay counted after it left
    assert stats.to_dict() == {
        "published": 3,
        "dropped": 6,
        "subscribers": {"cli-1": 2, "subscriber-2": 2},
    }


@pytest.mark.parametrize("buffer", [0, -1, ev.MAX_SUBSCRIBER_BUFFER + 1])
def test_subscribe_rejects_unbounded_or_empty_buffers(buffer: int) -> None:
    with pytest.raises(ValueError, match="buffer"):
        EventBus().subscribe(buffer)


def test_recent_keeps_a_bounded_ring() -> None:
    bus = EventBus(recent=5)
    for _ in range(8):
        bus.publish(ev.KERNEL_STARTING)
    assert [e.seq for e in bus.recent()] == [4, 5, 6, 7, 8]
    assert [e.seq for e in bus.recent(2)] == [7, 8]
    assert [e.seq for e in bus.recent(50)] == [4, 5, 6, 7, 8]
    assert bus.recent(0) == ()


# --- the event and its JSON form --------------------------------------------------------

CAUSE = ExitCause.from_returncode(-9)

# kind -> (pool, kernel_id, data, what describe() must say after the clock)
EXAMPLES: dict[str, tuple[str | None, str | None, dict[str, Any], str]] = {
    ev.KERNEL_STARTING: ("default", "default-0", {}, "default-0 starting"),
    ev.KERNEL_STARTED: (
        "default",
        "default-0",
        {"pid": 4242, "start_s": 0.8213},
        "default-0 started pid 4242 in 0.82 s",
    ),
    ev.KERNEL_EXITED: (
        "default",
        "default-0",
        {"cause": CAUSE.to_dict(), "text": CAUSE.describe(), "restarts": 1},
        "default-0 exited signal(9) (restarts 1)",
    ),
    ev.KERNEL_START_FAILED: (
        "default",
        "default-1",
        {
            "cause": ExitCause("start_timeout").to_dict(),
            "message": "no kernel_info_reply within 30 s",
        },
        "default-1 start failed: start_timeout: no kernel_info_reply within 30 s",
    ),
    ev.RESTART_SCHEDULED: (
        "default",
        "default-0",
        {"delay": 0.5, "attempt": 2, "next_try": T0 + 0.5},
        "default-0 restart scheduled in 0.50 s (attempt 2)",
    ),
    ev.GAVE_UP: (
        "default",
        "default-0",
        {"reason": "5 consecutive failures"},
        "default-0 gave up: 5 consecutive failures",
    ),
    ev.POOL_ESCALATED: (
        "default",
        None,
        {"reason": "11 restarts in 60 s"},
        "pool default escalated: 11 restarts in 60 s",
    ),
    ev.POOL_RESTARTED: ("default", None, {}, "pool default restarted"),
    ev.SUPERVISOR_READY: (
        None,
        None,
        {"kernels": 3, "endpoint": "ipc:///tmp/ks/control"},
        "supervisor ready: 3 kernels, endpoint ipc:///tmp/ks/control",
    ),
    ev.SUPERVISOR_STOPPING: (None, None, {"reason": "SIGINT"}, "supervisor stopping: SIGINT"),
    ev.SESSION_OPENED: (
        "default",
        "default-1",
        {"session": "agent-1"},
        "default-1 session agent-1 opened",
    ),
    ev.SESSION_CLOSED: (
        "default",
        "default-1",
        {"session": "agent-1"},
        "default-1 session agent-1 closed",
    ),
    ev.LAGGED: (None, None, {"dropped": 9984}, "lagged: 9984 events dropped"),
}


def example(kind: str, seq: int = 7) -> Event:
    pool, kernel_id, data, _ = EXAMPLES[kind]
    return Event(kind, T0, pool, kernel_id, data, seq)


def test_examples_cover_every_kind() -> None:
    assert set(EXAMPLES) == ev.ALL_KINDS
    assert ev.ALL_KINDS.isdisjoint(ev.RESERVED_KEYS)


@pytest.mark.parametrize("kind", sorted(ev.ALL_KINDS))
def test_describe_is_one_readable_line(kind: str) -> None:
    line = example(kind).describe()
    clock, _, rest = line.partition(" ")
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.250", clock)
    assert rest == EXAMPLES[kind][3]
    assert len(line.splitlines()) == 1


@pytest.mark.parametrize(
    ("kind", "data", "text"),
    [
        (ev.KERNEL_STARTING, {"restarts": 2}, "default-0 starting (restarts 2)"),
        (ev.POOL_RESTARTED, {"reason": "escalated"}, "default-0 restarted: escalated"),
        (ev.SESSION_CLOSED, {"session": "a", "reason": "idle"}, "default-0 session a closed: idle"),
        (ev.SUPERVISOR_READY, {"kernels": ["a", "b"]}, "default-0 supervisor ready: 2 kernels"),
    ],
)
def test_describe_shows_optional_data(kind: str, data: dict[str, Any], text: str) -> None:
    assert Event(kind, T0, None, "default-0", data).describe().endswith(" " + text)


def test_describe_escapes_line_breaks_and_survives_missing_or_unknown_data() -> None:
    line = Event(
        ev.GAVE_UP, T0, "p", "p-0", {"reason": "boom\nTraceback:\r\n  x\u2028y"}
    ).describe()
    assert line.splitlines() == [line]
    assert line.endswith(r"p-0 gave up: boom\nTraceback:\r\n  x\u2028y")
    assert Event(ev.KERNEL_EXITED, T0, kernel_id="k").describe().endswith("k exited ? (restarts ?)")
    assert (
        Event("from_the_future", T0, kernel_id="k", data={"a": [1]})
        .describe()
        .endswith("k from_the_future a=[1]")
    )


@pytest.mark.parametrize("kind", sorted(ev.ALL_KINDS - {ev.LAGGED}))
def test_to_dict_from_dict_round_trip(kind: str) -> None:
    pool, kernel_id, data, _ = EXAMPLES[kind]
    bus = EventBus(clock=fixed_clock)
    event = bus.publish(kind, pool=pool, kernel_id=kernel_id, **data)
    d = event.to_dict()
    assert d == {"event": kind, "time": T0, "seq": 1, "pool": pool, "kernel_id": kernel_id, **data}
    assert Event.from_dict(json.loads(json.dumps(d))) == event


def test_data_is_a_private_read_only_copy() -> None:
    cause = CAUSE.to_dict()
    event = EventBus().publish(ev.KERNEL_EXITED, kernel_id="k", cause=cause, restarts=0)
    cause["kind"] = "normal"
    assert event.data["cause"]["kind"] == "failure"
    with pytest.raises(TypeError):
        event.data["restarts"] = 1  # type: ignore[index]
    assert hash(event) == hash(Event.from_dict(event.to_dict()))


@pytest.mark.parametrize(
    ("kind", "data", "error", "match"),
    [
        ("kernel_exploded", {}, ValueError, "kernel_exploded"),
        (ev.LAGGED, {"dropped": 1}, ValueError, "lagged"),
        (ev.GAVE_UP, {"seq": 1}, ValueError, "reserved"),
        (ev.GAVE_UP, {"event": "x"}, ValueError, "reserved"),
        (ev.GAVE_UP, {"reason": ("a", "b")}, TypeError, r"data\.reason: tuple"),
        (ev.GAVE_UP, {"reason": {1: "a"}}, TypeError, "key 1"),
        (ev.RESTART_SCHEDULED, {"delay": float("inf")}, ValueError, r"data\.delay"),
        (ev.GAVE_UP, {"reason": object()}, TypeError, "not JSON-ready"),
    ],
)
def test_publish_rejects_misuse(
    kind: str, data: dict[str, Any], error: type[Exception], match: str
) -> None:
    bus = EventBus()
    with pytest.raises(error, match=match):
        bus.publish(kind, **data)
    assert bus.stats.published == 0  # no seq was used up


GOOD = {"event": "gave_up", "time": T0, "seq": 3, "pool": "p", "kernel_id": "p-0", "reason": "r"}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"event": None}, "event"),
        ({"time": "noon"}, "time"),
        ({"time": True}, "time"),
        ({"seq": 1.5}, "seq"),
        ({"pool": 3}, "pool"),
        ({"reason": float("nan")}, "reason"),
    ],
)
def test_from_dict_rejects_malformed_events(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        Event.from_dict({**GOOD, **change})


def test_from_dict_rejects_missing_keys_and_non_objects() -> None:
    with pytest.raises(ProtocolError, match="kernel_id: missing"):
        Event.from_dict({k: v for k, v in GOOD.items() if k != "kernel_id"})
    with pytest.raises(ProtocolError, match="expected an object"):
        Event.from_dict(["gave_up"])  # type: ignore[arg-type]


# --- the log ----------------------------------------------------------------------------


async def run_log(
    log: EventLog, bus: EventBus, stream: io.StringIO, *, json_lines: bool, kinds: list[str]
) -> list[Event]:
    """Start the log, publish one example of each kind, close the bus, wait for the log."""
    published: list[Event] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: log.run(bus, stream, json_lines=json_lines, task_status=task_status)
        )
        for kind in kinds:
            pool, kernel_id, data, _ = EXAMPLES[kind]
            published.append(bus.publish(kind, pool=pool, kernel_id=kernel_id, **data))
        bus.close()
    return published


KINDS = sorted(ev.ALL_KINDS - {ev.LAGGED})


async def test_event_log_writes_describe_lines() -> None:
    with trio.fail_after(5):
        stream = io.StringIO()
        bus = EventBus(clock=fixed_clock)
        published = await run_log(EventLog(), bus, stream, json_lines=False, kinds=KINDS)
        assert stream.getvalue().splitlines() == [e.describe() for e in published]


async def test_event_log_json_lines_parse_back_and_append_to_the_file(tmp_path: Path) -> None:
    with trio.fail_after(5):
        path = tmp_path / "events.jsonl"
        path.write_text('{"earlier": "run"}\n')
        stream = io.StringIO()
        log = EventLog(path)
        published = await run_log(log, EventBus(), stream, json_lines=True, kinds=KINDS)
        assert [
            Event.from_dict(json.loads(line)) for line in stream.getvalue().splitlines()
        ] == published
        lines = path.read_text().splitlines()
        assert lines[0] == '{"earlier": "run"}'
        assert [Event.from_dict(json.loads(line)) for line in lines[1:]] == published
        assert (log.written, log.errors) == (len(published), 0)


async def test_event_log_file_gets_json_while_the_stream_gets_lines(tmp_path: Path) -> None:
    with trio.fail_after(5):
        path = tmp_path / "events.jsonl"
        stream = io.StringIO()
        published = await run_log(
            EventLog(str(path)),
            EventBus(),
            stream,
            json_lines=False,
            kinds=[ev.KERNEL_STARTING, ev.KERNEL_EXITED],
        )
        assert stream.getvalue().splitlines() == [e.describe() for e in published]
        assert [json.loads(line) for line in path.read_text().splitlines()] == [
            e.to_dict() for e in published
        ]


async def test_event_log_survives_a_broken_stream(tmp_path: Path) -> None:
    with trio.fail_after(5):
        path = tmp_path / "events.jsonl"
        stream = io.StringIO()
        stream.close()  # writes now raise ValueError
        log = EventLog(path)
        published = await run_log(
            log, EventBus(), stream, json_lines=False, kinds=[ev.KERNEL_STARTING, ev.KERNEL_EXITED]
        )
        assert log.errors == 1
        assert len(path.read_text().splitlines()) == len(published)


async def test_event_log_reports_a_log_file_it_cannot_open(tmp_path: Path) -> None:
    with trio.fail_after(5):
        log = EventLog(tmp_path / "missing-dir" / "events.jsonl")
        with pytest.raises(ConfigError, match=r"supervisor\.log_file: cannot open") as info:
            await log.run(EventBus(), io.StringIO())
        assert info.value.data["path"] == "$.supervisor.log_file"
