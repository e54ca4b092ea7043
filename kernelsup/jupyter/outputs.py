"""Collect one request's IOPub output into a bounded, ordered list.

Pure: takes decoded messages, returns value types; no I/O.

Theory of operation
-------------------
A request may print without limit; the supervisor's memory must not grow with it. The
collector keeps a *head* (the first ``max_bytes // 2`` bytes of output, in order) and a
*tail* (a queue of the most recent output, at most the other half). Once the head is full,
new output goes to the tail, and the oldest tail output is dropped (or, for a stream
chunk, trimmed from its front) to stay within budget. Every dropped byte is counted in
``truncated_bytes``, and the final output list carries a marker line where the middle was
cut, written into each stream that lost text so a reader of ``stdout`` sees it in place.
Adjacent chunks of the same stream are merged, so a flood of small prints is a few strings,
not a million objects.
"""

from __future__ import annotations

import collections
import re
from typing import Any

from kernelsup.results import ErrorInfo, Output

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _tail_of(text: str, nbytes: int) -> str:
    """The end of ``text`` that fits in ``nbytes`` (never splits a character)."""
    raw = text.encode("utf-8", "surrogatepass")[-nbytes:] if nbytes > 0 else b""
    return raw.decode("utf-8", "ignore")


def _head_of(text: str, nbytes: int) -> str:
    raw = text.encode("utf-8", "surrogatepass")[:nbytes] if nbytes > 0 else b""
    return raw.decode("utf-8", "ignore")


def truncation_marker(dropped: int) -> str:
    return f"\n[kernelsup: output truncated, {dropped} bytes dropped]\n"


class OutputCollector:
    """Accumulates outputs for one request within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.head_budget = max_bytes // 2
        self.tail_budget = max_bytes - self.head_budget
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
            out = Output(msg_type if msg_type != "update_display_data" else "display_data",
                         data=data, metadata=content.get("metadata") or {})
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
            ename=str(content.get("ename", "")), evalue=str(content.get("evalue", "")),
            traceback=tuple(strip_ansi(str(line)) for line in tb))

    def add(self, out: Output) -> None:
        size = out.size()
        if self.head_used < self.head_budget:
            room = self.head_budget - self.head_used
            if size <= room:
                self.head.append(out)
                self.head_used += size
                return
            if out.type == "stream" and out.text is not None:
                first = _head_of(out.text, room)
                self.head.append(Output("stream", name=out.name, text=first))
                self.head_used += _nbytes(first)
                out = Output("stream", name=out.name, text=out.text[len(first):])
                size = out.size()
            # a rich output that does not fit the head goes to the tail whole
        self.tail.append((out, size))
        self.tail_used += size
        self._trim_tail()

    def _trim_tail(self) -> None:
        while self.tail_used > self.tail_budget and self.tail:
            excess = self.tail_used - self.tail_budget
            first, size = self.tail[0]
            if first.type == "stream" and first.text is not None and size > excess:
                kept = _tail_of(first.text, size - excess)
                kept_size = _nbytes(kept)
                self.tail[0] = (Output("stream", name=first.name, text=kept), kept_size)
                dropped = size - kept_size
            else:
                self.tail.popleft()
                dropped = size
            self.tail_used -= dropped
            self.truncated_bytes += dropped
            self._cut_streams.add(first.name if first.type == "stream" and first.name
                                  else "stdout")

    # -- results -----------------------------------------------------------------
    def outputs(self) -> list[Output]:
        """The collected outputs in order, adjacent stream chunks merged, marker in place."""
        items = list(self.head)
        if self.truncated_bytes:
            marker = truncation_marker(self.truncated_bytes)
            items.extend(Output("stream", name=name, text=marker)
                         for name in sorted(self._cut_streams))
            items.append(Output("notice", name="truncated", text=marker.strip()))
        items.extend(out for out, _ in self.tail)
        merged: list[Output] = []
        pending: list[str] = []
        for out in items:
            if (out.type == "stream" and merged and merged[-1].type == "stream"
                    and merged[-1].name == out.name):
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
