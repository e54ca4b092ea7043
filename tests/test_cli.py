"""The client commands as a user runs them: `kernelsup exec|status|watch|interrupt|restart|
close-session`
against a real `kernelsup run` subprocess, checking output and the Contract's exit codes."""

from __future__ import annotations

import json
import os
import pty
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kernelsup
from kernelsup.cli.exits import Exit, fail, supervisor_failure
from kernelsup.core.errors import (
    ConfigError,
    KernelsupError,
    Rejected,
    SupervisorGaveUp,
    Unreachable,
)
from kernelsup.core.results import ExecuteResult

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup
from tests.supervisor_process import (
    SupervisorProcess,
    private_tmp,
    supervisor,
    wait_for,
    write_config,
)

KERNELSUP = [sys.executable, "-m", "kernelsup"]


@pytest.fixture(scope="module")
def sup() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=2, spares=1)


def cli(
    *args: str, stdin: str | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KERNELSUP, *args], input=stdin, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


class Background:
    """A CLI command left running; its output lines are read as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*KERNELSUP, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    @staticmethod
    def line(lines: queue.Queue[str | None], timeout: float = 30) -> str:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout} s") from None
        assert line is not None, "the command exited"
        return line

    @staticmethod
    def rest(lines: queue.Queue[str | None], timeout: float = 30) -> str:
        """Everything still to come, once the command has exited."""
        text = []
        while (line := lines.get(timeout=timeout)) is not None:
            text.append(line)
        return "".join(text)

    def finish(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def status_of(sup: SupervisorProcess) -> list[dict[str, Any]]:
    with kernelsup.SyncClient(sup.config) as client:
        return list(client.status().kernels)


def all_idle(sup: SupervisorProcess) -> list[dict[str, Any]] | None:
    kernels = status_of(sup)
    return kernels if all(k["state"] == "idle" for k in kernels) else None


# --- exec -------------------------------------------------------------------------------


def test_exec_prints_output_and_exits_0(sup: SupervisorProcess) -> None:
    proc = cli("exec", "-c", str(sup.config), "print(1)")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "1\n", "")


def test_exec_fresh_sees_no_earlier_variable(sup: SupervisorProcess) -> None:
    """``--fresh``: a kernel that never ran anything; its variables die with it."""
    assert cli("exec", "-c", str(sup.config), "FRESH_CLI = 1").returncode == 0
    check = "print('FRESH_CLI' in globals()); FRESH_ONLY = 1"
    for _ in range(2):
        proc = cli("exec", "-c", str(sup.config), "--fresh", check)
        assert (proc.returncode, proc.stdout) == (0, "False\n"), proc.stderr
    proc = cli("exec", "-c", str(sup.config), "--fresh", "--session", "s", "1")
    assert proc.returncode == 3 and "fresh and session" in proc.stderr


def test_exec_imports_no_supervisor_code(sup: SupervisorProcess) -> None:
    """A whole ``kernelsup exec "1"`` against a running supervisor imports no event loop,
    no kernel actors, no jupyter_client (tests/test_lean.py has the rest)."""
    from tests.test_lean import imported_by_command, supervisor_modules

    proc, modules = imported_by_command("exec", "-c", str(sup.config), "1", cwd=sup.config.parent)
    assert (proc.returncode, proc.stdout) == (0, "1\n"), proc.stderr[-2000:]
    assert "kernelsup.control.sync_transport" in modules
    assert supervisor_modules(modules) == []


def test_exec_shows_the_value_and_reads_stdin(sup: SupervisorProcess) -> None:
    proc = cli(
        "exec",
        "-c",
        str(sup.config),
        "-",
        stdin="import sys\nprint('to out'); print('to err', file=sys.stderr)\n40 + 2\n",
    )
    assert proc.returncode == 0
    assert proc.stdout == "to out\n42\n" and proc.stderr == "to err\n"


def on_a_terminal(*args: str, timeout: float = 60) -> tuple[int, bytes]:
    """Run a CLI command with stdout and stderr on a pseudo-terminal, as a user's shell
    would: its exit status and every byte the terminal received."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*KERNELSUP, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
        )
    finally:
        os.close(slave)
    received = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output for {timeout} s; so far {received!r}")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command exited and its side of the terminal closed
                break
            if not data:
                break
            received.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(received)


