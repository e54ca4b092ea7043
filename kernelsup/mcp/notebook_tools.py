"""The notebook tools of ``kernelsup mcp``: run a notebook, or one cell of it, outputs
written back into the .ipynb file.

Theory of operation
-------------------
The tools read and write the notebook file in this process (a path relative to the MCP
server's working directory); the cells run on the backend, each as a job of the jobs API
(``submit``, then ``wait``), so they go through the same sessions, queues, timeouts and
restarts as ``execute``. A notebook is run by kernelsup/notebook/runner.py, as ``kernelsup
nb run`` runs it: one fresh kernel (a session opened in the notebook's directory), the
notebook written after every cell.

**Long runs.** ``run_notebook`` starts the run as a *notebook job* of this connection
(``nbjob-`` and 8 hex digits) and waits up to ``block_for`` seconds: finished, the summary
comes inline; still running, the model gets the job's id and how far it got, and the run
goes on (the file shows each cell as it ends): ``notebook_status`` follows it,
``cancel_notebook`` stops it (the running cell is interrupted, the file says which cells
did not run). ``run_cell`` runs one cell in a session (default: the connection's own, so
cells run one by one share their state, as in a notebook's editor) as a job of the jobs
API: still running after ``block_for``, the model gets the job id (``job_status``,
``job_output``, ``cancel_job`` work on it) and the outputs are written into the cell when
it ends. Notebook jobs and pending write-backs live in a nursery of the connection
(:func:`running`), cancelled when the connection ends; at most ``MAX_NOTEBOOK_JOBS`` are
remembered, and at most ``MAX_RUNNING`` run at once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import mcp_types as types
import trio

from kernelsup.core.config import HOUR_S
from kernelsup.core.errors import KernelsupError, Rejected
from kernelsup.core.results import ExecuteResult, StatusReport
from kernelsup.mcp.backend import Backend
from kernelsup.mcp.handlers import Connection, Context, text_result
from kernelsup.mcp.render import render_result
from kernelsup.mcp.text import clip, plain
from kernelsup.mcp.tools import schema
from kernelsup.notebook.report import NotebookReport
from kernelsup.notebook.runner import NotebookRun, Step, choose_pool, drive

# Notebook jobs remembered per connection (finished ones are forgotten oldest first).
MAX_NOTEBOOK_JOBS = 32
# Notebook runs at once per connection: each holds a kernel of its own.
MAX_RUNNING = 4
# How long cancelling a cell's job may take when its wait is cancelled.
CANCEL_TIMEOUT_S = 10.0
META_NOTEBOOK = "kernelsup/notebook"  # run_notebook, notebook_status: the report so far

_STRING = {"type": "string", "minLength": 1}
_BLOCK_FOR = {
    "type": "number",
    "minimum": 0,
    "maximum": HOUR_S,
    "description": "seconds to wait for the end before answering with a job id (default: "
    "the server's block_for)",
}
_TIMEOUT = {"type": "number", "exclusiveMinimum": 0}
_NB_JOB = {"job_id": {**_STRING, "description": "a notebook job id, as run_notebook gave it"}}


TOOLS = [
    types.Tool(
        name="run_notebook",
        description=(
            "Run a Jupyter notebook (.ipynb) from top to bottom in a fresh kernel of its own "
            "(the pool whose kernel the notebook names), in the notebook's directory, and "
            "write every cell's outputs back into the file (or into `output`) after each "
            "cell, as Jupyter stores them. `parameters` go in a cell tagged "
            "injected-parameters after the cell tagged parameters, as papermill does. The "
            "run stops at the first cell that raises (unless `allow_errors`), runs past "
            "`cell_timeout` (interrupted) or kills the kernel; later cells are marked not "
            "run. Returns each code cell's status and the failing cell's output; still "
            "running after `block_for` seconds, it goes on as a notebook job whose id you "
            "get: follow it with `notebook_status`, stop it with `cancel_notebook`."
        ),
        input_schema=schema(
            {
                "path": {**_STRING, "description": "the notebook's path"},
                "output": {**_STRING, "description": "write the run notebook here instead"},
                "parameters": {
                    "type": "object",
                    "description": "parameter name -> value (JSON values)",
                },
                "cell_timeout": {**_TIMEOUT, "description": "seconds each cell may run"},
                "timeout": {**_TIMEOUT, "description": "seconds the whole notebook may run"},
                "allow_errors": {"type": "boolean", "description": "go on after an error"},
                "pool": {**_STRING, "description": "the pool (default: the notebook's kernel's)"},
                "kernel": {**_STRING, "description": "run with this kernel instead"},
                "block_for": _BLOCK_FOR,
            },
            "path",
        ),
    ),
    types.Tool(
        name="notebook_status",
        description=(
            "How a notebook job of run_notebook is going or how it ended: each code cell's "
            "status, the failing cell's output; waits up to `block_for` seconds (default 0) "
            "for its end."
        ),
        input_schema=schema({**_NB_JOB, "block_for": _BLOCK_FOR}, "job_id"),
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
        name="cancel_notebook",
        description=(
            "Stop a notebook job: the running cell is interrupted, the file says which "
            "cells did not run."
        ),
        input_schema=schema(_NB_JOB, "job_id"),
        annotations=types.ToolAnnotations(destructive_hint=True),
    ),
    types.Tool(
        name="run_cell",
        description=(
            "Run one code cell of a notebook (by its index in the notebook's cells, from 0, "
            "or its cell id) in a session (default: this connection's own, so cells run one "
            "by one share variables as in a notebook editor), and write its outputs, "
            "execution count and status into that cell of the file. Returns the output like "
            "`execute`; still running after `block_for` seconds, you get its job id "
            "(`job_status`, `job_output`, `cancel_job`) and the outputs are written into "
            "the cell when it ends."
        ),
        input_schema=schema(
            {
                "path": {**_STRING, "description": "the notebook's path"},
                "cell": {
                    "type": ["integer", "string"],
                    "description": "the cell's index in the notebook (from 0) or its id",
                },
                "session": {**_STRING, "description": "the session to run it in"},
                "pool": {**_STRING, "description": "the pool (default: the notebook's kernel's)"},
                "timeout": {**_TIMEOUT, "description": "seconds the cell may run"},
                "block_for": _BLOCK_FOR,
            },
            "path",
            "cell",
        ),
    ),
]


# --------------------------------------------------------------------------- the target
class JobTarget:
    """A backend as the notebook runner's target: each execute is a job, waited for."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> ExecuteResult:
        job = await self.backend.submit(code, session=session, pool=pool, timeout=timeout)
        return await _wait(self.backend, job.id)

    async def status(self) -> StatusReport:
        return await self.backend.status()

    async def close_session(self, name: str) -> bool:
        return await self.backend.close_session(name)

    async def open_session(self, name: str, *, pool: str | None, cwd: str) -> object:
        return await self.backend.open_session(name, pool=pool, cwd=cwd)


