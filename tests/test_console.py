"""`kernelsup console` and `kernelsup top` driven through a real pseudo-terminal (pexpect),
against a real `kernelsup run`, and the console with a supervisor embedded in it."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

import kernelsup
from kernelsup.cli.console import input_complete
from tests.helpers import wait_all_gone
from tests.supervisor_process import SupervisorProcess, processes_of, supervisor, write_config

TIMEOUT_S = 90


@pytest.fixture(scope="module")
def served() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=2)


def spawn(tmp_path: Path, *args: str, cwd: Path | None = None) -> pexpect.spawn:
    env = dict(
        os.environ,
        TERM="xterm",
        PROMPT_TOOLKIT_NO_CPR="1",  # no cursor position requests to answer
        XDG_STATE_HOME=str(tmp_path / "state"),
    )
    child = pexpect.spawn(
        sys.executable,
        ["-m", "kernelsup", *args],
        env=env,
        encoding="utf-8",
        timeout=TIMEOUT_S,
        dimensions=(40, 160),
        cwd=str(cwd or tmp_path),
    )
    child.logfile_read = (tmp_path / "terminal.log").open("w")
    return child


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[list[pexpect.spawn]]:
    """Every spawned terminal program ends with the test, pass or fail."""
    spawned: list[pexpect.spawn] = []
    yield spawned
    for child in spawned:
        if child.isalive():
            child.kill(signal.SIGKILL)
        child.close(force=True)
        if child.logfile_read:
            child.logfile_read.close()


def console(
    tmp_path: Path, terminals: list[pexpect.spawn], *args: str, cwd: Path | None = None
) -> pexpect.spawn:
    child = spawn(tmp_path, "console", *args, cwd=cwd)
    terminals.append(child)
    child.expect_exact("kernelsup console: session ")
    child.expect_exact("[1]:")
    return child


def session_kernel(sup: SupervisorProcess, session: str) -> dict[str, Any]:
    with kernelsup.SyncClient(sup.config) as client:
        kernels = [k for k in client.status().kernels if k["session"] == session]
    assert kernels, f"no kernel for session {session}"
    return kernels[0]


def test_input_complete_follows_the_python_repl() -> None:
    assert input_complete("1 + 1")
    assert not input_complete("def f(x):")
    assert not input_complete("def f(x):\n    return x")  # a block waits for its end
    assert input_complete("def f(x):\n    return x\n")  # an empty line ends it
    assert not input_complete("x = (1,")
    assert input_complete("x = (1,\n2)")
    assert input_complete("1 +* 2")  # more lines cannot mend it: the kernel says why
    assert not input_complete("while True: pass")  # the REPL wants the empty line too


def test_console_runs_code_keeps_state_and_history(
    served: SupervisorProcess, tmp_path: Path, terminals: list[pexpect.spawn]
) -> None:
    c = console(tmp_path, terminals, "-c", str(served.config), "--session", "con-a")
    assert "on the supervisor at" in c.before
    c.send("x = 21\r")
    c.expect_exact("[2]:")
    # multi-line input: Enter on an unfinished block adds a line (indented), an empty
    # line ends it
    c.send("def f(y):\r")
    c.expect_exact("...:")
    c.send("return y * 2\r")
    c.expect_exact("...:")
    c.send("\r")
    c.expect_exact("[3]:")
    c.send("f(x)\r")
    c.expect_exact("42")
    c.expect_exact("[4]:")
    # history: Up brings back the last input
    c.send("\x1b[A")
    c.expect_exact("f(x)")
    c.send("\r")
    c.expect_exact("42")
    c.expect_exact("[5]:")
    # an error shows its traceback; rich output its text or a placeholder
    c.send("1 / 0\r")
    c.expect_exact("ZeroDivisionError")
    c.expect_exact("[6]:")
    c.send("from IPython.display import display; display({'image/png': 'AAAA'}, raw=True)\r")
    c.expect_exact("<display_data: image/png>")
    c.expect_exact("[7]:")
    c.sendcontrol("d")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    # a named session outlives the console; the history file has the inputs
    assert session_kernel(served, "con-a")["state"] == "idle"
    history = (tmp_path / "state" / "kernelsup" / "console_history").read_text()
    assert "+def f(y):\n+    return y * 2\n" in history


def test_console_streams_output_and_ctrl_c_interrupts_the_code_not_the_console(
    served: SupervisorProcess, tmp_path: Path, terminals: list[pexpect.spawn]
) -> None:
    gate = tmp_path / "go"
    c = console(tmp_path, terminals, "-c", str(served.config), "--session", "con-b")
    c.send("x = 7\r")
    c.expect_exact("[2]:")
    # output streams before the cell ends: 'first' shows while the code still waits
    lines = [
        "import os, time",
        "print('fir' + 'st', flush=True)",
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)",
        "print('sec' + 'ond')",
    ]
    c.send("\x1b\r".join(lines) + "\r")  # Esc Enter adds a line; Enter runs the four
    c.expect_exact("first")
    assert session_kernel(served, "con-b")["state"] == "busy"
    gate.touch()
    c.expect_exact("second")
    c.expect_exact("[3]:")
    # Ctrl-C interrupts a busy loop; the console and the session's state stay
    c.send("print('loop' + 'ing', flush=True)\x1b\rwhile True: pass\r")
    c.expect_exact("looping")  # the loop runs (a kernel merely busy may not be there yet)
    c.sendcontrol("c")
    c.expect_exact("KeyboardInterrupt")
    c.expect_exact("[4]:")
    c.send("x * 6\r")
    c.expect_exact("42")
    c.expect_exact("[5]:")
    # Ctrl-C at the prompt clears the input, and the console stays
    c.send("this is not run")
    c.sendcontrol("c")
    c.expect_exact("[5]:")
    # the session's kernel dies: the next input says its state is gone
    dead = int(session_kernel(served, "con-b")["pid"])
    os.kill(dead, signal.SIGKILL)
    with kernelsup.SyncClient(served.config) as client:  # the supervisor has seen it go
        deadline = time.monotonic() + TIMEOUT_S
        while dead in [k["pid"] for k in client.status().kernels]:
            assert time.monotonic() < deadline, "the supervisor never saw the kernel die"
            time.sleep(0.05)
    c.send("1 + 1\r")
    c.expect_exact("[kernelsup: this session's kernel was replaced")  # its own prefix only
    c.expect_exact("[6]:")
    c.sendcontrol("d")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0


def test_console_without_a_session_closes_its_own(
    served: SupervisorProcess, tmp_path: Path, terminals: list[pexpect.spawn]
) -> None:
    c = console(tmp_path, terminals, "-c", str(served.config))
    name = c.before.split(" on ")[0].strip()
    assert name.startswith("console-")
    c.send("y = 1\r")
    c.expect_exact("[2]:")
    assert session_kernel(served, name)["state"] == "idle"
    c.sendcontrol("d")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    with kernelsup.SyncClient(served.config) as client:
        assert name not in [k["session"] for k in client.status().kernels]


def test_console_runs_an_embedded_supervisor_when_none_serves_the_config(
    tmp_path: Path, terminals: list[pexpect.spawn]
) -> None:
    config = write_config(tmp_path, tmp_path / "rt", size=1, spares=0)
    c = console(tmp_path, terminals, "-c", str(config))
    assert "a supervisor embedded in this console (" in c.before
    runtime = Path(c.before.split("console (", 1)[1].split(")", 1)[0])
    c.send("import os; print('pid', os.getpid())\r")
    c.expect(r"pid (\d+)\r\n")
    kernel = int(c.match.group(1))
    c.expect_exact("[2]:")
    assert processes_of(runtime)  # its kernels and helpers name its runtime directory
    c.sendcontrol("d")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    assert wait_all_gone([kernel]) == []
    assert processes_of(runtime) == []
    assert not runtime.exists()


def test_top_redraws_the_status_in_place(
    served: SupervisorProcess, tmp_path: Path, terminals: list[pexpect.spawn]
) -> None:
    child = spawn(tmp_path, "top", "-c", str(served.config), "--interval", "0.2")
    terminals.append(child)
    for _ in range(3):  # each refresh: cursor home, clear, the table again
        child.expect_exact("\x1b[H\x1b[J")
        child.expect_exact("kernelsup top: ")
        child.expect(r"ID +POOL +ROLE +STATE +PID +RESTARTS +SESSION +UPTIME +CPU +MEM +UNIT")
        child.expect(
            r"default-\d+ +default +\w+ +idle +\d+ +\d+ +\S+ +\S+ +\d+% +\d+M +(cgroup|subreaper)"
        )
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
