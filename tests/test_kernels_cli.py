"""Kernels that are not ipykernel, and a venv's kernels, from the command line as a new user
meets them: `kernelsup` started by its absolute path with a PATH that does not hold its
venv, kernelspecs found through JUPYTER_PATH, each supervisor stopped with SIGTERM and
nothing of it left behind. The same scenarios in one process: tests/test_kernels.py.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernelsup.adapters.tether import tethered_pids
from tests.helpers import install_bash_kernelspec

BINDIR = Path(sys.executable).parent
# The venv's own script when there is one (how a user starts it), else the module.
KERNELSUP = (
    [str(BINDIR / "kernelsup")]
    if (BINDIR / "kernelsup").exists()
    else [sys.executable, "-m", "kernelsup"]
)
# A PATH without the venv: what a shell that never activated it has.
PATH = os.pathsep.join(d for d in ("/usr/local/bin", "/usr/bin", "/bin") if Path(d) != BINDIR)
READY = "kernelsup ready: "
STATE_LOST = "[kernelsup: this session's kernel was replaced;"


@pytest.fixture(scope="module")
def bash_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bash_kernel's kernelspec in a private prefix; the JUPYTER_PATH entry that finds it."""
    return install_bash_kernelspec(tmp_path_factory.mktemp("specs"))


