"""``open_supervisor``: the root of the tree, in-process, and the API it offers.

Start order: event bus, pools (their kernels starting concurrently), then the caller gets
the :class:`Supervisor`. Stop in reverse: new requests are refused, pools stop in reverse
order (each stops its kernels in reverse start order), the bus closes last. The root
restarts a pool that escalated, under its own intensity window; when that window trips
the whole tree stops and :class:`SupervisorGaveUp` comes out of ``open_supervisor``. So it
does when every pool is dead (each of its kernels gave up restarting: ``max_retries``):
with nothing left to serve, the supervisor ends, rather than refuse requests forever
(``kernelsup run`` exits 1 naming the pools and their last start errors).
"""

from __future__ import annotations

import math
import os
import random
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from kernelsup.adapters.runtime import private_dir, runtime_dir_for
from kernelsup.adapters.tether import Tether
from kernelsup.core import events as ev
from kernelsup.core.config import Config, load_config
from kernelsup.core.errors import ConfigError, Rejected, SupervisorGaveUp, raise_lone
from kernelsup.core.interface import StreamItem
from kernelsup.core.policy import IntensityWindow
from kernelsup.core.records import JobInfo, JobOutput, SessionInfo, env_problem
from kernelsup.core.results import ExecuteResult, Output, StatusReport
from kernelsup.core.snapshots import RestoreInfo, SnapshotInfo
from kernelsup.notebook import runner as notebooks
from kernelsup.notebook.report import NotebookReport
from kernelsup.tree import files
from kernelsup.tree.bus import EventBus
from kernelsup.tree.jobs import DEFAULT_PAGE_BYTES, MAX_PAGE_BYTES, Jobs
from kernelsup.tree.router import Pool, rejected
from kernelsup.tree.sessions import cwd_problem

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

# Outputs a stream consumer may fall behind by before outputs are skipped (the final
# result is always complete); a reader that keeps up never sees a gap.
STREAM_BUFFER = 256
# Bound on a graceful stop of the whole tree; kernels are killed when it runs out.
STOP_TIMEOUT_S = 60.0
# A session name: 1 to this many printable characters. Names come from clients and are
# kept (the pool's sessions, the names of expired ones), logged and shown in status.
SESSION_NAME_MAX = 128
# How much of a refused name an error shows.
_NAME_SHOWN = 40


async def _cancel_on_change(pool: Pool, scope: trio.CancelScope) -> None:
    await pool.wait_changed()
    scope.cancel()


