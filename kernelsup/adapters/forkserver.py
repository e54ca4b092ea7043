"""The fork server: Python kernels forked from a warm zygote instead of exec'ed cold.

Theory of operation
-------------------
A cold ipykernel spends most of its start importing (ipykernel, IPython, zmq, tornado,
and whatever the user's code imports first). A pool with ``launch = "fork"`` keeps one
*zygote* (zygote.py, a plain Python process run by path) that has done those imports,
and the pool's ``preload`` modules, once; each new kernel is a fork of it, sharing those
pages copy-on-write. :class:`ForkServer` is the pool's :class:`~.started.Launcher`:

* Which kernels are forked: a Python kernelspec whose argv is ``<python> -m
  ipykernel_launcher ...`` (:func:`forkable`), with the interpreter the zygote runs.
  Anything else is exec'ed (:data:`~.started.EXEC`), and so is every kernel while the
  zygote is not ready (starting too long, failed, dead, restarting).
* The zygote is started lazily by the first kernel start (from that plan: the pool's
  interpreter, environment and cwd, which are the same for every kernel of the pool),
  from launch.py's long-lived spawner thread with ``PR_SET_PDEATHSIG`` as a kernel is,
  and with the tether's marker in its environment (a forked kernel's
  ``/proc/<pid>/environ`` is the zygote's, so the reaper's sweep finds it). Starts
  waiting for a zygote that is starting wait at most :data:`ZYGOTE_WAIT_S`.
* Supervised: :meth:`ForkServer.run` restarts a zygote that died or failed, after a
  backoff that doubles from :data:`RESTART_MIN_S` to :data:`RESTART_MAX_S` (reset after
  a zygote stayed healthy :data:`HEALTHY_S`). The kernels a zygote forked die with it
  (their parent-death signal, as an exec'ed kernel dies with the supervisor); their pools
  restart them as after any kernel death, by exec until a new zygote is ready.
* Containment: the child enters its unit itself, before any kernel code runs (zygote.py
  writes its pid to the unit's ``cgroup.procs``, or makes itself a subreaper), as an
  exec'ed kernel does between fork and exec. The supervisor moving the pid in instead
  would cost a round trip per start and leave a window where kernel code runs outside.
  What the zygote imported is shared and charged to the zygote's cgroup, not the kernel's:
  ``memory_limit_mb`` bounds what each kernel adds.
* Exit: the zygote sends a pidfd for each child with its pid (opened before the child
  can be reaped, so it names that process and no other); the supervisor waits on it, so
  death is seen at once although the kernel is not its child. The zygote reaps the child
  (killing its process group first) and reports the exit status; if the zygote is gone,
  the kernel died of its parent-death signal and the status is SIGKILL.
"""

from __future__ import annotations

import array
import collections
import itertools
import json
import os
import select
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from kernelsup.adapters import zygote as _zygote_module
from kernelsup.adapters.containment import Unit
from kernelsup.adapters.launch import KernelProcess, LaunchPlan, _spawner, _tether
from kernelsup.adapters.started import EXEC, StartedKernel
from kernelsup.core.errors import KernelStartError

ZYGOTE_FILE = Path(_zygote_module.__file__)
# A start waits this long for a zygote that is starting (its imports: about as long as
# one cold kernel start) before it execs instead.
ZYGOTE_WAIT_S = 20.0
# The zygote must be ready within this (imports of a large preload list included).
ZYGOTE_START_TIMEOUT_S = 120.0
# A fork request is answered within microseconds; one not answered in this long means
# the zygote is stuck, and it is replaced.
FORK_REPLY_TIMEOUT_S = 10.0
# After a forked kernel's death is seen, how long to wait for the zygote's report of its
# exit status (it reaps on SIGCHLD at once).
EXIT_REPORT_S = 2.0
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
HEALTHY_S = 60.0
# Largest control message we accept from a zygote.
MAX_MESSAGE = 65536

