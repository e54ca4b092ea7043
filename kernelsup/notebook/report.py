"""What a notebook run gives back: one :class:`NotebookReport`, and a table of many."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from nbformat import NotebookNode


@attrs.frozen
class CellReport:
    """One code cell's outcome: ``status`` is an execute status (``ok``, ``error``,
    ``timeout``, ``died``, ``rejected``, ``cancelled``), or ``skipped`` (an empty cell,
    not sent, as nbclient does) or ``not_run`` (the run stopped before it)."""

    index: int  # in the notebook's cells, markdown included
    cell_id: str
    status: str
    execution_count: int | None = None
    duration_s: float = 0.0
    ename: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class NotebookReport:
    """The outcome of one notebook: ``status`` is ``ok`` or the status of the cell that
    ended the run; ``exit_code`` is what ``kernelsup nb run`` exits with for it (the
    table of kernelsup/core/codes.py: 1 error, 124 timeout, 4 kernel died...)."""

    input: str
    output: str | None
    status: str
    exit_code: int
    message: str = ""
    kernel: str | None = None
    pool: str | None = None
    session: str | None = None
    kernel_id: str | None = None
    cells: tuple[CellReport, ...] = ()
    failed_cell: int | None = None  # index of the cell that ended the run
    error: dict[str, Any] | None = None  # that cell's ename and evalue
    duration_s: float = 0.0
    parameters: dict[str, Any] = attrs.field(factory=dict)
    notebook: NotebookNode | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def cells_run(self) -> int:
        return sum(1 for c in self.cells if c.status not in ("not_run", "skipped"))

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self, filter=lambda a, _v: a.name != "notebook")
        d["cells"] = [c.to_dict() for c in self.cells]
        d["cells_run"] = self.cells_run
        return d


COLUMNS = ("NOTEBOOK", "STATUS", "EXIT", "CELLS", "FAILED CELL", "TIME", "OUTPUT")


def format_table(reports: Sequence[NotebookReport]) -> str:
    """A plain table, one line per notebook, then a total line."""
    rows = [COLUMNS]
    for r in reports:
        failed = "-"
        if r.failed_cell is not None:
            failed = f"{r.failed_cell}"
            if r.error and r.error.get("ename"):
                failed += f" ({r.error['ename']})"
        rows.append(
            (
                r.input,
                r.status,
                str(r.exit_code),
                f"{r.cells_run}/{len(r.cells)}",
                failed,
                f"{r.duration_s:.1f}s",
                r.output or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    failed_count = sum(1 for r in reports if not r.ok)
    lines.append(
        f"{len(reports)} notebooks: {len(reports) - failed_count} ok, {failed_count} failed"
    )
    return "\n".join(lines)


__all__ = ["COLUMNS", "CellReport", "NotebookReport", "format_table"]
