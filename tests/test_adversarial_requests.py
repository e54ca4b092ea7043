"""A hostile or careless client against a real ``kernelsup run``: each request here once
crashed the supervisor. After each, the supervisor must answer with an error naming what
was wrong, still serve an ordinary execute, and stop cleanly (exit 0, nothing left)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelsup.control.sync_client import SyncClient
from kernelsup.core.errors import ProtocolError, Rejected
from tests.supervisor_process import SupervisorProcess, stop_and_check, supervisor


@pytest.fixture
def sup() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=1)


@pytest.fixture
def client(sup: SupervisorProcess) -> Iterator[SyncClient]:
    with SyncClient(sup.config) as c:
        yield c


def assert_serving(sup: SupervisorProcess, client: SyncClient) -> None:
    assert sup.proc is not None and sup.proc.poll() is None, sup.stderr()
    assert client.execute("6 * 7").result == "42"


@pytest.mark.parametrize("field", ["execute", "submit", "wait", "open_session"])
def test_an_integer_past_the_float_range_is_a_malformed_field(
    sup: SupervisorProcess, client: SyncClient, field: str
) -> None:
    """JSON integers are unbounded: 2**1100 once raised OverflowError in the decoder, which
    took the supervisor down."""
    huge = 2**1100
    calls = {
        "execute": lambda: client.execute("1", timeout=huge),
        "submit": lambda: client.submit("1", timeout=huge),
        "wait": lambda: client.wait("job-x", huge),
        "open_session": lambda: client.open_session("s", idle_timeout=huge),
    }
    with pytest.raises(ProtocolError) as caught:
        calls[field]()
    assert caught.value.code == "malformed"
    name = "idle_timeout" if field == "open_session" else "timeout"
    assert f"field {name!r} must be a finite number" in caught.value.message
    assert_serving(sup, client)


DEEP = "/".join(["d"] * 1500) + "/f"  # 3001 bytes, under the 4095 a path may have


def test_a_directory_deeper_than_the_recursion_limit_is_removed_at_close_and_at_stop(
    sup: SupervisorProcess, client: SyncClient
) -> None:
    """shutil.rmtree recurses once per level: a session directory 1500 deep (put_file
    makes one; so can the kernel's own code) raised RecursionError at close_session (an
    internal_error, the snapshot directory kept) and at the supervisor's stop (exit 1)."""
    closed = client.open_session("deep-closed", idle_timeout=0)
    client.put_file("deep-closed", DEEP, b"x")
    assert client.close_session("deep-closed") is True
    assert not Path(closed.cwd).exists()
    kept = client.open_session("deep-kept", idle_timeout=0)
    client.put_file("deep-kept", DEEP, b"x")
    assert_serving(sup, client)
    # the fixture's stop_and_check: exit 0 with the session still open, nothing left;
    # its private directory is removed at the stop
    client.close()
    stop_and_check(sup)
    assert not Path(kept.cwd).exists()


@pytest.mark.parametrize("where", ["a directory", "in no directory"])
def test_a_notebook_output_that_cannot_be_written_is_refused_before_any_cell_runs(
    sup: SupervisorProcess, client: SyncClient, tmp_path: Path, where: str
) -> None:
    """It was found by the write after the first cell: a bare OSError ('Device or
    resource busy: '/..x.tmp' -> '/'') once that cell had already run."""
    source = tmp_path / "n.ipynb"
    marker = tmp_path / "ran"
    cell = {"cell_type": "code", "source": f"open({str(marker)!r}, 'w').close()"}
    source.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "metadata": {},
                "cells": [{**cell, "metadata": {}, "outputs": [], "execution_count": None}],
            }
        )
    )
    before = source.read_bytes()
    output = tmp_path if where == "a directory" else tmp_path / "nowhere" / "out.ipynb"
    with pytest.raises(Rejected) as caught:
        client.run_notebook(source, output=output)
    assert caught.value.code == "bad_request"
    assert str(output) in caught.value.message
    assert not marker.exists()
    assert source.read_bytes() == before
    assert_serving(sup, client)


def test_text_json_cannot_carry_is_refused_by_the_client_naming_the_field(
    sup: SupervisorProcess, client: SyncClient
) -> None:
    """A lone surrogate (what os.fsdecode makes of undecodable bytes, or a broken string
    from an agent) once escaped the client as a bare UnicodeEncodeError."""
    calls = {
        "name": lambda: client.open_session("s\ud800"),
        "cwd": lambda: client.open_session("s", cwd="/tmp/\ud800"),
        "env": lambda: client.open_session("s", env={"A": "\ud800"}),
        "code": lambda: client.submit("'\ud800'"),
        "path": lambda: client.put_file("s", "\ud800", b"x"),
    }
    for field, call in calls.items():
        with pytest.raises(ProtocolError) as caught:
            call()
        assert caught.value.code == "malformed"
        assert f"field {field!r} cannot be sent as JSON" in caught.value.message
    assert client.sessions() == []
    assert_serving(sup, client)
