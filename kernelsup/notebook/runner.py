"""Run a notebook's code cells, in order, in one kernel, through any supervisor.

Theory of operation
-------------------
:class:`NotebookRun` decides and records, without I/O of its own except writing the
notebook: which cell runs next and with what timeout, what a cell's result makes of it,
when the run stops and what it exits with. Two small drivers do the waiting:
:func:`run_notebook` (async, for the in-process ``Supervisor`` and ``Client`` under trio
or asyncio) and :func:`run_notebook_sync` (``SyncClient``). Both use only the public
interface (``status``, ``execute``, ``close_session``), so the notebook runs wherever
code runs, through the same queues, timeouts and restarts.

One kernel: every cell is an execute in one session, a fresh one (``nb-`` and random
hex, closed at the end: its kernel never ran anyone else's code and is shut down after),
or the caller's ``session``, which is left open. A fresh session is opened in ``cwd``
(default: the notebook's directory, as Jupyter runs a notebook's kernel; for a
NotebookNode, this process's directory) when the supervisor offers ``open_session``; if
it cannot be (a directory the supervisor cannot use: it runs on another machine), the
first cell opens it in a private directory, and any other refusal comes back to the
first cell, which shows it.

The pool is ``pool`` if given, else the pool whose ``kernel`` is ``kernel`` or the
notebook's ``metadata.kernelspec.name``, else (a notebook naming no kernel) the first
pool; no pool for that kernel is a Rejected (``unknown_pool``) naming the pools and their
kernels.

A cell's timeout is ``cell_timeout`` (else the pool's ``exec_timeout``), cut to what is
left of the notebook's ``timeout``. The run stops at a cell whose status is not ``ok``:
an error (unless ``allow_errors``), a timeout (the supervisor interrupted the kernel and
restarted it if the interrupt did not stop it), a kernel death, a refusal. The cell shows
why in an error output (kernelsup's own for a timeout, ``CellTimeoutError``, and a death,
``DeadKernelError``: nbclient's names), later cells are ``not_run``, and the exit code is
the status's row in kernelsup/core/codes.py (1, 124, 4, 3, 130).

The notebook is written (atomically, document.py) once prepared, when a cell starts
(``running``) and when it ends, and at the end; a run cancelled midway writes its state
before the cancellation goes on.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
from nbformat import NotebookNode

from kernelsup.core.codes import Exit, exec_exit, exit_for, result_error
from kernelsup.core.errors import KernelsupError, Rejected
from kernelsup.core.results import ExecuteResult, StatusReport
from kernelsup.notebook import document as doc
from kernelsup.notebook.parameters import check_parameters
from kernelsup.notebook.report import CellReport, NotebookReport

SESSION_PREFIX = "nb-"


class AsyncTarget(Protocol):
    """What a notebook run needs of a supervisor (``Supervisor``, ``Client``, and the MCP
    server's backends all have it)."""

    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> ExecuteResult: ...
    async def status(self) -> StatusReport: ...
    async def close_session(self, name: str) -> bool: ...


class SyncTarget(Protocol):
    """:class:`AsyncTarget`, blocking (``SyncClient``)."""

    def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> ExecuteResult: ...
    def status(self) -> StatusReport: ...
    def close_session(self, name: str) -> bool: ...


@attrs.frozen
class Step:
    """One cell to run: its index in ``nb.cells``, its code and its timeout."""

    index: int
    code: str
    timeout: float | None
    cell_id: str = ""


CellHook = Callable[[NotebookNode, int], None]
# A notebook to run: a path (written back in place unless ``output`` says where), or a
# NotebookNode (changed in place; written only to ``output``).
NotebookSource = str | os.PathLike[str] | NotebookNode


def choose_pool(
    report: StatusReport, *, pool: str | None, kernel: str | None
) -> tuple[str, str | None]:
    """The pool to run in and its kernel (see the module docstring). Raises Rejected."""
    pools = [p for p in report.pools if isinstance(p.get("name"), str)]
    listing = ", ".join(f"{p['name']} (kernel {p.get('kernel')})" for p in pools) or "none"
    if pool is not None:
        for p in pools:
            if p["name"] == pool:
                return pool, p.get("kernel")
        raise Rejected(f"no pool named {pool!r} (pools: {listing})", code="unknown_pool")
    if kernel is None:
        if not pools:
            raise Rejected("the supervisor has no pools", code="unknown_pool")
        return pools[0]["name"], pools[0].get("kernel")
    for p in pools:
        if p.get("kernel") == kernel:
            return p["name"], kernel
    raise Rejected(
        f"no pool runs the kernel {kernel!r} that the notebook needs (pools: {listing}); "
        "add a [[pool]] with that kernel to the config, or pass --pool or --kernel",
        code="unknown_pool",
    )


def _check_seconds(name: str, value: float | None) -> None:
    """Refuse a timeout that is not a finite number > 0, naming the argument (the request
    that would carry it names only its own field, ``timeout``)."""
    if value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and isinstance(value, int) and abs(value) > sys.float_info.max:  # no float
        shown = "an integer too large"
    elif number and math.isfinite(value) and value > 0:
        return
    else:
        shown = repr(value)
    raise Rejected(f"{name} must be a finite number > 0 (got {shown})", code="bad_request")


class NotebookRun:
    """One notebook's run: the document, the cells' outcomes, the decisions (above)."""

    def __init__(
        self,
        notebook: str | os.PathLike[str] | NotebookNode,
        *,
        output: str | os.PathLike[str] | None = None,
        parameters: Mapping[str, Any] | None = None,
        cell_timeout: float | None = None,
        timeout: float | None = None,
        allow_errors: bool = False,
        pool: str | None = None,
        kernel: str | None = None,
        session: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        on_cell_start: CellHook | None = None,
        on_cell_end: CellHook | None = None,
        prepare: bool = True,
    ) -> None:
        for name, value in (("cell_timeout", cell_timeout), ("timeout", timeout)):
            _check_seconds(name, value)
        if isinstance(notebook, NotebookNode):
            self.nb = notebook
            self.input = "<notebook>"
            default_out: str | None = None
        else:
            self.nb = doc.read(notebook)
            self.input = os.fspath(notebook)
            default_out = self.input
        self.output = os.fspath(output) if output is not None else default_out
        if self.output is not None:  # refused now, not by the write after the first cell
            if os.path.isdir(self.output):
                raise Rejected(f"output {self.output!r} is a directory", code="bad_request")
            if not os.path.isdir(os.path.dirname(os.path.abspath(self.output))):
                raise Rejected(f"output {self.output!r}: no such directory", code="bad_request")
        self.parameters = dict(parameters or {})
        check_parameters(self.parameters)
        self.cell_timeout = cell_timeout
        self.timeout = timeout
        self.allow_errors = allow_errors
        self.pool = pool
        self.kernel = kernel or doc.kernel_name(self.nb)
        self.own_session = session is None
        self.session = session or f"{SESSION_PREFIX}{uuid.uuid4().hex[:16]}"
        if cwd is None:
            cwd = Path(self.input).parent if default_out is not None else Path.cwd()
        self.cwd = os.path.abspath(cwd)
        self.on_cell_start = on_cell_start
        self.on_cell_end = on_cell_end
        self._prepare = prepare
        self._next = 0
        self._started = 0.0
        self._deadline: float | None = None
        self._running: Step | None = None
        self._cell_started = 0.0
        self._end: tuple[str, int, str] | None = None  # status, exit, message
        self._failed: int | None = None
        self._error: dict[str, Any] | None = None
        self.kernel_id: str | None = None
        self.outcomes: dict[int, CellReport] = {}
        self.final: NotebookReport | None = None  # once finished (or aborted)
        self._displays: doc.Displays = {}  # bounded by the outputs the notebook holds

    # -- the start ---------------------------------------------------------------
    def start(self, report: StatusReport) -> None:
        """Pick the pool from the supervisor's ``report``, prepare and write the notebook.
        Raises Rejected for a pool that cannot be found or parameters that cannot be
        written."""
        self.pool, pool_kernel = choose_pool(report, pool=self.pool, kernel=self.kernel)
        self.kernel = self.kernel or pool_kernel
        if self._prepare:
            doc.prepare(self.nb, self.parameters, kernel=self.kernel or "python3")
        else:
            doc.add_cell_ids(self.nb)
        self._started = time.monotonic()
        if self.timeout is not None:
            self._deadline = self._started + self.timeout
        meta = self.nb.metadata.setdefault(doc.META, {})
        meta.update(
            status="running",
            start_time=doc.now_iso(),
            kernel=self.kernel,
            pool=self.pool,
            exit_code=None,
        )
        self._write()

    # -- the cells -----------------------------------------------------------------
    def next_step(self) -> Step | None:
        """The next cell to run (marked ``running`` and written), or None when done."""
        while self._end is None and self._next < len(self.nb.cells):
            index = self._next
            self._next += 1
            cell = self.nb.cells[index]
            if cell.get("cell_type") != "code":
                continue
            if not str(cell.source).strip():  # nbclient sends no empty cell either
                cell.metadata[doc.META] = {"status": "skipped"}
                self._set(index, CellReport(index, cell.id, "skipped"))
                continue
            cell_timeout = self.cell_timeout
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self._stop("timeout", Exit.TIMEOUT, self._past_timeout(), index)
                    break
                cell_timeout = left if cell_timeout is None else min(cell_timeout, left)
            step = Step(index, str(cell.source), cell_timeout)
            self._running = step
            self._cell_started = time.monotonic()
            cell.metadata[doc.META] = {"status": "running", "start_time": doc.now_iso()}
            if self.on_cell_start is not None:
                self.on_cell_start(cell, index)
            self._write()
            return step
        return None

    def one_cell(self, selector: int | str) -> Step:
        """A run of one cell (``run_cell``): the cell at that index in ``nb.cells``, or with
        that id; marked ``running`` and written. Raises Rejected (``bad_request``) for no
        such code cell. The rest of the notebook is left as it is."""
        doc.add_cell_ids(self.nb)
        cells = self.nb.cells
        if isinstance(selector, int) and not isinstance(selector, bool):
            index = selector if 0 <= selector < len(cells) else -1
        else:
            index = next((i for i, c in enumerate(cells) if c.get("id") == selector), -1)
        if index < 0 or cells[index].get("cell_type") != "code":
            codes = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
            raise Rejected(
                f"no code cell {selector!r} in {self.input} (code cells by index: "
                f"{', '.join(map(str, codes)) or 'none'})",
                code="bad_request",
            )
        self._started = time.monotonic()
        self._next = len(cells)  # nothing after it
        step = Step(index, str(cells[index].source), self.cell_timeout, str(cells[index].id))
        self._running = step
        self._cell_started = time.monotonic()
        cells[index].metadata[doc.META] = {"status": "running", "start_time": doc.now_iso()}
        self._write()
        return step

    def reread(self, step: Step) -> Step | None:
        """The notebook read again from its file (it may have been edited while ``step``
        ran), and ``step`` where its cell is now; None if the cell is gone."""
        self.nb = doc.read(self.input)
        for index, cell in enumerate(self.nb.cells):
            if cell.get("id") == step.cell_id and cell.get("cell_type") == "code":
                return attrs.evolve(step, index=index)
        return None

    def progress(self) -> tuple[int, int, int | None]:
        """(code cells done, code cells, the index of the cell running or None)."""
        total = sum(1 for c in self.nb.cells if c.get("cell_type") == "code")
        running = self._running.index if self._running is not None else None
        return len(self.outcomes), total, running

    def record(self, step: Step, result: ExecuteResult) -> None:
        """Put ``result`` in its cell, decide whether the run goes on, write."""
        self._running = None
        cell = self.nb.cells[step.index]
        outputs = doc.outputs_of(result, self._displays)
        ename = result.error.ename if result.error is not None else None
        why = self._why(step, result)
        if why is not None:
            ename = why[0]
            outputs.append(doc.error_output(why[0], why[1], ()))
        cell.outputs = outputs
        cell.execution_count = result.execution_count
        duration = time.monotonic() - self._cell_started
        meta: dict[str, Any] = {
            **cell.metadata.get(doc.META, {}),
            "status": result.status,
            "end_time": doc.now_iso(),
            "duration_s": round(duration, 6),
            "queued_s": round(result.queued_s, 6),
            "run_s": round(result.run_s, 6),
            "kernel_id": result.kernel_id,
        }
        notices = [o.text for o in result.outputs if o.type == "notice" and o.text]
        if notices:
            meta["notices"] = notices
        if result.code is not None:
            meta["code"] = result.code
        cell.metadata[doc.META] = meta
        self.kernel_id = result.kernel_id or self.kernel_id
        self._set(
            step.index,
            CellReport(step.index, cell.id, result.status, result.execution_count, duration, ename),
        )
        if result.status == "error" and self.allow_errors:
            pass
        elif result.status != "ok":
            message = why[1] if why is not None else self._error_message(result)
            self._stop(result.status, exec_exit(result), message, step.index)
            self._error = {"ename": ename, "evalue": message}
        if self.on_cell_end is not None:
            self.on_cell_end(cell, step.index)
        self._write()

    def abort(self, reason: str) -> None:
        """The run is being cancelled (``reason``): the running cell is ``cancelled``, the
        rest ``not_run``; written."""
        step, self._running = self._running, None
        index = step.index if step is not None else None
        if index is not None:
            cell = self.nb.cells[index]
            cell.metadata[doc.META] = {
                **cell.metadata.get(doc.META, {}),
                "status": "cancelled",
                "end_time": doc.now_iso(),
            }
            self._set(index, CellReport(index, cell.id, "cancelled"))
        if self._end is None:
            self._stop("cancelled", Exit.INTERRUPTED, f"the run was cancelled ({reason})", index)
        self.finish()

    def refused(self, err: KernelsupError) -> NotebookReport:
        """The run could not start (no such pool, bad parameters...): nothing ran, and the
        notebook is left as it was."""
        self._end = ("rejected", exit_for(err), err.describe())
        return self._report()

    # -- the end ---------------------------------------------------------------------
    def finish(self) -> NotebookReport:
        """Mark the cells that did not run, write the notebook a last time, report."""
        for index, cell in enumerate(self.nb.cells):
            if cell.get("cell_type") == "code" and index not in self.outcomes:
                cell.metadata[doc.META] = {"status": "not_run"}
                self._set(index, CellReport(index, cell.id, "not_run"))
        status, exit_code, message = self._end or ("ok", Exit.OK, "")
        meta = self.nb.metadata.setdefault(doc.META, {})
        meta.update(
            status=status,
            exit_code=int(exit_code),
            end_time=doc.now_iso(),
            duration_s=round(time.monotonic() - self._started, 6),
            session=None if self.own_session else self.session,
        )
        if message:
            meta["message"] = message
        if self._failed is not None:
            meta["failed_cell"] = self._failed
        self._write()
        self.final = self._report()
        return self.final

    def _report(self) -> NotebookReport:
        status, exit_code, message = self._end or ("ok", Exit.OK, "")
        return NotebookReport(
            input=self.input,
            output=self.output,
            status=status,
            exit_code=int(exit_code),
            message=message,
            kernel=self.kernel,
            pool=self.pool,
            session=None if self.own_session else self.session,
            kernel_id=self.kernel_id,
            cells=tuple(self.outcomes[i] for i in sorted(self.outcomes)),
            failed_cell=self._failed,
            error=self._error,
            duration_s=round(time.monotonic() - self._started, 6) if self._started else 0.0,
            parameters=self.parameters,
            notebook=self.nb,
        )

    # -- helpers -----------------------------------------------------------------------
    def _set(self, index: int, outcome: CellReport) -> None:
        self.outcomes[index] = outcome

    def _stop(self, status: str, exit_code: int, message: str, index: int | None) -> None:
        self._end = (status, exit_code, message)
        self._failed = index
        if index is not None and status == "timeout" and index not in self.outcomes:
            cell = self.nb.cells[index]  # the notebook's time ran out before this cell
            cell.outputs = [doc.error_output("CellTimeoutError", message, ())]
            cell.metadata[doc.META] = {"status": "timeout", "end_time": doc.now_iso()}
            self._set(index, CellReport(index, cell.id, "timeout", ename="CellTimeoutError"))
            self._error = {"ename": "CellTimeoutError", "evalue": message}

    def _past_timeout(self) -> str:
        return f"kernelsup: the notebook ran past its timeout of {self.timeout:g} s"

    def _why(self, step: Step, result: ExecuteResult) -> tuple[str, str] | None:
        """kernelsup's own error output for a cell that did not run its course."""
        if result.status == "timeout":
            whole = (
                self._deadline is not None
                and step.timeout is not None
                and (self.cell_timeout is None or step.timeout < self.cell_timeout)
            )
            limit = (
                self._past_timeout()
                if whole
                else (
                    "kernelsup: the cell ran past its timeout"
                    + (f" of {step.timeout:g} s" if step.timeout is not None else "")
                )
            )
            how = (
                "; the kernel did not stop on the interrupt and was restarted (its state is lost)"
                if result.kernel_restarted
                else "; the kernel was interrupted"
            )
            return "CellTimeoutError", limit + how
        if result.status == "died":
            cause = result.cause.describe() if result.cause is not None else "unknown cause"
            detail = f": {result.cause.detail}" if result.cause and result.cause.detail else ""
            return (
                "DeadKernelError",
                f"kernelsup: the kernel died while this cell ran ({cause}{detail}); "
                "later cells were not run",
            )
        if result.status in ("rejected", "cancelled"):
            err = result_error(result)
            text = err.describe() if err is not None else result.message
            return (
                "KernelsupRejected" if result.status == "rejected" else "KernelsupCancelled"
            ), text
        return None

    @staticmethod
    def _error_message(result: ExecuteResult) -> str:
        if result.error is not None:
            return f"{result.error.ename}: {result.error.evalue}"
        return result.message or result.status

    def _write(self) -> None:
        if self.output is not None:
            doc.write_atomic(self.nb, Path(self.output))


# --------------------------------------------------------------------------- drivers
async def run_notebook(
    target: AsyncTarget,
    notebook: str | os.PathLike[str] | NotebookNode,
    **options: Any,
) -> NotebookReport:
    """Run ``notebook`` (a path, written back to ``output`` or in place, or a
    NotebookNode, changed in place) on ``target``; see :class:`NotebookRun` for the
    options. Returns its report; never raises for what happens in the kernel. Raises
    Rejected for a notebook that cannot be read or bad options; a run whose pool cannot
    be found is a report with ``status`` ``rejected``. Cancelling it cancels the cell
    running (its kernel is interrupted) and writes the notebook first."""
    return await drive(target, NotebookRun(notebook, **options))


async def drive(target: AsyncTarget, run: NotebookRun) -> NotebookReport:
    """:func:`run_notebook` of a :class:`NotebookRun` made by the caller (who may follow
    its ``progress()`` meanwhile)."""
    try:
        run.start(await target.status())
    except Rejected as err:
        return run.refused(err)
    try:
        opener = getattr(target, "open_session", None) if run.own_session else None
        if opener is not None:
            try:
                await opener(run.session, pool=run.pool, cwd=run.cwd)
            except Rejected:
                pass  # the first cell opens it, or shows why it cannot (above)
        while (step := run.next_step()) is not None:
            result = await target.execute(
                step.code, pool=run.pool, session=run.session, timeout=step.timeout
            )
            run.record(step, result)
    except BaseException as exc:
        run.abort(type(exc).__name__)
        raise
    finally:
        if run.own_session:
            await _close_quietly(target, run.session)
    return run.finish()


async def _close_quietly(target: AsyncTarget, session: str) -> None:
    """Close the run's own session even while the run is being cancelled (under trio a
    shielded, bounded wait; asyncio lets a cancelled task await in ``finally``)."""
    import sniffio

    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = ""
    try:
        if library == "trio":
            import trio

            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await target.close_session(session)
        else:
            await target.close_session(session)
    except KernelsupError:
        pass  # gone with the supervisor, or expired: nothing is left to close


def run_notebook_sync(
    target: SyncTarget,
    notebook: str | os.PathLike[str] | NotebookNode,
    **options: Any,
) -> NotebookReport:
    """:func:`run_notebook`, blocking (``SyncClient``)."""
    run = NotebookRun(notebook, **options)
    try:
        run.start(target.status())
    except Rejected as err:
        return run.refused(err)
    try:
        opener = getattr(target, "open_session", None) if run.own_session else None
        if opener is not None:
            try:
                opener(run.session, pool=run.pool, cwd=run.cwd)
            except Rejected:
                pass  # the first cell opens it, or shows why it cannot (above)
        while (step := run.next_step()) is not None:
            result = target.execute(
                step.code, pool=run.pool, session=run.session, timeout=step.timeout
            )
            run.record(step, result)
    except BaseException as exc:
        run.abort(type(exc).__name__)
        raise
    finally:
        if run.own_session:
            try:
                target.close_session(run.session)
            except KernelsupError:
                pass
    return run.finish()


# Bound on closing the run's session while the run is being cancelled.
CLOSE_TIMEOUT_S = 10.0

__all__ = [
    "AsyncTarget",
    "NotebookRun",
    "NotebookSource",
    "Step",
    "SyncTarget",
    "choose_pool",
    "drive",
    "run_notebook",
    "run_notebook_sync",
]