def user_env(*jupyter_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = PATH
    env["JUPYTER_PATH"] = os.pathsep.join(
        [*map(str, jupyter_path), os.environ.get("JUPYTER_PATH", "")]
    )
    return env


def write_spec(root: Path, name: str, argv: list[str], language: str = "python") -> None:
    spec_dir = root / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {"argv": argv, "display_name": name, "language": language}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


def write_config(
    path: Path, runtime_dir: Path, pools: list[dict[str, Any]], extra: str = ""
) -> Path:
    text = f'[supervisor]\nruntime_dir = "{runtime_dir}"\n{extra}\n'
    for pool in pools:
        text += "\n[[pool]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in pool.items())
    path.write_text(text)
    return path


class Run:
    """`kernelsup run CONFIG` in the user's environment."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.config = config
        self.env = env
        self.stderr_path = config.with_suffix(".stderr")
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [*KERNELSUP, "run", str(config)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                cwd=config.parent,
            )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def ready_line(self) -> str:
        try:
            line = self._lines.get(timeout=120)
        except queue.Empty:
            raise AssertionError(f"no ready line; stderr:\n{self.stderr()}") from None
        assert line.startswith(READY), f"{line!r}; stderr:\n{self.stderr()}"
        return line

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-4000:]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A client command against this supervisor, from the same environment."""
        command, *rest = args
        return subprocess.run(
            [*KERNELSUP, command, "-c", str(self.config), *rest],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json")
        assert out.returncode in (0, 3), out
        report: dict[str, Any] = json.loads(out.stdout)
        return report

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def nothing_tethered(runtime_dir: Path, within: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := tethered_pids(runtime_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def stop_and_check(run: Run, runtime_dir: Path) -> None:
    """SIGTERM: exit 0, and nothing of the supervisor (kernels, zygotes) is left."""
    assert run.stop() == 0, run.stderr()
    assert nothing_tethered(runtime_dir) == []


@pytest.fixture
def running() -> Iterator[list[Run]]:
    """Every Run a test starts is killed and waited for, pass or fail."""
    runs: list[Run] = []
    yield runs
    for run in runs:
        run.kill()


def busy_kernel(run: Run, pool: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        busy = [
            k["id"] for k in run.status()["kernels"] if k["pool"] == pool and k["state"] == "busy"
        ]
        if busy:
            return str(busy[0])
        time.sleep(0.05)  # nothing announces "busy" to another process
    raise AssertionError(f"no kernel of pool {pool} became busy")


# --- a venv's kernels are the venv's ----------------------------------------------------


def test_a_venvs_kernels_run_on_its_interpreter_whatever_path_says(
    tmp_path: Path, runtime_dir: Path, running: list[Run]
) -> None:
    """Kernelspecs whose argv starts with python (ipykernel's, forked and exec'ed),
    python3.X (as some installers write it) and xeus-python's: each kernel runs on the
    interpreter running kernelsup, and in a Python kernel `!python` and `!pip` are that
    interpreter's too, though the PATH kernelsup was started with leads elsewhere."""
    specs = tmp_path / "jupyter"
    versioned = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    write_spec(
        specs, "versioned", [versioned, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    )
    pools: list[dict[str, Any]] = [
        {"name": "fork", "kernel": "python3", "launch": "fork"},
        {"name": "exec", "kernel": "python3", "launch": "exec"},
        {"name": "versioned-fork", "kernel": "versioned", "launch": "fork"},
        {"name": "versioned-exec", "kernel": "versioned", "launch": "exec"},
        {"name": "xpython", "kernel": "xpython"},
    ]
    for pool in pools:
        pool.update(size=1, spares=0)
    run = Run(write_config(tmp_path / "venv.toml", runtime_dir, pools), user_env(specs))
    running.append(run)
    assert run.ready_line().startswith(f"{READY}5 kernels in 5 pool(s); endpoint ")
    for pool in pools:
        name = str(pool["name"])
        out = run.cli(
            "exec", "--pool", name, "import sys; print(sys.prefix); print(sys.executable)"
        )
        assert out.returncode == 0, out
        prefix, executable = out.stdout.split()
        assert (prefix, Path(executable).parent) == (sys.prefix, BINDIR), (name, out.stdout)
        if name == "xpython":
            continue  # no shell escapes in xeus-python
        code = '!python -c "import sys; print(sys.prefix)"\n!pip --version'
        out = run.cli("exec", "--pool", name, code)
        assert out.returncode == 0, out
        python_prefix, pip = out.stdout.splitlines()
        assert python_prefix == sys.prefix, (name, out.stdout)
        assert f" from {sys.prefix}{os.sep}" in pip, (name, pip)
    stop_and_check(run, runtime_dir)


# --- bash from the command line ---------------------------------------------------------


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_bash_from_the_command_line(
    tmp_path: Path, runtime_dir: Path, running: list[Run], bash_spec: Path, transport: str
) -> None:
    """ok, error, timeout, session state, death and replacement, by exit code and --json."""
    pools = [{"name": "sh", "kernel": "bash", "size": 1, "spares": 0, "transport": transport}]
    run = Run(write_config(tmp_path / "bash.toml", runtime_dir, pools), user_env(bash_spec))
    running.append(run)
    assert run.ready_line().startswith(f"{READY}1 kernels in 1 pool(s); endpoint ")

    out = run.cli("exec", "echo hello")
    assert (out.returncode, out.stdout) == (0, "hello\n"), out
    out = run.cli("exec", "ls /no/such/dir-kernelsup")
    assert out.returncode == 1 and "/no/such/dir-kernelsup" in out.stdout, out  # a pty: one stream
    out = run.cli("exec", "--timeout", "1", "sleep 30")
    assert out.returncode == 124 and out.stderr.startswith("timeout ExecTimeout:"), out
    out = run.cli("exec", "echo still here")  # the interrupted kernel goes on
    assert (out.returncode, out.stdout) == (0, "still here\n"), out

    assert run.cli("exec", "--session", "s", "X=41").returncode == 0
    out = run.cli("exec", "--session", "s", "echo $((X + 1))")
    assert (out.returncode, out.stdout) == (0, "42\n"), out
    out = run.cli("exec", "--session", "s", "kill -9 $PPID")  # bash's parent: the kernel
    assert out.returncode == 4 and out.stderr.startswith("kernel_died KernelDied:"), out
    out = run.cli("exec", "--session", "s", "--json", "echo ${X:-gone}")
    assert out.returncode == 0, out
    result = json.loads(out.stdout)
    assert (result["status"], result["state_lost"]) == ("ok", True), result
    marker, said = result["stdout"].splitlines()
    assert (marker.startswith(STATE_LOST), said) == (True, "gone"), result
    stop_and_check(run, runtime_dir)


def test_the_state_lost_notice_is_printed_by_a_streaming_exec(
    tmp_path: Path, runtime_dir: Path, running: list[Run], bash_spec: Path
) -> None:
    pools = [{"name": "sh", "kernel": "bash", "size": 1, "spares": 0}]
    run = Run(write_config(tmp_path / "bash.toml", runtime_dir, pools), user_env(bash_spec))
    running.append(run)
    run.ready_line()
    try:
        assert run.cli("exec", "--session", "s", "X=41").returncode == 0
        assert run.cli("exec", "--session", "s", "kill -9 $PPID").returncode == 4
        out = run.cli("exec", "--session", "s", "echo ${X:-gone}")
        assert out.returncode == 0 and out.stdout.endswith("gone\n"), out
        assert out.stderr.startswith(STATE_LOST), out  # said once, first, on stderr
    finally:
        stop_and_check(run, runtime_dir)


def test_an_interrupt_from_another_process_says_interrupted(
    tmp_path: Path, runtime_dir: Path, running: list[Run], bash_spec: Path
) -> None:
    """`kernelsup interrupt KERNEL` while `kernelsup exec --json` runs on it: the exec's
    result says interrupted (an error, exit 1), and the kernel goes on."""
    loops = {"py": "import time; time.sleep(60)", "sh": "sleep 60"}
    pools = [
        {"name": "py", "kernel": "python3", "size": 1, "spares": 0},
        {"name": "sh", "kernel": "bash", "size": 1, "spares": 0},
    ]
    run = Run(write_config(tmp_path / "intr.toml", runtime_dir, pools), user_env(bash_spec))
    running.append(run)
    run.ready_line()
    for pool, loop in loops.items():
        exec_ = subprocess.Popen(
            [*KERNELSUP, "exec", "-c", str(run.config), "--pool", pool, "--json", loop],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=run.env,
        )
        try:
            kernel = busy_kernel(run, pool)
            out = run.cli("interrupt", kernel)
            assert (out.returncode, out.stdout) == (0, f"interrupted {kernel}\n"), out
            stdout, _ = exec_.communicate(timeout=60)
        finally:
            if exec_.poll() is None:
                exec_.kill()
                exec_.communicate()
        assert exec_.returncode == 1, (pool, stdout)
        result = json.loads(stdout)
        assert (result["status"], result["interrupted"]) == ("error", True), (pool, result)
        assert (result["kernel_id"], result["kernel_restarted"]) == (kernel, False), result
        out = run.cli("exec", "--pool", pool, "--json", "echo 1" if pool == "sh" else "1")
        assert json.loads(out.stdout)["kernel_id"] == kernel, out  # the same kernel
    stop_and_check(run, runtime_dir)


# --- a kernel that can never start ------------------------------------------------------


def test_a_kernel_that_can_never_start_is_said_and_nothing_starts_after_sigterm(
    tmp_path: Path, runtime_dir: Path, running: list[Run]
) -> None:
    """Default restart settings, a kernelspec whose program exits 3 with its reason on
    stderr: the ready line, a refused exec (pool_unavailable, exit 3), status and the event
    log all carry the reason; after SIGTERM (kernels in backoff) no kernel starts."""
    specs = tmp_path / "jupyter"
    script = "import sys; sys.stderr.write('cannot find libfoo.so\\n'); sys.exit(3)"
    write_spec(specs, "quits", ["python3", "-c", script, "{connection_file}"])
    log = tmp_path / "events.jsonl"
    pools = [{"name": "q", "kernel": "quits", "size": 1, "spares": 1}]
    config = write_config(tmp_path / "q.toml", runtime_dir, pools, f'log_file = "{log}"')
    run = Run(config, user_env(specs))
    running.append(run)

    line = run.ready_line()
    assert "2 of them not up (2 failed to start:" in line and "libfoo" in line, line
    out = run.cli("exec", "print(1)")
    assert out.returncode == 3, out
    assert out.stderr.startswith("pool_unavailable Rejected: no kernel of pool q can start")
    assert "exit(3): cannot find libfoo.so" in out.stderr, out.stderr
    out = run.cli("status", "--json")
    assert out.returncode == 3, out  # some kernel is not running
    report = json.loads(out.stdout)
    assert "cannot find libfoo.so" in report["pools"][0]["unavailable"], report
    for kernel in report["kernels"]:
        assert "exit(3): cannot find libfoo.so" in (kernel["start_error"] or ""), kernel
        assert kernel["state"] != "idle", kernel

    assert run.stop() == 0, run.stderr()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    failed = [e for e in events if e["event"] == "kernel_start_failed"]
    odd = [e for e in failed if "cannot find libfoo.so" not in json.dumps(e)]
    assert failed and not odd, (odd, kinds)
    after_stop = kinds[kinds.index("supervisor_stopping") :]
    assert "kernel_starting" not in after_stop, after_stop
    assert nothing_tethered(runtime_dir) == []
