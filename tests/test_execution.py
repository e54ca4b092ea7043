"""One execute request's bookkeeping: message numbers, the finish rule, the result.

Pure module, plain synchronous table tests. ``feed`` routes messages the way the kernel
actor's readers do: every message is numbered, iopub messages whose parent is the request
are its output or its idle, and a shell message whose parent is the request is its reply.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest

from kernelsup.core.execution import Execution, MessageNumbers, default_code
from kernelsup.core.outputs import OutputCollector
from kernelsup.core.results import ErrorInfo, ExitCause, Status
from kernelsup.core.wire import Message

REQ = "client_1_1"  # the request's own msg_id (ours, not the kernel's)
KERNEL = "kernelsession_4242"  # the kernel's message-id prefix


def kmsg(
    msg_type: str,
    n: int,
    content: dict[str, Any] | None = None,
    *,
    parent: str | None = REQ,
    prefix: str = KERNEL,
) -> Message:
    """A message the kernel sent, numbered ``n``."""
    return Message(msg_type, f"{prefix}_{n}", parent, content or {})


def idle(n: int, parent: str = REQ) -> Message:
    return kmsg("status", n, {"execution_state": "idle"}, parent=parent)


def busy(n: int) -> Message:
    return kmsg("status", n, {"execution_state": "busy"})


def out(n: int, text: str, name: str = "stdout") -> Message:
    return kmsg("stream", n, {"name": name, "text": text})


def reply(n: int, status: str = "ok", **content: Any) -> Message:
    return kmsg("execute_reply", n, {"status": status, **content})


def start(baseline: int | None = 10, started_at: float = 100.0) -> Execution:
    return Execution(REQ, OutputCollector(1 << 20), started_at=started_at, baseline=baseline)


def feed(ex: Execution, numbers: MessageNumbers, msgs: list[Message]) -> None:
    for msg in msgs:
        n = numbers.take(msg.msg_id)
        if n is not None:
            ex.count(n, msg)
        if msg.parent_id != ex.msg_id:
            continue
        if msg.msg_type == "execute_reply":
            ex.take_reply(msg)
        else:
            ex.take_iopub(msg)


def run(msgs: list[Message], baseline: int | None = 10) -> Execution:
    numbers = MessageNumbers()
    numbers.take(f"{KERNEL}_{baseline}" if baseline is not None else "unnumbered")
    ex = start(baseline)
    feed(ex, numbers, msgs)
    return ex


def notices(ex: Execution, status: Status = "ok") -> dict[str, str]:
    result = ex.result(status, kernel_id="k0", now=101.0)
    return {o.name or "": o.text or "" for o in result.outputs if o.type == "notice"}


# -- message numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "numbers", "highest"),
    [
        (["s_1_1", "s_1_2", "s_1_3"], [1, 2, 3], 3),
        (["s_1_5", "s_1_3"], [5, 3], 5),  # out of order across channels
        (["uuid-without-number", "s_1_x", "s_1_"], [None, None, None], None),
        (["s_1_5", "other_9_100"], [5, None], 5),  # a foreign prefix is not the kernel's
        (["plain", "s_1_7", "s_1_8"], [None, 7, 8], 8),  # the first numbered id sets the prefix
        (["a_b_c_12", "a_b_c_13", "a_b_12"], [12, 13, None], 13),  # prefix is all before the last _
    ],
)
def test_message_numbers(ids: list[str], numbers: list[int | None], highest: int | None) -> None:
    tracker = MessageNumbers()
    assert [tracker.take(i) for i in ids] == numbers
    assert tracker.highest == highest


# -- lost and incomplete output ----------------------------------------------------


@pytest.mark.parametrize(
    ("msgs", "lost"),
    [
        ([busy(11), out(12, "a"), reply(13), idle(14)], 0),
        ([busy(11), reply(13), idle(14)], 1),
        ([busy(11), out(12, "a"), reply(13), idle(20)], 6),
        # messages numbered at or below the baseline are older than the request
        ([out(5, "old"), out(10, "old"), idle(12)], 1),
        # the kernel's messages for other parents count too: they were numbered in between
        ([kmsg("status", 11, {"execution_state": "busy"}, parent="other"), idle(12)], 0),
        # another request's idle is not ours
        ([idle(11, parent="other"), idle(13)], 1),
        # messages sent after our idle do not fill the gap before it
        ([idle(13), idle(14, parent="other")], 2),
        ([busy(11), idle(13), reply(14)], 1),
        # a foreign prefix is neither counted nor taken as the kernel's
        ([kmsg("stream", 11, {"text": "x"}, prefix="intruder_1"), idle(13)], 2),
    ],
)
def test_lost_messages_are_counted_between_baseline_and_idle(
    msgs: list[Message], lost: int
) -> None:
    ex = run(msgs)
    assert ex.lost == lost
    found = notices(ex)
    if lost:
        assert f"{lost} messages from the kernel were lost" in found["output_lost"]
    else:
        assert "output_lost" not in found


def test_unnumbered_kernel_is_not_checked() -> None:
    ex = run([Message("status", "some-uuid", REQ, {"execution_state": "idle"})], baseline=None)
    assert ex.idle
    assert ex.lost == 0
    assert notices(ex) == {}


def test_reply_without_idle_is_incomplete_not_lost() -> None:
    ex = run([busy(11), out(12, "partial\n"), reply(19)])
    assert not ex.idle
    assert ex.lost == 0
    found = notices(ex)
    assert set(found) == {"output_incomplete"}
    assert "may be incomplete" in found["output_incomplete"]


def test_idle_and_reply_give_no_notice() -> None:
    ex = run([busy(11), out(12, "hi\n"), reply(13), idle(14)])
    result = ex.result(ex.status(), kernel_id="k0", now=100.5)
    assert [o.type for o in result.outputs] == ["stream"]
    assert result.stdout == "hi\n"


# -- the finish rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("msgs", "cancelled", "answered", "finished"),
    [
        ([], False, False, False),
        ([reply(11)], False, True, True),
        ([reply(11)], True, True, False),  # a caller's cancel: the output is not all in
        ([idle(11)], False, True, True),
        ([idle(11)], True, True, True),
        ([reply(11), idle(12)], True, True, True),
        ([busy(11), out(12, "x")], False, False, False),
    ],
)
def test_finished(msgs: list[Message], cancelled: bool, answered: bool, finished: bool) -> None:
    ex = run(msgs)
    assert ex.answered is answered
    assert ex.finished(cancelled=cancelled) is finished


# -- status, code and error --------------------------------------------------------

ERROR_OUTPUT = kmsg(
    "error", 12, {"ename": "ValueError", "evalue": "from output", "traceback": ["tb"]}
)


@pytest.mark.parametrize(
    ("msgs", "status"),
    [
        ([reply(11, "ok"), idle(12)], "ok"),
        ([reply(11, "error"), idle(12)], "error"),
        ([reply(11, "aborted"), idle(12)], "error"),
        ([reply(11, "ok"), ERROR_OUTPUT, idle(13)], "ok"),  # the reply decides
        ([idle(11)], "ok"),  # no reply: the output decides
        ([ERROR_OUTPUT, idle(13)], "error"),
    ],
)
def test_status(msgs: list[Message], status: Status) -> None:
    assert run(msgs).status() == status


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("ok", None),
        ("error", "execution_error"),
        ("timeout", "timeout"),
        ("cancelled", "cancelled"),
        ("died", "died"),
    ],
)
def test_default_code(status: Status, code: str | None) -> None:
    assert default_code(status) == code
    assert run([idle(11)]).result(status, kernel_id="k0", now=101.0).code == code


def test_given_code_wins_over_default() -> None:
    result = run([idle(11)]).result("cancelled", kernel_id="k0", now=101.0, code="shutting_down")
    assert result.code == "shutting_down"


def test_error_reply_without_error_output_fills_error() -> None:
    ex = run(
        [
            reply(
                11,
                "error",
                ename="NameError",
                evalue="name 'x' is not defined",
                traceback=["\x1b[0;31mNameError\x1b[0m: x"],
            ),
            idle(12),
        ]
    )
    result = ex.result(ex.status(), kernel_id="k0", now=101.0)
    assert result.status == "error"
    assert result.code == "execution_error"
    assert result.error == ErrorInfo("NameError", "name 'x' is not defined", ("NameError: x",))


def test_error_output_is_kept_over_the_reply() -> None:
    ex = run([ERROR_OUTPUT, reply(13, "error", ename="Other", evalue="from reply"), idle(14)])
    result = ex.result(ex.status(), kernel_id="k0", now=101.0)
    assert result.error is not None
    assert (result.error.ename, result.error.evalue) == ("ValueError", "from output")


# -- assembly ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msgs", "count"),
    [
        (
            [
                kmsg("execute_input", 11, {"execution_count": 3}),
                reply(12, execution_count=4),
                idle(13),
            ],
            4,
        ),
        ([kmsg("execute_input", 11, {"execution_count": 3}), idle(12)], 3),
        (
            [
                kmsg("execute_input", 11, {"execution_count": 3}),
                reply(12, execution_count="4"),
                idle(13),
            ],
            3,
        ),  # a non-integer count in the reply is ignored
        ([idle(11)], None),
    ],
)
def test_execution_count(msgs: list[Message], count: int | None) -> None:
    assert run(msgs).result("ok", kernel_id="k0", now=101.0).execution_count == count


def test_result_carries_streams_time_and_kernel() -> None:
    ex = run(
        [
            out(11, "a"),
            out(12, "oops\n", "stderr"),
            out(13, "b\n"),
            kmsg("execute_result", 14, {"data": {"text/plain": "42"}}),
            reply(15),
            idle(16),
        ]
    )
    result = ex.result(ex.status(), kernel_id="k7", now=102.5)
    assert (result.stdout, result.stderr, result.result) == ("ab\n", "oops\n", "42")
    assert result.kernel_id == "k7"
    assert result.run_s == pytest.approx(2.5)
    assert not (result.interrupted or result.kernel_restarted or result.state_lost)


def test_take_iopub_returns_outputs_only() -> None:
    ex = start()
    assert ex.take_iopub(busy(11)) is None
    made = ex.take_iopub(out(12, "x"))
    assert made is not None and made.text == "x"
    assert not ex.idle
    assert ex.take_iopub(idle(13)) is None
    assert ex.idle


@pytest.mark.parametrize(
    ("status", "killed_after", "message", "restarted"),
    [
        ("timeout", None, "execution exceeded its 2.5 s timeout and was interrupted", False),
        ("cancelled", None, "the caller cancelled the request and it was interrupted", False),
        (
            "timeout",
            5.0,
            "execution exceeded its 2.5 s timeout and was interrupted; the kernel "
            "ignored the interrupt for 5 s and was killed",
            True,
        ),
    ],
)
def test_limit_result(
    status: Literal["timeout", "cancelled"],
    killed_after: float | None,
    message: str,
    restarted: bool,
) -> None:
    result = run([out(11, "so far\n")]).limit_result(
        status, 2.5, kernel_id="k0", now=103.0, killed_after=killed_after
    )
    assert (result.status, result.code, result.message) == (status, status, message)
    assert result.interrupted
    assert result.kernel_restarted is restarted
    assert result.state_lost is restarted
    assert result.stdout == "so far\n"


@pytest.mark.parametrize(
    ("cause", "shut_down", "status", "code", "message"),
    [
        (
            ExitCause("normal", signal=15),
            True,
            "cancelled",
            "shutting_down",
            "the kernel was shut down while the request ran",
        ),
        (
            ExitCause("limit", detail="memory 900 MB exceeded memory_limit_mb = 512"),
            False,
            "died",
            "memory_limit",
            "kernel k3 was killed: memory 900 MB exceeded memory_limit_mb = 512",
        ),
        (ExitCause("failure", signal=9), False, "died", "kernel_died", "kernel k3 died: signal(9)"),
        (ExitCause("heartbeat"), False, "died", "kernel_died", "kernel k3 died: heartbeat"),
    ],
)
def test_died_result(
    cause: ExitCause, shut_down: bool, status: Status, code: str, message: str
) -> None:
    result = run([busy(11)]).died_result(cause, shut_down=shut_down, kernel_id="k3", now=104.0)
    assert (result.status, result.code, result.message) == (status, code, message)
    died = status == "died"
    assert result.cause == (cause if died else None)
    assert result.kernel_restarted is died
    assert result.state_lost is died


# --- messages too big to decode (core/wire.py gives their size and a few fields) ----------


def big(msg_type: str, n: int, size: int, **peeked: Any) -> Message:
    return Message(msg_type, f"{KERNEL}_{n}", REQ, dict(peeked), oversized=size)


@pytest.mark.parametrize(
    ("msgs", "status"),
    [
        ([big("execute_reply", 11, 10**8, status="ok"), idle(12)], "ok"),
        ([big("execute_reply", 11, 10**8, status="error"), idle(12)], "error"),
        ([big("error", 11, 10**8, ename="E"), big("execute_reply", 12, 10**8), idle(13)], "error"),
        ([big("execute_reply", 11, 10**8), idle(12)], "ok"),  # no status read, no error seen
    ],
)
def test_an_oversized_reply_still_finishes_the_request(msgs: list[Message], status: Status) -> None:
    ex = run(msgs)
    assert ex.finished(cancelled=False) and not ex.incomplete
    assert ex.status() == status
    assert ex.lost == 0  # the oversized messages arrived: they are counted


def test_an_oversized_error_keeps_its_name_and_says_why_the_rest_is_missing() -> None:
    ex = run([big("error", 11, 300_000_000, ename="ValueError"), reply(12, "error"), idle(13)])
    r = ex.result(ex.status(), kernel_id="k0", now=101.0)
    assert r.status == "error" and r.error is not None
    assert r.error.ename == "ValueError"
    assert "300,000,000 bytes was dropped" in r.error.evalue
    assert r.truncated_bytes == 300_000_000
    assert [o.name for o in r.outputs if o.type == "notice"] == ["oversized"]


def test_an_error_only_in_an_oversized_reply_is_named_from_it() -> None:
    ex = run([big("execute_reply", 12, 50_000_000, status="error", ename="KeyError"), idle(13)])
    r = ex.result(ex.status(), kernel_id="k0", now=101.0)
    assert r.error is not None and r.error.ename == "KeyError"
    assert "execute_reply message of 50,000,000 bytes" in r.error.evalue
    assert r.truncated_bytes == 0  # the reply is not output: its error is the error output's


def test_an_oversized_value_gives_no_result_but_its_count() -> None:
    ex = run([big("execute_result", 11, 10**8, execution_count=5), reply(12), idle(13)])
    r = ex.result(ex.status(), kernel_id="k0", now=101.0)
    assert r.result is None and r.execution_count == 5 and r.truncated_bytes == 10**8
    assert "oversized" in notices(ex)


def test_an_oversized_status_is_not_an_idle() -> None:
    ex = run([big("status", 11, 10**6), reply(12)])
    assert not ex.idle and ex.incomplete
