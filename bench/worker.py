"""The anchors' process: jupyter_client and raw pyzmq, measured outside kernelsup's process.

Theory of operation
-------------------
Every anchor runs in one separate worker process (``python -m bench.worker``), so nothing
of kernelsup (its trio loop, its readers parsing iopub) shares a GIL with the code being
timed, and jupyter_client gets the asyncio world it was written for. The benchmark talks to
the worker over its stdin/stdout: one JSON request per line, one JSON reply per line,
strictly in turn. Every timing is taken inside the worker, around the operation only, so
the pipe costs nothing.

The worker is synchronous between requests. jupyter_client's blocking client runs
coroutines on the thread's asyncio loop (``jupyter_core.utils.ensure_event_loop``); the
async client and the kernel managers use that same loop through ``run_until_complete``, so
one loop serves all of them and never runs twice at once. A jupyter_client restarter polls
only while the loop runs, which is during every request that waits for it (kill and
restart, hang).

Clean-up: the kernels the worker starts are shut down (``shutdown_kernel(now=True)``) when
stdin closes, on SIGTERM and on SIGINT; they all get ``JPY_PARENT_PID``, so they exit
within a second if the worker is SIGKILLed. The worker runs in a session of its own, so a
Ctrl-C reaches only the benchmark, which then stops it in order (:class:`Worker`): close
stdin if the worker is between requests (SIGTERM if it is in one), wait, then SIGKILL.
Stdin also closes if the benchmark dies, however it dies.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

# How long an anchor kernel may take to start or restart before the request fails.
ANCHOR_START_TIMEOUT_S = 60.0
# The repository root: where `python -m bench.worker` finds the bench package.
ROOT = str(Path(__file__).resolve().parent.parent)
# How often the worker checks that the benchmark that started it is still there.
PARENT_POLL_S = 0.5
# How long the trio side waits for the worker to clean up after stdin closed.
WORKER_EXIT_TIMEOUT_S = 20.0


# =========================================================================== worker side
class RawClient:
    """A DEALER (shell) and a SUB (iopub) on one kernel, signed with jupyter_client's
    Session: the floor any client in Python can reach."""

    def __init__(self, conn: dict[str, Any]) -> None:
        import zmq
        from jupyter_client.session import Session

        self.zmq = zmq
        self.session = Session(
            key=conn["key"].encode(),
            signature_scheme=conn.get("signature_scheme", "hmac-sha256"),
            username="bench-raw",
        )
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.shell = ctx.socket(zmq.DEALER)
        self.iopub = ctx.socket(zmq.SUB)
        for s in (self.shell, self.iopub):
            s.setsockopt(zmq.LINGER, 0)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.shell.connect(_endpoint(conn, "shell"))
        self.iopub.connect(_endpoint(conn, "iopub"))
        self.poller = zmq.Poller()
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)

    def drain(self) -> None:
        for s in (self.shell, self.iopub):
            while s.poll(0):
                s.recv_multipart()

    def execute(self, code: str, timeout: float = 30.0) -> float:
        """One execute round trip: reply AND iopub idle for it. Returns seconds."""
        zmq = self.zmq
        t0 = time.perf_counter()
        msg = self.session.send(
            self.shell,
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        assert msg is not None
        msg_id = msg["header"]["msg_id"]
        got_reply = got_idle = False
        deadline = t0 + timeout
        while not (got_reply and got_idle):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError("raw execute timed out")
            for sock, _ in self.poller.poll(int(remaining * 1000) + 1):
                frames = sock.recv_multipart(zmq.NOBLOCK)
                _, rest = self.session.feed_identities(frames)
                m = self.session.deserialize(rest, content=True)
                if m["parent_header"].get("msg_id") != msg_id:
                    continue
                if sock is self.shell:
                    got_reply = True
                elif (
                    m["header"]["msg_type"] == "status"
                    and m["content"].get("execution_state") == "idle"
                ):
                    got_idle = True
        return time.perf_counter() - t0

    def wait_subscribed(self, timeout: float) -> None:
        """Ask for kernel_info until something arrives on iopub: a SUB socket that has
        just connected silently misses messages until its subscription is in place."""
        deadline = time.perf_counter() + timeout
        while not self.iopub.poll(50):
            if time.perf_counter() > deadline:
                raise TimeoutError("iopub subscription not confirmed")
            self.session.send(self.shell, "kernel_info_request", {})
        self.drain()

    def kernel_info(self, timeout: float) -> None:
        msg = self.session.send(self.shell, "kernel_info_request", {})
        assert msg is not None
        if not self.shell.poll(int(timeout * 1000)):
            raise TimeoutError("no kernel_info_reply")
        _, rest = self.session.feed_identities(self.shell.recv_multipart())
        reply = self.session.deserialize(rest)
        assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]

    def close(self) -> None:
        self.shell.close(0)
        self.iopub.close(0)


def _endpoint(conn: dict[str, Any], channel: str) -> str:
    port = conn[f"{channel}_port"]
    if conn.get("transport", "tcp") == "ipc":
        return f"ipc://{conn['ip']}-{port}"
    return f"tcp://{conn['ip']}:{port}"


def _quiet(_msg: dict[str, Any]) -> None:
    """An output hook that prints nothing (the default one prints to stdout)."""


class Anchors:
    """The worker's state: jupyter_client managers and clients, raw clients."""

    def __init__(self, scratch: str) -> None:
        from jupyter_core.utils import ensure_event_loop

        self.scratch = Path(scratch)
        self.loop = ensure_event_loop()
        self.groups: dict[str, list[Any]] = {}  # name -> AsyncIOLoopKernelManagers
        self.clients: dict[str, dict[str, Any]] = {}  # name -> raw/blocking/async clients
        self.cold: list[subprocess.Popen[bytes]] = []
        self.cold_count = 0

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    # ----------------------------------------------------------------- cold start
    def op_cold_start(self) -> dict[str, float]:
        """Two floors, on one plain ipykernel (IPC, like kernelsup's):

        * ``ready_s``: launch -> kernel_info_reply, the floor of any restart without a
          spare;
        * ``first_exec_s`` / ``second_exec_s``: its first execute("1") round trip and the
          next one (ipykernel's first execute is several ms slower: lazy set-up);
        * ``kill_seen_s``: then SIGKILL -> its pidfd is readable, the floor of noticing a
          death (the OS tears down the kernel's address space and threads first, which
          takes milliseconds for a kernel, far less for a tiny process)."""
        from jupyter_client.connect import write_connection_file

        self.cold_count += 1
        d = self.scratch / f"c{self.cold_count}"
        d.mkdir(mode=0o700)
        conn_file = d / "k.json"
        write_connection_file(str(conn_file), ip=str(d / "s"), transport="ipc")
        conn = json.loads(conn_file.read_text())
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", str(conn_file)]
        t0 = time.perf_counter()
        # JPY_PARENT_PID: ipykernel exits within a second if this worker dies.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "JPY_PARENT_PID": str(os.getpid())},
        )
        self.cold.append(proc)
        client = RawClient(conn)
        try:
            client.kernel_info(ANCHOR_START_TIMEOUT_S)
            ready = time.perf_counter() - t0
            client.wait_subscribed(ANCHOR_START_TIMEOUT_S)
            time.sleep(0.1)
            first_exec = client.execute("1")
            second_exec = client.execute("1")
            time.sleep(0.05)
            pidfd = os.pidfd_open(proc.pid)
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                t_kill = time.perf_counter()
                os.kill(proc.pid, signal.SIGKILL)
                poller.poll(ANCHOR_START_TIMEOUT_S * 1000)
                kill_seen = time.perf_counter() - t_kill
            finally:
                os.close(pidfd)
        finally:
            client.close()
            _kill_group(proc)
            self.cold.remove(proc)
        return {
            "ready_s": ready,
            "kill_seen_s": kill_seen,
            "first_exec_s": first_exec,
            "second_exec_s": second_exec,
        }

    # ----------------------------------------------------------------- jupyter_client
    def op_jc_start(self, name: str, count: int = 1, autorestart: bool = True) -> list[int]:
        """Start ``count`` AsyncIOLoopKernelManagers (IPC transport, autorestart on, the
        restart limit lifted so repeated kills are not "presumed dead")."""
        return self.run(self._jc_start(name, count, autorestart))  # type: ignore[no-any-return]

    async def _jc_start(self, name: str, count: int, autorestart: bool) -> list[int]:
        from jupyter_client.ioloop.manager import AsyncIOLoopKernelManager
        from traitlets.config import Config

        cfg = Config()
        cfg.AsyncIOLoopKernelRestarter.restart_limit = 1_000_000
        group = self.groups.setdefault(name, [])
        kms = []
        for i in range(count):
            d = self.scratch / f"{name}{len(group) + i}"
            d.mkdir(mode=0o700)
            km = AsyncIOLoopKernelManager(
                config=cfg,
                kernel_name="python3",
                transport="ipc",
                ip=str(d / "s"),
                autorestart=autorestart,
            )
            km.connection_file = str(d / "k.json")
            kms.append(km)
            group.append(km)
        await asyncio.gather(*(km.start_kernel() for km in kms))
        await asyncio.gather(*(self._kernel_info(km, ANCHOR_START_TIMEOUT_S) for km in kms))
        return [int(getattr(km.provisioner, "pid", 0)) for km in kms]

    async def _kernel_info(self, km: Any, timeout: float) -> None:
        kc = km.client()
        kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        try:
            msg_id = kc.kernel_info()
            await kc._async_recv_reply(msg_id, timeout=timeout)
        finally:
            kc.stop_channels()

    def op_jc_kill_restart(self, name: str) -> dict[str, Any]:
        """SIGKILL every kernel of the group at once; wait until each was restarted by
        jupyter_client's restarter and its new process answers kernel_info. Times are
        seconds after the kill: ``detected`` (the restarter's "restart" callback),
        ``ready`` (kernel_info_reply from the new process)."""
        return self.run(self._jc_kill_restart(self.groups[name]))  # type: ignore[no-any-return]

    async def _jc_kill_restart(self, kms: list[Any]) -> dict[str, Any]:
        detected: dict[int, float] = {}
        callbacks = []
        for i, km in enumerate(kms):

            def on_restart(i: int = i) -> None:
                detected.setdefault(i, time.time())

            km.add_restart_callback(on_restart, "restart")
            callbacks.append(on_restart)
        old = [km.provisioner.pid for km in kms]
        # Let a restarter poll that fell due while the loop was paused run now, so it
        # cannot see the kill at once (an artefact in jupyter_client's favour).
        await asyncio.sleep(0.01)
        t_kill = time.time()
        for pid in old:
            os.kill(pid, signal.SIGKILL)

        async def wait_one(km: Any, old_pid: int) -> float:
            while True:
                prov = km.provisioner
                if prov is not None and prov.pid not in (None, old_pid) and km.ready.done():
                    break
                await asyncio.sleep(0.002)
            await self._kernel_info(km, ANCHOR_START_TIMEOUT_S)
            return time.time() - t_kill

        try:
            ready = await asyncio.wait_for(
                asyncio.gather(*(wait_one(km, pid) for km, pid in zip(kms, old, strict=True))),
                ANCHOR_START_TIMEOUT_S * 2,
            )
        finally:
            for km, cb in zip(kms, callbacks, strict=True):
                km.remove_restart_callback(cb, "restart")
        return {
            "detected_s": [detected[i] - t_kill for i in range(len(kms))],
            "ready_s": list(ready),
            "all_ready_s": max(ready),
        }

    def op_jc_hang(
        self, name: str, min_seconds: float, max_seconds: float, stop_file: str
    ) -> dict[str, Any]:
        """SIGSTOP the group's first kernel and let jupyter_client run: does its restarter
        notice? Watches for at least ``min_seconds``, then until ``stop_file`` exists (the
        benchmark is done with its own measurements) or ``max_seconds`` passed. The
        kernel is resumed (SIGCONT) afterwards."""
        return self.run(
            self._jc_hang(  # type: ignore[no-any-return]
                self.groups[name][0], min_seconds, max_seconds, Path(stop_file)
            )
        )

    async def _jc_hang(
        self, km: Any, min_seconds: float, max_seconds: float, stop_file: Path
    ) -> dict[str, Any]:
        detected: list[float] = []

        def on_restart() -> None:
            detected.append(time.time())

        km.add_restart_callback(on_restart, "restart")
        pid = km.provisioner.pid
        await asyncio.sleep(0.01)  # as in _jc_kill_restart: no overdue poll at t=0
        t_stop = time.time()
        os.kill(pid, signal.SIGSTOP)
        try:
            while not detected:
                waited = time.time() - t_stop
                if waited >= max_seconds or (waited >= min_seconds and _exists(stop_file)):
                    break
                await asyncio.sleep(0.05)
        finally:
            km.remove_restart_callback(on_restart, "restart")
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return {
            "detected": bool(detected),
            "detected_s": detected[0] - t_stop if detected else None,
            "waited_s": time.time() - t_stop,
        }

    # ----------------------------------------------------------------- clients
    def op_attach(self, name: str, connection_file: str) -> None:
        """Connect a raw client, a BlockingKernelClient and an AsyncKernelClient to an
        existing kernel (one of kernelsup's) and warm each up."""
        from jupyter_client.asynchronous.client import AsyncKernelClient
        from jupyter_client.blocking.client import BlockingKernelClient

        conn = json.loads(Path(connection_file).read_text())
        raw = RawClient(conn)
        raw.wait_subscribed(ANCHOR_START_TIMEOUT_S)
        bkc = BlockingKernelClient(connection_file=connection_file)
        bkc.load_connection_file()
        bkc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        akc = AsyncKernelClient(connection_file=connection_file)
        akc.load_connection_file()
        self.clients[name] = {"raw": raw, "blocking": bkc, "async": akc}
        bkc.wait_for_ready(timeout=ANCHOR_START_TIMEOUT_S)
        self.run(self._start_async(akc))
        for kind in ("raw", "blocking", "async"):
            self.op_exec(name, kind)

    async def _start_async(self, akc: Any) -> None:
        akc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        await akc.wait_for_ready(timeout=ANCHOR_START_TIMEOUT_S)

    def op_attach_group(self, name: str) -> None:
        """Attach async clients to every kernel of a jupyter_client group."""
        for i, km in enumerate(self.groups[name]):
            akc = km.client()  # an AsyncKernelClient for an async manager
            self.clients[f"{name}/{i}"] = {"async": akc}
            self.run(self._start_async(akc))

    def _drain(self, name: str, kind: str) -> None:
        """Drop what other clients' requests left on this client's sockets, untimed, so
        no client pays for parsing another's traffic on the shared kernel."""
        import zmq

        c = self.clients[name][kind]
        if kind == "raw":
            c.drain()
            return
        for channel in (c.shell_channel, c.iopub_channel):
            sock: zmq.Socket[bytes] = zmq.Socket.shadow(channel.socket.underlying)
            while sock.poll(0):
                sock.recv_multipart()

    def op_exec(self, name: str, kind: str, code: str = "1") -> float:
        """One execute round trip (reply and iopub idle) through ``kind``: raw, blocking
        (BlockingKernelClient.execute_interactive) or async (AsyncKernelClient's).
        Returns seconds, timed around the call only."""
        self._drain(name, kind)
        c = self.clients[name][kind]
        if kind == "raw":
            return float(c.execute(code))
        if kind == "blocking":
            t0 = time.perf_counter()
            reply = c.execute_interactive(code, timeout=30, output_hook=_quiet, allow_stdin=False)
            dt = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            reply = self.run(
                c.execute_interactive(code, timeout=30, output_hook=_quiet, allow_stdin=False)
            )
            dt = time.perf_counter() - t0
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{kind} execute failed: {reply['content']}")
        return dt

    def op_throughput(self, names: list[str], seconds: float, code: str = "1") -> dict[str, Any]:
        """One caller per client in ``names`` (async clients, one kernel each), executing
        back to back for ``seconds``. Returns the count and per-execute latencies."""
        return self.run(self._throughput(names, seconds, code))  # type: ignore[no-any-return]

    async def _throughput(self, names: list[str], seconds: float, code: str) -> dict[str, Any]:
        for name in names:
            self._drain(name, "async")
        latencies: list[float] = []
        t0 = time.perf_counter()
        end = t0 + seconds

        async def caller(akc: Any) -> None:
            while time.perf_counter() < end:
                s = time.perf_counter()
                reply = await akc.execute_interactive(
                    code, timeout=30, output_hook=_quiet, allow_stdin=False
                )
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(f"execute failed: {reply['content']}")
                latencies.append(time.perf_counter() - s)

        await asyncio.gather(*(caller(self.clients[n]["async"]) for n in names))
        elapsed = time.perf_counter() - t0
        return {"count": len(latencies), "elapsed_s": elapsed, "latencies_s": latencies}

    def op_pid(self) -> int:
        return os.getpid()

    def op_idle(self, seconds: float) -> None:
        """Let the managers' restarters run, idle, for ``seconds`` (the idle anchor)."""
        self.run(asyncio.sleep(seconds))

    # ----------------------------------------------------------------- clean-up
    def close(self) -> None:
        for clients in self.clients.values():
            for kind, c in clients.items():
                try:
                    c.close() if kind == "raw" else c.stop_channels()
                except Exception:  # best effort on the way out
                    pass
        self.clients.clear()
        for proc in self.cold:
            _kill_group(proc)
        kms = [km for group in self.groups.values() for km in group]
        self.groups.clear()
        if kms:

            async def stop_all() -> None:
                await asyncio.gather(
                    *(km.shutdown_kernel(now=True) for km in kms), return_exceptions=True
                )

            try:
                self.run(asyncio.wait_for(stop_all(), 30))
            finally:
                for km in kms:  # whatever shutdown_kernel could not reach
                    pid = getattr(km.provisioner, "pid", None) if km.provisioner else None
                    if pid:
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except (ProcessLookupError, PermissionError):
                            pass


