"""The output collector: order, merging, head/tail truncation and its accounting, ANSI.

Pure module, plain synchronous table tests. Stream-only cases are checked against a
byte-level reference model (``expected_outputs``): the head is the first ``max // 2`` bytes
of everything printed, the tail the last ``max - max // 2`` bytes, the middle is dropped
and a marker goes into each stream that lost bytes plus one ``notice``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from kernelsup.core.outputs import (
    CARRY_LIMIT,
    ENAME_BYTES,
    MIN_SHRINK_BYTES,
    STRING_LIMIT,
    OutputCollector,
    TerminalFilter,
    cut_marker,
    cut_text,
    message_limit,
    oversized_notice,
    sent_bytes,
    strip_ansi,
    truncation_marker,
)
from kernelsup.core.results import ErrorInfo, Output

Chunk = tuple[str, str]  # (stream name, text)


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def feed(c: OutputCollector, chunks: list[Chunk]) -> None:
    for name, text in chunks:
        c.add_message("stream", {"name": name, "text": text})


def collect(max_bytes: int, chunks: list[Chunk]) -> OutputCollector:
    c = OutputCollector(max_bytes)
    feed(c, chunks)
    return c


def merge(items: list[Output]) -> list[Output]:
    """Join adjacent stream outputs of the same name (the collector's documented rule)."""
    out: list[Output] = []
    for item in items:
        if item.type == "stream" and out and out[-1].type == "stream" and out[-1].name == item.name:
            text = (out[-1].text or "") + (item.text or "")
            out[-1] = Output("stream", name=item.name, text=text)
        else:
            out.append(item)
    return out


def runs(labelled: list[tuple[str, str]]) -> list[Output]:
    return merge([Output("stream", name=name, text=ch) for name, ch in labelled])


def expected_outputs(max_bytes: int, chunks: list[Chunk]) -> tuple[list[Output], int]:
    """Reference model for ASCII stream chunks: (outputs, truncated_bytes)."""
    labelled = [(name, ch) for name, text in chunks for ch in text]
    assert all(len(ch.encode()) == 1 for _, ch in labelled), "model is for ASCII only"
    head_n = max_bytes // 2
    tail_n = max_bytes - head_n
    total = len(labelled)
    tail_start = max(head_n, total - tail_n)
    head, middle, tail = labelled[:head_n], labelled[head_n:tail_start], labelled[tail_start:]
    items = runs(head)
    if middle:
        marker = truncation_marker(len(middle))
        items += [Output("stream", name=n, text=marker) for n in sorted({n for n, _ in middle})]
        items.append(Output("notice", name="truncated", text=marker.strip()))
    return merge(items + runs(tail)), len(middle)


def lines(name: str, n: int, width: int = 10) -> list[Chunk]:
    return [(name, f"{name[:3]}{i:0{width - 4}d}\n") for i in range(n)]


def alternate(n: int) -> list[Chunk]:
    return [("stdout" if i % 2 == 0 else "stderr", f"<{i:03d}>") for i in range(n)]


# --- under budget: everything kept, in order --------------------------------------------

UNDER_BUDGET: list[tuple[str, list[tuple[str, dict[str, Any]]], list[Output]]] = [
    (
        "one stdout chunk",
        [("stream", {"name": "stdout", "text": "hello\n"})],
        [Output("stream", name="stdout", text="hello\n")],
    ),
    (
        "adjacent stdout chunks merge",
        [
            ("stream", {"name": "stdout", "text": "a"}),
            ("stream", {"name": "stdout", "text": "b"}),
            ("stream", {"name": "stdout", "text": "c\n"}),
        ],
        [Output("stream", name="stdout", text="abc\n")],
    ),
    (
        "interleaved stdout/stderr kept in order, runs merged",
        [
            ("stream", {"name": "stdout", "text": "o1"}),
            ("stream", {"name": "stdout", "text": "o2"}),
            ("stream", {"name": "stderr", "text": "e1"}),
            ("stream", {"name": "stdout", "text": "o3"}),
            ("stream", {"name": "stderr", "text": "e2"}),
            ("stream", {"name": "stderr", "text": "e3"}),
        ],
        [
            Output("stream", name="stdout", text="o1o2"),
            Output("stream", name="stderr", text="e1"),
            Output("stream", name="stdout", text="o3"),
            Output("stream", name="stderr", text="e2e3"),
        ],
    ),
    (
        "a display between two prints splits the run",
        [
            ("stream", {"name": "stdout", "text": "before\n"}),
            ("display_data", {"data": {"text/plain": "<Figure>"}, "metadata": {"m": 1}}),
            ("stream", {"name": "stdout", "text": "after\n"}),
        ],
        [
            Output("stream", name="stdout", text="before\n"),
            Output("display_data", data={"text/plain": "<Figure>"}, metadata={"m": 1}),
            Output("stream", name="stdout", text="after\n"),
        ],
    ),
    (
        "update_display_data is reported as display_data",
        [("update_display_data", {"data": {"text/plain": "v2"}})],
        [Output("display_data", data={"text/plain": "v2"}, metadata={})],
    ),
    (
        "unicode text kept exactly",
        [("stream", {"name": "stdout", "text": "héllo 世界 🎉\n"})],
        [Output("stream", name="stdout", text="héllo 世界 🎉\n")],
    ),
    (
        "unknown and bookkeeping message types are ignored",
        [
            ("status", {"execution_state": "busy"}),
            ("execute_input", {"code": "1"}),
            ("comm_open", {"comm_id": "x"}),
            ("clear_output", {"wait": False}),
            ("stream", {"name": "stdout", "text": "x"}),
        ],
        [Output("stream", name="stdout", text="x")],
    ),
    (
        "display_data with a non-dict data is ignored",
        [
            ("display_data", {"data": ["not", "a", "dict"]}),
            ("stream", {"name": "stdout", "text": "x"}),
        ],
        [Output("stream", name="stdout", text="x")],
    ),
    (
        "exactly at the budget (64 bytes, four 16-byte chunks)",
        [("stream", {"name": "stdout", "text": "0123456789abcde\n"})] * 4,
        [Output("stream", name="stdout", text="0123456789abcde\n" * 4)],
    ),
]


@pytest.mark.parametrize(
    ("case", "messages", "expected"), UNDER_BUDGET, ids=[c[0] for c in UNDER_BUDGET]
)
def test_under_budget_output_is_kept_exactly_and_in_order(
    case: str, messages: list[tuple[str, dict[str, Any]]], expected: list[Output]
) -> None:
    c = OutputCollector(64)
    for msg_type, content in messages:
        c.add_message(msg_type, content)
    assert c.outputs() == expected
    assert c.truncated_bytes == 0
    assert not any(o.type == "notice" for o in c.outputs())


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([("stdout", "x" * 1000)], id="one-chunk"),
        pytest.param(lines("stdout", 50, width=20), id="50-lines"),
        pytest.param(alternate(100), id="interleaved"),
    ],
)
def test_under_budget_matches_reference_model(chunks: list[Chunk]) -> None:
    total = sum(nbytes(t) for _, t in chunks)
    c = collect(total, chunks)  # budget exactly the size printed
    assert c.outputs() == expected_outputs(total, chunks)[0]
    assert c.truncated_bytes == 0


