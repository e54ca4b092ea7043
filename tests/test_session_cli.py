"""The session, job and file commands as a user (or an agent's shell) runs them against a
real `kernelsup run`: sessions list/open/close, submit, job status/wait/output/cancel,
jobs, put, get; `--json` on each; exit codes from core/codes.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelsup.cli.exits import Exit
from tests.supervisor_process import SupervisorProcess, supervisor

KERNELSUP = [sys.executable, "-m", "kernelsup"]


@pytest.fixture(scope="module")
def sup() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=1, pool="max_output_bytes = 4096")


def cli(
    sup: SupervisorProcess, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*KERNELSUP, *args[:1], "-c", str(sup.config), *args[1:]],
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def ok_json(proc: subprocess.CompletedProcess[bytes]) -> object:
    assert proc.returncode == Exit.OK, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_a_session_a_file_and_a_job_from_the_shell(sup: SupervisorProcess, tmp_path: Path) -> None:
    opened = ok_json(
        cli(sup, "sessions", "open", "agent", "--cwd", str(tmp_path), "--env", "K=v", "--json")
    )
    assert isinstance(opened, dict) and opened["cwd"] == str(tmp_path) and opened["env"] == ["K"]
    listed = ok_json(cli(sup, "sessions", "--json"))
    assert [s["name"] for s in listed] == ["agent"]  # type: ignore[union-attr]
    table = cli(sup, "sessions", "list")
    assert table.returncode == 0 and b"agent" in table.stdout and b"K" in table.stdout

    local = tmp_path / "in.bin"
    local.write_bytes(bytes(range(256)))
    assert cli(sup, "put", "agent", str(local), "data/in.bin").returncode == 0
    assert cli(sup, "put", "agent", "-", "note.txt", stdin=b"hello").returncode == 0
    assert cli(sup, "get", "agent", "data/in.bin").stdout == bytes(range(256))
    got = ok_json(cli(sup, "get", "agent", "note.txt", "--json"))
    assert got == {"path": "note.txt", "base64": "aGVsbG8="}

    code = "import os\nprint(open('note.txt').read(), os.environ['K'])\n"
    code += "for i in range(2000): print('line', i)"
    job_id = cli(sup, "submit", "--session", "agent", code).stdout.decode().strip()
    assert job_id.startswith("job-")
    waited = cli(sup, "job", "wait", job_id, "--json")
    assert json.loads(waited.stdout)["status"] == "ok" and waited.returncode == 0
    out = cli(sup, "job", "output", job_id, "--follow")
    expected = "hello v\n" + "".join(f"line {i}\n" for i in range(2000))
    assert out.returncode == 0 and out.stdout.decode() == expected  # whole, past 4096 bytes
    status = ok_json(cli(sup, "job", "status", job_id, "--json"))
    assert status["status"] == "ok" and status["output_bytes"] == len(expected)  # type: ignore[index]
    jobs = ok_json(cli(sup, "jobs", "--json"))
    assert job_id in [j["id"] for j in jobs]  # type: ignore[union-attr]
    assert ok_json(cli(sup, "sessions", "close", "agent", "--json")) == {
        "session": "agent",
        "closed": True,
    }


def test_follow_cancel_and_exit_codes(sup: SupervisorProcess) -> None:
    job_id = cli(sup, "submit", "import time\nwhile True: time.sleep(0.1)").stdout.decode().strip()
    still = cli(sup, "job", "wait", job_id, "--timeout", "0.5")
    assert still.returncode == Exit.TIMEOUT and b"still running" in still.stderr
    assert ok_json(cli(sup, "job", "cancel", job_id, "--json")) == {
        "job": job_id,
        "cancelled": True,
    }
    ended = cli(sup, "job", "wait", job_id)
    assert ended.returncode == Exit.INTERRUPTED and b"cancelled" in ended.stdout

    failed = cli(sup, "job", "wait", cli(sup, "submit", "1/0").stdout.decode().strip())
    assert failed.returncode == Exit.ERROR

    for args, code in [
        (("job", "status", "job-nope"), b"unknown_job"),
        (("sessions", "close", "nobody"), b"unknown_session"),
        (("get", "nobody", "x"), b"unknown_session"),
        (("sessions", "open", "--env", "novalue"), b"bad_request"),
    ]:
        proc = cli(sup, *args)
        assert proc.returncode == Exit.REJECTED and proc.stderr.startswith(code), proc
    opened = cli(sup, "sessions", "open", "--cwd", "relative-is-made-absolute")
    assert opened.returncode == Exit.REJECTED and b"not a directory" in opened.stderr