def _exists(path: Path) -> bool:
    return path.exists()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _watch_parent(parent: int) -> None:
    """SIGTERM ourselves when the benchmark is gone, even in the middle of a request (EOF on
    stdin is only read between requests)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    """The worker's loop: a JSON request per stdin line, a JSON reply per line on the
    original stdout (anything else printed goes to stderr)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGTERM, _terminate)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    scratch = sys.argv[1]
    anchors = Anchors(scratch)
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                op: Callable[..., Any] = getattr(anchors, "op_" + req["op"])
                reply = {"ok": True, "result": op(**req.get("args", {}))}
            except Exception as exc:
                reply = {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            out.write(json.dumps(reply) + "\n")
    finally:
        anchors.close()
    return 0


# =========================================================================== trio side
class WorkerError(RuntimeError):
    pass


class Worker:
    """The trio side: start the worker, call its ops, always clean it up.

    ``async with Worker(scratch_dir) as w: await w.call("cold_start")``. One call at a
    time (a lock); ``call`` raises :class:`WorkerError` with the worker's traceback if the
    op failed. On exit (also on cancellation) the worker is told to stop: stdin is
    closed, or, if a call is still running (we were cancelled), SIGTERM interrupts it;
    either way it shuts its kernels down, bounded by ``WORKER_EXIT_TIMEOUT_S``, then
    SIGKILL.
    """

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._proc: Any = None
        self._buf = b""
        self._lock: Any = None
        self._stderr_path = scratch / "worker.log"
        self._busy = False

    async def __aenter__(self) -> Worker:
        import trio

        self._lock = trio.Lock()
        self._stderr = self._open_log()
        self._proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.worker", str(self.scratch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            start_new_session=True,
        )
        return self

    def _open_log(self) -> BinaryIO:
        self.scratch.mkdir(mode=0o700, exist_ok=True)
        return open(self._stderr_path, "wb")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import trio

        proc = self._proc
        with trio.CancelScope(shield=True):
            try:
                if self._busy and proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)  # interrupts the op; then clean-up
                if proc.stdin is not None:
                    await proc.stdin.aclose()
                with trio.move_on_after(WORKER_EXIT_TIMEOUT_S):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            finally:
                if proc.stdout is not None:
                    await proc.stdout.aclose()
                self._stderr.close()

    async def call(self, op: str, **args: Any) -> Any:
        async with self._lock:
            line = json.dumps({"op": op, "args": args}).encode() + b"\n"
            self._busy = True
            await self._proc.stdin.send_all(line)
            while b"\n" not in self._buf:
                chunk = await self._proc.stdout.receive_some(65536)
                if not chunk:
                    raise WorkerError(
                        f"the anchor worker exited during {op!r}: {self.stderr_tail()}"
                    )
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\n", 1)
            self._busy = False
        reply = json.loads(raw)
        if not reply["ok"]:
            raise WorkerError(
                f"anchor op {op!r} failed: {reply['error']}\n{reply.get('traceback', '')}"
            )
        return reply["result"]

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            return self._stderr_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""


if __name__ == "__main__":
    sys.exit(main())
