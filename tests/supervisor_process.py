"""`kernelsup run CONFIG` as a real subprocess, for end-to-end tests of the control
endpoint, the clients and the CLI.

``SupervisorProcess.start`` waits for the ready line (never a fixed sleep); ``stop`` sends
SIGTERM and checks the exit status and that no process of its runtime directory is left.
``cleanup`` (for fixtures' finalizers) always leaves nothing running, pass or fail.
"""

from __future__ import annotations

import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

READY = "kernelsup ready: "
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def write_config(
    directory: Path,
    runtime_dir: Path,
    *,
    size: int = 2,
    spares: int = 1,
    pool: str = "",
    restart: str = "",
    server: str = "",
    name: str = "supervisor.toml",
) -> Path:
    """A small, fast config: short heartbeat and shutdown, private short runtime dir."""
    path = directory / name
    path.write_text(f"""
[supervisor]
runtime_dir = "{runtime_dir}"

[server]
{server}

[[pool]]
name = "default"
size = {size}
spares = {spares}
exec_timeout = 60.0
start_timeout = 30.0
interrupt_grace = 3.0
{pool}

[pool.restart]
{restart}

[pool.heartbeat]
interval = 0.2
misses = 3

[pool.shutdown]
grace = 1.0
term_timeout = 1.0
""")
    return path


def private_tmp() -> Path:
    """A short directory under /tmp (IPC socket paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ks-", dir="/tmp"))
    path.chmod(0o700)
    return path


def processes_of(runtime_dir: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line names ``runtime_dir``: its kernels
    (``-f RUNTIME_DIR/kernel-...json``) and helpers."""
    needle = str(runtime_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            if any(needle in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def open_files_limit(soft: int, hard: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that sets the child's RLIMIT_NOFILE (``hard`` unchanged if None):
    lowering both means the child cannot raise its limit at all."""

    def apply() -> None:
        resource.setrlimit(
            resource.RLIMIT_NOFILE,
            (soft, hard if hard is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
        )

    return apply


class SupervisorProcess:
    def __init__(
        self,
        config: Path,
        runtime_dir: Path,
        *,
        open_files: tuple[int, int | None] | None = None,
    ) -> None:
        """``open_files``: the (soft, hard) RLIMIT_NOFILE to start it under (hard None:
        unchanged)."""
        self.config = config
        self.runtime_dir = runtime_dir
        self.open_files = open_files
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.ready_line = ""
        self.stderr_path = config.with_suffix(".stderr")
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, timeout: float = START_TIMEOUT_S) -> SupervisorProcess:
        stderr = self.stderr_path.open("w")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kernelsup", "run", str(self.config)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=self.config.parent,
                preexec_fn=open_files_limit(*self.open_files) if self.open_files else None,
            )
        finally:
            stderr.close()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no ready line within {timeout} s; stderr:\n{self.stderr()}"
            ) from None
        if line is None or not line.startswith(READY):
            raise AssertionError(f"expected the ready line, got {line!r}; stderr:\n{self.stderr()}")
        self.ready_line = line
        self.endpoint = line.rsplit("endpoint ", 1)[1].strip()
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()[-4000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int:
        """SIGTERM; the exit status (after at most STOP_TIMEOUT_S)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the supervisor did not stop within {STOP_TIMEOUT_S} s of SIGTERM"
            ) from None

    def leftovers(self, within: float = 5.0) -> list[psutil.Process]:
        deadline = time.monotonic() + within
        while (left := processes_of(self.runtime_dir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def cleanup(self) -> None:
        """Kill whatever is left, pass or fail."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        for proc in processes_of(self.runtime_dir):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def stop_and_check(sup: SupervisorProcess) -> None:
    """The end of every end-to-end test: SIGTERM gives exit 0 and leaves nothing behind."""
    code = sup.stop()
    assert code == 0, f"kernelsup run exited {code}; stderr:\n{sup.stderr()}"
    left = sup.leftovers()
    assert not left, f"processes left behind: {[p.pid for p in left]}"
    for leftover in ("control.sock", "control.key", "control.endpoint"):
        assert not (sup.runtime_dir / leftover).exists(), leftover


def supervisor(
    tmp: Path | None = None,
    *,
    open_files: tuple[int, int | None] | None = None,
    **config: Any,
) -> Iterator[SupervisorProcess]:
    """Generator for fixtures: start one, yield it, stop and check it, clean up always.
    ``open_files``: the (soft, hard) RLIMIT_NOFILE it runs under."""
    directory = tmp or private_tmp()
    runtime_dir = directory / "rt"
    sup = SupervisorProcess(
        write_config(directory, runtime_dir, **config), runtime_dir, open_files=open_files
    )
    try:
        sup.start()
        yield sup
        stop_and_check(sup)
    finally:
        sup.cleanup()
        if tmp is None:
            shutil.rmtree(directory, ignore_errors=True)
