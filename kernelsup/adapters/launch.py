"""Turn a kernelspec into a running kernel process that cannot outlive the supervisor.

Theory of operation
-------------------
* Launched exactly as jupyter_client launches it, by reusing it: the kernelspec comes
  from its ``KernelSpecManager``, argv from ``KernelManager.format_kernel_cmd`` (``python``,
  ``python3`` and ``python3.X`` mean the interpreter running kernelsup; ``{connection_file}``,
  ``{resource_dir}``, ``{prefix}``), the kernelspec's ``env`` filled with ``$VAR`` from ours,
  ``PYTHONEXECUTABLE`` dropped for Python kernels, ``JPY_PARENT_PID`` set. A Python kernel's
  interpreter directory goes first on its PATH, so ``!pip`` installs where ``import``
  looks. Connection files are written by ``jupyter_client.connect.write_connection_file``
  into the private runtime directory (dir 0700, files 0600).
* IPC sockets: every endpoint fits in 31 bytes, as jupyter_client's default
  ``ipc://kernel-ipc-1`` does (some kernels copy it into a 32-byte buffer: xeus-python
  fails with "Invalid argument" past it). They live in the runtime directory when that is
  short enough, else in a short private directory of its own (``runtime.ipc_dir_for``).
* The kernel starts in a new session (``setsid``), so it and everything it starts form one
  process group, signalled and killed as one.
* Tether: the child sets ``PR_SET_PDEATHSIG = SIGKILL`` before exec. That signal fires
  when the *thread* that forked the child exits, and trio's worker threads exit after about
  10 s idle, so every fork happens on one long-lived spawner thread owned by this module
  (it lives as long as the process). The child also checks, after arming the signal, that
  its parent is still the supervisor, closing the race where the supervisor died between
  fork and prctl.
* Exit is watched with ``os.pidfd_open`` + ``trio.lowlevel.wait_readable``: the kernel's
  death is seen within about a millisecond and nothing polls. The zombie keeps the pid
  reserved until we reap it, so the group is killed *before* the leader is reaped.
* The kernel's stdout and stderr go to one pipe that a task drains into a bounded tail
  (kept for error messages); the kernel never inherits the supervisor's fd 0, 1 or 2.
* Another user (a pool's ``user``, kernelsup running as root): the plan carries a
  :class:`RunAs`. The connection file and IPC sockets go to a directory of that user's
  (``runtime.user_dir``), the environment gets its ``HOME``, ``USER`` and ``LOGNAME``, and
  the plan is refused with a reason naming the path when the user cannot execute the
  interpreter (or reach the kernelspec's directory, the working directory). In the child:
  join the containment unit (its files are root's), then ``setgroups``, ``setgid``,
  ``setuid``, and only then the parent-death signal: a change of credentials clears it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import pwd
import queue
import secrets
import shutil
import signal
import string
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import trio
from jupyter_client.connect import write_connection_file
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager

from kernelsup.adapters.containment import Limits, Unit
from kernelsup.adapters.io_errors import map_error
from kernelsup.adapters.runtime import (
    IPC_NAME_LEN,
    MAX_IPC_ENDPOINT,
    ipc_dir_for,
    open_user_dir,
    own_private_dir,
    private_dir,
    user_dir,
)
from kernelsup.adapters.tether import TETHER_ENV
from kernelsup.core.errors import KernelStartError

InterruptMode = Literal["signal", "message"]

# How much of a kernel's own stdout/stderr we keep for error messages.
STDERR_TAIL_BYTES = 8192


@attrs.frozen
class ConnectionInfo:
    transport: str
    ip: str
    shell_port: int
    iopub_port: int
    stdin_port: int
    control_port: int
    hb_port: int
    key: bytes
    signature_scheme: str

    @classmethod
    def from_written(
        cls, info: Mapping[str, Any], transport: str, ip: str, key: bytes
    ) -> ConnectionInfo:
        """From what ``write_connection_file`` returned (the ports it chose)."""
        return cls(
            transport=transport,
            ip=ip,
            key=key,
            shell_port=int(info["shell_port"]),
            iopub_port=int(info["iopub_port"]),
            stdin_port=int(info["stdin_port"]),
            control_port=int(info["control_port"]),
            hb_port=int(info["hb_port"]),
            signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
        )

    def endpoint(self, channel: str) -> str:
        port = getattr(self, f"{channel}_port")
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{port}"
        return f"tcp://{self.ip}:{port}"

    def socket_files(self) -> list[Path]:
        if self.transport != "ipc":
            return []
        return [
            Path(f"{self.ip}-{getattr(self, c + '_port')}")
            for c in ("shell", "iopub", "stdin", "control", "hb")
        ]


@attrs.frozen
class RunAs:
    """The user a kernel runs as (a pool's ``user``): who it is and where it lives."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        """The user called ``name``; raises KernelStartError if there is none, or if this
        process may not become it (only root may)."""
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise KernelStartError(f"no user named {name!r} here", code="start_failure") from None
        if os.geteuid() not in (0, pw.pw_uid):
            raise KernelStartError(
                f"kernels run as user {name!r} only when kernelsup runs as root "
                f"(it runs as uid {os.geteuid()})",
                code="start_failure",
            )
        groups = tuple(os.getgrouplist(name, pw.pw_gid))
        return cls(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)

    def become(self) -> None:
        """In the child before exec: this user's groups, then its gid, then its uid (for
        good: real, effective and saved)."""
        os.setgroups(list(self.groups))
        os.setgid(self.gid)
        os.setuid(self.uid)

    def denied(self, path: str, want: int) -> str | None:
        """Why this user cannot ``want`` (``os.R_OK | os.X_OK`` bits) ``path``, judged by
        mode bits along the path as given and as resolved; None if it can."""
        for target in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
            chain = [*reversed(Path(target).parents), Path(target)]
            for i, step in enumerate(chain):
                need = want if i == len(chain) - 1 else os.X_OK
                try:
                    st = os.stat(step)
                except OSError as exc:
                    return f"{step}: {exc.strerror}"
                if not self._may(st, need):
                    owner = _owner_name(st.st_uid)
                    what = "enter" if step != chain[-1] else _verbs(want)
                    return f"it may not {what} {step} (mode {stat_mode(st.st_mode)}, owner {owner})"
        return None

    def _may(self, st: os.stat_result, need: int) -> bool:
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.groups or st.st_gid == self.gid:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & need == need


def stat_mode(mode: int) -> str:
    return format(mode & 0o7777, "04o")


def _verbs(want: int) -> str:
    return " and ".join(v for bit, v in ((os.R_OK, "read"), (os.X_OK, "execute")) if want & bit)


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@attrs.frozen
class LaunchPlan:
    """Everything needed to exec one kernel, decided before any process exists."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    interrupt_mode: InterruptMode
    connection: ConnectionInfo
    connection_file: Path
    language: str
    run_as: RunAs | None = None  # the kernel runs as this user (a pool's `user`)


