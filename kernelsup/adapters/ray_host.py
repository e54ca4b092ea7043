"""Kernels on the nodes of a Ray cluster: one host actor per kernel, the same supervision.

Theory of operation
-------------------
A pool with ``placement = "ray"`` gets a :class:`RayLauncher` (the seam of
``adapters/started.py``). To start a kernel it creates one **host actor**
(:class:`KernelHost`) asking for the pool's ``ray_resources``; Ray places it on a node. The
host launches the kernel there with kernelsup's own code (``launch.plan_launch`` and
``launch.spawn``, a containment ``Unit``, a tether reaper of its own), over TCP bound to
its node's address and signed with the key the supervisor chose, and returns the ports. From
then on the supervisor talks ZeroMQ to the kernel directly: heartbeat, iopub and execute
are the local kernel's, unchanged. What goes through Ray is only the process's life:

* **exit**: a ``wait_exit`` call pending on the host for the kernel's whole life; it
  returns the exit status (and the output's tail) within milliseconds of the exit. If the
  host actor itself dies, the call fails with Ray's ``ActorDiedError``: the kernel died with
  it (parent-death signal, the host's reaper sweeps its unit), and the exit cause is
  ``node_lost`` when Ray says the node died, else ``host_lost``;
* **signal, kill, resource use**: calls on the host (``signal``, ``kill``, ``renew``);
* **lease (fencing)**: the supervisor renews each host's lease every ``lease_interval``
  (the reply carries the kernel's memory use, for the memory watch). A host that hears
  nothing for ``lease_timeout`` kills its kernel: a supervisor cut off by a partition, or
  gone, leaves nothing running. The host is an ordinary (not detached) actor, so Ray also
  kills it when its owner, the supervisor's driver, dies;
* **capacity**: a host not placed on a node within ``placement_timeout`` (no node has the
  resources free) is killed and the start fails with code ``no_capacity``.

Ray's own restarts are off (``max_restarts=0``, ``max_task_retries=0``): kernelsup alone
decides restarts, backoff and intensity, and a call runs at most once, like a request.

Ray is threads and asyncio; kernelsup is trio. The supervisor awaits a call's result through
its ``ObjectRef.future()`` (a done-callback wakes the trio task: no thread per call, no
polling). The host is a threaded actor that runs a trio loop of its own in one thread, where
the kernel's process, pipe and unit live; its methods hand work to that loop.

``ray`` is imported only here, and only when a host is created or a cluster joined, so
nothing else needs it installed (``pip install 'kernelsup[ray]'``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from kernelsup.adapters.containment import Limits, Unit, Usage
from kernelsup.adapters.launch import ConnectionInfo, KernelProcess, LaunchPlan, plan_launch, spawn
from kernelsup.adapters.runtime import private_dir
from kernelsup.adapters.started import StartedKernel
from kernelsup.adapters.tether import TETHER_ENV, Tether
from kernelsup.core.config import PoolConfig, RayConfig
from kernelsup.core.errors import KernelStartError
from kernelsup.core.results import ExitCause

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["KernelHost", "RayLauncher", "RemoteKernel", "RemoteUnit", "connect"]

T = TypeVar("T")

# Calls a host serves at once (renew, signal, kill, remember, and room for a late one),
# each a thread in the host's process; wait_exit has its own group (see _host_class).
HOST_CONCURRENCY = 4
EXIT_GROUP = "exit"
# How long the supervisor gives the host's own kill (kill the unit, reap: milliseconds)
# before it kills the host actor instead, and then how long it waits for Ray to report
# that actor gone (a hung node answers neither: its lease and Ray's node health check
# finish the job; a tuned health check declares a node dead in about 3 s).
HOST_KILL_S = 2.0
HOST_GONE_S = 4.0
# A host's runtime directory older than this with its lock free is a gone host's.
STALE_AFTER_S = 60.0
# How much of the kernel's output the host sends back with each renewal and at exit.
TAIL_CHARS = 2000


# --------------------------------------------------------------------------- node side


class KernelHost:
    """The host actor: one kernel on this node (created by :class:`RayLauncher` through
    ``ray.remote``; every method runs in one of the actor's threads)."""

    def __init__(self, kernel_id: str, lease_timeout: float) -> None:
        self.kernel_id = kernel_id
        self.lease_timeout = lease_timeout
        base = private_dir(Path("/tmp") / f"kernelsup-{os.getuid()}")
        _remove_stale_host_dirs(base)
        self.runtime_dir = private_dir(base / f"ray-{os.getpid()}-{secrets.token_hex(4)}")
        # A reaper of this host's own: if the host process dies (SIGKILL, its node's raylet
        # gone), everything its kernel started is swept, cgroup included.
        self.tether = Tether(self.runtime_dir)
        self.tether.acquire()
        self.proc: KernelProcess | None = None
        self.exit: dict[str, Any] | None = None
        self.exited = threading.Event()
        self.fenced = False
        self._renewed = time.monotonic()
        self._token: trio.lowlevel.TrioToken | None = None
        ready = threading.Event()
        self._loop = threading.Thread(
            target=trio.run, args=(self._main, ready), name="kernelsup-host", daemon=True
        )
        self._loop.start()
        ready.wait()

    # -- the host's trio loop ------------------------------------------------------------
    async def _main(self, ready: threading.Event) -> None:
        # Ray's threads block SIGINT; a thread inherits its creator's mask, and the kernel
        # the spawner thread (made from this one) forks would keep it blocked across exec,
        # so an interrupt would never reach it.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            ready.set()
            await trio.sleep_forever()  # as long as the host: its calls run here

    async def _fence(self) -> None:
        """Kill the kernel once the supervisor stopped renewing the lease (which starts
        when the kernel does)."""
        while True:
            left = self._renewed + self.lease_timeout - time.monotonic()
            if left <= 0:
                break
            await trio.sleep(left)
        self.fenced = True
        if self.proc is not None and self.proc.returncode is None:
            await self.proc.kill_and_reap()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    # -- calls from the supervisor -------------------------------------------------------
    def where(self) -> dict[str, Any]:
        """This host's node: its Ray node id and address (returns once placed)."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "ip": _node_ip(),
            "host_pid": os.getpid(),
        }

    def start(self, kernel_name: str, key: bytes, options: Mapping[str, Any]) -> dict[str, Any]:
        """Launch the kernel on this node, over TCP on the node's address, signed with
        ``key``; return its connection, pid and containment kind."""
        return self._run(self._start, kernel_name, key, options)  # type: ignore[no-any-return]

    async def _start(
        self, kernel_name: str, key: bytes, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        from jupyter_client.connect import write_connection_file

        ip = _node_ip()
        plan = plan_launch(
            self.kernel_id,
            kernel_name,
            self.runtime_dir,
            transport="tcp",
            extra_env=options.get("env") or {},
            interrupt_mode=options.get("interrupt_mode", ""),
            cwd=options.get("cwd"),
        )
        # The kernel binds the node's cluster address (ports free there) and signs with the
        # supervisor's key, which never leaves the supervisor and this host otherwise.
        _, info = write_connection_file(
            str(plan.connection_file), ip=ip, key=key, transport="tcp", kernel_name=kernel_name
        )
        plan.connection_file.chmod(0o600)
        conn = ConnectionInfo.from_written(info, "tcp", ip, key)
        plan = attrs.evolve(plan, connection=conn)
        limits = Limits(
            options.get("memory_limit_mb", 0),
            options.get("pids_limit", 0),
            options.get("cpu_limit", 0.0),
        )
        try:
            unit = Unit.create(
                options.get("containment", "auto"),
                self.runtime_dir,
                plan.connection_file.stem,
                limits,
            )
        except OSError as exc:
            plan.connection_file.unlink(missing_ok=True)
            raise KernelStartError(
                f"kernel {self.kernel_id} cannot be contained on node {ip}: {exc}",
                code="start_failure",
            ) from None
        self.proc, output = await spawn(plan, unit)
        self._renewed = time.monotonic()
        self._nursery.start_soon(self._watch, output)
        self._nursery.start_soon(self._fence)
        return {
            "connection": attrs.asdict(conn),
            "pid": self.proc.pid,
            "containment": unit.kind,
        }

    async def _watch(self, output: trio.abc.ReceiveStream) -> None:
        assert self.proc is not None
        proc = self.proc
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proc.drain_output, output)
            code = await proc.wait()
            oom = proc.unit.oom_kills()
            await proc.kill_and_reap()  # what it started, whatever group it moved to
            nursery.cancel_scope.cancel()
        proc.cleanup_files()
        self.exit = {
            "returncode": code,
            "tail": proc.output_tail(TAIL_CHARS),
            "oom_kills": oom,
            "fenced": self.fenced,
        }
        self.exited.set()

    def wait_exit(self) -> dict[str, Any]:
        """Block until the kernel has exited and been reaped; its status and last words."""
        self.exited.wait()
        assert self.exit is not None
        return self.exit

    def renew(self) -> dict[str, Any]:
        """Extend the lease by ``lease_timeout``; the kernel's resource use and output tail."""
        if not self.fenced:
            self._renewed = time.monotonic()
        proc = self.proc
        if proc is None:
            return {"usage": None, "oom_kills": 0, "tail": "", "fenced": self.fenced}
        return {
            "usage": attrs.asdict(proc.unit.usage()),
            "oom_kills": proc.unit.oom_kills(),
            "tail": proc.output_tail(TAIL_CHARS),
            "fenced": self.fenced,
        }

    def signal(self, sig: int) -> None:
        """Signal the kernel's process group (SIGINT for an interrupt, the shutdown ladder)."""
        if self.proc is not None:
            self.proc.signal_group(sig)

    def remember(self) -> None:
        """Note the kernel's descendants now (a subreaper unit; see containment.py)."""
        if self.proc is not None:
            self.proc.unit.remember()

    def kill(self) -> int | None:
        """Kill the kernel's whole unit and reap it; its exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self._run(self.proc.kill_and_reap)
        self.exited.wait()
        return self.proc.returncode

    def pids(self) -> list[int]:
        """Every process of this host's kernel unit, and the host's reaper (for tests)."""
        found = list(self.proc.unit.members()) if self.proc is not None else []
        reaper = self.tether._reaper
        return found + ([reaper.pid] if reaper is not None else [])


def _remove_stale_host_dirs(base: Path) -> None:
    """Remove the runtime directories of hosts that are gone (their lock is free; their
    reaper swept their processes), so a node keeps one directory per live host only. A
    directory younger than ``STALE_AFTER_S`` is left alone: its host may be taking its lock."""
    now = time.time()
    for directory in base.glob("ray-*"):
        try:
            if now - directory.stat().st_mtime < STALE_AFTER_S:
                continue
        except OSError:
            continue
        try:
            fd = os.open(directory / "supervisor.lock", os.O_RDWR)
        except OSError:
            continue  # being made, or not a host's
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live host holds it
        finally:
            os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)


def _node_ip() -> str:
    """The address this node has in the cluster (what its raylet advertises)."""
    import ray

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- supervisor side

_connected_lock = threading.Lock()
_connected: tuple[str, str] | None = None


def connect(address: str, namespace: str) -> None:
    """Join the cluster as a driver (once per process; blocking: call it in a thread).
    Raises :class:`KernelStartError` with code ``ray_unavailable`` when that fails."""
    global _connected
    import ray

    with _connected_lock:
        if _connected == (address, namespace) and ray.is_initialized():
            return
        try:
            ray.init(
                address=address,
                namespace=namespace,
                log_to_driver=False,
                configure_logging=False,
                include_dashboard=False,
            )
        except Exception as exc:  # ConnectionError, RuntimeError, ...: all say "cannot join"
            raise KernelStartError(
                f"cannot join the Ray cluster at {address!r}: {type(exc).__name__}: {exc}",
                code="ray_unavailable",
            ) from None
        _connected = (address, namespace)


async def _result(ref: Any) -> Any:
    """Await a Ray call's result from trio (cancellable; raises what the call raised)."""
    future: Future[Any] = ref.future()
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass  # the supervisor's loop is gone: nobody waits any more

    future.add_done_callback(wake)
    await done.wait()
    return future.result()


def _host_class(pool: PoolConfig) -> Any:
    import ray

    resources = dict(pool.ray_resources)
    options: dict[str, Any] = {
        "num_cpus": resources.pop("num_cpus", 0),
        "max_restarts": 0,
        "max_task_retries": 0,
        "max_concurrency": HOST_CONCURRENCY,
        # Ray runs one caller's calls in the order sent, each group on its own: wait_exit,
        # held for the kernel's whole life, has a group of its own so nothing waits on it.
        "concurrency_groups": {EXIT_GROUP: 1},
    }
    if "num_gpus" in resources:
        options["num_gpus"] = resources.pop("num_gpus")
    if "memory" in resources:
        options["memory"] = resources.pop("memory")
    if resources:
        options["resources"] = resources
    return ray.remote(**options)(KernelHost)


def _lost(exc: BaseException) -> ExitCause:
    """The exit cause of a kernel whose host actor died: ``node_lost`` when Ray says the
    node died (or cannot be reached), else ``host_lost``; the detail is Ray's reason."""
    reason = _ray_reason(str(exc)) or type(exc).__name__
    lowered = reason.lower()
    if "its node has died" in lowered or "unavailable" in type(exc).__name__.lower():
        return ExitCause("node_lost", signal=signal.SIGKILL, detail=reason)
    return ExitCause("host_lost", signal=signal.SIGKILL, detail=reason)


# Ray's error text: the lines worth keeping end before its generic advice.
_RAY_BOILERPLATE = (
    "The actor died unexpectedly before finishing this task.",
    " Some common causes",
)
REASON_CHARS = 300


def _ray_reason(text: str) -> str:
    """Ray's own sentence about why an actor or call failed, without the id lines
    (``class_name: ...``, ``actor_id: ...``) and the generic advice."""
    lines = [ln.strip() for ln in text.splitlines()]
    kept = " ".join(
        ln for ln in lines if ln and not (ln.split(":", 1)[0].isidentifier() and ": " in ln[:20])
    )
    kept = kept.replace(_RAY_BOILERPLATE[0], "").strip()
    kept = kept.split(_RAY_BOILERPLATE[1], 1)[0].strip()
    return kept[:REASON_CHARS]


class RemoteUnit(Unit):
    """The containment unit of a kernel on another node, as the supervisor sees it: its
    kind (as the node made it) and the figures (memory, CPU, OOM kills) the last lease
    renewal brought back, as the host measured them there."""

    def __init__(self, kind: str, host: Any, limits: Limits) -> None:
        super().__init__("cgroup" if kind == "cgroup" else "subreaper", {}, limits)
        self._host = host
        self.last = Usage(0, 0.0, None)  # as the host measured it at the last renewal
        self.ooms = 0

    def members(self) -> list[int]:
        return []  # on another machine: its pids mean nothing here

    def memory_bytes(self) -> int:
        return self.last.memory_bytes

    def usage(self) -> Usage:
        return self.last

    def oom_kills(self) -> int:
        return self.ooms

    def remember(self) -> None:
        self._host.remember.remote()

    async def kill_all(self) -> list[int]:
        return []  # the host kills its unit (RemoteKernel.kill_and_reap)

    def remove(self) -> None:
        pass  # the host removes its own


class RemoteKernel:
    """A kernel started by a host actor on a node (``adapters/started.py``'s
    ``StartedKernel``). ``pid`` is the kernel's pid on that node; ``node`` its address."""

    launch = "ray"

    def __init__(
        self,
        host: Any,
        where: Mapping[str, Any],
        started: Mapping[str, Any],
        plan: LaunchPlan,
        limits: Limits,
        lease_interval: float,
    ) -> None:
        self.host = host
        self.node = str(where["ip"])
        self.node_id = str(where["node_id"])
        self.pid = int(started["pid"])
        self.plan = plan
        self._unit = RemoteUnit(started["containment"], host, limits)
        self.unit: Unit = self._unit
        self.returncode: int | None = None
        self.lost: ExitCause | None = None  # the host or its node died (see kernel.py)
        self.lease_interval = lease_interval
        self._exit_ref = host.wait_exit.options(concurrency_group=EXIT_GROUP).remote()
        self._killed_host = False
        self._tail = ""
        self._wait_lock = trio.Lock()
        self._gone = trio.Event()

    async def wait(self) -> int:
        async with self._wait_lock:
            if self.returncode is None:
                try:
                    exit_ = await _result(self._exit_ref)
                except Exception as exc:  # RayActorError and kin: the host is gone
                    cause = _lost(exc)
                    if cause.kind == "node_lost" or not self._killed_host:
                        self.lost = cause  # (a host we killed ourselves is no news)
                    self.returncode = -signal.SIGKILL
                else:
                    self.returncode = int(exit_["returncode"])
                    self._tail = str(exit_["tail"])
                    self._unit.ooms = int(exit_["oom_kills"])
                    if exit_["fenced"]:
                        self.lost = ExitCause(
                            "host_lost",
                            signal=-self.returncode if self.returncode < 0 else None,
                            detail="its lease expired: the host killed the kernel",
                        )
                self._gone.set()
        return self.returncode

    async def kill_and_reap(self) -> int:
        """Ask the host to kill the kernel's unit; a host that does not answer within
        ``HOST_KILL_S`` is killed through Ray (its kernel dies with it, its reaper sweeps).
        A node that answers neither (hung, cut off) is given up on after ``HOST_GONE_S``
        more: its lease expires and Ray's health check declares it dead."""
        if self.returncode is None:
            self.host.kill.remote()
            with trio.move_on_after(HOST_KILL_S):
                await self.wait()
        if self.returncode is None:
            self._killed_host = True
            self._kill_host()
            with trio.move_on_after(HOST_GONE_S):
                await self.wait()
        if self.returncode is None:
            self.lost = ExitCause(
                "node_lost",
                signal=signal.SIGKILL,
                detail=f"its host on {self.node} answered no kill within "
                f"{HOST_KILL_S + HOST_GONE_S:g} s",
            )
            self.returncode = -signal.SIGKILL
            self._gone.set()
        return self.returncode

    def _kill_host(self) -> None:
        import ray

        try:
            ray.kill(self.host, no_restart=True)
        except Exception:  # already dead, or the cluster is gone: nothing to free
            pass

    def signal_group(self, sig: int) -> None:
        if self.returncode is None:
            self.host.signal.remote(sig)

    async def drain_output(self, stream: trio.abc.ReceiveStream) -> None:
        """The kernel's life on the supervisor's side: renew the host's lease every
        ``lease_interval``, keeping the kernel's memory use and output tail it reports
        (its output stays on its node; ``stream`` carries nothing)."""
        while not self._gone.is_set():
            try:
                report = await _result(self.host.renew.remote())
            except Exception:  # the host is gone: wait() reports it
                return
            self._take(report)
            with trio.move_on_after(self.lease_interval):
                await self._gone.wait()

    def _take(self, report: object) -> None:
        """Keep what a renewal reported; a report of another shape (a host of another
        kernelsup version) changes nothing, and never ends the kernel's watch."""
        if not isinstance(report, dict):
            return
        with contextlib.suppress(TypeError, ValueError):
            usage = report.get("usage")
            if isinstance(usage, dict):
                self._unit.last = Usage(**usage)
            self._unit.ooms = int(report.get("oom_kills", self._unit.ooms))
            self._tail = str(report.get("tail", self._tail))

    def output_tail(self, limit: int = 2000) -> str:
        return self._tail[-limit:].strip()

    def cleanup_files(self) -> None:
        self.plan.connection_file.unlink(missing_ok=True)
        self._kill_host()  # its slot goes back to the cluster


class _NoOutput(trio.abc.ReceiveStream):
    """A remote kernel's output stays on its node (its tail comes with each renewal)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


class RayLauncher:
    """Starts a pool's kernels on the Ray cluster, each in a host actor of its own."""

    def __init__(self, ray: RayConfig, pool: PoolConfig) -> None:
        self.ray = ray
        self.pool = pool
        self._host_cls: Any = None
        self._joined = trio.Lock()

    async def _join(self) -> Any:
        async with self._joined:
            if self._host_cls is None:
                await trio.to_thread.run_sync(connect, self.ray.address, self.ray.namespace)
                self._host_cls = _host_class(self.pool)
        return self._host_cls

    async def start(
        self, plan: LaunchPlan, unit: Unit
    ) -> tuple[StartedKernel, trio.abc.ReceiveStream]:
        """Place a host actor, start the kernel through it. Raises KernelStartError:
        ``no_capacity`` when no node takes the host within ``placement_timeout``,
        ``ray_unavailable`` when the cluster cannot be joined, else ``start_failure``."""
        unit.remove()  # made on this machine by the actor; the node makes its own
        host_cls = await self._join()
        kernel_id = plan.connection_file.stem.removeprefix("kernel-").rsplit("-", 1)[0]
        host = host_cls.remote(kernel_id, self.ray.lease_timeout)
        try:
            with trio.move_on_after(self.ray.placement_timeout) as placing:
                where = await _result(host.where.remote())
            if placing.cancelled_caught:
                why = (
                    f"no node of the Ray cluster took it within placement_timeout = "
                    f"{self.ray.placement_timeout:g} s (each kernel asks for "
                    f"{dict(self.pool.ray_resources) or {'num_cpus': 0}})"
                )
                raise KernelStartError(
                    f"kernel {kernel_id} failed to start: {why}",
                    code="no_capacity",
                    kernel_id=kernel_id,
                    cause=ExitCause("no_capacity", detail=why),
                )
            options = {
                "env": _env_overrides(plan.env),
                "interrupt_mode": plan.interrupt_mode,
                "cwd": plan.cwd,
                "containment": self.pool.containment,
                "memory_limit_mb": unit.limits.memory_mb,
                "pids_limit": unit.limits.pids,
                "cpu_limit": unit.limits.cpu,
            }
            started = await _result(
                host.start.remote(self.pool.kernel, plan.connection.key, options)
            )
        except BaseException as exc:
            _kill(host)
            plan.connection_file.unlink(missing_ok=True)
            if isinstance(exc, (KernelStartError, trio.Cancelled)):
                raise
            if isinstance(exc, Exception):
                raise KernelStartError(
                    f"kernel {kernel_id} failed to start on the Ray cluster: "
                    f"{type(exc).__name__}: {_ray_reason(str(exc))}",
                    code="start_failure",
                    kernel_id=kernel_id,
                ) from None
            raise
        conn = ConnectionInfo(**started["connection"])
        remote_plan = attrs.evolve(plan, connection=conn)
        kernel = RemoteKernel(
            host, where, started, remote_plan, unit.limits, self.ray.lease_interval
        )
        return kernel, _NoOutput()


# Variables a kernel's environment gets on its own node (launch.py sets them there).
_NODE_OWN = frozenset({"PATH", "JPY_PARENT_PID", "PYTHONEXECUTABLE", TETHER_ENV})


def _env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """What the plan's environment adds to ours (the kernelspec's, the pool's and a
    session's variables): the node starts from its own and adds these."""
    return {k: v for k, v in env.items() if k not in _NODE_OWN and os.environ.get(k) != v}


def _kill(host: Any) -> None:
    import ray

    try:
        ray.kill(host, no_restart=True)
    except Exception:  # gone already
        pass
