"""core/records.py: the session and job records round-trip through to_dict/from_dict, a
spool page never ends inside a character, each output's spool text, a session's env
checks. Pure, table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernelsup.core.errors import ProtocolError
from kernelsup.core.records import (
    MAX_SESSION_ENV_VARS,
    JobInfo,
    JobOutput,
    SessionInfo,
    env_problem,
    page_end,
    spool_text,
)
from kernelsup.core.results import ExecuteResult, Output


def test_records_round_trip() -> None:
    s = SessionInfo("a", "default", "default-2", "/w", ("K",), 1.0, 2.0, "idle", 3)
    assert SessionInfo.from_dict(s.to_dict()) == s
    done = JobInfo("job-1", "a", None, "died", 10, 1.0, 1.5, 2.0, ExecuteResult("died"), 4)
    assert JobInfo.from_dict(done.to_dict()) == done and done.done
    live = JobInfo("job-2", None, "p", "running", 0, 1.0)
    assert JobInfo.from_dict(live.to_dict()) == live and not live.done
    page = JobOutput("text", 4, False)
    assert JobOutput.from_dict(page.to_dict()) == page
    for bad in ({"name": "a"}, {**s.to_dict(), "executions": "3"}, []):
        with pytest.raises(ProtocolError):
            SessionInfo.from_dict(bad)


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_a_page_never_splits_a_character(text: str, cut: int) -> None:
    data = text.encode("utf-8", "surrogatepass")
    chunk = data[:cut]
    end = page_end(chunk)
    assert len(chunk) - 3 <= end <= len(chunk)
    if not any("\ud800" <= c <= "\udfff" for c in text):  # no surrogates: the bytes are UTF-8
        chunk[:end].decode("utf-8")  # whole characters only
        rest = data[end:]
        assert (chunk[:end] + rest).decode("utf-8") == text


@pytest.mark.parametrize(
    ("out", "text"),
    [
        (Output("stream", name="stdout", text="a\nb"), "a\nb"),
        (Output("error", text="Traceback\nZeroDivisionError"), "Traceback\nZeroDivisionError\n"),
        (Output("notice", name="lagged", text="3 skipped"), "[kernelsup: 3 skipped]\n"),
        (Output("execute_result", data={"text/plain": "42"}), "42\n"),
        (
            Output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBOR"}),
            "<Figure>\n[display_data: image/png (5 bytes)]\n",
        ),
    ],
)
def test_spool_text(out: Output, text: str) -> None:
    assert spool_text(out) == text


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"A": "1"}, None),
        ([("A", "1")], "mapping"),
        ({"": "x"}, "invalid"),
        ({"A=B": "x"}, "invalid"),
        ({"A": "x\0y"}, "NUL"),
        ({"A": 1}, "strings"),
        ({f"V{i}": "" for i in range(MAX_SESSION_ENV_VARS + 1)}, "at most"),
        ({"A": "x" * 70_000}, "bytes"),
    ],
)
def test_env_problem(env: object, names: str | None) -> None:
    problem = env_problem(env)
    assert (problem is None) if names is None else (problem is not None and names in problem)