def plan_launch(
    kernel_id: str,
    kernel_name: str,
    runtime_dir: Path,
    *,
    transport: str = "ipc",
    extra_env: Mapping[str, str] | None = None,
    interrupt_mode: str = "",
    cwd: str | None = None,
    spec_manager: KernelSpecManager | None = None,
    user: str = "",
) -> LaunchPlan:
    """Resolve the kernelspec and write the connection file. Raises KernelStartError.
    With ``user``, the kernel is to run as that user (see :class:`RunAs`)."""
    run_as = RunAs.lookup(user) if user else None
    ksm = spec_manager or KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(kernel_name)
    except NoSuchKernel:
        known = ", ".join(sorted(ksm.find_kernel_specs())) or "none"
        raise KernelStartError(
            f"no kernelspec named {kernel_name!r} (known: {known})",
            code="start_failure",
            kernel=kernel_name,
        ) from None
    mode = interrupt_mode or spec.interrupt_mode or "signal"
    if mode not in ("signal", "message"):
        raise KernelStartError(f"unknown interrupt_mode {mode!r}", code="start_failure")
    runtime_dir = private_dir(runtime_dir)
    nonce = secrets.token_hex(4)
    conn_file = runtime_dir / f"kernel-{kernel_id}-{nonce}.json"
    own_dir = _user_dir(runtime_dir, run_as) if run_as is not None else None
    if transport == "ipc":
        ip = _ipc_base(runtime_dir) if own_dir is None else _free_base(own_dir)
    elif transport == "tcp":
        ip = "127.0.0.1"
    else:
        raise KernelStartError(f"unknown transport {transport!r}", code="start_failure")
    key = secrets.token_hex(32).encode()
    _, info = write_connection_file(
        str(conn_file), ip=ip, key=key, transport=transport, kernel_name=kernel_name
    )
    conn_file.chmod(0o600)
    if own_dir is not None and run_as is not None:
        conn_file = _hand_over(conn_file, own_dir, run_as)
    conn = ConnectionInfo.from_written(info, transport, ip, key)
    # argv exactly as jupyter_client formats it: python, python3 and python3.X mean the
    # interpreter running us; {connection_file}, {resource_dir}, {prefix} are filled in.
    km = KernelManager(
        kernel_name=kernel_name, kernel_spec_manager=ksm, connection_file=str(conn_file)
    )
    argv = tuple(os.path.expanduser(arg) for arg in km.format_kernel_cmd())
    env = _kernel_env(spec.env or {}, spec.language, argv, extra_env or {}, runtime_dir)
    if run_as is not None:
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
        env.pop("XDG_RUNTIME_DIR", None)  # ours, not the user's
        if cwd is None:  # ours may be closed to it: its home, else /
            cwd = run_as.home if os.path.isdir(run_as.home) else "/"
        try:
            _check_reach(run_as, argv, env, spec.resource_dir, cwd, own_dir)
        except KernelStartError:
            conn_file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # unless other kernels' files are in it
                own_dir.rmdir()  # type: ignore[union-attr]
            raise
    return LaunchPlan(
        argv=argv,
        env=env,
        cwd=cwd,
        interrupt_mode=mode,  # type: ignore[arg-type]
        connection=conn,
        connection_file=conn_file,
        language=spec.language,
        run_as=run_as,
    )


