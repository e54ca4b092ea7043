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

Everything the kernel returns counts: stream text, rich data (every MIME entry and the
metadata), the value's text (``result`` is the text/plain of the execute_result *as kept*),
and the error. An error is cut to the tail's half of the budget as it arrives (``ename``,
``evalue`` and the traceback keep their head and tail, with a marker where the cut is), so
the error always fits. When the tail must give up bytes and its oldest item is a rich
output or an error, it is cut to its text (text/plain's head and tail, the other MIME
entries dropped) when at least ``MIN_SHRINK_BYTES`` of it can stay, else dropped whole.

A message over :func:`message_limit` is never decoded (``core/wire.py``): it arrives as a
size and a few fields, and :meth:`OutputCollector.drop_message` takes it. A stream's comes
with its text's head and tail, read from the raw message: the head closes there and the
bytes between are the middle, as if the text had been printed in pieces. Any other takes
an ``oversized`` notice's place (its size, its type; an error keeps its ``ename``).

``truncated_bytes`` counts what the kernel sent, not what it became here: a U+FFFD (which
ipykernel puts in place of each byte it could not decode as UTF-8, 3 bytes once encoded)
counts as the one byte it replaced; a message dropped whole counts its payload as sent
(its JSON included), U+FFFD likewise. The budget itself counts the UTF-8 bytes kept, so
what is held never exceeds it.
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
# A rich output or an error is cut to its text only if this much of it can stay; a smaller
# fragment of a value or a picture is noise, and it is dropped whole instead.
MIN_SHRINK_BYTES = 256
# Room in a kernel message beyond its payload: header, parent header, metadata, signature
# (under 2 KB from ipykernel; 64 KiB leaves room for rich metadata).
ENVELOPE_HEADROOM = 64 * 1024
# An error's name is a class name: longer than this is cut.
ENAME_BYTES = 256
REPLACEMENT = "\ufffd"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def message_limit(max_output_bytes: int) -> int:
    """The largest kernel message decoded for a request with this budget: twice the budget
    (so a value or a traceback a little over it is cut, head and tail kept, not dropped;
    JSON escapes and ANSI colour make text bigger on the wire) plus the envelope."""
    return 2 * max_output_bytes + ENVELOPE_HEADROOM


def sent_bytes(text: str) -> int:
    """The bytes the kernel's program wrote to make ``text``: its UTF-8, a U+FFFD counting
    as the one undecodable byte it replaced."""
    if text.isascii():
        return len(text)
    return _nbytes(text) - 2 * text.count(REPLACEMENT)


def cut_marker(dropped: int) -> str:
    return f"\n[kernelsup: {dropped} bytes cut]\n"


