"""The fake kernel itself behaves, so a broken fake cannot make other tests pass vacuously."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

from tests.fakekernel import FAKE_PATH, endpoint, install_kernelspec

pytestmark = pytest.mark.timeout(15)

START_TIMEOUT = 10.0  # cold start is mostly importing jupyter_client, well under 1 s


class Fake:
    """A fake kernel process started by the test, plus a raw pyzmq client for it."""

    def __init__(
        self, proc: subprocess.Popen[bytes], info: dict[str, Any], stderr_path: pathlib.Path
    ) -> None:
        self.proc, self.info, self.stderr_path = proc, info, stderr_path
        self.session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
        self.ctx = zmq.Context()
        self.shell = self._connect(zmq.DEALER, "shell")
        self.control = self._connect(zmq.DEALER, "control")
        self.iopub = self._connect(zmq.SUB, "iopub")
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.bad_iopub_frames = 0

    def _connect(self, kind: int, channel: str) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        sock.connect(endpoint(self.info, channel))
        return sock

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def send(
        self, sock: zmq.Socket[bytes], msg_type: str, content: dict[str, Any] | None = None
    ) -> str:
        msg = self.session.send(sock, msg_type, content or {})
        assert msg is not None
        return str(msg["header"]["msg_id"])

    def recv(self, sock: zmq.Socket[bytes], timeout: float) -> dict[str, Any] | None:
        """One message, or None on timeout; unverifiable iopub frames are counted."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000)):
                break
            frames = sock.recv_multipart()
            try:
                _, rest = self.session.feed_identities(frames)
                return self.session.deserialize(rest)
            except ValueError:
                self.bad_iopub_frames += 1
        return None

    def reply_to(
        self, sock: zmq.Socket[bytes], msg_id: str, timeout: float = 5.0
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (msg := self.recv(sock, deadline - time.monotonic())) is not None:
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg
        return None

    def iopub_for(self, msg_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """iopub messages parented to msg_id, up to and including idle (or the timeout)."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while (msg := self.recv(self.iopub, deadline - time.monotonic())) is not None:
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            out.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        return out

    def ping(self, timeout: float = 0.5) -> bool:
        sock = self._connect(zmq.REQ, "hb")
        try:
            sock.send(b"ping")
            return bool(sock.poll(int(timeout * 1000))) and sock.recv() == b"ping"
        finally:
            sock.close(linger=0)

    def wait_ready(self) -> dict[str, Any]:
        """kernel_info_reply received and the iopub subscription seen to work."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            msg_id = self.send(self.shell, "kernel_info_request")
            reply = self.reply_to(self.shell, msg_id, deadline - time.monotonic())
            assert reply is not None, "no kernel_info_reply"
            iopub = self.iopub_for(msg_id, timeout=0.5)
            if iopub:  # a late SUB misses the first ones; retry until it sees some
                return reply
        raise AssertionError("iopub never delivered a status message")


Spawn = Callable[..., Fake]


@pytest.fixture
def spawn(tmp_path: pathlib.Path) -> Iterator[Spawn]:
    fakes: list[Fake] = []
    ipc_dirs: list[str] = []

    def _spawn(mode: str, *extra: str, transport: str = "tcp") -> Fake:
        n = len(fakes)
        ip = "127.0.0.1"
        if transport == "ipc":  # AF_UNIX paths are short (108 bytes): not under tmp_path
            ipc_dirs.append(tempfile.mkdtemp(prefix="fk-", dir="/tmp"))
            ip = os.path.join(ipc_dirs[-1], "k")
        fname, info = write_connection_file(
            str(tmp_path / f"conn-{n}.json"),
            ip=ip,
            key=os.urandom(16).hex().encode(),
            transport=transport,
        )
        stderr_path = tmp_path / f"stderr-{n}.txt"
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(FAKE_PATH), "-f", fname, "--mode", mode, *extra],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        fake = Fake(proc, dict(info), stderr_path)
        fakes.append(fake)
        return fake

    try:
        yield _spawn
    finally:
        for fake in fakes:
            fake.close()
            if fake.proc.poll() is None:
                fake.proc.kill()
            fake.proc.wait(timeout=10)
        for d in ipc_dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_install_kernelspec_and_ok_through_kernel_manager(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jp"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "rt"))
    name = install_kernelspec(tmp_path / "jp", "ok", extra_args=["--count", "2"])
    assert name == "fake-ok"
    spec = KernelSpecManager().get_kernel_spec(name)
    assert spec.argv == [
        sys.executable,
        str(FAKE_PATH),
        "-f",
        "{connection_file}",
        "--mode",
        "ok",
        "--count",
        "2",
    ]
    assert (spec.language, spec.interrupt_mode) == ("python", "signal")

    km = KernelManager(kernel_name=name)
    km.start_kernel()
    kc: BlockingKernelClient | None = None
    try:
        proc = km.provisioner.process  # type: ignore[union-attr]
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=START_TIMEOUT)
        info = kc.kernel_info(reply=True, timeout=5)["content"]
        assert info["protocol_version"] == "5.3"
        assert info["implementation"] == "fake"
        assert info["language_info"]["name"] == "python"

        reply = kc.execute("1 + 1", reply=True, timeout=5)
        assert reply["content"]["status"] == "ok"
        msg_id = reply["parent_header"]["msg_id"]
        seen: list[tuple[str, str]] = []
        while not seen or seen[-1] != ("status", "idle"):
            msg = kc.get_iopub_msg(timeout=5)
            if msg["parent_header"].get("msg_id") == msg_id:
                c = msg["content"]
                seen.append((msg["msg_type"], c.get("execution_state") or c.get("text")))
        assert ("stream", "fake:1 + 1") in seen
        assert seen[0] == ("status", "busy")

        km.shutdown_kernel(now=False)  # shutdown_request on control, then wait
        assert proc.returncode == 0
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_ok_mode_speaks_the_protocol(spawn: Spawn, transport: str) -> None:
    fake = spawn("ok", transport=transport)
    info = fake.wait_ready()["content"]
    assert (info["implementation"], info["protocol_version"]) == ("fake", "5.3")

    msg_id = fake.send(fake.shell, "execute_request", {"code": "x = 1", "silent": False})
    reply = fake.reply_to(fake.shell, msg_id)
    assert reply is not None
    assert reply["msg_type"] == "execute_reply"
    assert (reply["content"]["status"], reply["content"]["execution_count"]) == ("ok", 1)
    iopub = fake.iopub_for(msg_id)
    assert [
        (
            m["msg_type"],
            m["content"].get("execution_state")
            or m["content"].get("text")
            or m["content"].get("code"),
        )
        for m in iopub
    ] == [
        ("status", "busy"),
        ("execute_input", "x = 1"),
        ("stream", "fake:x = 1"),
        ("status", "idle"),
    ]

    assert fake.ping()
    os.kill(fake.proc.pid, signal.SIGINT)  # nothing to interrupt: ignored
    msg_id = fake.send(fake.control, "interrupt_request")
    reply = fake.reply_to(fake.control, msg_id)
    assert reply is not None and reply["msg_type"] == "interrupt_reply"

    msg_id = fake.send(fake.shell, "shutdown_request", {"restart": False})
    reply = fake.reply_to(fake.shell, msg_id)
    assert reply is not None and reply["msg_type"] == "shutdown_reply"
    assert fake.proc.wait(timeout=5) == 0


@pytest.mark.parametrize(("extra", "code"), [((), 3), (("--exit-code", "7"), 7)])
def test_exit_at_once(spawn: Spawn, extra: tuple[str, ...], code: int) -> None:
    fake = spawn("exit_at_once", *extra)
    assert fake.proc.wait(timeout=START_TIMEOUT) == code
    assert "fake kernel: exiting at once on purpose" in fake.stderr()


def test_never_ready_answers_heartbeat_but_nothing_else(spawn: Spawn) -> None:
    fake = spawn("never_ready")
    deadline = time.monotonic() + START_TIMEOUT
    while not fake.ping(timeout=0.2):
        assert time.monotonic() < deadline, "never answered a heartbeat"
    msg_id = fake.send(fake.shell, "kernel_info_request")
    assert fake.reply_to(fake.shell, msg_id, timeout=1.0) is None
    assert fake.proc.poll() is None


def test_ignore_sigterm_survives_sigterm_and_shutdown_dies_on_sigkill(spawn: Spawn) -> None:
    fake = spawn("ignore_sigterm")
    fake.wait_ready()
    fake.proc.send_signal(signal.SIGTERM)
    msg_id = fake.send(fake.control, "shutdown_request", {"restart": False})
    assert fake.reply_to(fake.control, msg_id, timeout=1.0) is None
    assert fake.proc.poll() is None
    assert fake.ping()
    fake.proc.kill()
    assert fake.proc.wait(timeout=5) == -signal.SIGKILL


def test_bad_iopub_sends_junk_then_real_outputs(spawn: Spawn) -> None:
    fake = spawn("bad_iopub", "--count", "6")
    fake.wait_ready()
    assert fake.bad_iopub_frames == 0  # kernel_info is clean
    msg_id = fake.send(fake.shell, "execute_request", {"code": "print(1)"})
    iopub = fake.iopub_for(msg_id)
    assert fake.bad_iopub_frames == 12  # 6 forged signatures + 6 garbage
    texts = [m["content"]["text"] for m in iopub if m["msg_type"] == "stream"]
    assert texts == ["fake:print(1)"]
    assert iopub[-1]["content"] == {"execution_state": "idle"}
    reply = fake.reply_to(fake.shell, msg_id)
    assert reply is not None and reply["content"]["status"] == "ok"


def test_no_heartbeat_is_otherwise_ok(spawn: Spawn) -> None:
    fake = spawn("no_heartbeat")
    fake.wait_ready()
    assert not fake.ping(timeout=0.5)
    assert fake.proc.poll() is None


def test_slow_idle_replies_but_never_goes_idle(spawn: Spawn) -> None:
    fake = spawn("slow_idle")
    fake.wait_ready()  # kernel_info still goes idle
    msg_id = fake.send(fake.shell, "execute_request", {"code": "1"})
    reply = fake.reply_to(fake.shell, msg_id)
    assert reply is not None and reply["content"]["status"] == "ok"
    kinds = [m["msg_type"] for m in fake.iopub_for(msg_id, timeout=1.0)]
    assert kinds == ["status", "execute_input", "stream"]


def test_connection_file_endpoints(tmp_path: pathlib.Path) -> None:
    info = {"transport": "ipc", "ip": "/run/k", "shell_port": 3}
    assert endpoint(info, "shell") == "ipc:///run/k-3"
    info = json.loads(json.dumps({"transport": "tcp", "ip": "127.0.0.1", "hb_port": 5}))
    assert endpoint(info, "hb") == "tcp://127.0.0.1:5"
