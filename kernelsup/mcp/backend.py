"""What the MCP tools call: a :class:`Backend`.

An in-process :class:`kernelsup.Supervisor` (``kernelsup mcp --embedded``) is one as it is;
:class:`Remote` is one for a running ``kernelsup run``. Remote opens a connection per call
with :func:`kernelsup.connect` (a hello round trip, about a millisecond over IPC), so a
supervisor restarted between two calls is simply found again, and one that is down is a
tool error carrying ``unreachable``, never a crash. Sessions and jobs live in the
supervisor, not in the connection, so they persist from call to call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kernelsup.control.client import connect
from kernelsup.core.config import Config
from kernelsup.core.records import JobInfo, JobOutput, SessionInfo
from kernelsup.core.results import ExecuteResult, StatusReport
from kernelsup.core.snapshots import RestoreInfo, SnapshotInfo


class Backend(Protocol):
    """The part of the public API (ARCHITECTURE.md, "Contracts") the tools use: the same
    on Supervisor and Client."""

    async def open_session(
        self,
        name: str | None = None,
        *,
        pool: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SessionInfo: ...
    async def sessions(self) -> list[SessionInfo]: ...
    async def close_session(self, name: str) -> bool: ...
    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> ExecuteResult: ...
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
    async def status(self) -> StatusReport: ...
    async def interrupt(
        self, kernel_id: str | None = None, *, session: str | None = None
    ) -> None: ...
    async def restart(
        self, kernel_id: str | None = None, *, session: str | None = None
    ) -> None: ...


class Remote:
    """A ``kernelsup run`` supervisor, one connection per call (see the module docstring).

    Every method raises :class:`KernelsupError` (``unreachable``, ``auth_failed``,
    ``rejected``...) like :class:`kernelsup.Client`'s."""

    def __init__(self, target: Config | str) -> None:
        self.target = target

    async def open_session(
        self,
        name: str | None = None,
        *,
        pool: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SessionInfo:
        async with connect(self.target) as client:
            return await client.open_session(name, pool=pool, cwd=cwd, env=env)

    async def sessions(self) -> list[SessionInfo]:
        async with connect(self.target) as client:
            return await client.sessions()

    async def close_session(self, name: str) -> bool:
        async with connect(self.target) as client:
            return await client.close_session(name)

    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> ExecuteResult:
        async with connect(self.target) as client:
            return await client.execute(code, pool=pool, timeout=timeout, fresh=fresh)

    async def submit(
        self,
        code: str,
        *,
        session: str | None = None,
        pool: str | None = None,
        timeout: float | None = None,
    ) -> JobInfo:
        async with connect(self.target) as client:
            return await client.submit(code, session=session, pool=pool, timeout=timeout)

    async def job(self, job_id: str) -> JobInfo:
        async with connect(self.target) as client:
            return await client.job(job_id)

    async def wait(self, job_id: str, timeout: float | None = None) -> ExecuteResult | None:
        async with connect(self.target) as client:
            return await client.wait(job_id, timeout=timeout)

    async def job_output(self, job_id: str, offset: int = 0, limit: int = 65536) -> JobOutput:
        async with connect(self.target) as client:
            return await client.job_output(job_id, offset=offset, limit=limit)

    async def cancel(self, job_id: str) -> bool:
        async with connect(self.target) as client:
            return await client.cancel(job_id)

    async def jobs(self) -> list[JobInfo]:
        async with connect(self.target) as client:
            return await client.jobs()

    async def put_file(self, session: str, path: str, data: bytes) -> None:
        async with connect(self.target) as client:
            await client.put_file(session, path, data)

    async def get_file(self, session: str, path: str) -> bytes:
        async with connect(self.target) as client:
            return await client.get_file(session, path)

    async def list_files(self, session: str, path: str = ".") -> list[str]:
        async with connect(self.target) as client:
            return await client.list_files(session, path)

    async def snapshot(self, session: str) -> SnapshotInfo:
        async with connect(self.target) as client:
            return await client.snapshot(session)

    async def restore(self, session: str, snapshot_id: str | None = None) -> RestoreInfo:
        async with connect(self.target) as client:
            return await client.restore(session, snapshot_id)

    async def fork_session(self, source: str, name: str) -> RestoreInfo:
        async with connect(self.target) as client:
            return await client.fork_session(source, name)

    async def status(self) -> StatusReport:
        async with connect(self.target) as client:
            return await client.status()

    async def interrupt(self, kernel_id: str | None = None, *, session: str | None = None) -> None:
        async with connect(self.target) as client:
            await client.interrupt(kernel_id, session=session)

    async def restart(self, kernel_id: str | None = None, *, session: str | None = None) -> None:
        async with connect(self.target) as client:
            await client.restart(kernel_id, session=session)


__all__ = ["Backend", "Remote"]