# What a kernel prints that a terminal would obey: colour, then clearing the screen, a
# window title, a full reset, a device status query (the terminal would type its answer
# into the user's input), on both streams.
TERMINAL_CODE = (
    r"import sys; print('\x1b[31mred\x1b[0m \x1b[2J\x1b]0;owned\x07\x1bcafter'); "
    r"_ = sys.stderr.write('\x1b[6nerr\x1b[1mbold\n')"
)
OBEYED = [b"\x1b[2J", b"\x1b]0;", b"owned", b"\x1bc", b"\x1b[6n"]


def test_exec_on_a_terminal_keeps_colour_and_no_other_control(sup: SupervisorProcess) -> None:
    status, screen = on_a_terminal("exec", "-c", str(sup.config), TERMINAL_CODE)
    assert status == 0, screen
    assert b"\x1b[31mred\x1b[0m after" in screen
    assert b"err\x1b[1mbold" in screen
    assert screen.endswith(b"\x1b[0m")  # the colour the kernel left on is reset
    assert not [seq for seq in OBEYED if seq in screen], screen


def test_exec_into_a_pipe_writes_what_the_kernel_printed(sup: SupervisorProcess) -> None:
    proc = cli("exec", "-c", str(sup.config), TERMINAL_CODE)
    assert proc.returncode == 0
    assert proc.stdout == "\x1b[31mred\x1b[0m \x1b[2J\x1b]0;owned\x07\x1bcafter\n"
    assert proc.stderr == "\x1b[6nerr\x1b[1mbold\n"


def test_exec_default_config_is_in_the_current_directory(sup: SupervisorProcess) -> None:
    proc = cli("exec", "print('here')", cwd=sup.config.parent)
    assert (proc.returncode, proc.stdout) == (0, "here\n")


def test_exec_error_exits_1_with_the_traceback(sup: SupervisorProcess) -> None:
    proc = cli("exec", "-c", str(sup.config), "1/0")
    assert proc.returncode == 1
    assert "ZeroDivisionError" in proc.stderr and "division by zero" in proc.stderr
    assert "\x1b[" not in proc.stderr


def test_exec_timeout_exits_124(sup: SupervisorProcess) -> None:
    proc = cli("exec", "-c", str(sup.config), "--timeout", "1", "while True: pass")
    assert proc.returncode == 124, proc.stderr
    assert "timeout ExecTimeout: execution exceeded its 1 s timeout" in proc.stderr


def test_exec_kernel_death_exits_4(sup: SupervisorProcess) -> None:
    proc = cli("exec", "-c", str(sup.config), "import os; os._exit(1)")
    assert proc.returncode == 4, proc.stderr
    assert "kernel_died KernelDied: " in proc.stderr and "exit(1)" in proc.stderr
    wait_for(lambda: all_idle(sup), 30, "the kernel to be replaced")


def test_exec_json_prints_the_result(sup: SupervisorProcess) -> None:
    proc = cli("exec", "-c", str(sup.config), "--json", "print('a'); 3")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert set(data) == set(ExecuteResult("ok").to_dict())
    assert (data["status"], data["stdout"], data["result"]) == ("ok", "a\n", "3")
    assert ExecuteResult.from_dict(data).ok
    proc = cli("exec", "-c", str(sup.config), "--json", "1/0")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["status"] == "error" and data["error"]["ename"] == "ZeroDivisionError"


def test_exec_usage_errors_exit_2(sup: SupervisorProcess, tmp_path: Path) -> None:
    assert cli("exec", "-c", str(sup.config)).returncode == 2  # no code
    assert cli("exec", "-c", str(sup.config), "--timeout", "-1", "1").returncode == 2
    proc = cli("exec", "-c", str(tmp_path / "missing.toml"), "1")
    assert proc.returncode == 2
    assert proc.stderr.startswith("config_invalid ConfigError: ")


