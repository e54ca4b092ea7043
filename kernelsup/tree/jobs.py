"""Jobs: code that runs detached from its client, its whole output spooled to disk.

Theory of operation
-------------------
``submit`` records a :class:`Job` and starts one task for it in the jobs' own nursery
(under the supervisor's root, not under the request that submitted it), so a client that
disconnects or is cancelled does not cancel its job; any client follows it by id. The
task runs the code through the supervisor's ``execute`` (the same routing, queues,
sessions and bounds as any request) and keeps its one outcome:

* **Exactly one outcome.** ``execute`` gives one result whatever happens to the kernel
  (``died`` when it dies under the code); the task records it once, in a ``finally``, so a
  job cancelled by :meth:`Jobs.cancel` or by the supervisor's stop is recorded
  ``cancelled`` with a message saying which. A job's ``done`` event is set only then.
* **The spool.** Every output, in order, as :func:`kernelsup.core.records.spool_text`
  writes it (rich data as its text and a line naming its MIME types), is appended to
  ``jobs/<id>.out`` in the runtime directory as it arrives, up to
  ``max_job_output_bytes`` per job and ``max_job_spool_bytes`` for all spools; to make
  room, finished jobs' spools go first (oldest first), and what still does not fit is
  counted (``dropped_bytes``) and said at the spool's end. The result's own outputs stay
  bounded by the pool's ``max_output_bytes``, as for any request. ``job_output`` pages the
  spool by byte offset, never splitting a character.
* **Bounds.** At most ``MAX_LIVE_JOBS`` jobs queued or running (more: ``too_many_jobs``),
  at most ``MAX_KEPT_JOBS`` finished ones remembered, each for ``job_retention`` seconds
  after it ended; a forgotten job's spool is deleted. Each running job holds one open
  file (its spool).
* **Stop.** :meth:`Jobs.stop` cancels every unfinished job (``cancelled``, code
  ``shutting_down``) and waits for their outcomes before the pools stop; the spools go
  with the supervisor.
"""

from __future__ import annotations

import collections
import math
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Protocol

import attrs
import trio

from kernelsup.core.errors import Rejected
from kernelsup.core.records import JobInfo, JobOutput, page_end, spool_text
from kernelsup.core.results import ExecuteResult, Output
from kernelsup.tree.kernel_handle import JOB_MESSAGE_BYTES

# Jobs queued or running at once: each is a task, an open spool file and a request in a
# pool's queue (which has its own queue_limit).
MAX_LIVE_JOBS = 1024
# Finished jobs remembered besides the job_retention bound; past it the oldest are
# forgotten early. Each holds its result (outputs within max_output_bytes, 1 MiB by
# default): 256 of them is at most a few hundred MiB in the worst case, typically far less.
MAX_KEPT_JOBS = 256
# The most one job_output call returns (bytes of the spool).
MAX_PAGE_BYTES = 1024 * 1024
DEFAULT_PAGE_BYTES = 65536
# The largest kernel message a job decodes whole (a bigger one is cut, head and tail kept
# and the cut marked in the spool): one message is decoded at a time, so this bounds the
# memory a job's output takes in the supervisor whatever max_job_output_bytes is.
JOB_MESSAGE_MAX = 16 * 1024 * 1024


class RunFn(Protocol):
    def __call__(
        self,
        code: str,
        *,
        pool: str | None,
        session: str | None,
        timeout: float | None,
        on_output: Callable[[Output], None],
        on_start: Callable[[str], None],
    ) -> Awaitable[ExecuteResult]: ...


@attrs.define(eq=False)
class Job:
    id: str
    session: str | None
    pool: str | None
    timeout: float | None
    spool: Path
    submitted: float
    status: str = "queued"
    started: float | None = None
    ended: float | None = None
    ended_at: float = 0.0  # trio clock, for job_retention
    result: ExecuteResult | None = None
    file: IO[bytes] | None = None
    written: int = 0
    dropped: int = 0
    evicted: bool = False
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    cancel_code: str = "cancelled"
    cancel_message: str = "cancelled by request"

    def info(self) -> JobInfo:
        return JobInfo(
            id=self.id,
            session=self.session,
            pool=self.pool,
            status=self.result.status if self.result is not None else self.status,
            output_bytes=self.written,
            dropped_bytes=self.dropped,
            submitted=self.submitted,
            started=self.started,
            ended=self.ended,
            result=self.result,
        )


def _unknown(job_id: str) -> Rejected:
    shown = job_id[:80]
    return Rejected(
        f"no job {shown!r} (unknown, or forgotten job_retention seconds after it ended)",
        code="unknown_job",
        job_id=shown,
    )