async def _wait(backend: Backend, job_id: str, timeout: float | None = None) -> ExecuteResult:
    """The job's result; cancelled meanwhile, the job is cancelled too."""
    try:
        result = await backend.wait(job_id, timeout=timeout)
    except trio.Cancelled:
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_TIMEOUT_S):
            with contextlib.suppress(KernelsupError):
                await backend.cancel(job_id)
        raise
    if result is None:
        raise Rejected(f"job {job_id} did not end", code="internal_error")
    return result


# --------------------------------------------------------------------------- jobs
class NotebookJob:
    def __init__(self, job_id: str, run: NotebookRun) -> None:
        self.id = job_id
        self.run = run
        self.report: NotebookReport | None = None
        self.error: KernelsupError | None = None
        self.done = trio.Event()
        self.scope = trio.CancelScope()


class NotebookJobs:
    """One connection's notebook jobs and pending write-backs, in its nursery."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.jobs: dict[str, NotebookJob] = {}
        self.slots = trio.Semaphore(MAX_RUNNING)

    def start(self, target: JobTarget, run: NotebookRun) -> NotebookJob:
        running = [j for j in self.jobs.values() if not j.done.is_set()]
        if len(running) >= MAX_NOTEBOOK_JOBS:
            raise Rejected(
                f"this connection runs {len(running)} notebooks already; wait for one to end",
                code="too_many_jobs",
            )
        while len(self.jobs) >= MAX_NOTEBOOK_JOBS:  # forget the oldest finished
            oldest = next(j for j in self.jobs.values() if j.done.is_set())
            del self.jobs[oldest.id]
        job = NotebookJob(f"nbjob-{secrets.token_hex(4)}", run)
        self.jobs[job.id] = job
        self.nursery.start_soon(self._run, target, job)
        return job

    async def _run(self, target: JobTarget, job: NotebookJob) -> None:
        try:
            with job.scope:
                async with self.slots:
                    job.report = await drive(target, job.run)
        except KernelsupError as err:
            job.error = err
        except Exception as exc:  # a file that cannot be written...: the server goes on
            job.error = KernelsupError(f"the notebook run failed: {exc!r}", code="error")
        finally:
            job.report = job.report or job.run.final  # a cancelled run's too
            job.done.set()

    def get(self, job_id: str) -> NotebookJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise Rejected(f"no notebook job {job_id!r} in this connection", code="unknown_job")
        return job


_JOBS: weakref.WeakKeyDictionary[Connection, NotebookJobs] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def running(conn: Connection) -> AsyncIterator[None]:
    """The nursery of ``conn``'s notebook jobs for the block: leaving it cancels them (each
    notebook is written with its cells' state first)."""
    async with trio.open_nursery() as nursery:
        _JOBS[conn] = NotebookJobs(nursery)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
            _JOBS.pop(conn, None)


