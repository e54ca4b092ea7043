"""The zygote: a Python process that has imported ipykernel and forks kernels on request.

Run as a script by path (``python .../zygote.py MODULE...``, see forkserver.py), so that
it imports nothing of kernelsup (whose imports are not fork-safe to inherit: trio, zmq
contexts) and works with any interpreter that has ipykernel. Standard library only,
besides ipykernel and the pool's ``preload`` modules.

Theory of operation
-------------------
* Start: import ipykernel's kernel app (and what a kernel imports while it starts), then
  each module named on the command line (the pool's ``preload``). No thread may be
  running and no zmq context may exist when it forks: both are checked after the imports,
  and a zygote that fails either says so and exits (the pool then execs its kernels).
* Control: fd 0 is one end of a ``SOCK_SEQPACKET`` socket pair; every message is one JSON
  object, with file descriptors passed alongside (``SCM_RIGHTS``). In: ``fork`` with the
  kernel's argv tail, cwd, env and containment unit, plus its output pipe's write end.
  Out: ``ready``; ``forked`` (the child's pid) with a pidfd for it, opened while the child
  is still ours and unreaped, so it can never name another process; ``fork_failed``;
  ``exit`` (pid and status, in ``subprocess`` convention: negative for a signal).
* Children are reaped on SIGCHLD (a wakeup fd, no threads). Each dead child's process
  group is SIGKILLed before the child is reaped, while its pid (the group's id) is still
  reserved, as the exec path does (launch.py).
* The child, right after fork and before any kernel code: arms ``PR_SET_PDEATHSIG`` (it
  dies with the zygote, which dies with the supervisor: the same tether as an exec'ed
  kernel, and the zygote is single-threaded, so the forking thread is the process), checks
  its parent is still the zygote, starts a new session, enters its containment unit (a
  cgroup: writes its own pid to ``cgroup.procs``; a subreaper unit: ``prctl``), takes the
  output pipe as stdout and stderr, closes every other descriptor, takes the kernel's
  cwd and environment, re-seeds ``random`` (and numpy's global generator if loaded), and
  runs ``IPKernelApp`` with the kernelspec's arguments. It never returns to the zygote's
  loop: it ends with ``os._exit``.
* EOF on the control socket means the supervisor is gone: the zygote exits, and its
  kernels with it (their parent-death signal).
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import random
import selectors
import signal
import socket
import sys
import threading
import traceback

# Largest control message (a fork request carries the kernel's environment).
MAX_MESSAGE = 1 << 20
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# Modules a kernel imports while it starts (found by listing a started kernel's
# sys.modules): importing them here moves that cost out of every fork.
KERNEL_MODULES = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.comm",
    "ipykernel.eventloops",
    "IPython.core.interactiveshell",
    "IPython.core.completer",
    "IPython.core.magics",
    "IPython.core.history",
    "IPython.core.formatters",
    "IPython.core.display",
    "IPython.core.oinspect",
    "IPython.core.debugger",
    "IPython.core.completerlib",
    "ipykernel.debugger",  # debugpy and pydevd: half of a kernel's own start-up imports
    "tornado.gen",
    "tornado.locks",
    "tornado.queues",
    "tornado.platform.asyncio",
    "IPython.extensions.storemagic",
    "faulthandler",
)
OPTIONAL_MODULES = ("jedi", "comm", "matplotlib_inline.backend_inline", "sqlite3")

_libc = ctypes.CDLL(None, use_errno=True)


def _send(ctl: socket.socket, message: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(ctl, [data], fds)
    else:
        ctl.send(data)


def _status(wait_status: int) -> int:
    """A wait status as ``subprocess`` reports it: the exit code, or minus the signal."""
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _preload(modules: list[str]) -> str:
    """Import what every kernel needs, then ``modules``; an empty string, or why the
    zygote cannot fork safely."""
    for name in OPTIONAL_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # an optional speed-up only
            continue
    for name in (*KERNEL_MODULES, *modules):
        try:
            importlib.import_module(name)
        except BaseException as exc:  # reported: the pool execs its kernels instead
            tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return f"module {name!r} failed to import: {tail}"
    try:
        _rehearse()
    except Exception as exc:  # a speed-up only: the kernel does it again for real
        print(f"zygote: rehearsal failed: {exc!r}", file=sys.stderr)
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return f"the imports started threads ({names}): forking would copy them half-done"
    zmq = sys.modules.get("zmq")
    if zmq is not None and getattr(zmq.Context, "_instance", None) is not None:
        return "the imports made a zmq context: a forked child cannot use it"
    return ""


def _rehearse() -> None:
    """What every kernel's start does first without threads or sockets: building the
    command-line parser of its app (traitlets, argparse, their regular expressions). Done
    once here, its caches are every child's."""
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp()  # type: ignore[no-untyped-call]
    app.parse_command_line(["-f", os.devnull])
    IPKernelApp.clear_instance()


