"""The bookkeeping of one execute request, and the ExecuteResult it ends in.

Pure: takes decoded messages, ``now`` and the kernel's id, returns decisions and value
types; no trio, no sockets. The kernel actor does the waiting.

Theory of operation
-------------------
A request is finished when its ``execute_reply`` has arrived AND iopub ``status: idle`` for
its msg_id has been seen (the idle comes after all of its output). The actor waits for the
late half only briefly: a kernel that drops its idle (PUB sockets drop when their queue is
full) cannot hang a request, so a result may be built with either half missing. A reply
without its idle gets an ``output_incomplete`` notice: the end of the output may be gone.

Lost messages in the middle are found by counting. The kernel's Session numbers every
message it sends, on every channel, as ``"<session>_<pid>_<n>"`` (:class:`MessageNumbers`
follows them). A request remembers the highest number seen before it was sent (its
*baseline*) and counts the kernel's messages numbered above it that arrive; when its idle
comes, numbered ``idle``, exactly ``idle - baseline`` messages were sent in between, and
any shortfall is reported in an ``output_lost`` notice with the count. Kernels whose ids are
not numbered this way simply are not checked.

A message too big to decode (``Message.oversized``, see core/wire.py) still counts: an
iopub one becomes an ``oversized`` notice in the output; a reply still finishes the
request, its status read from the message's first bytes (or, failing that, ``error`` if
an error was seen).
"""

from __future__ import annotations

from typing import Literal

import attrs

from kernelsup.core.outputs import OutputCollector, oversized_notice
from kernelsup.core.results import ExecuteResult, ExitCause, Output, Status
from kernelsup.core.wire import Message

OUTPUT_INCOMPLETE = (
    "[kernelsup: the kernel's end-of-output message did not arrive after "
    "its reply; output may be incomplete]"
)


class MessageNumbers:
    """The kernel's message numbering, followed across all its channels."""

    def __init__(self) -> None:
        self.prefix: str | None = None  # "<session>_<pid>", fixed by the first numbered id
        self.highest: int | None = None

    def take(self, msg_id: str) -> int | None:
        """The number of a message the kernel sent, recorded as seen; None for an id that
        is not numbered or carries another prefix than the kernel's first numbered one."""
        prefix, _, number = msg_id.rpartition("_")
        if not number.isdigit():
            return None
        if self.prefix is None:
            self.prefix = prefix
        elif prefix != self.prefix:
            return None
        n = int(number)
        if self.highest is None or n > self.highest:
            self.highest = n
        return n


def is_idle(msg: Message) -> bool:
    return msg.msg_type == "status" and msg.content.get("execution_state") == "idle"


def limit_message(status: Literal["timeout", "cancelled"], timeout: float) -> str:
    if status == "timeout":
        return f"execution exceeded its {timeout:g} s timeout and was interrupted"
    return "the caller cancelled the request and it was interrupted"


def default_code(status: Status) -> str | None:
    """A result's ``code`` unless one is given: none for ok, the status otherwise."""
    return None if status == "ok" else "execution_error" if status == "error" else status


