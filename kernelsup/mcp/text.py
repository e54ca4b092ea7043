"""What reaches the model: plain text, within a budget of characters.

Pure: no trio, no zmq, no mcp.

A model reads text. Colour codes and other terminal control sequences (IPython's coloured
tracebacks, ``ls --color``, ``rich``, progress bars) cost it tokens and mean nothing to it,
and a progress bar redrawn a thousand times with carriage returns is one line on a screen
but a thousand in the stream. :func:`plain` strips the escape sequences and resolves
carriage returns the way a notebook shows them (the last text written over a line wins).

Every tool result is then held to ``max_output_chars`` by :func:`clip`: the head and the
tail are kept, and one marker line where the middle was cut says how many characters and
lines went and how to read them (the caller's ``hint``: ``job_output`` with the job's id).
The tail gets the larger share: the end of an output (the error, the value of the last
expression, kernelsup's status line) is what a call is usually about.
"""

from __future__ import annotations

import re

import attrs

# The smallest budget clip takes: room for the marker line and a little of each end. (The
# budget a user sets has its own range: [mcp] max_output_chars in the config.)
MIN_CLIP_CHARS = 500
# The tail's share of what is kept when the middle is cut.
TAIL_SHARE = 0.6
# A cut moves to a line boundary when one lies within this share of the kept part, so the
# head ends and the tail starts on whole lines.
SNAP_SHARE = 0.25

# ECMA-48 escape sequences: CSI (colours, cursor moves, erasing), OSC (titles,
# hyperlinks) and the other string sequences when terminated, the two- and three-byte
# escapes, the 8-bit CSI, and a lone ESC. Then the C0 controls a terminal would not print
# (all but tab, newline and carriage return) and DEL.
_ANSI = re.compile(
    r"""
      \x1b\[[0-?]*[ -/]*[@-~]
    | \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)
    | \x1b[PX^_][^\x1b]*\x1b\\
    | \x1b[ -/]*[0-~]
    | \x9b[0-?]*[ -/]*[@-~]
    | [\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]
    """,
    re.VERBOSE,
)


def plain(text: str) -> str:
    """``text`` without escape sequences or control characters, carriage returns resolved:
    ``\\r\\n`` is a newline, and of a line rewritten with ``\\r`` the last non-empty
    version is kept."""
    text = _ANSI.sub("", text)
    if "\r" not in text:
        return text
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(_last_version(line) for line in lines)


def _last_version(line: str) -> str:
    if "\r" not in line:
        return line
    versions = [v for v in line.split("\r") if v]
    return versions[-1] if versions else ""


@attrs.frozen
class Clipped:
    """``text`` within the budget; ``cut_chars`` and ``cut_lines`` say what was left out
    of the middle (0 when nothing was)."""

    text: str
    cut_chars: int = 0
    cut_lines: int = 0


def clip(text: str, max_chars: int, *, hint: str = "") -> Clipped:
    """``text`` itself if it fits in ``max_chars``; else its head and tail around a marker
    line naming what was cut (and ``hint``: how to read it), all within ``max_chars``.

    ``max_chars`` must be at least :data:`MIN_CLIP_CHARS` (ValueError otherwise)."""
    if max_chars < MIN_CLIP_CHARS:
        raise ValueError(f"max_chars must be >= {MIN_CLIP_CHARS} (got {max_chars})")
    if len(text) <= max_chars:
        return Clipped(text)
    # The marker's length depends on the numbers in it, which depend on the room left:
    # size it with the largest numbers it can hold (the whole text cut).
    longest = _marker(len(text), text.count("\n") + 1, max_chars, hint)
    room = max(max_chars - len(longest) - 2, 0)
    tail_len = int(room * TAIL_SHARE)
    head_end = _snap_back(text, room - tail_len)
    tail_start = _snap_forward(text, len(text) - tail_len)
    middle = text[head_end:tail_start]
    marker = _marker(len(middle), middle.count("\n"), max_chars, hint)
    head, tail = text[:head_end], text[tail_start:]
    joined = head + ("" if not head or head.endswith("\n") else "\n") + marker + "\n" + tail
    return Clipped(joined, len(middle), middle.count("\n"))


def _marker(chars: int, lines: int, max_chars: int, hint: str) -> str:
    said = f"[kernelsup: {chars:,} characters ({lines:,} lines) cut from the middle here, "
    said += f"to keep this result within {max_chars:,} characters"
    return said + (f"; {hint}]" if hint else "]")


def _snap_back(text: str, end: int) -> int:
    """``end``, moved back to just after a newline if one is near."""
    newline = text.rfind("\n", end - int(end * SNAP_SHARE), end)
    return newline + 1 if newline >= 0 else end


def _snap_forward(text: str, start: int) -> int:
    """``start``, moved forward to just after a newline if one is near."""
    newline = text.find("\n", start, start + int((len(text) - start) * SNAP_SHARE))
    return newline + 1 if newline >= 0 else start


__all__ = ["MIN_CLIP_CHARS", "Clipped", "clip", "plain"]
