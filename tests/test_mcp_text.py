"""What reaches the model (kernelsup/mcp/text.py, and render.py's use of it): escape
sequences stripped, carriage returns resolved, head and tail kept within the budget.

Pure: plain values, no kernel, no MCP client.
"""

from __future__ import annotations

import pytest

from kernelsup.core.config import MCP_OUTPUT_CHARS_MAX, MCP_OUTPUT_CHARS_MIN, parse_config
from kernelsup.core.errors import ConfigError
from kernelsup.core.results import ErrorInfo, ExecuteResult, Output
from kernelsup.mcp import render
from kernelsup.mcp.handlers import _whole_lines
from kernelsup.mcp.text import MIN_CLIP_CHARS, Clipped, clip, plain

# What IPython prints for `1/0` in a terminal-coloured traceback (abridged).
COLOURED_TRACEBACK = (
    "\x1b[0;31m---------------------------------------------------------------------------"
    "\x1b[0m\n\x1b[0;31mZeroDivisionError\x1b[0m                         Traceback (most recent"
    " call last)\nCell \x1b[0;32mIn[1], line 1\x1b[0m\n\x1b[0;32m----> 1\x1b[0m \x1b[38;5;241m1"
    "\x1b[39m\x1b[38;5;241m/\x1b[39m\x1b[38;5;241m0\x1b[39m\n\n\x1b[0;31mZeroDivisionError\x1b[0m:"
    " division by zero"
)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[1;31mred bold\x1b[0m plain", "red bold plain"),
        ("\x1b[38;2;255;0;0mtruecolour\x1b[m", "truecolour"),
        ("\x1b[2K\x1b[1Gerased line", "erased line"),  # erase, cursor to column 1
        ("\x1b]0;window title\x07after", "after"),  # OSC ended by BEL
        ("\x1b]8;;https://example.org\x1b\\link\x1b]8;;\x1b\\", "link"),  # a hyperlink
        ("\x1b(Bcharset\x1b=keypad", "charsetkeypad"),
        ("\x9b31m8-bit CSI", "8-bit CSI"),
        ("bell\x07 backspace\x08 nul\x00 del\x7f", "bell backspace nul del"),
        ("tab\tand\nnewline kept", "tab\tand\nnewline kept"),
        ("a lone escape at the end\x1b", "a lone escape at the end"),
        ("an escape before a newline\x1b\nnext", "an escape before a newline\nnext"),
        ("unicode: café ✓ 日本", "unicode: café ✓ 日本"),
    ],
)
def test_plain_strips_escape_sequences(raw: str, shown: str) -> None:
    assert plain(raw) == shown


def test_plain_resolves_carriage_returns_like_a_notebook() -> None:
    bar = "".join(f"\r{p:3d}%|{'#' * (p // 10):<10}|" for p in range(0, 101, 5))
    assert plain(f"start\n{bar}\ndone\n") == "start\n100%|##########|\ndone\n"
    assert plain("windows\r\nline endings\r\n") == "windows\nline endings\n"
    assert plain("last write wins\rLAST\r") == "LAST"  # a trailing \r hides nothing
    assert plain("\x1b[32m 50%\x1b[0m\r\x1b[32m100%\x1b[0m\n") == "100%\n"


def test_clip_keeps_what_fits_untouched() -> None:
    text = "x" * 1000
    assert clip(text, 1000) == Clipped(text, 0, 0)


def test_clip_keeps_head_and_tail_within_the_budget_on_line_boundaries() -> None:
    lines = [f"line {i}" for i in range(20_000)]
    text = "\n".join(lines) + "\n"
    hint = 'read it all with job_output(job_id="j-1")'
    for budget in (MIN_CLIP_CHARS, MCP_OUTPUT_CHARS_MIN, 5_000, 20_000):
        clipped = clip(text, budget, hint=hint)
        assert len(clipped.text) <= budget
        assert len(clipped.text) > budget * 0.7  # the budget is used, not wasted
        head, marker, tail = _split_at_marker(clipped.text)
        assert text.startswith(head) and text.endswith(tail)
        assert head.endswith("\n") and (tail == "" or text[-len(tail) - 1] == "\n")
        assert len(tail) > len(head)  # the end (the error, the value) gets more room
        # The marker counts exactly what is missing, and says how to read it.
        assert clipped.cut_chars == len(text) - len(head) - len(tail)
        assert clipped.cut_lines == text[len(head) : len(text) - len(tail)].count("\n")
        assert f"{clipped.cut_chars:,} characters ({clipped.cut_lines:,} lines) cut" in marker
        assert f"within {budget:,} characters" in marker and marker.endswith(f"; {hint}]")
        assert "line 0\n" in head and "line 19999\n" in tail