def test_exec_rejected_exits_3(sup: SupervisorProcess) -> None:
    proc = cli("exec", "-c", str(sup.config), "--pool", "nope", "1")
    assert proc.returncode == 3
    assert proc.stderr.startswith("unknown_pool Rejected: no pool named 'nope'")


def test_exec_without_a_supervisor_exits_3_naming_the_endpoint() -> None:
    directory = private_tmp()
    try:
        config = write_config(directory, directory / "rt")
        proc = cli("exec", "-c", str(config), "print(1)", timeout=30)
        assert proc.returncode == 3
        assert proc.stderr.startswith("unreachable Unreachable: ")
        assert f"ipc://{directory}/rt/control.sock" in proc.stderr
        status = cli("status", "-c", str(config), timeout=30)
        assert status.returncode == 1 and "unreachable" in status.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_ctrl_c_cancels_the_request(sup: SupervisorProcess) -> None:
    run = Background(
        "exec", "-c", str(sup.config), "import time\nprint('start', flush=True)\ntime.sleep(60)"
    )
    try:
        assert run.line(run.out) == "start\n"
        assert run.finish(signal.SIGINT) == 130
        assert "interrupted" in run.rest(run.err)
        wait_for(lambda: all_idle(sup), 15, "the kernel to be interrupted")
    finally:
        run.kill()


# --- status -----------------------------------------------------------------------------