# A forked kernel keeps its IPython history in memory: the history database every
# IPython shares (~/.ipython/.../history.sqlite) would let any kernel read the code every
# other kernel ran (%history -g), and writing its session row there costs each start a
# disk sync (about 50 ms of a 90 ms IPKernelApp.initialize, measured in a forked child).
FORKED_KERNEL_ARGS = ("--HistoryManager.hist_file=:memory:",)

State = Literal["idle", "starting", "ready", "down"]


def forkable(plan: LaunchPlan) -> bool:
    """Whether the zygote can become this kernel: ipykernel, started the standard way, as
    the supervisor's own user (a pool's ``user`` is exec'ed: launch.spawn drops to it)."""
    return (
        plan.run_as is None
        and plan.language.lower().startswith("python")
        and len(plan.argv) >= 3
        and os.path.isabs(plan.argv[0])
        and tuple(plan.argv[1:3]) == ("-m", "ipykernel_launcher")
    )


class ZygoteGone(Exception):
    """The zygote died, failed or stopped answering: exec instead."""


@attrs.define(eq=False)
class _Exit:
    """A forked kernel's exit, as its zygote reports it."""

    event: trio.Event = attrs.field(factory=trio.Event)
    status: int | None = None  # None: the zygote died before it could say


class ForkedKernel(KernelProcess):
    """A kernel forked by the zygote (``StartedKernel``). The group, unit, output tail and
    file clean-up are the exec path's; the exit is watched on a pidfd from the zygote,
    and the status is the zygote's report."""

    launch = "fork"

    def __init__(self, pid: int, pidfd: int, plan: LaunchPlan, unit: Unit, exit: _Exit) -> None:
        self.pid = pid
        self.pgid = pid  # the child called setsid
        self.unit = unit
        self.plan = plan
        self.returncode: int | None = None
        self.started_at = trio.current_time()
        self._pidfd: int | None = pidfd
        self._exit = exit
        self._reaped = trio.Event()
        self._wait_lock = trio.Lock()
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0

    async def wait(self) -> int:
        async with self._wait_lock:
            if self.returncode is None:
                assert self._pidfd is not None
                await trio.lowlevel.wait_readable(self._pidfd)
                with trio.move_on_after(EXIT_REPORT_S):
                    await self._exit.event.wait()
                status = self._exit.status
                self.returncode = status if status is not None else -signal.SIGKILL
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = None
                self._reaped.set()
        assert self.returncode is not None
        return self.returncode

    def signal_group(self, sig: int) -> None:
        # Only while the leader lives: once it is dead the zygote kills the group before
        # reaping it, and after that the group's id may name someone else's group.
        if self._pidfd is None or _readable(self._pidfd):
            return
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Zygote:
    """One running zygote process and its control socket."""

    def __init__(self, popen: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.popen = popen
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.pidfd = os.pidfd_open(popen.pid)
        self.ready = trio.Event()
        self.failure = ""
        self.alive = True
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list[tuple[dict[str, Any], list[int]]]]] = {}
        self.exits: dict[int, _Exit] = {}

    async def read(self) -> None:
        """Route the zygote's messages until it closes its end (dies or exits)."""
        try:
            while True:
                data, ancdata, _flags, _addr = await self.sock.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(4 * array.array("i").itemsize)
                )
                fds = _fds(ancdata)
                if not data:
                    for fd in fds:
                        os.close(fd)
                    return
                try:
                    message = json.loads(data)
                except ValueError:
                    message = {}
                self._route(message if isinstance(message, dict) else {}, fds)
        except OSError:
            return
        finally:
            self.alive = False
            self.ready.set()  # a zygote that ended before it was ready is not
            for event, _ in self._pending.values():
                event.set()  # with no reply: the zygote is gone
            for exit in self.exits.values():
                exit.event.set()

    def _route(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        if op == "ready":
            self.ready.set()
        elif op == "failed":
            self.failure = str(message.get("message", ""))[:2000]
            self.ready.set()
        elif op == "exit":
            exit = self.exits.pop(message.get("pid"), None)  # type: ignore[arg-type]
            if exit is not None and isinstance(message.get("status"), int):
                exit.status = message["status"]
                exit.event.set()
        elif op in ("forked", "fork_failed") and message.get("id") in self._pending:
            if op == "forked" and isinstance(message.get("pid"), int) and len(fds) == 1:
                self.exits[message["pid"]] = _Exit()
            event, box = self._pending[message["id"]]
            box.append((message, fds))
            event.set()
            return
        for fd in fds:
            os.close(fd)

    async def fork(
        self, plan: LaunchPlan, unit: Unit
    ) -> tuple[StartedKernel, trio.abc.ReceiveStream]:
        """Ask the zygote for one kernel. Raises ZygoteGone (nothing was started) or
        KernelStartError. Not cancellable half-way, as ``launch.spawn``."""
        if not self.alive:
            raise ZygoteGone("the zygote is gone")
        request_id = next(self._ids)
        request = {
            "op": "fork",
            "id": request_id,
            "args": [*plan.argv[3:], *FORKED_KERNEL_ARGS],
            "cwd": plan.cwd,
            "env": dict(plan.env),
            "unit": {
                "kind": unit.kind,
                "procs": [str(d / "cgroup.procs") for d in unit.dirs.values()],
            },
        }
        event: trio.Event = trio.Event()
        box: list[tuple[dict[str, Any], list[int]]] = []
        self._pending[request_id] = (event, box)
        read_fd, write_fd = os.pipe()
        try:
            with trio.CancelScope(shield=True):
                try:
                    await self.sock.sendmsg(
                        [json.dumps(request).encode()],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_fd]))],
                    )
                except OSError as exc:
                    os.close(read_fd)
                    raise ZygoteGone(f"cannot reach the zygote: {exc}") from None
                finally:
                    os.close(write_fd)
                with trio.move_on_after(FORK_REPLY_TIMEOUT_S):
                    await event.wait()
        finally:
            self._pending.pop(request_id, None)
        if not box:
            os.close(read_fd)
            if self.alive:  # stuck: replace it
                self.kill()
            raise ZygoteGone("the zygote did not answer")
        message, fds = box[0]
        if message["op"] != "forked":
            os.close(read_fd)
            raise KernelStartError(
                f"the zygote could not fork a kernel: {message.get('message', '')}",
                code="start_failure",
            )
        pid, pidfd = int(message["pid"]), fds[0]
        unit.pid = pid
        proc = ForkedKernel(pid, pidfd, plan, unit, self.exits[pid])
        return proc, trio.lowlevel.FdStream(read_fd)

    def kill(self) -> None:
        try:
            self.popen.kill()
        except ProcessLookupError:
            pass

    async def close(self) -> None:
        """Stop the zygote (its kernels die with it) and reap it. Bounded."""
        self.sock.close()
        self.kill()
        await trio.lowlevel.wait_readable(self.pidfd)
        self.popen.wait()
        trio.lowlevel.notify_closing(self.pidfd)
        os.close(self.pidfd)


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