# --- over budget: head, tail, marker, exact accounting ----------------------------------

OVER_BUDGET: list[tuple[str, int, list[Chunk]]] = [
    ("one big chunk", 100, [("stdout", "0123456789" * 30)]),
    ("one byte over", 100, [("stdout", "y" * 101)]),
    ("many small chunks", 64, lines("stdout", 100)),
    ("odd budget", 101, lines("stdout", 100)),
    ("chunk sizes that do not divide the budget", 97, [("stdout", "abcdefg")] * 60),
    ("head ends exactly on a chunk boundary", 40, [("stdout", "0123456789")] * 10),
    ("interleaved stdout/stderr, both cut", 40, alternate(40)),
    (
        "only stdout loses bytes",
        40,
        [("stderr", "E" * 10), ("stdout", "o" * 100), ("stderr", "F" * 5)],
    ),
    (
        "only stderr loses bytes",
        40,
        [("stdout", "o" * 25), ("stderr", "e" * 100), ("stdout", "p" * 25)],
    ),
    ("stderr only", 50, lines("stderr", 30)),
    ("the tail starts in the middle of a chunk", 30, [("stdout", "abcdefghijklm")] * 9),
]


@pytest.mark.parametrize(
    ("case", "max_bytes", "chunks"), OVER_BUDGET, ids=[c[0] for c in OVER_BUDGET]
)
def test_over_budget_matches_reference_model(
    case: str, max_bytes: int, chunks: list[Chunk]
) -> None:
    c = collect(max_bytes, chunks)
    expected, dropped = expected_outputs(max_bytes, chunks)
    assert dropped > 0, "table case is not over budget"
    assert c.outputs() == expected
    assert c.truncated_bytes == dropped


@pytest.mark.parametrize(
    ("case", "max_bytes", "chunks"), OVER_BUDGET, ids=[c[0] for c in OVER_BUDGET]
)
def test_truncated_bytes_is_exactly_what_was_dropped(
    case: str, max_bytes: int, chunks: list[Chunk]
) -> None:
    c = collect(max_bytes, chunks)
    outs = c.outputs()
    marker = truncation_marker(c.truncated_bytes)
    streams = [o for o in outs if o.type == "stream"]
    n_markers = sum((o.text or "").count(marker) for o in streams)
    kept = sum(nbytes(o.text or "") for o in streams) - n_markers * nbytes(marker)
    total_in = sum(nbytes(t) for _, t in chunks)
    assert c.truncated_bytes == total_in - kept
    # ASCII streams fill the budget exactly: nothing is dropped that could have been kept
    assert kept == max_bytes