def _user_dir(runtime_dir: Path, run_as: RunAs) -> Path:
    try:
        return user_dir(runtime_dir, run_as.uid, run_as.gid)
    except OSError as exc:
        raise KernelStartError(
            f"cannot make a directory for the kernels of user {run_as.name!r}: {exc}",
            code="start_failure",
        ) from None


def _hand_over(conn_file: Path, own_dir: Path, run_as: RunAs) -> Path:
    """Move the connection file into the user's directory, as that user's (0600). Made
    there with O_EXCL | O_NOFOLLOW: nothing the user planted there is written through."""
    target = own_dir / conn_file.name
    data = conn_file.read_bytes()
    conn_file.unlink()
    try:
        dir_fd = open_user_dir(own_dir, run_as.uid)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            fd = os.open(conn_file.name, flags, 0o600, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise KernelStartError(
            f"cannot write a connection file for user {run_as.name!r}: {exc}",
            code="start_failure",
        ) from None
    try:
        os.fchown(fd, run_as.uid, run_as.gid)
        os.write(fd, data)
    finally:
        os.close(fd)
    return target


def _check_reach(
    run_as: RunAs,
    argv: tuple[str, ...],
    env: Mapping[str, str],
    resource_dir: str,
    cwd: str,
    own_dir: Path | None,
) -> None:
    """Refuse, naming the path, a kernel its user could not start: the interpreter it may
    not execute, the kernelspec directory its argv uses, the working directory, its own
    directory (under /tmp, which must let every user in)."""
    program = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=env.get("PATH"))
    checks = [(program or argv[0], os.X_OK, "execute the kernel's program")]
    if any(resource_dir and resource_dir in arg for arg in argv[1:]):
        checks.append((resource_dir, os.R_OK | os.X_OK, "read the kernelspec"))
    checks.append((cwd, os.X_OK, "enter the working directory"))
    if own_dir is not None:
        checks.append((str(own_dir), os.X_OK, "enter its directory"))
    for path, want, what in checks:
        reason = run_as.denied(path, want)
        if reason is not None:
            raise KernelStartError(
                f"user {run_as.name!r} cannot {what} {path}: {reason}; give it access "
                '(README: "Kernels as another user") or run the pool as another user',
                code="start_failure",
                path=path,
                user=run_as.name,
            )


