"""`kernelsup run` and `kernelsup check` as real subprocesses: ready line, clean stops,
give-up exit, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelsup.adapters.tether import tethered_pids
from tests.helpers import LEAVE_BEHIND, wait_all_gone

KERNELSUP = [sys.executable, "-m", "kernelsup"]


def write_config(path: Path, runtime_dir: Path, pool: str = "") -> Path:
    path.write_text(f"""
[supervisor]
runtime_dir = "{runtime_dir}"

[[pool]]
name = "default"
size = 1
spares = 1
{pool}

[pool.heartbeat]
interval = 0.2
""")
    return path


@pytest.fixture
def config_file(tmp_path: Path, runtime_dir: Path) -> Path:
    return write_config(tmp_path / "supervisor.toml", runtime_dir)


class Running:
    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*KERNELSUP, "run", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=config.parent,
        )

    def ready_line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def running(config_file: Path) -> Iterator[Running]:
    r = Running(config_file)
    try:
        yield r
    finally:
        r.stop()


def kernel_pids(config_file: Path) -> list[int]:
    """The kernels' pids, as the running supervisor reports them (a forked kernel's
    command line is its zygote's, so processes are not told apart by their names)."""
    from kernelsup import SyncClient

    with SyncClient(str(config_file)) as c:
        return [k["pid"] for k in c.status().kernels if k.get("pid")]


def nothing_tethered(runtime_dir: Path, within: float = 10.0) -> list[int]:
    """Once the supervisor has exited: what still carries its tether marker (kernels,
    what they started, the zygote), after a bounded wait for it to go."""
    deadline = time.monotonic() + within
    while (left := tethered_pids(runtime_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly(
    running: Running, runtime_dir: Path, sig: int, config_file: Path
) -> None:
    line = running.ready_line()
    assert line.startswith("kernelsup ready: 2 kernels in 1 pool(s); endpoint ipc://"), line
    kernels = kernel_pids(config_file)
    assert len(kernels) == 2
    from kernelsup import SyncClient  # leave something behind to clean up

    with SyncClient(str(config_file)) as c:
        r = c.execute(LEAVE_BEHIND)
    assert r.status == "ok", r
    left = [int(p) for p in r.stdout.split()]
    running.proc.send_signal(sig)
    assert running.proc.wait(timeout=30) == 0
    assert wait_all_gone(kernels + left, within=5.0) == []
    assert tethered_pids(runtime_dir) == []


def test_run_exits_1_when_the_root_gives_up(tmp_path: Path, runtime_dir: Path) -> None:
    cfg = tmp_path / "crash.toml"
    cfg.write_text(f"""
[supervisor]
runtime_dir = "{runtime_dir}"
intensity = 1
period = 60.0

[[pool]]
size = 1
spares = 0
intensity = 1
startup_code = "import os; os._exit(3)"

[pool.restart]
max_retries = -1
""")
    proc = subprocess.run(
        [*KERNELSUP, "run", str(cfg), "--quiet"], capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("supervisor_gave_up SupervisorGaveUp: pool default escalated")
    assert nothing_tethered(runtime_dir) == []


def test_run_exits_1_when_every_pool_is_dead(tmp_path: Path, runtime_dir: Path) -> None:
    """A kernel that can never start: its retries run out, its pool is dead, and with no
    pool left to serve, run gives up by itself (before, it stayed up refusing every
    request with pool_dead until someone stopped it)."""
    cfg = tmp_path / "never.toml"
    cfg.write_text(f"""
[supervisor]
runtime_dir = "{runtime_dir}"

[[pool]]
size = 1
spares = 0
startup_code = "import sys; sys.exit('no licence for this kernel')"

[pool.restart]
min_delay = 0.05
max_delay = 0.1
max_retries = 2
""")
    proc = subprocess.run(
        [*KERNELSUP, "run", str(cfg), "--quiet"], capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "supervisor_gave_up SupervisorGaveUp: every pool is dead (its kernels gave up "
        "restarting): pool 'default':"
    ), last
    assert "no licence for this kernel" in last, last
    assert nothing_tethered(runtime_dir) == []


def test_run_logs_events_as_json(running: Running, config_file: Path, runtime_dir: Path) -> None:
    running.stop()
    r = Running(config_file, "--log-json")
    try:
        r.ready_line()
        pid = kernel_pids(config_file)[0]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        seen: list[str] = []
        assert r.proc.stderr is not None
        while time.monotonic() < deadline:
            line = r.proc.stderr.readline()
            seen.append(line)
            if '"event": "kernel_started"' in line and any(
                '"event": "kernel_exited"' in s for s in seen
            ):
                break
        events = [json.loads(s) for s in seen if s.startswith("{")]
        exited = [e for e in events if e["event"] == "kernel_exited"]
        assert exited and exited[0]["text"] == "signal(9)"
        r.proc.send_signal(signal.SIGTERM)
        assert r.proc.wait(timeout=30) == 0
    finally:
        r.stop()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[pool]]\nsise = 2\n", "$.pool[0].sise: unknown key"),
        ("[[pool]]\nsize = 'two'\n", "$.pool[0].size"),
        ("[supervisor]\nstrategy = 'one_for_some'\n", "$.supervisor.strategy"),
        ("[[pool]\nsize = 2\n", "line 1"),
    ],
)
def test_check_rejects_bad_files(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    for command in ("check", "run"):
        proc = subprocess.run(
            [*KERNELSUP, command, str(cfg)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert lines[0].startswith("config_invalid ConfigError: ")


def test_check_accepts_the_shipped_config() -> None:
    root = Path(__file__).parent.parent
    proc = subprocess.run(
        [*KERNELSUP, "check", "supervisor.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_run_says_when_its_kernels_cannot_start(tmp_path: Path, runtime_dir: Path) -> None:
    """It does not wait forever for kernels that cannot start: its ready line says how
    many are not up and why, exec is refused at once (pool_unavailable, exit 3), and a
    SIGTERM stops it cleanly."""
    cfg = write_config(tmp_path / "supervisor.toml", runtime_dir, pool='startup_code = "1 / 0"')
    running = Running(cfg)
    try:
        line = running.ready_line()
        assert line.startswith("kernelsup ready: 2 kernels in 1 pool(s); endpoint "), line
        assert "2 of them not up (2 failed to start:" in line, line
        assert "ZeroDivisionError" in line, line
        out = subprocess.run(
            [*KERNELSUP, "exec", "-c", str(cfg), "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 3, out
        assert out.stderr.startswith("pool_unavailable Rejected:"), out.stderr
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=60) == 0
        assert nothing_tethered(runtime_dir) == []
    finally:
        running.stop()