@attrs.define(eq=False)
class Execution:
    """One execute request, from the moment it is sent until its result is built."""

    msg_id: str
    collector: OutputCollector
    started_at: float
    baseline: int | None = None  # the kernel's highest message number before this run
    received: int = 0  # kernel messages numbered above the baseline received since
    idle_number: int | None = None
    reply: Message | None = None
    idle: bool = False
    dropped: list[str] = attrs.field(factory=list)  # link_dropped's notices, in order

    # -- feeding -----------------------------------------------------------------
    def count(self, number: int, msg: Message) -> None:
        """A numbered kernel message (on any channel) arrived while this request ran.

        Only messages numbered between the baseline and the idle count; one sent after
        the idle (a late reply, a background thread's print) but arriving before it on
        another channel cannot be told apart, and hides one lost message."""
        if self.baseline is None or number <= self.baseline:
            return
        if self.idle_number is not None and number > self.idle_number:
            return
        self.received += 1
        if msg.parent_id == self.msg_id and is_idle(msg):
            self.idle_number = number

    def take_reply(self, msg: Message) -> None:
        self.reply = msg

    def take_iopub(self, msg: Message) -> Output | None:
        """An iopub message whose parent is this request: its idle status ends the output,
        other statuses mean nothing; anything else is output, returned if it made one."""
        if msg.msg_type == "status":
            if is_idle(msg) and not msg.oversized:
                self.idle = True
            return None
        if msg.oversized:
            return self.collector.drop_message(msg.msg_type, msg.oversized, msg.content)
        return self.collector.add_message(msg.msg_type, msg.content)

    def link_dropped(self, channel: str, cap: int) -> None:
        """The kernel's ``channel`` connection was dropped while this request ran (zmq
        drops a peer that sends a frame over ``cap`` bytes) and reopened."""
        self.dropped.append(
            f"[kernelsup: the kernel sent a message over {cap} bytes on {channel}; it was "
            f"dropped, with whatever the kernel sent until the connection was reopened; "
            f"output is incomplete]"
        )

    # -- deciding ----------------------------------------------------------------
    @property
    def answered(self) -> bool:
        """Either half (reply or idle) has arrived."""
        return self.reply is not None or self.idle

    def finished(self, *, cancelled: bool) -> bool:
        """Idle seen, or the reply in (the wait for the late idle was cut short). A
        caller's cancel is not a finish: the output is not all in."""
        return self.idle or (self.reply is not None and not cancelled)

    def status(self) -> Status:
        """The status of a finished request, from its reply (or, with none, its output)."""
        status = None if self.reply is None else self.reply.content.get("status")
        if status is None and (self.reply is None or self.reply.oversized):
            # no reply, or one too big to decode whose status could not be read
            return "error" if self.collector.error is not None else "ok"
        return "ok" if status == "ok" else "error"

    @property
    def incomplete(self) -> bool:
        """The reply came but the idle did not: the end of the output may be missing."""
        return self.reply is not None and not self.idle

    @property
    def lost(self) -> int:
        """How many kernel messages between this request's start and its idle never
        arrived, as the ``output_lost`` notice reports it (0 when that cannot be told)."""
        if self.incomplete or self.idle_number is None or self.baseline is None:
            return 0
        return max(0, self.idle_number - self.baseline - self.received)

    # -- results -----------------------------------------------------------------
    def result(
        self,
        status: Status,
        *,
        kernel_id: str,
        now: float,
        interrupted: bool = False,
        kernel_restarted: bool = False,
        state_lost: bool = False,
        code: str | None = None,
        message: str = "",
        cause: ExitCause | None = None,
    ) -> ExecuteResult:
        """The request's result with ``status``; ``code`` None means ``default_code``."""
        c = self.collector
        reply = self.reply.content if self.reply is not None else {}
        if c.error is None and reply.get("status") == "error":
            if self.reply is not None and self.reply.oversized:
                c.dropped_error(
                    reply.get("ename"),
                    oversized_notice("execute_reply", None, self.reply.oversized, c.message_limit),
                )
            else:
                c.set_error(reply)
        outs = c.outputs()
        outs.extend(Output("notice", name="message_dropped", text=t) for t in self.dropped)
        if self.incomplete:
            outs.append(Output("notice", name="output_incomplete", text=OUTPUT_INCOMPLETE))
        elif self.lost:
            outs.append(
                Output(
                    "notice",
                    name="output_lost",
                    text=(
                        f"[kernelsup: {self.lost} messages from the kernel were lost in transit"
                        f"{'' if self.dropped else ' (its output queue overflowed)'}; "
                        f"output is incomplete]"
                    ),
                )
            )
        count = reply.get("execution_count")
        return ExecuteResult(
            status=status,
            stdout=OutputCollector.stream_text(outs, "stdout"),
            stderr=OutputCollector.stream_text(outs, "stderr"),
            result=c.result,
            outputs=tuple(outs),
            error=c.error,
            execution_count=count if isinstance(count, int) else c.execution_count,
            kernel_id=kernel_id,
            run_s=now - self.started_at,
            truncated_bytes=c.truncated_bytes,
            interrupted=interrupted,
            kernel_restarted=kernel_restarted,
            state_lost=state_lost,
            code=default_code(status) if code is None else code,
            message=message,
            cause=cause,
        )

    def limit_result(
        self,
        status: Literal["timeout", "cancelled"],
        timeout: float,
        *,
        kernel_id: str,
        now: float,
        killed_after: float | None = None,
    ) -> ExecuteResult:
        """The result of a request interrupted at its deadline or its caller's cancel;
        ``killed_after`` is the grace the kernel ignored before it was killed, if it was."""
        message = limit_message(status, timeout)
        if killed_after is None:
            return self.result(
                status, kernel_id=kernel_id, now=now, interrupted=True, code=status, message=message
            )
        return self.result(
            status,
            kernel_id=kernel_id,
            now=now,
            interrupted=True,
            kernel_restarted=True,
            state_lost=True,
            code=status,
            message=message + f"; the kernel ignored the interrupt for "
            f"{killed_after:g} s and was killed",
        )

    def died_result(
        self, cause: ExitCause, *, shut_down: bool, kernel_id: str, now: float
    ) -> ExecuteResult:
        """The result of a request still running when its kernel stopped with ``cause``;
        ``shut_down`` means it stopped because it was asked to."""
        self.dropped.clear()  # a kernel that stops drops its connections: no news then
        if shut_down:
            return self.result(
                "cancelled",
                kernel_id=kernel_id,
                now=now,
                code="shutting_down",
                message="the kernel was shut down while the request ran",
            )
        if cause.kind == "limit":
            return self.result(
                "died",
                kernel_id=kernel_id,
                now=now,
                code="memory_limit",
                cause=cause,
                kernel_restarted=True,
                state_lost=True,
                message=f"kernel {kernel_id} was killed: {cause.detail}",
            )
        return self.result(
            "died",
            kernel_id=kernel_id,
            now=now,
            code="kernel_died",
            cause=cause,
            kernel_restarted=True,
            state_lost=True,
            message=f"kernel {kernel_id} died: {cause.describe()}",
        )