def test_status_table_and_json(sup: SupervisorProcess) -> None:
    wait_for(lambda: all_idle(sup), 30, "all kernels idle")
    table = cli("status", "-c", str(sup.config))
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["ID", "POOL", "ROLE", "STATE"]
    assert sum(1 for r in rows if r.startswith("default-")) == 3
    assert rows[-1] == "pool default: size 2 + 1 spare; 3 kernels ready; 0 queued; no sessions"
    proc = cli("status", "-c", str(sup.config), "--json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert set(data) == {"kernels", "pools"}
    for k in data["kernels"]:
        assert {
            "id",
            "pool",
            "role",
            "state",
            "pid",
            "restarts",
            "session",
            "uptime_s",
            "last_exit",
        } <= set(k)
    assert data["pools"][0]["name"] == "default"


@pytest.fixture(scope="module")
def slow_restarts() -> Iterator[SupervisorProcess]:
    """A supervisor whose kernels wait 30 s before restarting."""
    yield from supervisor(
        size=1, spares=1, restart='min_delay = 30.0\nmax_delay = 30.0\njitter = "none"'
    )


def test_status_exits_3_while_a_kernel_is_in_backoff(
    slow_restarts: SupervisorProcess,
) -> None:
    victim = next(k for k in status_of(slow_restarts) if k["role"] == "pool")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(
        lambda: any(k["state"] == "backoff" for k in status_of(slow_restarts)),
        30,
        "a kernel in backoff",
    )
    table = cli("status", "-c", str(slow_restarts.config))
    assert table.returncode == 3
    line = next(r for r in table.stdout.splitlines() if r.startswith(victim["id"]))
    assert "backoff" in line and "signal(9)" in line
    data = json.loads(cli("status", "-c", str(slow_restarts.config), "--json").stdout)
    state = next(k for k in data["kernels"] if k["id"] == victim["id"])
    assert state["state"] == "backoff" and state["last_exit"]["signal"] == 9
    # The spare took its place: work goes on.
    assert cli("exec", "-c", str(slow_restarts.config), "print('still')").stdout == "still\n"


# --- watch ------------------------------------------------------------------------------


def test_watch_json_shows_exit_and_restart_after_a_kill(sup: SupervisorProcess) -> None:
    kernels = wait_for(lambda: all_idle(sup), 30, "all kernels idle")
    victim = kernels[0]
    watch = Background("watch", "-c", str(sup.config), "--json")
    try:
        assert watch.line(watch.err).startswith("watching ipc://")
        os.kill(victim["pid"], signal.SIGKILL)
        seen = []
        while "kernel_started" not in seen:
            event = json.loads(watch.line(watch.out))
            assert {"event", "time", "seq", "pool", "kernel_id"} <= set(event)
            if event["kernel_id"] == victim["id"]:
                seen.append(event["event"])
        assert seen[0] == "kernel_exited"
        assert "restart_scheduled" in seen and "kernel_starting" in seen
        assert watch.finish(signal.SIGINT) == 0
    finally:
        watch.kill()


def test_watch_readable_lines(sup: SupervisorProcess) -> None:
    kernels = wait_for(lambda: all_idle(sup), 30, "all kernels idle")
    watch = Background("watch", "-c", str(sup.config))
    try:
        watch.line(watch.err)
        assert cli("restart", "-c", str(sup.config), kernels[-1]["id"]).returncode == 0
        line = watch.line(watch.out)
        assert kernels[-1]["id"] in line and "exited" in line
        assert watch.finish(signal.SIGINT) == 0
    finally:
        watch.kill()


# --- interrupt, restart -----------------------------------------------------------------


def test_interrupt_and_restart(sup: SupervisorProcess) -> None:
    for action in ("interrupt", "restart"):
        proc = cli(action, "-c", str(sup.config), "nope")
        assert proc.returncode == 3
        assert proc.stderr.startswith("unknown_kernel Rejected: no kernel with id 'nope'")
    run = Background(
        "exec", "-c", str(sup.config), "import time\nprint('go', flush=True)\ntime.sleep(60)"
    )
    try:
        assert run.line(run.out) == "go\n"
        busy = wait_for(
            lambda: [k for k in status_of(sup) if k["state"] == "busy"], 15, "the kernel busy"
        )
        proc = cli("interrupt", "-c", str(sup.config), busy[0]["id"])
        assert (proc.returncode, proc.stdout) == (0, f"interrupted {busy[0]['id']}\n")
        assert run.proc.wait(timeout=30) == 1
        assert "KeyboardInterrupt" in run.rest(run.err)
    finally:
        run.kill()
    kernels = wait_for(lambda: all_idle(sup), 30, "all kernels idle")
    proc = cli("restart", "-c", str(sup.config), kernels[0]["id"])
    assert proc.returncode == 0 and proc.stdout.startswith(f"restarting {kernels[0]['id']}")


def test_close_session_ends_its_state(sup: SupervisorProcess) -> None:
    config = str(sup.config)
    assert cli("exec", "-c", config, "--session", "cli-s", "x = 41").returncode == 0
    kept = cli("exec", "-c", config, "--session", "cli-s", "x + 1")
    assert (kept.returncode, kept.stdout) == (0, "42\n")
    proc = cli("close-session", "-c", config, "cli-s")
    assert (proc.returncode, proc.stdout) == (0, "closed session cli-s\n")
    assert not any(k["session"] == "cli-s" for k in status_of(sup))
    again = cli("close-session", "-c", config, "cli-s")
    assert again.returncode == 3
    assert again.stderr.startswith("unknown_session Rejected: no open session named 'cli-s'")
    fresh = cli("exec", "-c", config, "--session", "cli-s", "x")
    assert fresh.returncode == 1 and "NameError" in fresh.stderr
    assert cli("close-session", "-c", config, "cli-s").returncode == 0


# --------------------------------------------------------------------------- exits.py
def test_fail_prints_the_line_and_exits_by_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert fail(Rejected("no pool named 'x'", code="unknown_pool")) == 3
    assert fail(ConfigError("bad")) == 2
    assert fail(Unreachable("nobody"), Exit.ERROR) == 1  # `status`: no report at all
    assert capsys.readouterr().err.splitlines() == [
        "unknown_pool Rejected: no pool named 'x'",
        "config_invalid ConfigError: bad",
        "unreachable Unreachable: nobody",
    ]


def test_a_failed_run_reports_the_root_giving_up_first() -> None:
    gave_up = SupervisorGaveUp("gave up")
    other = KernelsupError("other", code="internal_error")
    assert supervisor_failure(BaseExceptionGroup("g", [other, gave_up])) is gave_up
    assert supervisor_failure(BaseExceptionGroup("g", [ValueError(), other])) is other
    assert supervisor_failure(other) is other
    assert supervisor_failure(BaseExceptionGroup("g", [ValueError()])) is None
