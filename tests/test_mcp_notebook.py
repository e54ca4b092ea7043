"""`kernelsup mcp`'s notebook tools, through the `mcp` package's own stdio client:
run_notebook (inline and as a notebook job), notebook_status, cancel_notebook, run_cell
(inline and written back after block_for). Every notebook written must pass
nbformat.validate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import trio

from kernelsup.adapters.tether import sweep
from kernelsup.mcp.notebook_tools import META_NOTEBOOK
from tests.test_mcp import (  # noqa: F401  (_patient_client: an autouse fixture)
    Workdir,
    _patient_client,
    embedded,
    text_of,
)

TIMEOUT_S = 120


@pytest.fixture
def work() -> Iterator[Workdir]:
    w = Workdir()
    try:
        yield w
    except BaseException:
        print(w.stderr())  # the server's own account of what went wrong
        raise
    finally:
        sweep(w.runtime_dir)
        shutil.rmtree(w.path, ignore_errors=True)


def notebook(path: Path, sources: list[str], tags: dict[int, list[str]] | None = None) -> Path:
    cells = [
        {
            "cell_type": "code",
            "id": f"c{i}",
            "execution_count": None,
            "metadata": {"tags": (tags or {}).get(i, [])},
            "outputs": [],
            "source": src,
        }
        for i, src in enumerate(sources)
    ]
    cells.insert(1, {"cell_type": "markdown", "id": "m", "metadata": {}, "source": "# text"})
    path.write_text(
        json.dumps(
            {
                "cells": cells,
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    return path


def valid(path: Path) -> Any:
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return nb


def stdout_of(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


async def test_run_notebook_inline_and_as_a_job(work: Workdir) -> None:
    nb = notebook(
        work.path / "a.ipynb",
        ["n = 1", "print('n is', n)", "1 / 0", "print('never')"],
        tags={0: ["parameters"]},
    )
    with trio.fail_after(TIMEOUT_S):
        async with embedded(work) as client:
            done = await client.call(
                "run_notebook",
                {"path": str(nb), "output": "out.ipynb", "parameters": {"n": 5}},
            )
            text = text_of(done)
            assert done.is_error  # a cell raised
            assert "error at cell 4" in text and "ZeroDivisionError" in text, text
            assert done.meta is not None and done.meta[META_NOTEBOOK]["exit_code"] == 1
            out = valid(work.path / "out.ipynb")  # relative to the server's directory
            assert stdout_of(out.cells[3]) == "n is 5\n"
            assert out.cells[5].metadata["kernelsup"]["status"] == "not_run"

            slow = notebook(work.path / "slow.ipynb", ["import time; time.sleep(60)", "1"])
            started = await client.call("run_notebook", {"path": str(slow), "block_for": 0.5})
            assert not started.is_error
            assert started.meta is not None
            job_id = started.meta[META_NOTEBOOK]["job_id"]
            assert f"notebook job {job_id} still running" in text_of(started)
            still = await client.call("notebook_status", {"job_id": job_id})
            assert "still running" in text_of(still)
            while valid(slow).cells[0].metadata["kernelsup"]["status"] != "running":
                await trio.sleep(0.1)  # its kernel may still be starting (bounded above)
            cancelled = await client.call("cancel_notebook", {"job_id": job_id})
            assert "cancelled" in text_of(cancelled)
            ended = await client.call("notebook_status", {"job_id": job_id})
            assert "cancelled" in text_of(ended) and ended.is_error
            cells = valid(slow).cells
            assert [c.metadata["kernelsup"]["status"] for c in cells if c.cell_type == "code"] == [
                "cancelled",
                "not_run",
            ]


async def test_run_cell_shares_state_and_writes_back(work: Workdir) -> None:
    nb = notebook(
        work.path / "c.ipynb",
        ["x = 20", "x + 1", "import time; time.sleep(2); print('late', x)"],
    )
    with trio.fail_after(TIMEOUT_S):
        async with embedded(work) as client:
            first = await client.call("run_cell", {"path": str(nb), "cell": 0})
            assert not first.is_error, text_of(first)
            second = await client.call("run_cell", {"path": str(nb), "cell": "c1"})
            assert "21" in text_of(second), text_of(second)
            cell = valid(nb).cells[2]
            assert cell.outputs[0].data["text/plain"] == "21"
            assert cell.execution_count == 2 and cell.outputs[0].execution_count == 2
            # past block_for: the outputs arrive in the file when the cell ends
            later = await client.call("run_cell", {"path": str(nb), "cell": 3, "block_for": 0.2})
            assert "still running as job" in text_of(later), text_of(later)
            while valid(nb).cells[3].metadata["kernelsup"]["status"] == "running":
                await trio.sleep(0.1)
            assert stdout_of(valid(nb).cells[3]) == "late 20\n"
            bad = await client.call("run_cell", {"path": str(nb), "cell": 1})
            assert bad.is_error and "no code cell 1" in text_of(bad)
