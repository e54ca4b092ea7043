"""Collect one request's IOPub output into a bounded, ordered list.

Pure: takes decoded messages, returns value types; no I/O.

Theory of operation
-------------------
A request may print without limit; the supervisor's memory must not grow with it. While
the total stays within ``max_bytes`` everything is kept, in order. The first output that
would exceed it *closes the head*: the head becomes exactly the first ``max_bytes // 2``
bytes (a stream chunk crossing that line is cut at a character boundary), and everything
after is the *tail*, a queue trimmed from the front to the other half. From then on new
output only ever goes to the tail. Every dropped byte is counted in ``truncated_bytes``;
the final output list carries a marker line where the middle was cut, written into each
stream that lost text (so a reader of ``stdout`` sees it in place), plus a ``notice``.

Memory is bounded by the budget, not by the number of messages: adjacent chunks of one
stream are coalesced into pieces of up to ``COALESCE_BYTES`` as they arrive (a flood of
one-byte prints is a few hundred strings, not a million objects), empty stream chunks and
empty displays are ignored, and a rich output costs at least ``MIN_RICH_COST`` bytes of budget.
"""

from __future__ import annotations

import collections
import re
from typing import Any

from kernelsup.core.results import ErrorInfo, Output

# Stream chunks are merged into pieces up to this size: small enough that trimming the
# front piece of the tail is cheap, large enough that a flood is few objects.
COALESCE_BYTES = 4096
# A rich output costs at least this much budget, so a flood of tiny displays is few objects.
MIN_RICH_COST = 16

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _nbytes(text: str) -> int:
    return len(_encode(text))


def _split_at(text: str, nbytes: int) -> tuple[str, str]:
    """Split ``text`` into a prefix of at most ``nbytes`` UTF-8 bytes and the rest, at a
    character boundary (the prefix is exact: ``prefix + rest == text``)."""
    raw = _encode(text)
    cut = max(0, min(nbytes, len(raw)))
    while 0 < cut < len(raw) and (raw[cut] & 0xC0) == 0x80:  # inside a character
        cut -= 1
    prefix = raw[:cut].decode("utf-8", "surrogatepass")
    return prefix, text[len(prefix) :]


def truncation_marker(dropped: int) -> str:
    return f"\n[kernelsup: output truncated, {dropped} bytes dropped]\n"