class Jobs:
    """Every job of one supervisor (see the module's docstring)."""

    def __init__(
        self,
        run: RunFn,
        spool_dir: Path,
        *,
        max_output_bytes: int,
        max_spool_bytes: int,
        retention: float,
    ) -> None:
        self._run = run
        self.spool_dir = spool_dir
        self.max_output_bytes = max_output_bytes
        self.max_spool_bytes = max_spool_bytes
        self.retention = retention
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._spooled = 0  # bytes in every spool together
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._stopping = False

    # ------------------------------------------------------------------- life
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the jobs' tasks and forget finished jobs as they age. Its spool
        directory is made empty here and removed when this returns or is cancelled."""
        shutil.rmtree(self.spool_dir, ignore_errors=True)  # a previous run's
        self.spool_dir.mkdir(mode=0o700, parents=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._forget_loop()
        finally:
            for job in self._jobs.values():
                self._close_spool(job)
            shutil.rmtree(self.spool_dir, ignore_errors=True)

    def cancel_all(self) -> None:
        """At the supervisor's stop, before anything else refuses requests: cancel every
        unfinished job (``cancelled``, code ``shutting_down``); later submits are
        refused. Returns at once."""
        self._stopping = True
        for job in self._jobs.values():
            if not job.done.is_set():
                self._cancel(job, "shutting_down", "the supervisor stopped while the job ran")

    async def stop(self) -> None:
        """:meth:`cancel_all`, then wait for every job's outcome."""
        self.cancel_all()
        for job in list(self._jobs.values()):
            await job.done.wait()

    # ------------------------------------------------------------------- calls
    def submit(
        self, code: str, *, session: str | None, pool: str | None, timeout: float | None
    ) -> JobInfo:
        """Start a job at once; raises Rejected (``shutting_down``, ``too_many_jobs``)."""
        if self._stopping or self._nursery is None:
            raise Rejected("the supervisor is shutting down", code="shutting_down")
        live = sum(1 for j in self._jobs.values() if not j.done.is_set())
        if live >= MAX_LIVE_JOBS:
            raise Rejected(
                f"{live} jobs are queued or running (at most {MAX_LIVE_JOBS}); wait for "
                "some to end or cancel them",
                code="too_many_jobs",
            )
        job_id = "job-" + secrets.token_hex(8)
        job = Job(
            id=job_id,
            session=session,
            pool=pool,
            timeout=timeout,
            spool=self.spool_dir / f"{job_id}.out",
            submitted=time.time(),
        )
        job.file = open(job.spool, "xb")
        self._jobs[job_id] = job
        self._nursery.start_soon(self._run_job, job, code)
        return job.info()

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise _unknown(str(job_id))
        return job

    def info(self, job_id: str) -> JobInfo:
        return self.get(job_id).info()

    def list(self) -> list[JobInfo]:
        """Every job remembered, the most recently submitted first."""
        return [job.info() for job in reversed(self._jobs.values())]

    async def wait(self, job_id: str, timeout: float | None = None) -> ExecuteResult | None:
        """The job's result once it is done; None if it is still running after
        ``timeout`` seconds (None: wait as long as it takes)."""
        job = self.get(job_id)
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await job.done.wait()
        return job.result

    def cancel(self, job_id: str) -> bool:
        """Cancel the job (its kernel is interrupted); False if it had already ended."""
        job = self.get(job_id)
        if job.done.is_set():
            return False
        self._cancel(job, "cancelled", "cancelled by request (cancel)")
        return True

    async def output(
        self, job_id: str, offset: int = 0, limit: int = DEFAULT_PAGE_BYTES
    ) -> JobOutput:
        """A page of the job's spool from byte ``offset``, at most ``limit`` bytes.
        Raises Rejected (``unknown_job``, ``bad_request`` for an offset past the end)."""
        job = self.get(job_id)
        done = job.done.is_set()  # before reading: a job that ends meanwhile is read again
        if job.evicted:
            return JobOutput(
                f"[kernelsup: job {job.id}'s spooled output was removed to keep "
                f"max_job_spool_bytes = {self.max_spool_bytes}]\n",
                job.written,
                done,
            )
        if offset > job.written:
            raise Rejected(
                f"offset {offset} is past the end of job {job.id}'s output "
                f"({job.written} bytes so far)",
                code="bad_request",
            )
        if job.file is not None:
            job.file.flush()
        want = min(limit, job.written - offset)
        try:
            chunk = await trio.to_thread.run_sync(_read, job.spool, offset, want) if want else b""
        except FileNotFoundError:  # evicted or forgotten while we read
            return (
                await self.output(job_id, offset, limit)
                if job.evicted
                else JobOutput("", offset, True)
            )
        end = len(chunk)
        if not (done and offset + end >= job.written):
            end = page_end(chunk) or end  # a character cut by the end waits for the next page
        return JobOutput(
            chunk[:end].decode("utf-8", "replace"),
            offset + end,
            done and offset + end >= job.written,
        )

    # ------------------------------------------------------------------- inside
    def _cancel(self, job: Job, code: str, message: str) -> None:
        job.cancel_code, job.cancel_message = code, message
        job.scope.cancel()

    async def _run_job(self, job: Job, code: str) -> None:
        result: ExecuteResult | None = None

        def on_start(kernel_id: str) -> None:
            job.status = "running"
            job.started = time.time()

        # Decode the kernel's messages whole (up to JOB_MESSAGE_MAX, one at a time), so
        # the spool is not cut where the request's bounded result is.
        JOB_MESSAGE_BYTES.set(JOB_MESSAGE_MAX)
        try:
            with job.scope:
                result = await self._run(
                    code,
                    pool=job.pool,
                    session=job.session,
                    timeout=job.timeout,
                    on_output=lambda out: self._spool(job, out),
                    on_start=on_start,
                )
        finally:
            # Cancelled before it ran (a rejection because of the stop is the same event
            # seen from the pool), or while it ran: the cancel is what ended it.
            if result is None or (job.scope.cancel_called and result.status == "rejected"):
                result = ExecuteResult(
                    "cancelled",
                    code=job.cancel_code,
                    message=job.cancel_message,
                    session=job.session,
                )
            self._finish(job, result)

    def _finish(self, job: Job, result: ExecuteResult) -> None:
        if job.result is not None:
            return  # one outcome
        if job.dropped:
            note = (
                f"[kernelsup: {job.dropped} bytes of output were not kept (max_job_output_bytes"
                f" = {self.max_output_bytes}, max_job_spool_bytes = {self.max_spool_bytes})]\n"
            )
            self._write(job, note.encode())
        self._close_spool(job)
        job.result = result
        job.ended = time.time()
        job.ended_at = trio.current_time()
        job.done.set()
        self._wake()

    def _spool(self, job: Job, out: Output) -> None:
        """Append one output to the job's spool, within the bounds (called synchronously
        from the kernel's actor: never blocks on anything but the page cache)."""
        if job.file is None:
            return
        data = spool_text(out).encode("utf-8", "replace")
        room = self.max_output_bytes - job.written
        if len(data) > self.max_spool_bytes - self._spooled:
            self._evict(len(data))
        room = min(room, self.max_spool_bytes - self._spooled)
        if len(data) > room:
            kept = page_end(data[: max(room, 0)])
            job.dropped += len(data) - kept
            data = data[:kept]
        if data:
            self._write(job, data)

    def _write(self, job: Job, data: bytes) -> None:
        assert job.file is not None
        try:
            job.file.write(data)
        except OSError:  # the disk is full: the spool stops, the count says so
            job.dropped += len(data)
            return
        job.written += len(data)
        self._spooled += len(data)

    def _evict(self, need: int) -> None:
        """Delete finished jobs' spools, oldest first, until ``need`` bytes fit."""
        for old in self._jobs.values():
            if self.max_spool_bytes - self._spooled >= need:
                return
            if old.done.is_set() and not old.evicted and old.written:
                self._drop_spool(old)

    def _close_spool(self, job: Job) -> None:
        if job.file is not None:
            try:
                job.file.close()
            except OSError:
                pass
            job.file = None

    def _drop_spool(self, job: Job) -> None:
        self._close_spool(job)
        try:
            os.unlink(job.spool)
        except OSError:
            pass
        self._spooled -= job.written
        job.evicted = True

    def _forget(self, job: Job) -> None:
        if not job.evicted:
            self._drop_spool(job)
        self._jobs.pop(job.id, None)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _forget_loop(self) -> None:
        while True:
            now = trio.current_time()
            finished = [j for j in self._jobs.values() if j.done.is_set()]
            for job in finished:
                if now - job.ended_at >= self.retention:
                    self._forget(job)
            finished = [j for j in finished if j.id in self._jobs]
            for job in finished[: max(0, len(finished) - MAX_KEPT_JOBS)]:
                self._forget(job)
            due = min(
                (j.ended_at + self.retention for j in self._jobs.values() if j.done.is_set()),
                default=math.inf,
            )
            with trio.move_on_at(max(due, now + 0.01)):
                await self._changed.wait()


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


__all__ = ["DEFAULT_PAGE_BYTES", "MAX_LIVE_JOBS", "MAX_PAGE_BYTES", "Job", "Jobs"]
