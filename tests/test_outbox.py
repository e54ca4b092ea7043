"""The per-client outbox of the control server: order, bounds, lag reports (no I/O)."""

from __future__ import annotations

from typing import Any

from kernelsup.core import protocol as proto
from kernelsup.core.outbox import Outbox
from kernelsup.core.results import Output


def out(n: int) -> proto.OutputMsg:
    return proto.OutputMsg(Output("stream", name="stdout", text=f"{n}\n"))


def drain(box: Outbox) -> list[tuple[str | None, Any]]:
    items = []
    while box.peek() is not None:
        item = box.pop()
        items.append((item.request_id, item.reply))
    return items


def test_outbox_keeps_order_when_nothing_is_dropped() -> None:
    box = Outbox(limit=4)
    for i in range(3):
        assert box.put("a", out(i))
    box.put_final("a", proto.Result({}))
    assert drain(box) == [("a", out(0)), ("a", out(1)), ("a", out(2)), ("a", proto.Result({}))]
    assert box.dropped == 0 and box.finals == 0


def test_outbox_drops_counts_and_reports_lag_before_the_final() -> None:
    box = Outbox(limit=2)
    results = [box.put("a", out(i)) for i in range(5)]
    assert results == [True, True, False, False, False]
    box.put_final("a", proto.Result({"x": 1}))
    assert box.finals == 1
    assert drain(box) == [
        ("a", out(0)),
        ("a", out(1)),
        ("a", proto.Lagged(3)),
        ("a", proto.Result({"x": 1})),
    ]
    assert box.dropped == 3 and box.finals == 0


def test_outbox_reports_lag_as_soon_as_there_is_room() -> None:
    box = Outbox(limit=1)
    box.put("w", out(0))
    assert not box.put("w", out(1))
    assert not box.put("w", out(2))
    assert box.pop().reply == out(0)  # room again: the lag is queued at once...
    assert box.put("w", out(3))  # ...ahead of what comes next
    assert drain(box) == [("w", proto.Lagged(2)), ("w", out(3))]


def test_outbox_lag_is_per_request_and_finals_are_never_dropped() -> None:
    box = Outbox(limit=1)
    box.put("a", out(0))
    box.put("b", out(1))  # dropped: b lagged 1
    for _ in range(10):
        box.put_final("c", proto.Result({}))
    box.put_final("b", proto.Result({}))
    items = drain(box)
    assert items.count(("c", proto.Result({}))) == 10
    assert items[-2:] == [("b", proto.Lagged(1)), ("b", proto.Result({}))]


def test_outbox_notices_are_droppable() -> None:
    box = Outbox(limit=2)
    assert box.put_notice(proto.Notice("auth_failed", "x"))
    assert box.put_notice(proto.Notice("auth_failed", "x"))
    assert not box.put_notice(proto.Notice("auth_failed", "x"))
    assert len(box) == 2
