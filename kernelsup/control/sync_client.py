"""The blocking client, :class:`SyncClient`: one thread, blocking zmq, no event loop.

GENERATED from client.py by scripts/unasync.py: do not edit; change client.py and run
``python scripts/unasync.py``. The methods are :class:`Client`'s, written once there; the
socket is sync_transport.py's.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from kernelsup.control.connection import (
    CLEANUP_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    Inbox,
    execute_result,
    final_value,
    lag_event,
    lag_output,
    probe,
    resolve,
)
from kernelsup.core import protocol as proto
from kernelsup.core.config import Config
from kernelsup.core.errors import ClientError, KernelsupError, ProtocolError
from kernelsup.core.events import Event
from kernelsup.core.interface import StreamItem
from kernelsup.core.records import JobInfo, JobOutput, SessionInfo
from kernelsup.core.results import ExecuteResult, StatusReport
from kernelsup.core.snapshots import RestoreInfo, SnapshotInfo

if TYPE_CHECKING:  # imported by run_notebook: a client that runs none needs neither
    from kernelsup.notebook import runner as notebooks
    from kernelsup.notebook.report import NotebookReport

from kernelsup.control.sync_transport import SyncTransport


class SyncClient:
    """A connection to a running supervisor, with the in-process ``Supervisor``'s methods
    (the interface of kernelsup/core/interface.py).

    Many requests may be in flight on one client. A call waits while the supervisor is
    there, however slow; every method raises :class:`Unreachable` once it is gone or the
    connection broke (the rule is in connection.py), :class:`AuthenticationError` if it no
    longer accepts our key. A call left early (cancelled, interrupted by Ctrl-C, a
    stream closed before its end) cancels its request on the server: an execute's kernel
    is interrupted.
    """

    def __init__(
        self,
        target: Config | str | os.PathLike[str] = "supervisor.toml",
        *,
        timeout: float = CONNECT_TIMEOUT_S,
        key: bytes | str | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """Connect at once, raising like ``kernelsup.connect``; use the client as a
        context manager or call :meth:`close`. Blocking, with no event loop; for one
        thread (not thread-safe)."""
        address = resolve(target, key=key, key_file=key_file)
        self._io = SyncTransport(address, probe(address.endpoint))
        self._conn = self._io.conn
        try:
            self._hello(timeout)
        except BaseException:
            self._io.close()
            raise

    def close(self) -> None:
        """Close the connection; later calls raise ClientError (``client_closed``)."""
        self._io.close()
        self._conn.fail(
            ClientError(f"the connection to {self.endpoint} is closed", code="client_closed")
        )

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        return self._conn.endpoint

    # -- one request's life: begin, next reply..., end --

    def _begin(self, request: proto.Request) -> tuple[str, Inbox, float]:
        rid, frames, inbox = self._conn.begin(request)
        started = self._conn.now()
        try:
            self._io.send(frames)
        except BaseException:
            self._conn.inboxes.pop(rid, None)
            raise
        return rid, inbox, started

    def _next(self, inbox: Inbox, started: float, deadline: float | None = None) -> proto.Reply:
        while True:
            reply = inbox.take()
            if reply is not None:
                return reply
            self._io.wait(inbox, self._conn.remaining(started, deadline))

    def _end(self, rid: str, inbox: Inbox) -> None:
        """Forget the request; if it is not finished, ask the server to cancel it."""
        self._conn.inboxes.pop(rid, None)
        if not inbox.done and self._conn.broken is None:
            _, frames = self._conn.codec.encode_request(proto.Cancel(rid))
            self._io.send_cancel(frames)

    def _final(self, request: proto.Request) -> proto.Reply:
        """Send ``request`` and wait for its final reply (skipping anything streamed)."""
        rid, inbox, started = self._begin(request)
        try:
            while True:
                reply = self._next(inbox, started)
                if isinstance(reply, proto.FINAL_REPLIES):
                    return reply
        finally:
            self._end(rid, inbox)

    def _call(self, request: proto.Request) -> dict[str, Any]:
        return final_value(self._final(request))

    def _hello(self, seconds: float) -> None:
        rid, inbox, started = self._begin(proto.Hello())
        try:
            reply = self._next(inbox, started, deadline=started + seconds)
            self._conn.welcome(final_value(reply))
        finally:
            self._end(rid, inbox)

    # -- the Supervisor's methods --

    def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> ExecuteResult:
        """Run ``code``; the result's ``status`` says how it went (kernel trouble is never
        raised). ``timeout`` defaults to the pool's ``exec_timeout``. ``fresh``: on a kernel
        that never ran anything, destroyed after."""
        return execute_result(
            self._final(proto.Execute(code, pool, session, timeout, False, fresh)), session
        )

    def stream(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> Generator[StreamItem, None, None]:
        """Yield each :class:`Output` as it arrives, then the final ExecuteResult.

        A reader that falls more than ``STREAM_BUFFER`` behind gets a ``notice`` output
        named ``lagged`` with the count skipped (``metadata["dropped"]``); the final
        result has everything. Leaving the loop early cancels the request (the kernel is
        interrupted) when the generator is closed: wrap the loop in
        ``contextlib.closing(...)`` when you may leave it early, so that happens at once."""
        rid, inbox, started = self._begin(proto.Execute(code, pool, session, timeout, True, fresh))
        try:
            while True:
                reply = self._next(inbox, started)
                if isinstance(reply, proto.OutputMsg):
                    yield reply.output
                elif isinstance(reply, proto.Lagged):
                    yield lag_output(reply.dropped)
                elif isinstance(reply, proto.FINAL_REPLIES):
                    yield execute_result(reply, session)
                    return
        finally:
            self._end(rid, inbox)

    @contextmanager
    def session(self, name: str, *, pool: str | None = None) -> Iterator[SyncSession]:
        """A named session for the block's duration, closed when it ends (its kernel is
        shut down, never reused)."""
        try:
            yield SyncSession(self, name, pool)
        finally:
            with contextlib.suppress(KernelsupError):
                self._io.shielded(lambda: self.close_session(name), CLEANUP_TIMEOUT_S)

    def close_session(self, name: str) -> bool:
        """Close a session (its kernel is shut down, never reused). False if unknown."""
        value = self._call(proto.CloseSession(name))
        return bool(value.get("closed"))

    def status(self) -> StatusReport:
        """Every kernel's state, pid, restarts, session, uptime and last exit; the pools."""
        return StatusReport.from_dict(self._call(proto.Status()))

    def interrupt(self, kernel_id: str | None = None, *, session: str | None = None) -> None:
        """Interrupt whatever the kernel (or the session's kernel) runs. Raises Rejected
        (``unknown_kernel``, ``unknown_session``...)."""
        self._call(proto.Interrupt(kernel_id, session))

    def restart(self, kernel_id: str | None = None, *, session: str | None = None) -> None:
        """Restart the kernel now; returns once it is starting. For a ``session``, its
        kernel is replaced by a ready one in the session's directory. Raises Rejected."""
        self._call(proto.Restart(kernel_id, session))

    # -- sessions, jobs, files (see the Supervisor's methods of the same names) --

    def open_session(
        self,
        name: str | None = None,
        *,
        pool: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        lifetime: float | None = None,
    ) -> SessionInfo:
        """Open a session with a kernel of its own, in ``cwd`` (default: a private
        directory) with ``env``; a name is made when ``name`` is None."""
        value = self._call(
            proto.OpenSession(
                name, pool, cwd, dict(env) if env is not None else None, idle_timeout, lifetime
            )
        )
        return SessionInfo.from_dict(value.get("session"))

    def sessions(self) -> list[SessionInfo]:
        """Every open session."""
        value = self._call(proto.Sessions())
        return [SessionInfo.from_dict(s) for s in _list(value, "sessions")]

    def submit(
        self,
        code: str,
        *,
        session: str | None = None,
        pool: str | None = None,
        timeout: float | None = None,
    ) -> JobInfo:
        """Start ``code`` as a job, detached from this client; returns at once."""
        value = self._call(proto.Submit(code, session, pool, timeout))
        return JobInfo.from_dict(value.get("job"))

    def job(self, job_id: str) -> JobInfo:
        """The job's status. Raises Rejected (``unknown_job``)."""
        return JobInfo.from_dict((self._call(proto.JobQuery(job_id))).get("job"))

    def wait(self, job_id: str, timeout: float | None = None) -> ExecuteResult | None:
        """The job's result once done; None if it still runs after ``timeout`` seconds.
        Leaving early does not cancel the job."""
        value = self._call(proto.WaitJob(job_id, timeout))
        result = value.get("result")
        return ExecuteResult.from_dict(result) if result is not None else None

    def job_output(self, job_id: str, offset: int = 0, limit: int = 65536) -> JobOutput:
        """A page of the job's whole output from byte ``offset`` of its spool."""
        return JobOutput.from_dict(self._call(proto.JobOutputQuery(job_id, offset, limit)))

    def cancel(self, job_id: str) -> bool:
        """Cancel the job; False if it had already ended."""
        return bool((self._call(proto.CancelJob(job_id))).get("cancelled"))

    def jobs(self) -> list[JobInfo]:
        """Every job the supervisor remembers, the most recently submitted first."""
        return [JobInfo.from_dict(j) for j in _list(self._call(proto.Jobs()), "jobs")]

    def put_file(self, session: str, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` in the session's directory."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        encoded = base64.b64encode(bytes(data)).decode("ascii")
        self._call(proto.PutFile(session, path, encoded))

    def get_file(self, session: str, path: str) -> bytes:
        """The bytes of ``path`` in the session's directory."""
        value = self._call(proto.GetFile(session, path))
        data = value.get("data")
        if not isinstance(data, str):
            raise ProtocolError("malformed get_file reply: no data", code="malformed")
        return base64.b64decode(data)

    def list_files(self, session: str, path: str = ".") -> list[str]:
        """The names in ``path`` of the session's directory; directories end with "/"."""
        names = _list(self._call(proto.ListFiles(session, path)), "names")
        if not all(isinstance(n, str) for n in names):
            raise ProtocolError("malformed list_files reply", code="malformed")
        return list(names)

    def snapshot(self, session: str) -> SnapshotInfo:
        """Save the session's namespace now (Python kernels): see Supervisor.snapshot."""
        value = self._call(proto.Snapshot(session))
        return _record(SnapshotInfo.from_dict, value, "snapshot")

    def restore(self, session: str, snapshot_id: str | None = None) -> RestoreInfo:
        """Load a snapshot (the latest by default) into the session's kernel."""
        value = self._call(proto.Restore(session, snapshot_id))
        return _record(RestoreInfo.from_dict, value, "restore")

    def fork_session(self, source: str, name: str) -> RestoreInfo:
        """Open session ``name`` from ``source``'s state."""
        value = self._call(proto.ForkSession(source, name))
        return _record(RestoreInfo.from_dict, value, "restore")

    def run_notebook(
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
        writing it back after every cell (to ``output``, else in place), as
        ``Supervisor.run_notebook`` does: the notebook is read and written here, the
        cells run on the supervisor."""
        options: dict[str, Any] = {
            "output": output,
            "parameters": parameters,
            "cell_timeout": cell_timeout,
            "timeout": timeout,
            "allow_errors": allow_errors,
            "pool": pool,
            "kernel": kernel,
            "session": session,
        }
        from kernelsup.notebook import runner as notebooks

        return notebooks.run_notebook_sync(self, notebook, **options)

    def server_stats(self) -> dict[str, Any]:
        """The control server's counters (refused messages, lagged clients...)."""
        return self._call(proto.ServerStats())

    @contextmanager
    def subscribe(self) -> Iterator[Iterator[Event]]:
        """Events from the moment the block starts: on entry the subscription is in place.

        A reader that falls behind gets a ``lagged`` event with the count it missed."""
        rid, inbox, started = self._begin(proto.Watch())
        try:
            reply = self._next(inbox, started)
            if isinstance(reply, proto.FINAL_REPLIES):
                final_value(reply)
                raise ProtocolError("the server ended the watch at once", code="malformed")
            yield _Events(self, inbox, started)
        finally:
            self._end(rid, inbox)

    def watch(self) -> Generator[Event, None, None]:
        """Follow the supervisor's events until the caller stops (or the supervisor does).
        To stop early, prefer ``with client.subscribe() as events``: the
        subscription ends with the block."""
        with self.subscribe() as events:
            yield from events


_R = TypeVar("_R")


def _record(build: Callable[[object], _R], value: dict[str, Any], key: str) -> _R:
    """The record under ``key`` of a reply, built; ProtocolError when it is not one."""
    try:
        return build(value.get(key))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed reply: {key!r}: {exc}", code="malformed") from None


def _list(value: dict[str, Any], key: str) -> list[Any]:
    items = value.get(key)
    if not isinstance(items, list):
        raise ProtocolError(f"malformed reply: {key!r} is not a list", code="malformed")
    return items


class _Events:
    """The events of one subscription (a plain iterator, so leaving a loop over it early
    leaves no generator to finalize; the subscription ends with its block)."""

    def __init__(self, client: SyncClient, inbox: Inbox, started: float) -> None:
        self._client = client
        self._inbox = inbox
        self._started = started
        self._last: Event | None = None

    def __iter__(self) -> _Events:
        return self

    def __next__(self) -> Event:
        while not self._inbox.done:
            reply = self._client._next(self._inbox, self._started)
            if isinstance(reply, proto.EventMsg):
                self._last = Event.from_dict(reply.event)
                return self._last
            if isinstance(reply, proto.Lagged):
                return lag_event(reply.dropped, self._last)
            if isinstance(reply, proto.FINAL_REPLIES):
                final_value(reply)  # an error (shutting_down) raises here
        raise StopIteration  # the supervisor stopped


@attrs.define
class SyncSession:
    """``execute`` and ``stream`` bound to one session name."""

    client: SyncClient
    name: str
    pool: str | None = None

    def execute(self, code: str, *, timeout: float | None = None) -> ExecuteResult:
        return self.client.execute(code, pool=self.pool, session=self.name, timeout=timeout)

    def stream(
        self, code: str, *, timeout: float | None = None
    ) -> Generator[StreamItem, None, None]:
        return self.client.stream(code, pool=self.pool, session=self.name, timeout=timeout)


__all__ = ["SyncClient", "SyncSession"]