class OutputCollector:
    """Accumulates outputs for one request within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.head_budget = max_bytes // 2
        self.tail_budget = max_bytes - self.head_budget
        self.head_closed = False
        self.head: list[Output] = []
        self.head_used = 0
        self.tail: collections.deque[tuple[Output, int]] = collections.deque()
        self.tail_used = 0
        self.truncated_bytes = 0
        self._cut_streams: set[str] = set()
        self.result: str | None = None
        self.error: ErrorInfo | None = None
        self.execution_count: int | None = None

    # -- feeding -----------------------------------------------------------------
    def add_message(self, msg_type: str, content: dict[str, Any]) -> Output | None:
        """Take one IOPub message whose parent is this request; return the output it
        made (before any truncation), or None. Unknown types are ignored."""
        out: Output | None = None
        if msg_type == "stream":
            name = str(content.get("name", "stdout"))
            out = Output("stream", name=name, text=str(content.get("text", "")))
        elif msg_type in ("display_data", "update_display_data", "execute_result"):
            data = content.get("data") or {}
            if not isinstance(data, dict):
                return None
            if msg_type == "execute_result":
                count = content.get("execution_count")
                if isinstance(count, int):
                    self.execution_count = count
                plain = data.get("text/plain")
                self.result = plain if isinstance(plain, str) else None
            out = Output(
                msg_type if msg_type != "update_display_data" else "display_data",
                data=data,
                metadata=content.get("metadata") or {},
            )
        elif msg_type == "error":
            self.set_error(content)
            out = Output("error", text="\n".join(self.error.traceback) if self.error else "")
        elif msg_type == "execute_input":
            count = content.get("execution_count")
            if isinstance(count, int):
                self.execution_count = count
        if out is not None:
            self.add(out)
        return out

    def set_error(self, content: dict[str, Any]) -> None:
        tb = content.get("traceback") or []
        self.error = ErrorInfo(
            ename=str(content.get("ename", "")),
            evalue=str(content.get("evalue", "")),
            traceback=tuple(strip_ansi(str(line)) for line in tb),
        )

    def _cost(self, out: Output) -> int:
        size = out.size()
        return size if out.type == "stream" else max(size, MIN_RICH_COST)

    def add(self, out: Output) -> None:
        if out.type == "stream" and not out.text:
            return
        if out.type != "stream" and out.type != "error" and not out.data:
            return  # an empty display shows nothing
        cost = self._cost(out)
        if self.head_closed:
            self.tail_used += _push_tail(self.tail, out, cost)
        else:
            self.head_used += _push(self.head, out, cost)
            if self.head_used <= self.max_bytes:
                return
            self._close_head()
        self._trim_tail()

    def _close_head(self) -> None:
        """Over budget for the first time: keep the first head_budget bytes as the head,
        move the rest to the tail."""
        self.head_closed = True
        kept: list[Output] = []
        used = 0
        rest: list[Output] = []
        for out in self.head:
            cost = self._cost(out)
            if rest or used + cost > self.head_budget:
                if not rest and out.type == "stream" and out.text is not None:
                    first, second = _split_at(out.text, self.head_budget - used)
                    if first:
                        kept.append(Output("stream", name=out.name, text=first))
                        used += _nbytes(first)
                    out = Output("stream", name=out.name, text=second)
                rest.append(out)
            else:
                kept.append(out)
                used += cost
        self.head, self.head_used = kept, used
        for out in rest:
            self.tail_used += _push_tail(self.tail, out, self._cost(out))

    def _trim_tail(self) -> None:
        while self.tail_used > self.tail_budget and self.tail:
            excess = self.tail_used - self.tail_budget
            first, size = self.tail[0]
            if first.type == "stream" and first.text is not None and size > excess:
                _, kept = _split_at(first.text, excess)
                # _split_at rounds down; drop the partial character too
                if _nbytes(kept) > size - excess:
                    kept = kept[1:]
                kept_size = _nbytes(kept)
                self.tail[0] = (Output("stream", name=first.name, text=kept), kept_size)
                dropped = size - kept_size
            else:
                self.tail.popleft()
                dropped = size
            self.tail_used -= dropped
            self.truncated_bytes += dropped
            self._cut_streams.add(first.name if first.type == "stream" and first.name else "stdout")

    # -- results -----------------------------------------------------------------
    def outputs(self) -> list[Output]:
        """The collected outputs in order, adjacent stream chunks merged, marker in place."""
        items = list(self.head)
        if self.truncated_bytes:
            marker = truncation_marker(self.truncated_bytes)
            items.extend(
                Output("stream", name=name, text=marker) for name in sorted(self._cut_streams)
            )
            items.append(Output("notice", name="truncated", text=marker.strip()))
        items.extend(out for out, _ in self.tail)
        merged: list[Output] = []
        pending: list[str] = []
        for out in items:
            if (
                out.type == "stream"
                and merged
                and merged[-1].type == "stream"
                and merged[-1].name == out.name
            ):
                pending.append(out.text or "")
                continue
            if pending:
                last = merged[-1]
                merged[-1] = Output("stream", name=last.name, text="".join(pending))
            merged.append(out)
            pending = [out.text or ""] if out.type == "stream" else []
        if pending:
            last = merged[-1]
            merged[-1] = Output("stream", name=last.name, text="".join(pending))
        return merged

    @staticmethod
    def stream_text(outputs: list[Output], name: str) -> str:
        return "".join(o.text or "" for o in outputs if o.type == "stream" and o.name == name)


def _push(pieces: list[Output], out: Output, cost: int) -> int:
    """Append to a piece list, coalescing with a small trailing piece of the same stream."""
    if (
        out.type == "stream"
        and pieces
        and pieces[-1].type == "stream"
        and pieces[-1].name == out.name
        and pieces[-1].size() < COALESCE_BYTES
    ):
        last = pieces[-1]
        pieces[-1] = Output("stream", name=out.name, text=(last.text or "") + (out.text or ""))
    else:
        pieces.append(out)
    return cost


def _push_tail(tail: collections.deque[tuple[Output, int]], out: Output, cost: int) -> int:
    if (
        out.type == "stream"
        and tail
        and tail[-1][0].type == "stream"
        and tail[-1][0].name == out.name
        and tail[-1][1] < COALESCE_BYTES
    ):
        last, size = tail[-1]
        tail[-1] = (
            Output("stream", name=out.name, text=(last.text or "") + (out.text or "")),
            size + cost,
        )
    else:
        tail.append((out, cost))
    return cost
