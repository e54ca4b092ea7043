"""A small misbehaving fake Jupyter kernel, for tests.

A real process speaking the Jupyter wire protocol (messaging spec 5.x) through
jupyter_client's ``Session`` and plain blocking pyzmq, single-threaded::

    python tests/fakekernel.py -f CONNECTION_FILE --mode MODE
        [--count N] [--exit-code N] [--delay SECONDS]

Modes:

- ``ok``: a well-behaved minimal kernel. ``status: starting`` on iopub at start;
  ``kernel_info_request`` and ``execute_request`` bracketed by iopub busy/idle (execute also
  sends ``execute_input`` and a stdout stream ``"fake:" + code``); ``shutdown_request``
  (shell or control) replies and exits 0; ``interrupt_request`` replies. Other
  ``*_request`` messages get an error reply. SIGINT is ignored (nothing to interrupt).
- ``never_ready``: binds everything and answers heartbeats; reads and drops every request.
- ``exit_at_once``: writes "fake kernel: exiting at once on purpose" to stderr and exits
  with ``--exit-code`` (default 3) before binding anything.
- ``ignore_sigterm``: like ``ok``, but ignores SIGTERM and ``shutdown_request`` (no reply,
  no exit). SIGKILL still works.
- ``bad_iopub``: like ``ok``, but each ``execute_request`` first publishes ``--count``
  (default 10) stream messages with a wrong HMAC signature (text "BAD-SIGNATURE", parented
  to the request) and ``--count`` garbage multipart messages on iopub, sleeps ``--delay``
  seconds (default 0), then the correctly signed real outputs and idle.
- ``no_heartbeat``: like ``ok``, but the heartbeat socket is bound and never read.
- ``slow_idle``: like ``ok``, but never sends iopub ``status: idle`` for execute requests.

Importable helper: :func:`install_kernelspec` writes a kernelspec that runs this file.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

MODES = (
    "ok",
    "never_ready",
    "exit_at_once",
    "ignore_sigterm",
    "bad_iopub",
    "no_heartbeat",
    "slow_idle",
)
FAKE_PATH = pathlib.Path(__file__).resolve()


def install_kernelspec(
    root: pathlib.Path,
    mode: str,
    *,
    name: str | None = None,
    interrupt_mode: str = "signal",
    extra_args: list[str] | None = None,
) -> str:
    """Write ``root/kernels/<name>/kernel.json`` running this fake; return the name.

    Point ``JUPYTER_PATH`` at ``root`` so ``KernelSpecManager`` finds it.
    """
    if mode not in MODES:
        raise ValueError(f"unknown fake kernel mode {mode!r}")
    name = name or f"fake-{mode}"
    spec_dir = pathlib.Path(root) / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [
            sys.executable,
            str(FAKE_PATH),
            "-f",
            "{connection_file}",
            "--mode",
            mode,
            *(extra_args or []),
        ],
        "display_name": f"Fake kernel ({mode})",
        "language": "python",
        "interrupt_mode": interrupt_mode,
        "metadata": {},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return name


def endpoint(info: dict[str, Any], channel: str) -> str:
    port = info[f"{channel}_port"]
    if info.get("transport", "tcp") == "ipc":
        return f"ipc://{info['ip']}-{port}"
    return f"tcp://{info['ip']}:{port}"


def garbage_frames(rng: random.Random, i: int) -> list[bytes]:
    """Multipart junk that no Session can parse, in a few different shapes."""

    def junk() -> bytes:
        return rng.randbytes(rng.randint(0, 64))

    kind = i % 4
    if kind == 0:  # a single frame of random bytes
        return [junk()]
    if kind == 1:  # delimiter, then too few frames
        return [b"<IDS|MSG>", junk(), junk()]
    if kind == 2:  # many frames, no delimiter at all
        return [junk() for _ in range(rng.randint(2, 8))]
    return [b"<IDS|MSG>", junk(), junk(), b"{not json", junk(), junk()]  # non-JSON frames


class FakeKernel:
    def __init__(self, info: dict[str, Any], args: argparse.Namespace) -> None:
        import zmq
        from jupyter_client.session import Session

        self.zmq, self.mode, self.args = zmq, args.mode, args
        scheme = info.get("signature_scheme", "hmac-sha256")
        self.session = Session(key=info["key"].encode(), signature_scheme=scheme, username="fake")
        # Same session id, wrong key: messages that look right but fail verification.
        self.forger = Session(
            key=b"not-the-key",
            signature_scheme=scheme,
            username="fake",
            session=self.session.session,
        )
        self.rng = random.Random(1234)
        self.execution_count = 0
        self.ctx = zmq.Context()
        self.shell, self.control, self.stdin, self.hb = (
            self._bind(zmq.ROUTER, info, ch) for ch in ("shell", "control", "stdin", "hb")
        )
        self.iopub = self._bind(zmq.PUB, info, "iopub")

    def _bind(self, kind: int, info: dict[str, Any], channel: str) -> Any:
        sock = self.ctx.socket(kind)
        sock.linger = 1000
        sock.bind(endpoint(info, channel))
        return sock

    def status(self, state: str, parent: dict[str, Any] | None) -> None:
        self.session.send(self.iopub, "status", {"execution_state": state}, parent=parent)

    def run(self) -> None:
        zmq = self.zmq
        poller = zmq.Poller()
        for sock in (self.shell, self.control, self.stdin):
            poller.register(sock, zmq.POLLIN)
        if self.mode != "no_heartbeat":
            poller.register(self.hb, zmq.POLLIN)
        self.status("starting", None)
        while True:
            for sock, _ in poller.poll():
                frames = sock.recv_multipart()
                if sock is self.hb:
                    sock.send_multipart(frames)  # echo, ident included
                elif self.mode != "never_ready" and sock is not self.stdin:
                    self.handle(sock, frames)

    def handle(self, sock: Any, frames: list[bytes]) -> None:
        try:
            idents, rest = self.session.feed_identities(frames)
            msg = self.session.deserialize(rest)
        except (ValueError, TypeError) as e:
            print(f"fake kernel: dropped a bad request: {e}", file=sys.stderr, flush=True)
            return
        msg_type = msg["header"]["msg_type"]

        def reply(reply_type: str, content: dict[str, Any]) -> None:
            self.session.send(sock, reply_type, content, parent=msg, ident=idents)

        if msg_type == "shutdown_request":
            if self.mode == "ignore_sigterm":
                return
            reply(
                "shutdown_reply", {"status": "ok", "restart": bool(msg["content"].get("restart"))}
            )
            self.ctx.destroy(linger=1000)  # flush the reply, then go
            sys.exit(0)
        if msg_type == "interrupt_request":
            reply("interrupt_reply", {"status": "ok"})
            return
        self.status("busy", msg)
        if msg_type == "kernel_info_request":
            reply(
                "kernel_info_reply",
                {
                    "status": "ok",
                    "protocol_version": "5.3",
                    "implementation": "fake",
                    "implementation_version": "0.1",
                    "banner": "fake kernel",
                    "language_info": {
                        "name": "python",
                        "version": sys.version.split()[0],
                        "mimetype": "text/x-python",
                        "file_extension": ".py",
                    },
                },
            )
        elif msg_type == "execute_request":
            self.execute(msg, reply)
            if self.mode == "slow_idle":
                return
        else:
            reply(
                msg_type.replace("_request", "_reply"),
                {
                    "status": "error",
                    "ename": "NotImplementedError",
                    "evalue": f"fake kernel does not do {msg_type}",
                    "traceback": [],
                },
            )
        self.status("idle", msg)

    def execute(self, msg: dict[str, Any], reply: Callable[[str, dict[str, Any]], None]) -> None:
        code = msg["content"].get("code", "")
        if self.mode == "bad_iopub":
            for _ in range(self.args.count):
                self.forger.send(
                    self.iopub, "stream", {"name": "stdout", "text": "BAD-SIGNATURE\n"}, parent=msg
                )
            for i in range(self.args.count):
                self.iopub.send_multipart(garbage_frames(self.rng, i))
            time.sleep(self.args.delay)
        self.execution_count += 1
        self.session.send(
            self.iopub,
            "execute_input",
            {"code": code, "execution_count": self.execution_count},
            parent=msg,
        )
        self.session.send(
            self.iopub, "stream", {"name": "stdout", "text": "fake:" + code}, parent=msg
        )
        reply(
            "execute_reply",
            {
                "status": "ok",
                "execution_count": self.execution_count,
                "user_expressions": {},
                "payload": [],
            },
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-f", dest="connection_file", required=True)
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.mode == "exit_at_once":
        print("fake kernel: exiting at once on purpose", file=sys.stderr, flush=True)
        sys.exit(args.exit_code)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.mode == "ignore_sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(args.connection_file) as f:
        info = json.load(f)
    print(f"fake kernel: pid {os.getpid()} mode {args.mode}", file=sys.stderr, flush=True)
    FakeKernel(info, args).run()


if __name__ == "__main__":
    main()
