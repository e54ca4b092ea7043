"""The one interface: what the in-process Supervisor and both clients offer alike.

Code written against :class:`SupervisorInterface` runs unchanged on the tree of
``open_supervisor`` (in this trio program) and on a remote ``kernelsup run`` through
``kernelsup.connect`` (trio or asyncio); :class:`SyncSupervisorInterface` is the same for
blocking code (``kernelsup.SyncClient``). Each implementation has more (``Supervisor.execute``
takes ``on_output``; the clients have ``subscribe``, ``server_stats`` and ``endpoint``);
these are the methods they share. ``kernelsup/control/conformance.py`` has mypy check that
the three classes satisfy them, so a signature that drifts fails type checking.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol, TypeAlias

from kernelsup.core.events import Event
from kernelsup.core.records import JobInfo, JobOutput, SessionInfo
from kernelsup.core.results import ExecuteResult, Output, StatusReport
from kernelsup.core.snapshots import RestoreInfo, SnapshotInfo

# What ``stream`` yields: each output as it arrives, then the final result.
StreamItem: TypeAlias = Output | ExecuteResult


class SessionInterface(Protocol):
    """``execute`` and ``stream`` bound to one session name (from ``session()``)."""

    @property
    def name(self) -> str: ...
    @property
    def pool(self) -> str | None: ...
    async def execute(self, code: str, *, timeout: float | None = None) -> ExecuteResult: ...
    def stream(self, code: str, *, timeout: float | None = None) -> AsyncIterator[StreamItem]: ...


class SupervisorInterface(Protocol):
    """A supervisor of kernels, in-process or remote, from trio (or asyncio, remote).

    ``execute`` never raises for kernel trouble: the result's ``status`` says ``error``,
    ``timeout``, ``died`` or ``rejected``. Cancelling a call cancels its request (an
    execute's kernel is interrupted); leaving ``stream`` or ``watch`` early does the same.
    """

    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> ExecuteResult: ...
    def stream(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> AsyncIterator[StreamItem]: ...
    def session(
        self, name: str, *, pool: str | None = None
    ) -> AbstractAsyncContextManager[SessionInterface]: ...
    async def close_session(self, name: str) -> bool: ...
    async def status(self) -> StatusReport: ...
    async def interrupt(
        self, kernel_id: str | None = None, *, session: str | None = None
    ) -> None: ...
    async def restart(
        self, kernel_id: str | None = None, *, session: str | None = None
    ) -> None: ...
    def watch(self) -> AsyncIterator[Event]: ...
    # sessions, jobs and files (core/records.py, tree/jobs.py, tree/files.py)
    async def open_session(
        self,
        name: str | None = None,
        *,
        pool: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        lifetime: float | None = None,
    ) -> SessionInfo: ...
    async def sessions(self) -> list[SessionInfo]: ...
    async def submit(
        self,
        code: str,
        *,
        session: str | None = None,
        pool: str | None = None,
        timeout: float | None = None,
    ) -> JobInfo: ...
    async def job(self, job_id: str) -> JobInfo: ...
    async def wait(self, job_id: str, timeout: float | None = None) -> ExecuteResult | None: ...
    async def job_output(self, job_id: str, offset: int = 0, limit: int = 65536) -> JobOutput: ...
    async def cancel(self, job_id: str) -> bool: ...
    async def jobs(self) -> list[JobInfo]: ...
    async def put_file(self, session: str, path: str, data: bytes) -> None: ...
    async def get_file(self, session: str, path: str) -> bytes: ...
    async def list_files(self, session: str, path: str = ".") -> list[str]: ...
    async def snapshot(self, session: str) -> SnapshotInfo: ...
    async def restore(self, session: str, snapshot_id: str | None = None) -> RestoreInfo: ...
    async def fork_session(self, source: str, name: str) -> RestoreInfo: ...


class SyncSessionInterface(Protocol):
    """:class:`SessionInterface`, blocking."""

    @property
    def name(self) -> str: ...
    @property
    def pool(self) -> str | None: ...
    def execute(self, code: str, *, timeout: float | None = None) -> ExecuteResult: ...
    def stream(self, code: str, *, timeout: float | None = None) -> Iterator[StreamItem]: ...


class SyncSupervisorInterface(Protocol):
    """:class:`SupervisorInterface`, blocking: a method returns when its request is done."""

    def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> ExecuteResult: ...
    def stream(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> Iterator[StreamItem]: ...
    def session(
        self, name: str, *, pool: str | None = None
    ) -> AbstractContextManager[SyncSessionInterface]: ...
    def close_session(self, name: str) -> bool: ...
    def status(self) -> StatusReport: ...
    def interrupt(self, kernel_id: str | None = None, *, session: str | None = None) -> None: ...
    def restart(self, kernel_id: str | None = None, *, session: str | None = None) -> None: ...
    def watch(self) -> Iterator[Event]: ...
    def open_session(
        self,
        name: str | None = None,
        *,
        pool: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        lifetime: float | None = None,
    ) -> SessionInfo: ...
    def sessions(self) -> list[SessionInfo]: ...
    def submit(
        self,
        code: str,
        *,
        session: str | None = None,
        pool: str | None = None,
        timeout: float | None = None,
    ) -> JobInfo: ...
    def job(self, job_id: str) -> JobInfo: ...
    def wait(self, job_id: str, timeout: float | None = None) -> ExecuteResult | None: ...
    def job_output(self, job_id: str, offset: int = 0, limit: int = 65536) -> JobOutput: ...
    def cancel(self, job_id: str) -> bool: ...
    def jobs(self) -> list[JobInfo]: ...
    def put_file(self, session: str, path: str, data: bytes) -> None: ...
    def get_file(self, session: str, path: str) -> bytes: ...
    def list_files(self, session: str, path: str = ".") -> list[str]: ...
    def snapshot(self, session: str) -> SnapshotInfo: ...
    def restore(self, session: str, snapshot_id: str | None = None) -> RestoreInfo: ...
    def fork_session(self, source: str, name: str) -> RestoreInfo: ...


__all__ = [
    "SessionInterface",
    "StreamItem",
    "SupervisorInterface",
    "SyncSessionInterface",
    "SyncSupervisorInterface",
]