def test_clip_one_long_line_is_cut_mid_line() -> None:
    text = "a" * 30_000 + "END"
    clipped = clip(text, 2_000)
    assert len(clipped.text) <= 2_000
    assert clipped.text.startswith("aaa") and clipped.text.endswith("aEND")
    assert clipped.cut_chars == len(text) - (
        len(clipped.text) - len(_split_at_marker(clipped.text)[1]) - 2
    )


def test_clip_refuses_a_budget_below_the_minimum() -> None:
    with pytest.raises(ValueError, match="max_chars must be >= 500"):
        clip("x", MIN_CLIP_CHARS - 1)


def test_config_range_of_max_output_chars() -> None:
    assert parse_config("").mcp.max_output_chars == 20_000
    assert parse_config("[mcp]\nmax_output_chars = 1000\n").mcp.max_output_chars == 1000
    for bad in (MCP_OUTPUT_CHARS_MIN - 1, MCP_OUTPUT_CHARS_MAX + 1):
        with pytest.raises(ConfigError, match=r"\$\.mcp\.max_output_chars: must be >= 1000"):
            parse_config(f"[mcp]\nmax_output_chars = {bad}\n")
    with pytest.raises(ConfigError, match=r"\$\.mcp\.block_for: must be >= 0"):
        parse_config("[mcp]\nblock_for = -1\n")


def test_render_result_is_plain_and_budgeted() -> None:
    result = ExecuteResult(
        "error",
        kernel_id="default-0",
        code="execution_error",
        error=ErrorInfo("ZeroDivisionError", "division by zero"),
        outputs=(
            Output(
                "stream",
                name="stdout",
                text="".join(f"\x1b[33mrow {i}\x1b[0m\n" for i in range(5000)),
            ),
            Output("error", text=COLOURED_TRACEBACK),
        ),
    )
    full = render.render_result(result)
    assert "\x1b" not in full.text and "ZeroDivisionError: division by zero" in full.text
    assert full.summary["chars_cut"] == 0
    r = render.render_result(result, max_chars=3000, hint="see job_output")
    assert len(r.text) <= 3000 and "\x1b" not in r.text
    assert r.text.startswith("row 0\nrow 1\n")
    # The end survives the cut: the traceback, the error line and the status line.
    assert "----> 1 1/0" in r.text
    assert "ZeroDivisionError: division by zero\n" in r.text
    assert r.text.rstrip().endswith("]") and "[kernelsup: error (execution_error)" in r.text
    assert r.summary["chars_cut"] == len(full.text) - (
        len(r.text) - len(_split_at_marker(r.text)[1]) - 1
    )
    assert "; see job_output]" in r.text


def test_progress_message_is_plain() -> None:
    out = Output("stream", name="stdout", text="\x1b[32m 10%\x1b[0m\r\x1b[32m 20%\x1b[0m\r\x1b[0m")
    assert render.progress_message(out) == "20%"


def _split_at_marker(text: str) -> tuple[str, str, str]:
    """(head, marker line, tail) of a clipped text."""
    start = text.index("[kernelsup: ")
    while not text[start:].split("\n", 1)[0].count(" cut from the middle here"):
        start = text.index("[kernelsup: ", start + 1)
    end = text.index("\n", start)
    return text[:start], text[start:end], text[end + 1 :]


@pytest.mark.parametrize(
    ("text", "offset", "next_offset", "done", "expected"),
    [
        ("a\nb\nparti", 10, 19, False, ("a\nb\n", 14)),  # cut back to the last newline
        ("a\nb\n", 10, 14, False, ("a\nb\n", 14)),  # already whole lines
        ("no newline at all", 0, 17, False, ("no newline at all", 17)),
        ("a\nlast words", 0, 12, True, ("a\nlast words", 12)),  # the last page is whole
        ("é\nx", 0, 4, False, ("é\n", 3)),  # offsets in bytes, not characters
        ("\ufffd\nx", 1, 4, False, ("\ufffd\nx", 4)),  # bytes are not its text: as it is
    ],
)
def test_job_output_pages_end_on_whole_lines(
    text: str, offset: int, next_offset: int, done: bool, expected: tuple[str, int]
) -> None:
    assert _whole_lines(text, offset, next_offset, done) == expected