@pytest.mark.parametrize(
    ("case", "max_bytes", "chunks"), OVER_BUDGET, ids=[c[0] for c in OVER_BUDGET]
)
def test_marker_goes_into_each_stream_that_lost_bytes_and_a_notice(
    case: str, max_bytes: int, chunks: list[Chunk]
) -> None:
    c = collect(max_bytes, chunks)
    outs = c.outputs()
    marker = truncation_marker(c.truncated_bytes)
    assert f"{c.truncated_bytes} bytes dropped" in marker
    notices = [o for o in outs if o.type == "notice"]
    assert notices == [Output("notice", name="truncated", text=marker.strip())]
    # which streams lost bytes, from the model's middle section
    labelled = [name for name, text in chunks for _ in text]
    head_n = max_bytes // 2
    lost = set(labelled[head_n : len(labelled) - (max_bytes - head_n)])
    for name in ("stdout", "stderr"):
        text = OutputCollector.stream_text(outs, name)
        assert (marker in text) == (name in lost), name
        assert text.count(marker) <= 1


@pytest.mark.parametrize(
    ("max_bytes", "text"),
    [
        (100, "".join(chr(0x41 + i % 26) for i in range(500))),
        (101, "".join(chr(0x61 + i % 26) for i in range(333))),
        (64, "0123456789" * 7),
    ],
)
def test_single_stream_is_head_marker_tail(max_bytes: int, text: str) -> None:
    for chunking in (1, 7, len(text)):
        c = collect(
            max_bytes, [("stdout", text[i : i + chunking]) for i in range(0, len(text), chunking)]
        )
        got = OutputCollector.stream_text(c.outputs(), "stdout")
        head, tail = got.split(truncation_marker(c.truncated_bytes))
        assert head == text[: max_bytes // 2]
        assert tail == text[len(text) - len(tail) :]
        assert len(tail) == max_bytes - max_bytes // 2
        assert len(head) + len(tail) + c.truncated_bytes == len(text)


# --- multi-byte characters ---------------------------------------------------------------

MULTIBYTE_CHARS = ["é", "中", "😀", "é中😀"]


def check_multibyte(chars: str, max_bytes: int, chunk_chars: int) -> None:
    text = (chars * 200)[:200]
    chunks = [("stdout", text[i : i + chunk_chars]) for i in range(0, len(text), chunk_chars)]
    c = collect(max_bytes, chunks)
    outs = c.outputs()
    for o in outs:
        if o.text is not None:
            o.text.encode("utf-8")  # strict: no lone surrogates, no half characters
            assert "\ufffd" not in o.text
    got = OutputCollector.stream_text(outs, "stdout")
    head, tail = got.split(truncation_marker(c.truncated_bytes))
    assert text.startswith(head)
    assert text.endswith(tail)
    head_n = max_bytes // 2
    assert head_n - 3 <= nbytes(head) <= head_n
    assert nbytes(tail) <= max_bytes - head_n
    assert nbytes(head) + nbytes(tail) + c.truncated_bytes == nbytes(text)


@pytest.mark.parametrize("chars", MULTIBYTE_CHARS)
@pytest.mark.parametrize("max_bytes", [100, 101, 102, 103])
@pytest.mark.parametrize("chunk_chars", [1, 5, 7, 10_000])
def test_multibyte_text_is_never_split(chars: str, max_bytes: int, chunk_chars: int) -> None:
    check_multibyte(chars, max_bytes, chunk_chars)


@pytest.mark.parametrize("chars", ["xé", "a中", "ab😀"])
def test_mixed_ascii_and_multibyte_in_one_chunk_is_never_split(chars: str) -> None:
    check_multibyte(chars, 101, 10_000)


@pytest.mark.parametrize(
    ("chars", "max_bytes", "chunk_chars"),
    [
        ("xé", 100, 7),
        ("xé", 101, 1),
        ("a中", 101, 5),
        ("a中", 102, 3),
        ("ab😀", 103, 1),
    ],
)
def test_mixed_ascii_and_multibyte_in_many_chunks_head_is_a_prefix(
    chars: str, max_bytes: int, chunk_chars: int
) -> None:
    check_multibyte(chars, max_bytes, chunk_chars)


# ASCII after a multi-byte character that straddled the head boundary. The first chunk
# leaves 2 bytes of head room (4 + 4 of 10); the next chunk's "ab" fits those 2 bytes
# and is put in the head, *before* the "😀" of the earlier chunk that went to the tail.
REORDER_CHUNKS: list[Chunk] = [("stdout", "ab😀")] * 3  # 18 bytes


def test_multibyte_straddling_head_boundary_keeps_order_under_budget() -> None:
    c = collect(20, REORDER_CHUNKS)
    assert c.truncated_bytes == 0
    assert OutputCollector.stream_text(c.outputs(), "stdout") == "ab😀" * 3


def test_lone_surrogate_in_the_head_split_is_not_duplicated() -> None:
    text = "a\ud800" + "b" * 1200  # 1204 bytes with surrogatepass, under the 2000 budget
    c = collect(2000, [("stdout", text)])
    assert c.truncated_bytes == 0
    assert OutputCollector.stream_text(c.outputs(), "stdout") == text


# --- rich outputs --------------------------------------------------------------------------


def test_display_bigger_than_the_budget_is_dropped_and_counted() -> None:
    big = Output("display_data", data={"image/png": "A" * 5000}, metadata={})
    c = OutputCollector(1000)
    feed(c, [("stdout", "h" * 500)])  # the head is full
    c.add_message("display_data", {"data": big.data})
    feed(c, [("stdout", "t" * 10)])
    outs = c.outputs()
    assert not any(o.type == "display_data" for o in outs)
    assert c.truncated_bytes == big.size()
    assert OutputCollector.stream_text(outs, "stdout") == (
        "h" * 500 + truncation_marker(big.size()) + "t" * 10
    )
    assert [o.type for o in outs] == ["stream", "notice", "stream"]


def test_displays_in_the_tail_are_dropped_oldest_first() -> None:
    # head full; three 210-byte displays compete for a 500-byte tail: the oldest goes
    c = OutputCollector(1000)
    feed(c, [("stdout", "h" * 500)])
    displays = [{"text/plain": str(i) * 200} for i in range(3)]
    for data in displays:
        c.add_message("display_data", {"data": data})
    outs = c.outputs()
    assert [o.data for o in outs if o.type == "display_data"] == displays[1:]
    assert c.truncated_bytes == Output("display_data", data=displays[0]).size()


def test_rich_output_that_does_not_fit_the_head_keeps_its_place() -> None:
    c = OutputCollector(1000)
    c.add_message("stream", {"name": "stdout", "text": "x" * 200})
    c.add_message("display_data", {"data": {"text/plain": "d" * 390}})  # 400 > 300 room
    c.add_message("stream", {"name": "stdout", "text": "last\n"})
    assert c.truncated_bytes == 0  # 605 bytes, well under 1000
    assert [o.type for o in c.outputs()] == ["stream", "display_data", "stream"]


def test_rich_output_under_the_total_budget_is_kept() -> None:
    c = OutputCollector(1000)
    c.add_message("display_data", {"data": {"text/plain": "x" * 600}})  # 610 <= 1000
    assert c.truncated_bytes == 0
    assert c.outputs() == [Output("display_data", data={"text/plain": "x" * 600}, metadata={})]


EXECUTE_RESULTS: list[tuple[str, dict[str, Any], str | None, int | None]] = [
    (
        "text/plain and count",
        {"data": {"text/plain": "42", "text/html": "<b>42</b>"}, "execution_count": 7},
        "42",
        7,
    ),
    ("no text/plain", {"data": {"text/html": "<i>x</i>"}, "execution_count": 3}, None, 3),
    ("no count", {"data": {"text/plain": "'s'"}}, "'s'", None),
    ("count not an int", {"data": {"text/plain": "1"}, "execution_count": "9"}, "1", None),
    ("unicode", {"data": {"text/plain": "'héllo 世界'"}, "execution_count": 1}, "'héllo 世界'", 1),
]


@pytest.mark.parametrize(
    ("case", "content", "result", "count"), EXECUTE_RESULTS, ids=[c[0] for c in EXECUTE_RESULTS]
)
def test_execute_result_sets_result_and_execution_count(
    case: str, content: dict[str, Any], result: str | None, count: int | None
) -> None:
    c = OutputCollector(10_000)
    c.add_message("execute_result", content)
    assert c.result == result
    assert c.execution_count == count
    assert c.outputs() == [Output("execute_result", data=content["data"], metadata={})]


def test_execute_input_sets_execution_count_and_result_overrides_it() -> None:
    c = OutputCollector(10_000)
    c.add_message("execute_input", {"code": "1", "execution_count": 4})
    assert c.execution_count == 4
    assert c.outputs() == []
    c.add_message("execute_result", {"data": {"text/plain": "1"}, "execution_count": 5})
    assert c.execution_count == 5


# --- errors and ANSI -----------------------------------------------------------------------

# (raw, stripped): the escapes IPython's tracebacks use, and other common CSI/OSC forms.
ANSI: list[tuple[str, str]] = [
    ("plain text", "plain text"),
    ("\x1b[31mZeroDivisionError\x1b[39m: division by zero", "ZeroDivisionError: division by zero"),
    ("\x1b[0;31m---\x1b[0m\x1b[1;32mCell\x1b[0m", "---Cell"),
    ("\x1b[38;5;196mred256\x1b[0m \x1b[48;2;1;2;3mrgb\x1b[m", "red256 rgb"),
    ("\x1b[2K\x1b[1Gprogress 50%", "progress 50%"),
    ("\x1b[?25lhidden cursor\x1b[?25h", "hidden cursor"),
    ("\x1b]0;window title\x07after", "after"),
    ("tab\tand newline\nkept", "tab\tand newline\nkept"),
    ("unicode 世界 🎉 \x1b[1mbold\x1b[22m", "unicode 世界 🎉 bold"),
]


@pytest.mark.parametrize(("raw", "stripped"), ANSI)
def test_strip_ansi(raw: str, stripped: str) -> None:
    assert strip_ansi(raw) == stripped


def test_strip_ansi_osc8_hyperlink_with_st_terminator() -> None:
    assert strip_ansi("\x1b]8;;file:///x.py\x1b\\x.py\x1b]8;;\x1b\\ line 3") == "x.py line 3"


ERRORS: list[tuple[str, dict[str, Any], ErrorInfo]] = [
    (
        "IPython colours",
        {
            "ename": "ZeroDivisionError",
            "evalue": "division by zero",
            "traceback": [
                "\x1b[31m---------\x1b[39m",
                "\x1b[31mZeroDivisionError\x1b[39m: division by zero",
            ],
        },
        ErrorInfo(
            "ZeroDivisionError",
            "division by zero",
            ("---------", "ZeroDivisionError: division by zero"),
        ),
    ),
    ("no traceback", {"ename": "KeyError", "evalue": "'k'"}, ErrorInfo("KeyError", "'k'", ())),
    ("traceback None", {"ename": "E", "evalue": "v", "traceback": None}, ErrorInfo("E", "v", ())),
    ("missing names", {"traceback": ["\x1b[1mline\x1b[0m"]}, ErrorInfo("", "", ("line",))),
    (
        "non-str lines",
        {"ename": "E", "evalue": 3, "traceback": [1, None]},
        ErrorInfo("E", "3", ("1", "None")),
    ),
]


@pytest.mark.parametrize(("case", "content", "expected"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_message_gives_error_info_without_ansi(
    case: str, content: dict[str, Any], expected: ErrorInfo
) -> None:
    c = OutputCollector(10_000)
    c.add_message("stream", {"name": "stdout", "text": "before\n"})
    c.add_message("error", content)
    assert c.error == expected
    assert c.outputs() == [
        Output("stream", name="stdout", text="before\n"),
        Output("error", text="\n".join(expected.traceback)),
    ]


def test_set_error_from_an_execute_reply() -> None:
    c = OutputCollector(10_000)
    c.set_error(
        {
            "status": "error",
            "ename": "NameError",
            "evalue": "name 'x' is not defined",
            "traceback": ["\x1b[31mNameError\x1b[39m: name 'x' is not defined"],
        }
    )
    assert c.error == ErrorInfo(
        "NameError", "name 'x' is not defined", ("NameError: name 'x' is not defined",)
    )
    assert c.outputs() == []  # the reply's error is data, not an output


# --- floods: memory stays bounded ----------------------------------------------------------


def retained_bytes(c: OutputCollector) -> int:
    return sum(o.size() for o in c.head) + sum(o.size() for o, _ in c.tail)


@pytest.mark.parametrize("max_bytes", [1024, 1024 * 1024 + 1])
def test_flood_of_50mb_in_1kb_chunks_stays_within_budget(max_bytes: int) -> None:
    chunk_a = "".join(chr(0x20 + i % 95) for i in range(1023)) + "\n"
    chunk_b = chunk_a.upper()
    n = 50 * 1024  # 50 MiB in 1 KiB chunks
    c = OutputCollector(max_bytes)
    for i in range(n):
        name = "stderr" if i % 10 == 9 else "stdout"
        c.add_message("stream", {"name": name, "text": chunk_b if i % 3 else chunk_a})
        if i % 509 == 0 or i == n - 1:
            assert c.head_used + c.tail_used <= max_bytes
            assert retained_bytes(c) == c.head_used + c.tail_used
            assert len(c.head) + len(c.tail) <= max_bytes // 1024 + 3
    outs = c.outputs()
    marker = truncation_marker(c.truncated_bytes)
    text_size = sum(nbytes(o.text or "") for o in outs)
    assert text_size <= max_bytes + 3 * nbytes(marker)
    assert c.truncated_bytes == n * 1024 - max_bytes


def test_multibyte_flood_does_not_grow_the_head() -> None:
    c = OutputCollector(1024 * 1024)  # the config default; 524288 % 3 == 2
    chunk = "中" * 341  # 1023 bytes
    for _ in range(1000):
        c.add_message("stream", {"name": "stdout", "text": chunk})
    head_len = len(c.head)
    for _ in range(2000):
        c.add_message("stream", {"name": "stdout", "text": chunk})
    assert len(c.head) <= head_len  # closing the head may shrink it; it never grows


def test_flood_of_empty_outputs_is_bounded() -> None:
    c = OutputCollector(1024)
    for _ in range(10_000):
        c.add_message("stream", {"name": "stdout", "text": ""})
        c.add_message("display_data", {"data": {}})
    assert len(c.head) + len(c.tail) <= 100


def test_flood_of_tiny_chunks_is_a_few_objects() -> None:
    c = OutputCollector(64 * 1024)
    for _ in range(200_000):
        c.add_message("stream", {"name": "stdout", "text": "x"})
    assert len(c.head) + len(c.tail) <= 64


# --- everything counts: values, errors, displays, oversized messages ----------------------


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("", 0),
        ("abc", 3),
        ("é中😀", 2 + 3 + 4),
        ("\ufffd" * 10, 10),  # each stood for one byte the kernel could not decode
        ("a\ufffdb", 3),
        ("\ud800", 3),  # a lone surrogate (JSON allows it) is measured, not refused
    ],
)
def test_sent_bytes_counts_a_replacement_character_as_one_byte(text: str, sent: int) -> None:
    assert sent_bytes(text) == sent


@pytest.mark.parametrize("text", ["x" * 10_000, "é中😀" * 3000, "\ufffd" * 5000, "ab\n" * 4000])
@pytest.mark.parametrize("keep", [100, 257, 4096])
def test_cut_text_keeps_head_and_tail_within_the_bytes(text: str, keep: int) -> None:
    cut, dropped = cut_text(text, keep)
    assert nbytes(cut) <= keep
    head, tail = cut.split(cut_marker(dropped))
    assert text.startswith(head) and text.endswith(tail)
    assert abs(nbytes(head) - nbytes(tail)) <= 4
    assert dropped == sent_bytes(text[len(head) : len(text) - len(tail)])


def test_cut_text_leaves_what_fits_and_drops_what_cannot_hold_its_marker() -> None:
    assert cut_text("short", 100) == ("short", 0)
    assert cut_text("y" * 1000, 10) == ("", 1000)


def test_message_limit_is_twice_the_budget_plus_the_envelope() -> None:
    assert message_limit(1024 * 1024) == 2 * 1024 * 1024 + 64 * 1024
    assert message_limit(1024) == 2048 + 64 * 1024


def test_a_value_over_the_budget_keeps_head_and_tail_and_result_is_what_is_kept() -> None:
    c = OutputCollector(1000)
    value = "'" + "v" * 3000 + "'"
    c.add_message("execute_result", {"data": {"text/plain": value}, "execution_count": 3})
    outs = c.outputs()
    (kept,) = [o for o in outs if o.type == "execute_result"]
    assert kept.data is not None and kept.data["text/plain"] == c.result
    assert c.result is not None and c.result.startswith("'vvv") and c.result.endswith("vvv'")
    assert nbytes(c.result) <= 500
    assert c.truncated_bytes == 3002 - (nbytes(c.result) - nbytes(cut_marker(c.truncated_bytes)))
    assert c.execution_count == 3


def test_a_value_pushed_out_of_the_tail_is_no_longer_the_result() -> None:
    c = OutputCollector(1000)
    feed(c, [("stdout", "x" * 600)])
    c.add_message("execute_result", {"data": {"text/plain": "42"}})
    assert c.result == "42"
    feed(c, [("stdout", "x" * 3000)])  # a background thread keeps printing after it
    assert c.result is None
    assert not [o for o in c.outputs() if o.type == "execute_result"]


def test_a_rich_output_cut_in_the_tail_keeps_only_its_text() -> None:
    c = OutputCollector(4000)
    feed(c, [("stdout", "h" * 2000)])
    data = {"text/plain": "p" * 3000, "image/png": "A" * 3000}
    c.add_message("display_data", {"data": data, "metadata": {"image/png": {"width": 9}}})
    (shown,) = [o for o in c.outputs() if o.type == "display_data"]
    assert shown.data is not None and list(shown.data) == ["text/plain"]
    assert shown.metadata == {}
    assert "bytes cut" in shown.data["text/plain"]
    assert c.tail_used <= c.tail_budget


def test_metadata_counts_against_the_budget() -> None:
    c = OutputCollector(1000)
    c.add_message("display_data", {"data": {"text/plain": "x"}, "metadata": {"m": "y" * 5000}})
    assert c.truncated_bytes > 5000
    assert c.head_used + c.tail_used <= 1000


def test_a_rich_output_with_too_little_room_left_is_dropped_whole() -> None:
    c = OutputCollector(1000)
    feed(c, [("stdout", "h" * 500)])
    c.add_message("display_data", {"data": {"text/plain": "p" * (500 + MIN_SHRINK_BYTES)}})
    feed(c, [("stdout", "t" * 400)])
    assert not [o for o in c.outputs() if o.type == "display_data"]


@pytest.mark.parametrize("max_bytes", [1024, 64 * 1024])
def test_an_error_is_cut_to_half_the_budget_as_it_arrives(max_bytes: int) -> None:
    c = OutputCollector(max_bytes)
    content = {
        "ename": "E" * 1000,
        "evalue": "v" * 100_000,
        "traceback": ["\x1b[31mframe\x1b[0m " + str(i) * 200 for i in range(100)]
        + ["ValueError: " + "v" * 100_000],
    }
    c.add_message("error", content)
    err = c.error
    assert err is not None
    size = nbytes(err.ename) + nbytes(err.evalue) + sum(nbytes(line) + 1 for line in err.traceback)
    assert size <= c.tail_budget
    assert nbytes(err.ename) <= ENAME_BYTES and err.ename.startswith("EEE")
    assert err.evalue.startswith("vvv") and "bytes cut" in err.evalue
    assert err.traceback[0].startswith("frame 0")
    assert not any("\x1b" in line for line in err.traceback)
    (out,) = [o for o in c.outputs() if o.type == "error"]
    assert out.text == "\n".join(err.traceback)
    assert c.truncated_bytes > 200_000


def test_a_small_error_is_kept_whole() -> None:
    c = OutputCollector(1024)
    c.add_message("error", {"ename": "E", "evalue": "v", "traceback": ["a", "b"]})
    assert c.error == ErrorInfo("E", "v", ("a", "b"))
    assert c.truncated_bytes == 0


@pytest.mark.parametrize(
    ("msg_type", "content", "what"),
    [
        ("execute_result", {"execution_count": 4}, "execute_result"),
        ("display_data", {}, "display_data"),
        ("error", {"ename": "ValueError"}, "error"),
        ("stream", {"name": "stderr"}, "stderr stream"),
        ("stream", {}, "stream"),
        ("comm_msg", {}, "message"),
    ],
)
def test_an_oversized_message_is_a_notice_in_its_place_and_counted(
    msg_type: str, content: dict[str, Any], what: str
) -> None:
    c = OutputCollector(1000)
    feed(c, [("stdout", "before\n")])
    notice = c.drop_message(msg_type, 300_000_000, content)
    feed(c, [("stdout", "after\n")])
    assert notice == Output(
        "notice",
        name="oversized",
        text=oversized_notice(msg_type, content.get("name"), 300_000_000, c.message_limit),
    )
    assert f"the kernel's {what} message of 300,000,000 bytes was dropped" in (notice.text or "")
    assert c.truncated_bytes == 300_000_000
    assert [o.type for o in c.outputs()] == ["stream", "notice", "stream"]
    assert OutputCollector.stream_text(c.outputs(), "stdout") == "before\nafter\n"
    if msg_type == "execute_result":
        assert c.result is None and c.execution_count == 4
    if msg_type == "error":
        assert c.error is not None and c.error.ename == "ValueError"
        assert "dropped" in c.error.evalue


def test_an_oversized_value_after_a_kept_one_clears_the_result() -> None:
    c = OutputCollector(1000)
    c.add_message("execute_result", {"data": {"text/plain": "1"}})
    c.drop_message("execute_result", 5_000_000, {})
    assert c.result is None


def test_an_oversized_stream_keeps_the_head_and_tail_it_was_given() -> None:
    c = OutputCollector(1000)
    feed(c, [("stdout", "first\n")])
    shown = c.drop_message(
        "stream",
        90_000_000,
        {"name": "stdout", "text": "H" * 600, "cut": 88_000_000, "tail": "T" * 600},
    )
    feed(c, [("stdout", "last\n")])
    assert shown == Output(
        "stream", name="stdout", text="H" * 600 + cut_marker(88_000_000) + "T" * 600
    )
    text = OutputCollector.stream_text(c.outputs(), "stdout")
    head, tail = text.split(truncation_marker(c.truncated_bytes))
    assert head == "first\n" + "H" * 494
    assert tail == ("T" * 600 + "last\n")[-500:]
    assert c.truncated_bytes == 106 + 88_000_000 + 105
    assert not [o for o in c.outputs() if o.name == "oversized"]


def test_truncated_bytes_counts_replacement_characters_as_the_bytes_written() -> None:
    # 30,000 undecodable bytes arrive as 30,000 U+FFFD (90,000 bytes of UTF-8).
    c = OutputCollector(1000)
    for _ in range(30):
        feed(c, [("stdout", "\ufffd" * 1000)])
    kept = OutputCollector.stream_text(c.outputs(), "stdout").replace(
        truncation_marker(c.truncated_bytes), ""
    )
    assert nbytes(kept) <= 1000  # the budget is what is held: UTF-8 bytes
    assert c.truncated_bytes == 30_000 - kept.count("\ufffd")


# --- a kernel's text on a terminal -------------------------------------------------------

ESC = "\x1b"
# (what the kernel printed, what the terminal gets): colour stays, nothing else acts.
TERMINAL: list[tuple[str, str, str]] = [
    ("plain", "plain text, tabs\tand\nnewlines", "plain text, tabs\tand\nnewlines"),
    (
        "sgr colour",
        f"{ESC}[31mred{ESC}[0m {ESC}[1;4mbold{ESC}[m",
        f"{ESC}[31mred{ESC}[0m {ESC}[1;4mbold{ESC}[m",
    ),
    (
        "sgr 256 and rgb",
        f"{ESC}[38;5;196mx{ESC}[48;2;1;2;3my{ESC}[38:2::1:2:3mz",
        f"{ESC}[38;5;196mx{ESC}[48;2;1;2;3my{ESC}[38:2::1:2:3mz",
    ),
    ("carriage return and backspace", "50%\r100%\b!", "50%\r100%\b!"),
    ("clear screen", f"a{ESC}[2J{ESC}[Hb", "ab"),
    ("cursor moves", f"a{ESC}[5A{ESC}[10;20Hb{ESC}[2K", "ab"),
    ("private modes", f"{ESC}[?1049h{ESC}[?25lx{ESC}[?1000h", "x"),
    ("device status report", f"a{ESC}[6nb{ESC}[c", "ab"),
    ("scroll region", f"{ESC}[1;5rx", "x"),
    ("window title, BEL", f"a{ESC}]0;owned{chr(7)}b", "ab"),
    ("window title, ST", f"a{ESC}]2;owned{ESC}\\b", "ab"),
    ("clipboard", f"a{ESC}]52;c;ZWNobyBoaQ=={chr(7)}b", "ab"),
    ("hyperlink", f"{ESC}]8;;http://x{ESC}\\link{ESC}]8;;{ESC}\\", "link"),
    ("DCS", f'a{ESC}P$q"p{ESC}\\b', "ab"),
    ("APC, PM, SOS", f"a{ESC}_x{ESC}\\b{ESC}^y{ESC}\\c{ESC}Xz{ESC}\\d", "abcd"),
    ("string aborted by CAN", f"a{ESC}]0;t{chr(0x18)}b", "ab"),
    ("reset", f"a{ESC}cb", "ab"),
    ("charset and keypad", f"a{ESC}(0b{ESC}=c{ESC}7d{ESC}8", "abcd"),
    ("C0 controls", "a\x00\x01\x07\x0b\x0c\x0e\x1a\x1f\x7fb", "ab"),
    ("C1 controls", "a\x9b2J\x9d0;t\x07\x85b", "a2J0;tb"),
    ("lone ESC before text", f"a{ESC}é b{ESC}", "aé b"),
    ("ESC with intermediate", f"a{ESC} Fb{ESC}#8c", "abc"),
    ("unicode kept", "héllo 世界 🎉", "héllo 世界 🎉"),
]


@pytest.mark.parametrize(("case", "raw", "shown"), TERMINAL, ids=[t[0] for t in TERMINAL])
def test_terminal_filter_keeps_colour_only(case: str, raw: str, shown: str) -> None:
    f = TerminalFilter()
    assert f.feed(raw) + f.end().replace(f"{ESC}[0m", "") == shown


@pytest.mark.parametrize(("case", "raw", "shown"), TERMINAL, ids=[t[0] for t in TERMINAL])
def test_terminal_filter_is_the_same_however_the_text_is_split(
    case: str, raw: str, shown: str
) -> None:
    for size in (1, 2, 3, 5):
        f = TerminalFilter()
        got = "".join(f.feed(raw[i : i + size]) for i in range(0, len(raw), size))
        assert got == shown, size


def test_terminal_filter_resets_colour_it_let_through_at_the_end() -> None:
    f = TerminalFilter()
    f.feed(f"{ESC}[31mred")
    assert f.end() == f"{ESC}[0m"
    plain = TerminalFilter()
    plain.feed("no colour")
    assert plain.end() == ""


def test_terminal_filter_holds_an_incomplete_sequence_only_briefly() -> None:
    f = TerminalFilter()
    assert f.feed(f"a{ESC}[") == "a"
    assert f.feed("31mb") == f"{ESC}[31mb"
    long = TerminalFilter()
    assert long.feed(f"{ESC}[" + "1;" * CARRY_LIMIT) == "[" + "1;" * CARRY_LIMIT
    assert long.feed("m") == "m"


def test_an_unterminated_string_hides_at_most_string_limit() -> None:
    f = TerminalFilter()
    assert f.feed(f"a{ESC}]0;") == "a"
    assert f.feed("t" * (STRING_LIMIT - 2)) == ""
    assert f.feed("visible") == "visible"
    assert f.end() == ""


def test_terminal_filter_output_never_holds_another_control() -> None:
    import random

    rng = random.Random(7)
    alphabet = [ESC, "[", "]", "P", "\\", "m", "2", ";", "J", "?", "x", chr(7), "\x9b", "\n", "\r"]
    for _ in range(300):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        f = TerminalFilter()
        got = "".join(f.feed(raw[i : i + 3]) for i in range(0, len(raw), 3)) + f.end()
        without_sgr = re.sub(r"\x1b\[[0-9:;]*m", "", got)
        assert not re.search("[\x00-\x07\x0b-\x0c\x0e-\x1f\x7f-\x9f]", without_sgr), repr(raw)