def session_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a session (one line, the name shortened), or None."""
    if not isinstance(name, str):
        return f"a session name must be a string, not {type(name).__name__}"
    if 1 <= len(name) <= SESSION_NAME_MAX and name.isprintable():
        return None
    shown = repr(name[:_NAME_SHOWN]) + ("..." if len(name) > _NAME_SHOWN else "")
    return (
        f"a session name must be 1 to {SESSION_NAME_MAX} printable characters (no control "
        f"characters); got {shown} ({len(name)} characters)"
    )


def _check_session_name(name: object) -> None:
    """Raises Rejected (``bad_request``) unless ``name`` can name a session."""
    problem = session_name_problem(name)
    if problem is not None:
        raise Rejected(problem, code="bad_request")


class Supervisor:
    """The running tree. ``execute``, ``stream``, ``session``, ``status``, ``interrupt``
    and ``restart`` are the same on this and on a remote :class:`kernelsup.Client`."""

    def __init__(
        self, config: Config, bus: EventBus, runtime_dir: Path, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self.bus = bus
        self.runtime_dir = runtime_dir
        rng = rng or random.Random()
        self.pools = {p.name: Pool(p, config, bus, runtime_dir, rng) for p in config.pools}
        root = config.supervisor
        self.window = IntensityWindow(root.intensity, root.period)
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._closing = False
        self._jobs = Jobs(
            self.execute,
            runtime_dir / "jobs",
            max_output_bytes=root.max_job_output_bytes,
            max_spool_bytes=root.max_job_spool_bytes,
            retention=root.job_retention,
        )
        # Told (pool name or None, result) of every request's outcome: the metrics' hook.
        self.result_observers: list[Callable[[str | None, ExecuteResult], None]] = []
        # A part's counters by name (the control server's "control"), read by the metrics.
        self.stats_sources: dict[str, Callable[[], Mapping[str, Any]]] = {}

    # ------------------------------------------------------------------- lifecycle
    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with trio.open_nursery() as starting:
                    for pool in self.pools.values():
                        starting.start_soon(nursery.start, pool.run, self.window)
                for pool in self.pools.values():
                    nursery.start_soon(pool.expire_sessions)
                await nursery.start(self._jobs.run)
                nursery.start_soon(self._give_up_when_every_pool_is_dead)
                self.bus.publish(ev.SUPERVISOR_READY, kernels=self.kernel_count())
                task_status.started()
                await self._stop.wait()
                await self._jobs.stop()  # each unfinished job ends cancelled, and says so
                for pool in reversed(list(self.pools.values())):
                    pool.stop()
                    await pool.wait_stopped()
                    pool.drop_session_dirs()
                nursery.cancel_scope.cancel()
        finally:
            self._stopped.set()

    async def _give_up_when_every_pool_is_dead(self) -> None:
        """Raise SupervisorGaveUp once every pool is dead (a pool with some kernel left
        serves on: its dead neighbours refuse with ``pool_dead``)."""
        pools = list(self.pools.values())
        while not all(pool.dead for pool in pools):
            async with trio.open_nursery() as changed:
                for pool in pools:
                    changed.start_soon(_cancel_on_change, pool, changed.cancel_scope)
        reasons = "; ".join(f"pool {pool.name!r}: {pool.dead_reason()}" for pool in pools)
        message = f"every pool is dead (its kernels gave up restarting): {reasons}"
        if not self._closing:  # as aclose does, with the reason
            self._jobs.cancel_all()
            self._closing = True
            self.bus.publish(ev.SUPERVISOR_STOPPING, reason=message)
        raise SupervisorGaveUp(message)

    async def aclose(self, reason: str = "requested") -> None:
        """Stop the tree gracefully: refuse new requests, stop pools in reverse order."""
        if not self._closing:
            self._jobs.cancel_all()  # first: a job refused from now on was cancelled
            self._closing = True
            self.bus.publish(ev.SUPERVISOR_STOPPING, reason=reason)
        self._stop.set()
        await self._stopped.wait()

    def kernel_count(self) -> int:
        return sum(p.kernel_count() for p in self.pools.values())

    # ------------------------------------------------------------------- requests
    def _pool_for(self, pool: str | None, session: str | None) -> Pool | ExecuteResult:
        if self._closing:
            return rejected("shutting_down", "the supervisor is shutting down")
        name = pool if pool is not None else next(iter(self.pools))
        home = self._session_home(session) if session is not None else None
        if home is not None:
            live = session in home.sessions
            if live and pool is not None and pool != home.name:
                return rejected(
                    "session_pool_mismatch",
                    f"session {session!r} lives in pool {home.name!r}, not {pool!r}",
                )
            if live or pool is None:
                # An expired session comes back where it lived, so it hears its state is gone.
                name = home.name
        if name not in self.pools:
            return rejected(
                "unknown_pool",
                f"no pool named {name!r} (pools: {', '.join(self.pools)})",
                session=session,
            )
        return self.pools[name]

    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        on_output: Callable[[Output], None] | None = None,
        on_start: Callable[[str], None] | None = None,
        fresh: bool = False,
    ) -> ExecuteResult:
        """Run ``code`` and return its one outcome (never raises for kernel trouble: the
        result's ``status`` says ``error``, ``timeout``, ``died`` or ``rejected``).
        ``on_start`` is called with the kernel's id as a kernel is handed the code.
        ``fresh``: on a kernel of the pool that never ran anything, destroyed after (no
        request sees another's state; ``fresh_spares`` keeps such kernels ready).

        Cancelling the caller interrupts the kernel running the code."""
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        if timeout is not None and not (timeout > 0):
            return self._told(
                None, rejected("bad_request", f"timeout must be > 0 (got {timeout!r})")
            )
        if session is not None:
            problem = session_name_problem(session)
            if problem is not None:
                return self._told(None, rejected("bad_request", problem))
        if fresh and session is not None:
            return self._told(
                None,
                rejected(
                    "bad_request",
                    "fresh and session exclude each other: a fresh execute runs on a kernel "
                    "of its own that is destroyed after",
                ),
            )
        target = self._pool_for(pool, session)
        if isinstance(target, ExecuteResult):
            return self._told(None, target)
        if fresh:
            result = await target.fresh_execute(
                code, timeout=timeout, on_output=on_output, on_start=on_start
            )
        elif session is None:
            result = await target.execute(
                code, timeout=timeout, on_output=on_output, on_start=on_start
            )
        else:
            result = await target.session_execute(
                session, code, timeout=timeout, on_output=on_output, on_start=on_start
            )
        return self._told(target.name, result)

    def _told(self, pool: str | None, result: ExecuteResult) -> ExecuteResult:
        for observe in self.result_observers:
            observe(pool, result)
        return result

    async def stream(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> AsyncIterator[StreamItem]:
        """Yield outputs as they arrive, then the final :class:`ExecuteResult`.

        A consumer more than ``STREAM_BUFFER`` outputs behind skips outputs (it gets a
        ``notice`` named ``lagged`` with the count); the final result is always complete.
        Leaving the loop early cancels the request (the kernel is interrupted)."""
        assert self._nursery is not None
        send, recv = trio.open_memory_channel[StreamItem](STREAM_BUFFER)
        skipped = 0

        def on_output(out: Output) -> None:
            nonlocal skipped
            try:
                send.send_nowait(out)
            except trio.WouldBlock:
                skipped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        scope = trio.CancelScope()

        async def runner() -> None:
            async with send:
                with scope:
                    result = await self.execute(
                        code,
                        pool=pool,
                        session=session,
                        timeout=timeout,
                        on_output=on_output,
                        fresh=fresh,
                    )
                    try:
                        if skipped:
                            await send.send(
                                Output(
                                    "notice",
                                    name="lagged",
                                    text=f"{skipped} outputs were not streamed "
                                    "(the reader fell behind); the final "
                                    "result has them",
                                )
                            )
                        await send.send(result)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

        self._nursery.start_soon(runner)
        try:
            async with recv:
                async for item in recv:
                    yield item
        finally:
            scope.cancel()

    @asynccontextmanager
    async def session(
        self,
        name: str,
        *,
        pool: str | None = None,
    ) -> AsyncIterator[SessionHandle]:
        """A named session for the block's duration; closed (its kernel shut down and
        never reused) when the block ends. Raises Rejected (``bad_request``) for a name
        that is not 1 to 128 printable characters."""
        _check_session_name(name)
        try:
            yield SessionHandle(self, name, pool)
        finally:
            with trio.CancelScope(shield=True):
                await self.close_session(name)

    async def close_session(self, name: str) -> bool:
        """Close session ``name``: its kernel is shut down, never reused. False if there
        is no such session; Rejected (``bad_request``) for a name no session can have."""
        _check_session_name(name)
        home = self._session_home(name)
        if home is None or name not in home.sessions:
            return False
        return await home.close_session(name)

    def _session_home(self, session: str) -> Pool | None:
        """The pool a session lives in, else the pool it last expired from, else None.

        The routers own their sessions (and a bounded memory of expired ones), so nothing
        here outlives them."""
        for p in self.pools.values():
            if session in p.sessions:
                return p
        for p in self.pools.values():
            if p.expired_recently(session):
                return p
        return None

    async def status(self) -> StatusReport:
        """Every kernel's state, pid, restarts, session, uptime and last exit; the pools."""
        return self.status_now()

    def status_now(self) -> StatusReport:
        """:meth:`status`, synchronously (for code already inside the supervisor)."""
        now = trio.current_time()
        return StatusReport(
            kernels=tuple(k for p in self.pools.values() for k in p.kernel_status(now)),
            pools=tuple(p.pool_status() for p in self.pools.values()),
        )

    def _pool_of(self, kernel_id: str) -> Pool:
        for pool in self.pools.values():
            if pool.has_kernel(kernel_id):
                return pool
        raise Rejected(
            f"no kernel with id {kernel_id!r}", code="unknown_kernel", kernel_id=kernel_id
        )

    async def watch(self) -> AsyncIterator[ev.Event]:
        """Follow the supervisor's events (a slow reader gets ``lagged`` events)."""
        with self.bus.subscribe() as subscription:
            async for event in subscription:
                yield event

    async def interrupt(self, kernel_id: str | None = None, *, session: str | None = None) -> None:
        """Interrupt whatever the kernel (or the session's kernel) is running. Raises
        Rejected (``unknown_kernel``, ``unknown_session``, or ``kernel_unavailable`` when
        it has no process now)."""
        if _one_target(kernel_id, session) == "session":
            assert session is not None
            await self._live_session(session).interrupt_session(session)
        else:
            assert kernel_id is not None
            await self._pool_of(kernel_id).interrupt(kernel_id)

    async def restart(self, kernel_id: str | None = None, *, session: str | None = None) -> None:
        """Restart the kernel now (a dead one too); returns once it is starting. For a
        ``session``: its kernel is replaced by one in the session's directory with its
        variables, ready on return (its state is gone)."""
        if _one_target(kernel_id, session) == "session":
            assert session is not None
            await self._live_session(session).restart_session(session)
        else:
            assert kernel_id is not None
            await self._pool_of(kernel_id).restart(kernel_id)

    # ------------------------------------------------------------------- sessions
    def _live_session(self, name: str) -> Pool:
        """The pool where session ``name`` is open; Rejected (``unknown_session``)."""
        _check_session_name(name)
        for p in self.pools.values():
            if name in p.sessions:
                return p
        raise Rejected(f"no open session {name!r}", code="unknown_session", session=name)

    async def open_session(
        self,
        name: str | None = None,
        *,
        pool: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        lifetime: float | None = None,
    ) -> SessionInfo:
        """Open a session (a name is made when ``name`` is None) and bind it a kernel of
        its own; returns once that kernel is ready. Its kernel, and every replacement,
        runs in ``cwd`` (an absolute directory; default: a private directory removed at
        close) with ``env`` over the pool's variables. ``idle_timeout`` overrides the
        pool's ``session_idle_timeout`` (0: never); ``lifetime`` closes it that many
        seconds after it opened. Raises Rejected: ``bad_request``, ``unknown_pool``,
        ``session_exists``, ``pool_exhausted``, or why no kernel could be had."""
        if self._closing:
            raise Rejected("the supervisor is shutting down", code="shutting_down")
        if name is None:
            name = self._new_session_name()
        _check_session_name(name)
        for problem in (
            cwd_problem(cwd) if cwd is not None else None,
            env_problem(env) if env is not None else None,
            _seconds_problem("idle_timeout", idle_timeout, zero=True),
            _seconds_problem("lifetime", lifetime, zero=False),
        ):
            if problem is not None:
                raise Rejected(problem, code="bad_request")
        for p in self.pools.values():
            if name in p.sessions:
                raise Rejected(
                    f"session {name!r} is already open in pool {p.name}",
                    code="session_exists",
                    session=name,
                )
        target = self._pool_for(pool, None)
        if isinstance(target, ExecuteResult):
            raise Rejected(target.message, code=target.code or "rejected")
        return await target.open_session(
            name, cwd=cwd, env=env, idle_timeout=idle_timeout, lifetime=lifetime
        )

    def _new_session_name(self) -> str:
        while True:
            name = "session-" + secrets.token_hex(4)
            if all(name not in p.sessions for p in self.pools.values()):
                return name

    async def sessions(self) -> list[SessionInfo]:
        """Every open session, in every pool."""
        return [info for p in self.pools.values() for info in p.session_infos()]

    # ------------------------------------------------------------------- jobs
    async def submit(
        self,
        code: str,
        *,
        session: str | None = None,
        pool: str | None = None,
        timeout: float | None = None,
    ) -> JobInfo:
        """Start ``code`` as a job and return at once. The job runs detached from the
        caller (cancelling or disconnecting does not cancel it); follow it by id with
        ``job``, ``wait``, ``job_output``, ``cancel``. Raises Rejected for a request that
        could never run (``bad_request``, ``unknown_pool``, ``shutting_down``,
        ``too_many_jobs``); everything else is the job's result."""
        if not isinstance(code, str):
            raise Rejected(f"code must be a string, not {type(code).__name__}", code="bad_request")
        problem = _seconds_problem("timeout", timeout, zero=False)
        if problem is None and session is not None:
            problem = session_name_problem(session)
        if problem is not None:
            raise Rejected(problem, code="bad_request")
        target = self._pool_for(pool, session)
        if isinstance(target, ExecuteResult):
            raise Rejected(target.message, code=target.code or "rejected")
        return self._jobs.submit(code, session=session, pool=pool, timeout=timeout)

    async def job(self, job_id: str) -> JobInfo:
        """The job's status; Rejected (``unknown_job``)."""
        return self._jobs.info(job_id)

    async def wait(self, job_id: str, timeout: float | None = None) -> ExecuteResult | None:
        """The job's result once done; None if it still runs after ``timeout`` seconds."""
        problem = _seconds_problem("timeout", timeout, zero=True)
        if problem is not None:
            raise Rejected(problem, code="bad_request")
        return await self._jobs.wait(job_id, timeout)

    async def job_output(
        self, job_id: str, offset: int = 0, limit: int = DEFAULT_PAGE_BYTES
    ) -> JobOutput:
        """A page of the job's whole output, from byte ``offset`` of its spool (at most
        ``limit`` bytes, 1 to 1 MiB); pass ``next_offset`` back for the next page."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise Rejected(f"offset must be an integer >= 0 (got {offset!r})", code="bad_request")
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_PAGE_BYTES
        ):
            raise Rejected(
                f"limit must be an integer from 1 to {MAX_PAGE_BYTES} (got {limit!r})",
                code="bad_request",
            )
        return await self._jobs.output(job_id, offset, limit)

    async def cancel(self, job_id: str) -> bool:
        """Cancel the job (its kernel is interrupted); False if it had already ended."""
        return self._jobs.cancel(job_id)

    async def jobs(self) -> list[JobInfo]:
        """Every job remembered, the most recently submitted first."""
        return self._jobs.list()

    # ------------------------------------------------------------------- files
    def _session_cwd(self, session: str) -> str:
        cwd = self._live_session(session).session_cwd(session)
        assert cwd is not None
        return cwd

    async def put_file(self, session: str, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` in the session's directory (parents made). Raises
        Rejected: ``unknown_session``, ``path_outside_session``, ``file_too_large``."""
        cwd = self._session_cwd(session)
        limit = self.config.supervisor.max_file_bytes
        await trio.to_thread.run_sync(files.put_file, cwd, path, data, limit)

    async def get_file(self, session: str, path: str) -> bytes:
        """The bytes of ``path`` in the session's directory. Raises Rejected:
        ``unknown_session``, ``path_outside_session``, ``file_too_large``,
        ``file_not_found``."""
        cwd = self._session_cwd(session)
        limit = self.config.supervisor.max_file_bytes
        return await trio.to_thread.run_sync(files.get_file, cwd, path, limit)

    async def list_files(self, session: str, path: str = ".") -> list[str]:
        """The names in directory ``path`` of the session's directory, sorted;
        directories end with "/"."""
        cwd = self._session_cwd(session)
        return await trio.to_thread.run_sync(files.list_files, cwd, path)

    # --------------------------------------------------------------- snapshots
    async def snapshot(self, session: str) -> SnapshotInfo:
        """Save session ``session``'s namespace now (Python kernels; waits for a request
        it is running). What could not be saved is in ``skipped`` (name: reason). Raises
        Rejected: ``unknown_session``, ``checkpoint_unsupported``, ``checkpoint_skipped``
        (past ``checkpoint_max_bytes`` or ``checkpoint_timeout``), ``checkpoint_failed``,
        ``kernel_unavailable`` (no kernel running: no state to save)."""
        return await self._live_session(session).snapshot_session(session)

    async def restore(self, session: str, snapshot_id: str | None = None) -> RestoreInfo:
        """Load a snapshot of ``session`` (its latest by default) into its kernel (one is
        bound if it has none); names that did not come back are in ``not_restored``.
        Raises Rejected: ``unknown_session``, ``unknown_snapshot``, ``checkpoint_*``."""
        return await self._live_session(session).restore_session(session, snapshot_id)

    async def fork_session(self, source: str, name: str) -> RestoreInfo:
        """Open session ``name``, in ``source``'s pool, starting from ``source``'s state
        (a snapshot taken now if its kernel runs, else its latest). Raises Rejected:
        ``unknown_session``, ``session_exists``, ``unknown_snapshot``, ``checkpoint_*``,
        ``pool_exhausted``."""
        if self._closing:
            raise Rejected("the supervisor is shutting down", code="shutting_down")
        _check_session_name(name)
        home = self._live_session(source)
        for p in self.pools.values():
            if name in p.sessions:
                raise Rejected(
                    f"session {name!r} is already open in pool {p.name}",
                    code="session_exists",
                    session=name,
                )
        return await home.fork_session(source, name)

    async def run_notebook(
        self,
        notebook: notebooks.NotebookSource,
        *,
        output: str | os.PathLike[str] | None = None,
        parameters: dict[str, object] | None = None,
        cell_timeout: float | None = None,
        timeout: float | None = None,
        allow_errors: bool = False,
        pool: str | None = None,
        kernel: str | None = None,
        session: str | None = None,
    ) -> NotebookReport:
        """Run a notebook's code cells in order in one fresh kernel (or in ``session``),
        writing it back after every cell (to ``output``, else in place), with papermill's
        ``parameters``; returns its report. The rules are kernelsup/notebook/runner.py's."""
        return await notebooks.run_notebook(
            self,
            notebook,
            output=output,
            parameters=parameters,
            cell_timeout=cell_timeout,
            timeout=timeout,
            allow_errors=allow_errors,
            pool=pool,
            kernel=kernel,
            session=session,
        )


@attrs.define
class SessionHandle:
    """``execute``/``stream`` bound to one session name."""

    sup: Supervisor
    name: str
    pool: str | None = None

    async def execute(self, code: str, *, timeout: float | None = None) -> ExecuteResult:
        return await self.sup.execute(code, pool=self.pool, session=self.name, timeout=timeout)

    def stream(self, code: str, *, timeout: float | None = None) -> AsyncIterator[StreamItem]:
        return self.sup.stream(code, pool=self.pool, session=self.name, timeout=timeout)


def _one_target(kernel_id: str | None, session: str | None) -> str:
    """``kernel`` or ``session``: which one a call names (exactly one, else bad_request)."""
    if (kernel_id is None) == (session is None):
        raise Rejected("name exactly one of kernel_id and session", code="bad_request")
    if session is not None:
        return "session"
    if not isinstance(kernel_id, str):
        raise Rejected(
            f"kernel_id must be a string, not {type(kernel_id).__name__}", code="bad_request"
        )
    return "kernel"


def _seconds_problem(name: str, value: object, *, zero: bool) -> str | None:
    """Why ``value`` is not a number of seconds (``> 0``, or ``>= 0`` when ``zero``;
    None passes), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number of seconds, not {type(value).__name__}"
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        return f"{name} must be a finite number {'>=' if zero else '>'} 0 (got {value!r})"
    return None


def _make_runtime_dir(config: Config, runtime_dir: str | os.PathLike[str] | None) -> Path:
    """Create the private runtime directory; one that cannot be made is a ConfigError
    naming the key (``check`` cannot know: the directory is made by ``run``)."""
    try:
        return private_dir(runtime_dir) if runtime_dir is not None else runtime_dir_for(config)
    except (OSError, ValueError) as exc:
        given = runtime_dir if runtime_dir is not None else config.supervisor.runtime_dir
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = getattr(exc, "filename", None) or given
        raise ConfigError(
            f"supervisor.runtime_dir: cannot create the runtime directory: {reason}: "
            f"{str(where)!r}",
            path="$.supervisor.runtime_dir",
            runtime_dir=str(given),
        ) from None


@asynccontextmanager
async def open_supervisor(
    config: Config | str | os.PathLike[str] | None = None,
    *,
    runtime_dir: str | os.PathLike[str] | None = None,
    bus: EventBus | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Supervisor]:
    """Run the supervision tree in this trio program for the duration of the block.

    Returns once every pool's kernels are ready (or dead). Leaving the block stops the
    tree gracefully, bounded by ``STOP_TIMEOUT_S`` (then kernels are killed). Raises
    ``SupervisorGaveUp`` if the root's restart intensity is exceeded, and
    ``ConfigError`` for a bad config path.
    """
    if config is None:
        config = Config.default()
    elif not isinstance(config, Config):
        config = load_config(config)
    rdir = _make_runtime_dir(config, runtime_dir)
    own_bus = bus is None
    bus = bus or EventBus()
    sup = Supervisor(config, bus, rdir, rng)
    tether = Tether(rdir)
    tether.acquire()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup._run)
            try:
                yield sup
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S):
                    await sup.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_lone(group)  # e.g. SupervisorGaveUp, or the caller's own error
        raise
    finally:
        with trio.CancelScope(shield=True):
            await tether.release()
        if own_bus:
            bus.close()


__all__ = [
    "SESSION_NAME_MAX",
    "STREAM_BUFFER",
    "Supervisor",
    "open_supervisor",
    "session_name_problem",
]