def _child(zygote_pid: int, request: dict[str, object], out_fd: int) -> None:
    """In the forked child: become the kernel (never returns)."""
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != zygote_pid:
            os._exit(70)
        os.setsid()
        unit = request["unit"]
        assert isinstance(unit, dict)
        if unit["kind"] == "subreaper":
            _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        me = str(os.getpid()).encode()
        for procs in unit.get("procs", []):
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
        cwd = request.get("cwd")
        if isinstance(cwd, str) and cwd:
            os.chdir(cwd)
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update(env)
        random.seed()  # Python re-seeds at fork too; numpy does not
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()
        args = request["args"]
        assert isinstance(args, list)
        sys.argv = [sys.executable, *args]
        from ipykernel import kernelapp

        kernelapp.launch_new_instance()
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def main(preload: list[str]) -> None:
    del sys.path[0]  # this script's directory: not the kernel's business
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=0)
    problem = _preload(preload)
    if problem:
        _send(ctl, {"op": "failed", "message": problem})
        sys.exit(1)
    # Objects the imports made are never collected: out of the collector's sight, the
    # children's collections do not touch (and so copy) the pages they share with us.
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    children: set[int] = set()
    me = os.getpid()
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    _send(ctl, {"op": "ready", "pid": me, "modules": len(sys.modules)})
    while True:
        for key, _ in sel.select():
            if key.data == "wake":
                while True:
                    try:
                        if not os.read(wake_r, 4096):
                            break
                    except BlockingIOError:
                        break
                _reap(ctl, children)
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctl, MAX_MESSAGE, 4)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                os._exit(0)  # the supervisor is gone; our kernels follow (PDEATHSIG)
            try:
                request = json.loads(data)
                _fork(ctl, me, request, fds, children)
            finally:
                for fd in fds:
                    os.close(fd)
        _reap(ctl, children)


def _fork(
    ctl: socket.socket, me: int, request: dict[str, object], fds: list[int], children: set[int]
) -> None:
    if request.get("op") != "fork" or len(fds) != 1:
        _send(ctl, {"op": "fork_failed", "id": request.get("id"), "message": "bad request"})
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        _send(ctl, {"op": "fork_failed", "id": request.get("id"), "message": str(exc)})
        return
    if pid == 0:
        _child(me, request, fds[0])
    children.add(pid)
    pidfd = os.pidfd_open(pid)
    try:
        _send(ctl, {"op": "forked", "id": request.get("id"), "pid": pid}, [pidfd])
    finally:
        os.close(pidfd)


def _reap(ctl: socket.socket, children: set[int]) -> None:
    for pid in list(children):
        try:
            # Peek first: the pid (and so the group's id) stays reserved until reaped.
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                continue
        except ChildProcessError:
            children.discard(pid)
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _, wait_status = os.waitpid(pid, 0)
        children.discard(pid)
        _send(ctl, {"op": "exit", "pid": pid, "status": _status(wait_status)})


if __name__ == "__main__":
    main(sys.argv[1:])