def cut_text(text: str, max_bytes: int) -> tuple[str, int]:
    """``text`` within ``max_bytes`` UTF-8 bytes: as it is if it fits, else its head and
    tail around a :func:`cut_marker`; with the bytes cut (as :func:`sent_bytes` counts
    them). Too little room for the marker gives ``""``."""
    size = _nbytes(text)
    if size <= max_bytes:
        return text, 0
    room = max_bytes - len(cut_marker(size)) - 4  # 4: the tail may round up by a character
    if room < 0:
        return "", sent_bytes(text)
    head, rest = _split_at(text, room // 2)
    middle, tail = _split_at(rest, _nbytes(rest) - (room - room // 2))
    dropped = sent_bytes(middle)
    return head + cut_marker(dropped) + tail, dropped


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


# Message types an oversized notice names as they are; anything else is "message".
_NAMED_TYPES = frozenset(
    {"stream", "display_data", "update_display_data", "execute_result", "error", "execute_reply"}
)


def oversized_notice(msg_type: str, name: str | None, size: int, limit: int) -> str:
    """The text of the notice that takes the place of a message too big to decode."""
    what = msg_type if msg_type in _NAMED_TYPES else "message"
    if msg_type == "stream" and name in ("stdout", "stderr"):
        what = f"{name} stream"
    return (
        f"[kernelsup: the kernel's {what} message of {size:,} bytes was dropped: over the "
        f"{limit:,}-byte limit per message (twice max_output_bytes, plus 64 KiB)]"
    )


def _data_cost(data: dict[str, Any] | None, metadata: dict[str, Any] | None) -> int:
    n = 0
    for key, value in (data or {}).items():
        n += len(key) + (_nbytes(value) if isinstance(value, str) else len(repr(value)))
    return n + (len(repr(metadata)) if metadata else 0)


class OutputCollector:
    """Accumulates outputs for one request within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.head_budget = max_bytes // 2
        self.tail_budget = max_bytes - self.head_budget
        self.message_limit = message_limit(max_bytes)
        self.head_closed = False
        self.head: list[Output] = []
        self.head_used = 0
        self.tail: collections.deque[tuple[Output, int]] = collections.deque()
        self.tail_used = 0
        self.truncated_bytes = 0  # everything dropped or cut, as the kernel sent it
        self._middle_bytes = 0  # what the head/tail cut dropped: the marker's number
        self._cut_streams: set[str] = set()
        self._result_output: Output | None = None  # the execute_result, while it is kept
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
            metadata = content.get("metadata") or {}
            transient = content.get("transient")
            shown_id = transient.get("display_id") if isinstance(transient, dict) else None
            display_id = shown_id if isinstance(shown_id, str) else None
            update = msg_type == "update_display_data"
            out = Output(
                "display_data" if update else msg_type,
                name="update" if update and display_id is not None else None,
                data=data,
                metadata=metadata if isinstance(metadata, dict) else {},
                display_id=display_id,
            )
            if msg_type == "execute_result":
                self._take_count(content)
                plain = data.get("text/plain")
                self.result = plain if isinstance(plain, str) else None
                self._result_output = out
        elif msg_type == "error":
            self.set_error(content)
            out = Output("error", text="\n".join(self.error.traceback) if self.error else "")
        elif msg_type == "execute_input":
            self._take_count(content)
        if out is not None:
            self.add(out)
        return out

    def drop_message(self, msg_type: str, size: int, content: dict[str, Any]) -> Output:
        """A message of this request too big to decode (``size`` bytes of payload, as
        :func:`sent_bytes` counts them). ``content`` holds what was read without decoding
        it (see core/wire.py). A stream whose text's head and tail could be read is cut
        like any other output (head and tail kept, the middle counted, the marker where
        the cut is); any other message is counted, with an ``oversized`` notice in its
        place. Returns what takes its place in the output."""
        name = content.get("name")
        head, cut, tail = content.get("text"), content.get("cut"), content.get("tail")
        if (
            msg_type == "stream"
            and isinstance(name, str)
            and isinstance(head, str)
            and isinstance(cut, int)
            and isinstance(tail, str)
        ):
            return self._cut_stream(name, head, cut, tail)
        text = oversized_notice(
            msg_type, name if isinstance(name, str) else None, size, self.message_limit
        )
        notice = Output("notice", name="oversized", text=text)
        self.truncated_bytes += size
        if msg_type == "execute_result":
            self._take_count(content)
            self.result = None
            self._result_output = None
        elif msg_type == "error" and self.error is None:
            self.dropped_error(content.get("ename"), text)
        self.add(notice)
        return notice

    def _cut_stream(self, name: str, head: str, cut: int, tail: str) -> Output:
        """A stream message of which only the head and tail of the text were read: the
        bytes between are the middle of this request's output, so the head closes here."""
        self.add(Output("stream", name=name, text=head))
        if not self.head_closed:
            self._close_head()
        self.truncated_bytes += cut
        self._middle_bytes += cut
        self._cut_streams.add(name)
        self.add(Output("stream", name=name, text=tail))
        return Output("stream", name=name, text=head + cut_marker(cut) + tail)

    def dropped_error(self, ename: object, why: str) -> None:
        """The error of a message too big to decode: its name if it could be read, and why
        the rest is missing."""
        name = ename if isinstance(ename, str) else ""
        self.error = ErrorInfo(ename=cut_text(name, ENAME_BYTES)[0], evalue=why)

    def set_error(self, content: dict[str, Any]) -> None:
        """The request's error from an ``error`` message or an error ``execute_reply``: no
        ANSI, and within the tail's half of the budget (what was cut is counted)."""
        room = self.tail_budget
        ename, cut_name = cut_text(str(content.get("ename", "")), ENAME_BYTES)
        evalue, cut_value = cut_text(str(content.get("evalue", "")), room // 4)
        raw = content.get("traceback") or []
        lines = [strip_ansi(str(line)) for line in raw] if isinstance(raw, (list, tuple)) else []
        room -= _nbytes(ename) + _nbytes(evalue)
        cut_lines = 0
        if sum(_nbytes(line) for line in lines) + len(lines) > room:
            joined, cut_lines = cut_text("\n".join(lines), room)
            lines = joined.split("\n")
        self.truncated_bytes += cut_name + cut_value + cut_lines
        self.error = ErrorInfo(ename=ename, evalue=evalue, traceback=tuple(lines))

    def _take_count(self, content: dict[str, Any]) -> None:
        count = content.get("execution_count")
        if isinstance(count, int) and not isinstance(count, bool):
            self.execution_count = count

    def _cost(self, out: Output) -> int:
        if out.type == "stream":
            return _nbytes(out.text or "")
        size = _nbytes(out.text) if out.text else 0
        return max(size + _data_cost(out.data, out.metadata), MIN_RICH_COST)

    def add(self, out: Output) -> None:
        if out.type == "stream" and not out.text:
            return
        if out.type in ("display_data", "execute_result") and not out.data:
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
        """Give up the tail's oldest bytes until it is within its budget: a stream piece
        loses its start, a rich output or an error is cut to its text or dropped."""
        while self.tail_used > self.tail_budget and self.tail:
            excess = self.tail_used - self.tail_budget
            first, size = self.tail[0]
            shrunk = self._shrink(first, excess) if size > excess else None
            if shrunk is None:
                self.tail.popleft()
                kept, kept_size = None, 0
                dropped = sent_bytes(first.text or "") if first.type == "stream" else size
            else:
                kept, dropped = shrunk
                kept_size = self._cost(kept)
                self.tail[0] = (kept, kept_size)
            if first is self._result_output:
                self._result_output = kept
                plain = kept.data.get("text/plain") if kept is not None and kept.data else None
                self.result = plain if isinstance(plain, str) else None
            self.tail_used -= size - kept_size
            if first.type == "notice":
                continue  # our own words, not the kernel's output
            self.truncated_bytes += dropped
            self._middle_bytes += dropped
            self._cut_streams.add(first.name if first.type == "stream" and first.name else "stdout")

    def _shrink(self, out: Output, excess: int) -> tuple[Output, int] | None:
        """``out`` less at least ``excess`` bytes of budget, with the bytes dropped (as
        :func:`sent_bytes` counts them); None to drop it whole."""
        if out.type == "stream" and out.text is not None:
            _, kept = _split_at(out.text, excess)
            # _split_at rounds down; drop the partial character too
            if _nbytes(kept) > _nbytes(out.text) - excess:
                kept = kept[1:]
            gone = out.text[: len(out.text) - len(kept)]
            return Output("stream", name=out.name, text=kept), sent_bytes(gone)
        target = self._cost(out) - excess
        if out.type == "error" and out.text is not None:
            if target < MIN_SHRINK_BYTES:
                return None
            text, dropped = cut_text(out.text, target)
            return Output("error", text=text), dropped
        data = out.data or {}
        plain = data.get("text/plain")
        if out.type == "notice" or not isinstance(plain, str):
            return None
        room = target - len("text/plain")
        if room < MIN_SHRINK_BYTES:
            return None
        text, dropped = cut_text(plain, room)
        others = {key: value for key, value in data.items() if key != "text/plain"}
        dropped += _data_cost(others, out.metadata)
        shrunk = Output(out.type, data={"text/plain": text}, metadata={})
        return (shrunk, dropped) if self._cost(shrunk) < self._cost(out) else None

    # -- results -----------------------------------------------------------------
    def outputs(self) -> list[Output]:
        """The collected outputs in order, adjacent stream chunks merged, marker in place."""
        items = list(self.head)
        if self._middle_bytes:
            marker = truncation_marker(self._middle_bytes)
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


# --- text for a terminal --------------------------------------------------------------
#
# What a kernel prints goes to the user's terminal as it is, minus anything that would
# make the terminal do something other than show coloured text. Kept: SGR (ESC [ ... m:
# colour, bold, underline), \n, \t, \r and \b. \r and \b only move the cursor back along
# the current line, so they can overwrite nothing but what this same output wrote there,
# and progress bars (tqdm, pip) and spinners are made of them. Dropped: every other CSI
# (cursor moves to other lines, clearing the screen, scroll regions, mode changes, device
# reports whose answers the terminal types into the user's input), the string sequences
# OSC, DCS, SOS, PM and APC whole (window title, clipboard, hyperlinks, terminal
# programming), every other ESC sequence (reset, charsets, keypad modes), the other C0
# controls, DEL and the C1 controls (U+0080-U+009F, which some terminals obey as 8-bit
# ESC sequences: U+009B is CSI). What is written is text with SGR only, however the
# kernel's chunks split a sequence: a sequence cut at a chunk's end is held until the next
# chunk completes it (at most CARRY_LIMIT characters), and a string sequence is dropped
# up to its terminator across chunks (BEL, ST, or CAN and SUB which abort it), at most
# STRING_LIMIT characters of it: the terminal never saw its introducer, so what follows a
# string that does not end is only text, and a stray ESC ] does not hide the rest.

# An incomplete escape sequence held for the next chunk; a longer one is dropped.
CARRY_LIMIT = 64
# The most of a string sequence's payload dropped while waiting for its terminator.
STRING_LIMIT = 4096

_DROPPED_CONTROL = re.compile("[\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SEQUENCE = re.compile(
    r"(?P<sgr>\x1b\[[0-9:;]*m)"
    r"|(?P<csi>\x1b\[[0-?]*[ -/]*[@-~])"
    r"|(?P<string>\x1b[\]PX^_])"
    # other ESC sequences: intermediates and a final, or a final that introduces nothing
    r"|(?P<esc>\x1b[ -/]+[0-~]|\x1b[0-OQ-WYZ\\`-~])"
)
# What may still become a sequence once more text comes.
_INCOMPLETE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|[ -/]*)?")
_STRING_END = re.compile("[\x07\x18\x1a]|\x1b\\\\")


class TerminalFilter:
    """Makes a kernel's text safe to write to a terminal (see above): one per stream, fed
    the stream's chunks in order. Pure; holds at most ``CARRY_LIMIT`` characters."""

    def __init__(self) -> None:
        self._carry = ""  # an incomplete sequence at the end of the last chunk
        self._string_left = 0  # inside an OSC/DCS/SOS/PM/APC: this much more is dropped
        self.coloured = False  # an SGR was let through (the writer may reset at the end)

    def feed(self, text: str) -> str:
        """The part of ``text`` (after what came before) that may go to the terminal."""
        if self._carry:
            text, self._carry = self._carry + text, ""
        out: list[str] = []
        pos = 0
        n = len(text)
        while pos < n:
            if self._string_left:
                end = _STRING_END.search(text, pos, pos + self._string_left)
                if end is None:
                    if n - pos >= self._string_left:  # too long: what follows is text
                        pos += self._string_left
                        self._string_left = 0
                        continue
                    self._string_left -= n - pos
                    if text.endswith("\x1b"):
                        self._carry = "\x1b"  # perhaps the start of ST
                    return "".join(out)
                self._string_left = 0
                pos = end.end()
                continue
            at = _DROPPED_CONTROL.search(text, pos)
            if at is None:
                out.append(text[pos:])
                break
            out.append(text[pos : at.start()])
            pos = at.start()
            if text[pos] != "\x1b":
                pos += 1  # a control character: dropped
                continue
            seq = _SEQUENCE.match(text, pos)
            if seq is None:
                rest = _INCOMPLETE.fullmatch(text, pos)
                if rest is not None and n - pos <= CARRY_LIMIT:
                    self._carry = text[pos:]
                    break
                pos += 1  # a lone ESC: dropped, what follows is text
                continue
            if seq.lastgroup == "sgr":
                out.append(seq.group())
                self.coloured = True
            elif seq.lastgroup == "string":
                self._string_left = STRING_LIMIT
            pos = seq.end()
        return "".join(out)

    def end(self) -> str:
        """The stream is over: drop what is held; a reset if colour was let through."""
        self._carry = ""
        self._string_left = 0
        return "\x1b[0m" if self.coloured else ""