def _ipc_base(runtime_dir: Path) -> str:
    """A fresh socket base name whose endpoints (``<base>-1`` .. ``-5``) fit in
    :data:`MAX_IPC_ENDPOINT` bytes, in :func:`ipc_dir_for`'s directory."""
    directory = ipc_dir_for(runtime_dir)
    if directory != runtime_dir:
        try:
            own_private_dir(directory)
        except OSError as exc:
            raise KernelStartError(
                f"cannot use {directory} for the IPC sockets of runtime directory "
                f'{runtime_dir}: {exc}; set transport = "tcp" or a runtime_dir of at most '
                f"{MAX_IPC_ENDPOINT - IPC_NAME_LEN - 10} bytes",
                code="start_failure",
            ) from None
    return _free_base(directory)


def _free_base(directory: Path) -> str:
    while True:  # a name none of whose five socket files exists yet
        base = str(directory / secrets.token_hex(IPC_NAME_LEN // 2))
        if not any(os.path.lexists(f"{base}-{n}") for n in range(1, 6)):
            return base


def _kernel_env(
    spec_env: Mapping[str, str],
    language: str,
    argv: tuple[str, ...],
    pool_env: Mapping[str, str],
    runtime_dir: Path,
) -> dict[str, str]:
    """The kernel's environment, layered as jupyter_client does it: ours, then the
    kernelspec's (``$VAR`` filled from ours), then the pool's ``env``."""
    env = dict(os.environ)
    env.update({k: string.Template(v).safe_substitute(env) for k, v in spec_env.items()})
    if language.lower().startswith("python"):
        env.pop("PYTHONEXECUTABLE", None)  # as jupyter_client: it would point elsewhere
        # `!pip` and `!python` are the kernel's own interpreter's, not whatever leads PATH.
        if argv and os.path.isabs(argv[0]):
            bindir = os.path.dirname(argv[0])
            path = env.get("PATH", "")
            if path.split(os.pathsep, 1)[0] != bindir:
                env["PATH"] = bindir + (os.pathsep + path if path else "")
    env.update(pool_env)
    env["JPY_PARENT_PID"] = str(os.getpid())
    env[TETHER_ENV] = str(runtime_dir)  # inherited by all the kernel starts: see tether.py
    return env


# --------------------------------------------------------------------------- spawning

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _tether(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(70)

    return preexec


class _SpawnerThread:
    """One thread that lives as long as the process and does every fork (see top)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="kernelsup-spawner", daemon=True
                )
                self._thread.start()
        self._jobs.put(job)

    def _loop(self) -> None:
        while True:
            self._jobs.get()()


_spawner = _SpawnerThread()


class KernelProcess:
    """A started kernel: its pid, its process group, its exit, its output tail (the exec
    implementation of ``adapters/started.py``'s ``StartedKernel``)."""

    launch = "exec"

    def __init__(self, popen: subprocess.Popen[bytes], plan: LaunchPlan, unit: Unit) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.unit = unit
        self.pgid = popen.pid  # start_new_session: the kernel leads its own group
        self.plan = plan
        self.returncode: int | None = None
        self.started_at = trio.current_time()
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        self._reaped = trio.Event()
        self._wait_lock = trio.Lock()
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0

    # -- exit --------------------------------------------------------------------
    async def wait(self) -> int:
        """Wait for the kernel to exit, kill what is left of its group, reap it."""
        async with self._wait_lock:
            if self.returncode is None:
                assert self._pidfd is not None
                await trio.lowlevel.wait_readable(self._pidfd)
                self._reap()
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        # Still a zombie here, so the group id cannot have been reused: kill the group
        # (background jobs, `!pip install`) before the leader's pid is released.
        self.signal_group(signal.SIGKILL)
        self.returncode = self.popen.wait()
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._reaped.set()

    def signal_group(self, sig: int) -> None:
        """Signal the whole process group; a group that is gone already is fine."""
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def kill_and_reap(self) -> int:
        """SIGKILL the kernel's whole containment unit and reap the leader: everything it
        started goes too, whatever group or session it moved to. Bounded: a SIGKILLed
        process always exits, and the unit's kill loop is bounded."""
        if self.unit.kind == "subreaper":
            await self.unit.kill_all()  # while the kernel still holds its tree
        self.signal_group(signal.SIGKILL)
        code = await self.wait()
        if self.unit.kind == "cgroup":
            await self.unit.kill_all()  # what left the group, now the leader is gone
        return code

    # -- output tail -------------------------------------------------------------
    async def drain_output(self, stream: trio.abc.ReceiveStream) -> None:
        """Read the kernel's stdout/stderr pipe until EOF, keeping only the tail."""
        async with stream:
            while chunk := await stream.receive_some(65536):
                self._tail.append(bytes(chunk))
                self._tail_len += len(chunk)
                while self._tail_len - len(self._tail[0]) >= STDERR_TAIL_BYTES:
                    self._tail_len -= len(self._tail.popleft())

    def output_tail(self, limit: int = 2000) -> str:
        data = b"".join(self._tail)[-limit:]
        return data.decode("utf-8", "replace").strip()

    def cleanup_files(self) -> None:
        """Remove the connection file and IPC socket files once the kernel is gone."""
        for path in [self.plan.connection_file, *self.plan.connection.socket_files()]:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self.unit.remove()


async def spawn(
    plan: LaunchPlan, unit: Unit | None = None
) -> tuple[KernelProcess, trio.abc.ReceiveStream]:
    """Start the kernel on the spawner thread, inside ``unit`` (by default a subreaper
    unit with no limits); returns it and its output pipe.

    Not cancellable half-way: if the caller is cancelled while the fork is in flight, the
    fresh process is killed and reaped before Cancelled propagates.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    box: dict[str, Any] = {}
    read_fd, write_fd = os.pipe()
    parent_pid = os.getpid()
    unit = unit or Unit("subreaper", {}, Limits())
    tether = _tether(parent_pid)

    def preexec() -> None:  # in the child, between fork and exec
        unit.join_in_child()  # as root: the unit's files are root's alone
        if plan.run_as is not None:
            plan.run_as.become()
        tether()  # after become(): a change of credentials clears the parent-death signal

    def job() -> None:
        try:
            box["popen"] = subprocess.Popen(
                plan.argv,
                env=dict(plan.env),
                cwd=plan.cwd,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec,
            )
        except BaseException as exc:  # delivered to the trio side below
            box["error"] = exc
        finally:
            os.close(write_fd)
            token.run_sync_soon(done.set)

    _spawner.submit(job)
    with trio.CancelScope(shield=True):
        await done.wait()
    if "error" in box:
        os.close(read_fd)
        raise map_error(box["error"], "spawn", plan.argv[0])
    unit.pid = box["popen"].pid
    try:
        proc = KernelProcess(box["popen"], plan, unit)
    except OSError as exc:  # out of descriptors for the pidfd: a start failure, not a crash
        popen = box["popen"]
        os.killpg(popen.pid, signal.SIGKILL)
        await trio.to_thread.run_sync(popen.wait)
        await unit.kill_all()
        os.close(read_fd)
        raise map_error(exc, "spawn", plan.argv[0]) from None
    return proc, trio.lowlevel.FdStream(read_fd)