class ForkServer:
    """The pool's launcher when ``launch = "fork"``: forks Python kernels from a supervised
    zygote, execs everything else and whenever the zygote is not ready."""

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        self.preload = preload
        self.state: State = "idle"
        self.starts = 0  # zygotes started
        self.forked = 0  # kernels forked
        self.fallbacks = 0  # Python kernels exec'ed because the zygote was not ready
        self.last_error = ""
        self._template: LaunchPlan | None = None
        self._have_template = trio.Event()
        self._changed = trio.Event()
        self._zygote: _Zygote | None = None

    @property
    def zygote_pid(self) -> int | None:
        z = self._zygote
        return z.popen.pid if z is not None and z.alive else None

    async def wait_ready(self) -> None:
        """Wait until a zygote is ready to fork (it starts with the first kernel start).
        Cancellable; unbounded: bound it yourself."""
        while self.state != "ready":
            await self._changed.wait()

    def _set(self, state: State) -> None:
        self.state = state
        self._changed.set()
        self._changed = trio.Event()

    # -- Launcher ---------------------------------------------------------------------
    async def start(
        self, plan: LaunchPlan, unit: Unit
    ) -> tuple[StartedKernel, trio.abc.ReceiveStream]:
        if not forkable(plan):
            return await EXEC.start(plan, unit)
        if self._template is None:
            self._template = plan
            self._have_template.set()
        with trio.move_on_after(ZYGOTE_WAIT_S):
            while self.state in ("idle", "starting"):
                await self._changed.wait()
        z = self._zygote
        if self.state == "ready" and z is not None and plan.argv[0] == self._template.argv[0]:
            try:
                proc, output = await z.fork(plan, unit)
            except ZygoteGone as exc:
                self.last_error = str(exc)
            else:
                self.forked += 1
                return proc, output
        self.fallbacks += 1
        return await EXEC.start(plan, unit)

    # -- supervision ------------------------------------------------------------------
    async def run(self) -> None:
        """Keep a zygote running (from the first forkable kernel start on) until
        cancelled; then stop it (its kernels, stopped by their pool first, go with it)."""
        await self._have_template.wait()
        assert self._template is not None
        delay = RESTART_MIN_S
        while True:
            began = trio.current_time()
            try:
                await self._serve(self._template)
            except ZygoteGone as exc:
                self.last_error = str(exc)
            if trio.current_time() - began >= HEALTHY_S:
                delay = RESTART_MIN_S
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    async def _serve(self, template: LaunchPlan) -> None:
        """Start one zygote and serve with it until it dies; raises ZygoteGone saying why."""
        self._set("starting")
        z = await _start_zygote(template, self.preload)
        self.starts += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(z.read)
                with trio.move_on_after(ZYGOTE_START_TIMEOUT_S):
                    await z.ready.wait()
                if z.alive and z.ready.is_set() and not z.failure:
                    self._zygote = z
                    self._set("ready")
                    await trio.lowlevel.wait_readable(z.pidfd)
                    problem = f"the zygote (pid {z.popen.pid}) died"
                elif z.failure:
                    problem = f"the zygote failed: {z.failure}"
                elif z.alive:
                    problem = f"the zygote was not ready within {ZYGOTE_START_TIMEOUT_S:g} s"
                else:
                    problem = "the zygote exited before it was ready"
                nursery.cancel_scope.cancel()
        finally:
            self._zygote = None
            self._set("down")
            with trio.CancelScope(shield=True):
                await z.close()
        raise ZygoteGone(problem)


async def _start_zygote(template: LaunchPlan, preload: tuple[str, ...]) -> _Zygote:
    """Start a zygote on the spawner thread (tethered like a kernel)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    box: dict[str, Any] = {}
    tether = _tether(os.getpid())

    def job() -> None:
        try:
            box["popen"] = subprocess.Popen(
                [template.argv[0], str(ZYGOTE_FILE), *preload],
                env=dict(template.env),
                cwd=template.cwd,
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                preexec_fn=tether,
            )
        except BaseException as exc:  # delivered to the trio side below
            box["error"] = exc
        finally:
            theirs.close()
            token.run_sync_soon(done.set)

    _spawner.submit(job)
    with trio.CancelScope(shield=True):
        await done.wait()
    if "error" in box:
        ours.close()
        raise ZygoteGone(f"cannot start the zygote: {box['error']}")
    ours.setblocking(False)
    try:
        return _Zygote(box["popen"], ours)
    except OSError as exc:
        box["popen"].kill()
        box["popen"].wait()
        ours.close()
        raise ZygoteGone(f"cannot watch the zygote: {exc}") from None


__all__ = ["ForkServer", "ForkedKernel", "ZygoteGone", "forkable"]