def _jobs(conn: Connection) -> NotebookJobs:
    jobs = _JOBS.get(conn)
    if jobs is None:
        raise Rejected("notebook jobs are not available on this connection", code="rejected")
    return jobs


# --------------------------------------------------------------------------- handlers
async def run_notebook(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    path = _path(args, "path")
    output = _maybe_path(args, "output")
    parameters = args.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise Rejected("parameters must be an object", code="bad_request")
    allow_errors = args.get("allow_errors", False)
    if not isinstance(allow_errors, bool):
        raise Rejected("allow_errors must be true or false", code="bad_request")
    run = NotebookRun(
        path,
        output=output,
        parameters=dict(parameters),
        cell_timeout=_number(args, "cell_timeout"),
        timeout=_number(args, "timeout"),
        allow_errors=allow_errors,
        pool=_string(args, "pool"),
        kernel=_string(args, "kernel"),
    )
    job = _jobs(conn).start(JobTarget(conn.backend), run)
    return await _answer(conn, job, args, default_wait=conn.config.block_for)


async def notebook_status(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    job = _jobs(conn).get(_string(args, "job_id", required=True))
    return await _answer(conn, job, args, default_wait=0.0)


async def cancel_notebook(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    job = _jobs(conn).get(_string(args, "job_id", required=True))
    if job.done.is_set():
        return text_result(f"[kernelsup: notebook job {job.id} had already ended]")
    job.scope.cancel()
    with trio.move_on_after(CANCEL_TIMEOUT_S):
        await job.done.wait()
    return text_result(
        f"[kernelsup: notebook job {job.id} cancelled; {job.run.output} says which cells ran]"
    )


async def _answer(
    conn: Connection, job: NotebookJob, args: Mapping[str, Any], *, default_wait: float
) -> types.CallToolResult:
    block_for = args.get("block_for")
    wait = default_wait if block_for is None else _bounded(block_for, "block_for")
    with trio.move_on_after(wait):
        await job.done.wait()
    if job.error is not None:
        raise job.error
    if job.report is None:
        done, total, cell = job.run.progress()
        at = f"; cell {cell} is running" if cell is not None else ""
        return text_result(
            f"[kernelsup: notebook job {job.id} still running: {done} of {total} code cells "
            f"done{at}; {job.run.output} is written after every cell. Follow it with "
            f'notebook_status(job_id="{job.id}"), stop it with cancel_notebook.]\n',
            meta={META_NOTEBOOK: {"job_id": job.id, "done": False}},
        )
    report = job.report
    text = summary(report, conn.max_chars(args))
    meta = {**report.to_dict(), "job_id": job.id, "done": True}
    return text_result(text, meta={META_NOTEBOOK: meta}, is_error=not report.ok)


def summary(report: NotebookReport, max_chars: int) -> str:
    """The report as the model reads it: one line, a line per code cell, and the output of
    the cell that ended the run (plain text, within ``max_chars``)."""
    head = f"notebook {report.input}: {report.status}"
    if report.failed_cell is not None:
        head += f" at cell {report.failed_cell}"
    head += f" (exit {report.exit_code})"
    if report.message:
        head += f": {report.message}"
    head += f"; {report.cells_run} of {len(report.cells)} code cells ran in "
    head += f"{report.duration_s:.1f} s"
    if report.output:
        head += f"; written to {report.output}"
    lines = [head]
    for c in report.cells:
        count = f" [{c.execution_count}]" if c.execution_count is not None else ""
        lines.append(f"cell {c.index}{count}: {c.status}" + (f" {c.ename}" if c.ename else ""))
    if report.failed_cell is not None and report.notebook is not None:
        cell = report.notebook.cells[report.failed_cell]
        lines.append(f"--- the output of cell {report.failed_cell}:")
        lines.append(_cell_text(cell))
    return clip(plain("\n".join(lines)), max_chars).text


def _cell_text(cell: Any) -> str:
    parts = []
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(str(out.get("text", "")))
        elif kind == "error":
            parts.append("\n".join(out.get("traceback") or [f"{out.get('ename')}"]) + "\n")
        elif kind in ("execute_result", "display_data"):
            parts.append(str(out.get("data", {}).get("text/plain", f"[{kind}]")) + "\n")
    return "".join(parts)


async def run_cell(conn: Connection, ctx: Context, args: Mapping[str, Any]) -> types.CallToolResult:
    path = _path(args, "path")
    selector = args.get("cell")
    if isinstance(selector, bool) or not isinstance(selector, (int, str)):
        raise Rejected("cell must be an index (from 0) or a cell id", code="bad_request")
    timeout = _number(args, "timeout")
    run = NotebookRun(path, cell_timeout=timeout, kernel=None)
    pool, _kernel = choose_pool(
        await conn.backend.status(), pool=_string(args, "pool"), kernel=run.kernel
    )
    step = run.one_cell(selector)
    backend = conn.backend
    job = await conn.in_session(
        _string(args, "session"),
        pool,
        lambda name: backend.submit(step.code, session=name, pool=pool, timeout=step.timeout),
    )
    block_for = args.get("block_for")
    wait = conn.config.block_for if block_for is None else _bounded(block_for, "block_for")
    try:
        result = await backend.wait(job.id, timeout=wait)
    except trio.Cancelled:
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_TIMEOUT_S):
            with contextlib.suppress(KernelsupError):
                await backend.cancel(job.id)
        raise
    if result is None:  # it goes on: its outputs are written into the cell when it ends
        _jobs(conn).nursery.start_soon(_write_back, backend, job.id, run, step)
        return text_result(
            f"[kernelsup: cell {step.index} still running as job {job.id}; its outputs are "
            f"written into {path} when it ends. Follow it with job_output(job_id="
            f'"{job.id}", offset=0) and job_status, stop it with cancel_job.]\n'
        )
    _record(run, step, result)
    rendered = render_result(result, max_chars=conn.max_chars(args))
    text = f"[kernelsup: cell {step.index} of {path}: outputs written back]\n" + rendered.text
    return text_result(text, is_error=rendered.is_error)


async def _write_back(backend: Backend, job_id: str, run: NotebookRun, step: Step) -> None:
    try:
        result = await _wait(backend, job_id)
        _record(run, step, result)
    except (KernelsupError, OSError):
        return  # the supervisor or the file is gone: the cell stays marked running


def _record(run: NotebookRun, step: Step, result: ExecuteResult) -> None:
    """``result`` into its cell of the file as it is now (edited meanwhile, maybe)."""
    now = run.reread(step)
    if now is not None:
        run.record(now, result)


# --------------------------------------------------------------------------- arguments
def _string(args: Mapping[str, Any], name: str, *, required: bool = False) -> Any:
    value = args.get(name)
    if value is None:
        if required:
            raise Rejected(f"the argument {name!r} is required", code="bad_request")
        return None
    if not isinstance(value, str) or not value:
        raise Rejected(f"{name} must be a non-empty string (got {value!r})", code="bad_request")
    return value


def _path(args: Mapping[str, Any], name: str) -> str:
    """A required path argument, absolute (relative to this process's directory)."""
    path = _maybe_path(args, name)
    if path is None:
        raise Rejected(f"the argument {name!r} is required", code="bad_request")
    return path


def _maybe_path(args: Mapping[str, Any], name: str) -> str | None:
    value = _string(args, name)
    return None if value is None else os.path.abspath(os.path.expanduser(value))


def _number(args: Mapping[str, Any], name: str) -> float | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise Rejected(f"{name} must be a number > 0 (got {value!r})", code="bad_request")
    return float(value)


def _bounded(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= HOUR_S:
        raise Rejected(
            f"{name} must be a number >= 0 and <= {HOUR_S:g} (got {value!r})", code="bad_request"
        )
    return float(value)


Handler = Callable[[Connection, Context, Mapping[str, Any]], Awaitable[types.CallToolResult]]
HANDLERS: dict[str, Handler] = {
    "run_notebook": run_notebook,
    "notebook_status": notebook_status,
    "cancel_notebook": cancel_notebook,
    "run_cell": run_cell,
}

__all__ = ["HANDLERS", "META_NOTEBOOK", "TOOLS", "JobTarget", "running", "summary"]
