"""Notebooks under supervision: `kernelsup nb run`, run_notebook, the papermill engine.

The notebooks of the comparison are papermill's own test notebooks, from the papermill
wheel installed by the test extra (papermill/tests/notebooks), not copies: each is run by
`kernelsup nb run` and by papermill's default engine (nbclient), and the two output
notebooks are compared cell by cell. Every output notebook must pass nbformat.validate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import papermill
import psutil
import pytest

import kernelsup as kernelsup_pkg
from kernelsup.adapters.tether import TETHER_ENV
from kernelsup.control.sync_client import SyncClient
from tests.helpers import assert_nothing_left, install_bash_kernelspec
from tests.supervisor_process import SupervisorProcess, supervisor

PAPERMILL_NOTEBOOKS = Path(papermill.__file__).parent / "tests" / "notebooks"
CLI_TIMEOUT = 240


def kernelsup(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``kernelsup ARGS`` in ``cwd``. An embedded supervisor's runtime directory goes in a
    TMPDIR of the call's own: once the command has exited, no process may mention it."""
    tmp = Path(tempfile.mkdtemp(prefix="nbrun-", dir=cwd))
    try:
        return subprocess.run(
            [sys.executable, "-m", "kernelsup", *args],
            cwd=cwd,
            env={**os.environ, "TMPDIR": str(tmp), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        assert_nothing_left(tmp)  # the tether's reaper names the runtime directory
        assert not wait_untethered(tmp)


def wait_untethered(tmp: Path, within: float = 10.0) -> list[int]:
    """Processes still carrying a tether marker under ``tmp`` (kernels, what they
    started: a forked kernel's command line names no path), after up to ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(
                    TETHER_ENV, ""
                ).startswith(str(tmp)):
                    left.append(proc.pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def valid(path: Path) -> Any:
    """The notebook at ``path``, which must pass nbformat.validate."""
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return nb


def code_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def status_of(cell: Any) -> str:
    return str(cell.metadata["kernelsup"]["status"])


def write_nb(
    path: Path,
    sources: list[str],
    *,
    kernel: str = "python3",
    minor: int = 5,
    tags: dict[int, list[str]] | None = None,
    ids: bool = True,
) -> Path:
    cells = []
    for i, src in enumerate(sources):
        cell: dict[str, Any] = {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {"tags": (tags or {}).get(i, [])},
            "outputs": [],
            "source": src,
        }
        if ids and minor >= 5:
            cell["id"] = f"c{i}"
        cells.append(cell)
    language = "bash" if kernel == "bash" else "python"
    doc = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": kernel, "display_name": kernel, "language": language}},
        "nbformat": 4,
        "nbformat_minor": minor,
    }
    path.write_text(json.dumps(doc))
    return path


# --------------------------------------------------------------------------- papermill's notebooks
# (notebook, parameters): papermill's own test notebooks: parameters, a print, logging to
# stderr, a failed import, an assert, a line magic error, sys.exit(1), nbformat 4.4.
COMPARED = [
    ("simple_execute.ipynb", {"msg": "Hello"}),
    ("no_parameters.ipynb", {}),
    ("broken1.ipynb", {}),
    ("test_logging.ipynb", {}),
    ("line_magic_error.ipynb", {}),
    ("sysexit1.ipynb", {}),
    ("nb_version_4.4.ipynb", {"var": 5}),
    ("complex_parameters.ipynb", {"msg": "Hi", "a": 3.5}),
]


def _streams(cell: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for out in cell.outputs:
        if out.output_type == "stream":
            found[out.name] = found.get(out.name, "") + out.text
    return found


def _values(cell: Any) -> list[str]:
    return [o.data.get("text/plain", "") for o in cell.outputs if o.output_type == "execute_result"]


def _enames(cell: Any) -> list[str]:
    return [o.ename for o in cell.outputs if o.output_type == "error"]


def _params(values: dict[str, Any]) -> list[str]:
    return [x for name, value in values.items() for x in ("-p", name, str(value))]


@pytest.fixture(scope="module")
def compared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Path, dict[str, int]]]:
    """Each notebook of COMPARED run by papermill (its default engine) and by kernelsup;
    the two output directories and kernelsup's exit code per notebook."""
    base = tmp_path_factory.mktemp("compared")
    ours, theirs = base / "kernelsup", base / "papermill"
    ours.mkdir()
    theirs.mkdir()
    exits = {}
    for name, values in COMPARED:
        source = PAPERMILL_NOTEBOOKS / name
        theirs_done = subprocess.run(
            [
                sys.executable,
                "-m",
                "papermill",
                str(source),
                str(theirs / name),
                "--kernel",
                "python3",
                "--no-progress-bar",
                *_params(values),
            ],
            cwd=base,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        done = kernelsup(base, "nb", "run", str(source), "-o", str(ours / name), *_params(values))
        assert (ours / name).exists(), done.stdout + done.stderr
        exits[name] = done.returncode
        exits[f"papermill:{name}"] = theirs_done.returncode
    yield ours, theirs, exits


@pytest.mark.parametrize("name", [n for n, _ in COMPARED])
def test_papermill_notebooks_give_what_papermill_gives(
    compared: tuple[Path, Path, dict[str, int]], name: str
) -> None:
    ours_dir, theirs_dir, exits = compared
    ours, theirs = valid(ours_dir / name), nbformat.read(str(theirs_dir / name), as_version=4)
    # papermill adds markdown cells of its own around an error: code cells are compared
    pairs = zip(code_cells(ours), code_cells(theirs), strict=True)
    for i, (a, b) in enumerate(pairs):
        if "injected-parameters" not in a.metadata.get("tags", []):
            assert a.source == b.source, i
        ran_theirs = b.execution_count is not None or bool(b.outputs)
        ran_ours = status_of(a) not in ("not_run", "skipped")
        assert ran_ours == ran_theirs, (i, status_of(a), b.outputs)
        assert _streams(a) == _streams(b), i
        assert _enames(a) == _enames(b), i
        assert _values(a) == _values(b), i
        if ran_ours:
            assert a.execution_count == b.execution_count, i
        # papermill marks the cell that raised (an error output or only an error reply)
        assert (status_of(a) == "error") == bool(b.metadata["papermill"]["exception"]), i
    assert exits[name] == (1 if theirs.metadata["papermill"]["exception"] else 0)


def test_parameters_go_after_the_parameters_cell_and_replace_an_earlier_injection(
    tmp_path: Path,
) -> None:
    nb = write_nb(
        tmp_path / "p.ipynb", ["x = 1\nname = 'a'", "print(x * 2, name)"], tags={0: ["parameters"]}
    )
    done = kernelsup(
        tmp_path, "nb", "run", str(nb), "-o", "out.ipynb", "-p", "x", "5", "-p", "name", "b c"
    )
    assert done.returncode == 0, done.stderr
    out = valid(tmp_path / "out.ipynb")
    assert [c.metadata.get("tags") for c in out.cells] == [
        ["parameters"],
        ["injected-parameters"],
        [],
    ]
    assert _streams(out.cells[2]) == {"stdout": "10 b c\n"}
    assert out.metadata["kernelsup"]["parameters"] == {"x": 5, "name": "b c"}
    # the output run again: the injected cell is replaced, not added to
    done = kernelsup(tmp_path, "nb", "run", "out.ipynb", "-p", "x", "7")
    assert done.returncode == 0, done.stderr
    again = valid(tmp_path / "out.ipynb")
    assert len(again.cells) == 3
    assert _streams(again.cells[2]) == {"stdout": "14 a\n"}


def test_cell_ids_are_added_to_4_4_and_4_5_notebooks(tmp_path: Path) -> None:
    old = write_nb(tmp_path / "old.ipynb", ["1 + 1", "print('x')"], minor=4)
    bare = write_nb(tmp_path / "bare.ipynb", ["2 + 2"], minor=5, ids=False)
    done = kernelsup(tmp_path, "nb", "run", str(old), str(bare), "-o", "out", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [n["status"] for n in report["notebooks"]] == ["ok", "ok"]
    for name, value in (("old.ipynb", "2"), ("bare.ipynb", "4")):
        out = valid(tmp_path / "out" / name)
        assert (out.nbformat, out.nbformat_minor) == (4, 5)
        ids = [c.id for c in out.cells]
        assert all(ids) and len(set(ids)) == len(ids)
        first = out.cells[0].outputs[0]
        assert first.output_type == "execute_result"
        assert first.execution_count == 1 and first.data["text/plain"] == value


def test_a_kernel_death_shows_its_cause_and_later_cells_are_not_run(tmp_path: Path) -> None:
    nb = write_nb(
        tmp_path / "die.ipynb", ["print('before')", "import os; os._exit(3)", "print('after')"]
    )
    done = kernelsup(tmp_path, "nb", "run", str(nb))
    assert done.returncode == 4, done.stderr
    out = valid(nb)
    first, dying, after = code_cells(out)
    assert _streams(first) == {"stdout": "before\n"}
    assert status_of(dying) == "died"
    errors = [o for o in dying.outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["DeadKernelError"]
    assert "exit(3)" in errors[0].evalue
    assert status_of(after) == "not_run" and after.outputs == []
    assert out.metadata["kernelsup"]["exit_code"] == 4


def test_a_cell_past_its_timeout_is_interrupted(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "slow.ipynb", ["import time; time.sleep(120)", "print('after')"])
    done = kernelsup(tmp_path, "nb", "run", str(nb), "--cell-timeout", "1")
    assert done.returncode == 124, done.stderr
    slow, after = code_cells(valid(nb))
    assert status_of(slow) == "timeout"
    assert "CellTimeoutError" in _enames(slow)
    assert status_of(after) == "not_run"


def test_the_whole_notebook_has_a_timeout(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "slow.ipynb", ["print('quick')", "import time; time.sleep(120)", "1"])
    done = kernelsup(tmp_path, "nb", "run", str(nb), "--timeout", "3", "--json")
    assert done.returncode == 124, done.stderr
    report = json.loads(done.stdout)["notebooks"][0]
    assert report["status"] == "timeout" and report["failed_cell"] == 1
    assert "notebook ran past its timeout of 3 s" in report["message"]
    quick, slow, last = code_cells(valid(nb))
    assert status_of(quick) == "ok" and status_of(slow) == "timeout"
    assert status_of(last) == "not_run"


def test_allow_errors_runs_on(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "e.ipynb", ["1 / 0", "print('still')"])
    done = kernelsup(tmp_path, "nb", "run", str(nb), "--allow-errors")
    assert done.returncode == 0, done.stderr
    bad, good = code_cells(valid(nb))
    assert _enames(bad) == ["ZeroDivisionError"] and status_of(bad) == "error"
    assert _streams(good) == {"stdout": "still\n"}


def test_rich_outputs_are_stored_as_jupyter_stores_them(tmp_path: Path) -> None:
    code = (
        "from IPython.display import display, HTML\n"
        "display(HTML('<b>hi</b>'), metadata={'isolated': True})\n"
        "print('out'); import sys; print('err', file=sys.stderr)\n"
        "{'a': 1}"
    )
    nb = write_nb(tmp_path / "rich.ipynb", [code])
    assert kernelsup(tmp_path, "nb", "run", str(nb)).returncode == 0
    (cell,) = code_cells(valid(nb))
    kinds = [o.output_type for o in cell.outputs]
    assert kinds == ["display_data", "stream", "stream", "execute_result"]
    shown = cell.outputs[0]
    assert shown.data["text/html"] == "<b>hi</b>" and "text/plain" in shown.data
    assert shown.metadata == {"isolated": True}
    assert _streams(cell) == {"stdout": "out\n", "stderr": "err\n"}
    assert cell.outputs[3].execution_count == cell.execution_count == 1
    meta = cell.metadata["kernelsup"]
    assert meta["status"] == "ok" and meta["duration_s"] >= meta["run_s"] > 0
    assert meta["start_time"] < meta["end_time"]


def test_the_notebook_is_written_after_every_cell(tmp_path: Path) -> None:
    """A cell reads the notebook from disk while it runs: the cell before is there with
    its output, and this one is marked running."""
    nb = tmp_path / "self.ipynb"
    reader = (
        f"import json; d = json.load(open({str(nb)!r}))\n"
        "print(d['cells'][0]['outputs'][0]['text'],"
        " d['cells'][1]['metadata']['kernelsup']['status'])"
    )
    write_nb(nb, ["print('first')", reader])
    assert kernelsup(tmp_path, "nb", "run", str(nb)).returncode == 0
    assert _streams(code_cells(valid(nb))[1]) == {"stdout": "['first\\n'] running\n"}


def test_no_pool_for_the_notebooks_kernel_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "supervisor.toml").write_text(
        '[[pool]]\nname = "py"\nkernel = "python3"\nsize = 1\nspares = 0\n'
    )
    nb = write_nb(tmp_path / "r.ipynb", ["1"], kernel="ir")
    done = kernelsup(tmp_path, "nb", "run", str(nb))
    assert done.returncode == 3
    assert "no pool runs the kernel 'ir'" in done.stdout
    assert "py (kernel python3)" in done.stdout


@pytest.fixture(scope="module")
def bash_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bash_kernel's kernelspec, installed by its own installer into a private prefix."""
    return install_bash_kernelspec(tmp_path_factory.mktemp("specs"))


def test_a_bash_notebook_with_parameters(tmp_path: Path, bash_spec: Path) -> None:
    nb = write_nb(
        tmp_path / "b.ipynb",
        ["n=1", "echo hello $((n * 2))", "false_command_xyz"],
        kernel="bash",
        tags={0: ["parameters"]},
    )
    done = kernelsup(
        tmp_path, "nb", "run", str(nb), "-p", "n", "21", env={"JUPYTER_PATH": str(bash_spec)}
    )
    assert done.returncode == 1, done.stdout + done.stderr
    out = valid(nb)
    cells = code_cells(out)
    assert cells[1].source == "# Parameters\nn=21\n"
    assert "hello 42" in _streams(cells[2]).get("stdout", "")
    assert status_of(cells[3]) == "error" and _enames(cells[3])


# --------------------------------------------------------------------------- the API
async def test_supervisor_run_notebook_in_process(tmp_path: Path, runtime_dir: Path) -> None:
    cfg = kernelsup_pkg.Config.from_dict({"pool": [{"size": 1, "spares": 1}]})
    nb = write_nb(tmp_path / "a.ipynb", ["x = 20", "x + 1"], tags={0: ["parameters"]})
    async with kernelsup_pkg.open_supervisor(cfg, runtime_dir=runtime_dir) as sup:
        report = await sup.run_notebook(nb, output=tmp_path / "o.ipynb", parameters={"x": 41})
        assert report.ok and report.status == "ok" and report.pool == "default"
        assert [c.status for c in report.cells] == ["ok", "ok", "ok"]
        # its fresh session was closed: no session is left open
        assert all(not p["sessions"] for p in (await sup.status()).pools)
        # a pool that does not exist: refused, nothing written
        refused = await sup.run_notebook(nb, output=tmp_path / "no.ipynb", pool="nope")
        assert refused.status == "rejected" and refused.exit_code == 3
        assert "no pool named 'nope'" in refused.message
        assert not (tmp_path / "no.ipynb").exists()
    out = valid(tmp_path / "o.ipynb")
    assert code_cells(out)[2].outputs[0].data["text/plain"] == "42"
    assert nbformat.read(str(nb), as_version=4).cells[1].source == "x + 1"  # input untouched


@pytest.fixture(scope="module")
def served() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=1)


def test_a_running_supervisor_is_used_by_the_cli_and_the_clients(
    served: SupervisorProcess, tmp_path: Path
) -> None:
    nb = write_nb(tmp_path / "s.ipynb", ["import os; os.getpid()", "print('hi')"])
    done = kernelsup(tmp_path, "nb", "run", "-c", str(served.config), str(nb), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ran_on"] == f"the supervisor at {served.endpoint}"
    assert report["notebooks"][0]["status"] == "ok"
    valid(nb)

    with SyncClient(served.config) as client:
        report = client.run_notebook(nb, output=tmp_path / "sync.ipynb")
        assert report.ok and report.cells_run == 2
        assert not any(p["sessions"] for p in client.status().pools)
    assert _streams(code_cells(valid(tmp_path / "sync.ipynb"))[1]) == {"stdout": "hi\n"}

    async def through_asyncio() -> Any:
        async with kernelsup_pkg.connect(served.config) as client:
            return await client.run_notebook(nb, output=tmp_path / "aio.ipynb", timeout=60)

    report = asyncio.run(through_asyncio())
    assert report.ok
    assert _streams(code_cells(valid(tmp_path / "aio.ipynb"))[1]) == {"stdout": "hi\n"}


def test_the_kernel_runs_in_the_notebooks_directory(tmp_path: Path) -> None:
    """As Jupyter runs a notebook: relative paths are the notebook's directory's."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.txt").write_text("beside the notebook")
    nb = write_nb(tmp_path / "sub" / "n.ipynb", ["print(open('data.txt').read())"])
    done = kernelsup(tmp_path, "nb", "run", str(nb))
    assert done.returncode == 0, done.stdout
    assert _streams(code_cells(valid(nb))[0]) == {"stdout": "beside the notebook\n"}


# --------------------------------------------------------------------------- the papermill engine
def papermill_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``papermill ARGS``; with ``--engine kernelsup``, its embedded supervisor leaves
    nothing behind (as :func:`kernelsup` checks)."""
    tmp = Path(tempfile.mkdtemp(prefix="pmrun-", dir=cwd))
    try:
        return subprocess.run(
            [sys.executable, "-m", "papermill", "--no-progress-bar", *args],
            cwd=cwd,
            env={**os.environ, "TMPDIR": str(tmp)},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
    finally:
        assert_nothing_left(tmp)
        assert not wait_untethered(tmp)


@pytest.mark.parametrize("name", ["simple_execute.ipynb", "broken1.ipynb", "test_logging.ipynb"])
def test_papermill_engine_kernelsup_gives_what_the_default_engine_gives(
    compared: tuple[Path, Path, dict[str, int]], tmp_path: Path, name: str
) -> None:
    _ours_dir, theirs_dir, exits = compared
    values = dict(COMPARED)[name]
    done = papermill_cli(
        tmp_path,
        "--engine",
        "kernelsup",
        str(PAPERMILL_NOTEBOOKS / name),
        "out.ipynb",
        *_params(values),
    )
    assert done.returncode == exits[f"papermill:{name}"], done.stderr[-2000:]
    ours = valid(tmp_path / "out.ipynb")
    theirs = nbformat.read(str(theirs_dir / name), as_version=4)
    assert [c.cell_type for c in ours.cells] == [c.cell_type for c in theirs.cells]
    for i, (a, b) in enumerate(zip(code_cells(ours), code_cells(theirs), strict=True)):
        assert _streams(a) == _streams(b), i
        assert _enames(a) == _enames(b), i
        assert _values(a) == _values(b), i
        assert a.execution_count == b.execution_count, i
        assert a.metadata["papermill"]["status"] == b.metadata["papermill"]["status"], i
    assert ours.metadata["papermill"]["exception"] == theirs.metadata["papermill"]["exception"]


def test_papermill_engine_shows_a_kernel_death_in_its_cell(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "die.ipynb", ["print('before')", "import os; os._exit(3)", "1"])
    done = papermill_cli(tmp_path, "--engine", "kernelsup", str(nb), "out.ipynb")
    assert done.returncode == 1
    assert "DeadKernelError" in done.stderr
    out = valid(tmp_path / "out.ipynb")
    before, dying, after = code_cells(out)
    assert _streams(before) == {"stdout": "before\n"}
    assert _enames(dying) == ["DeadKernelError"]
    assert dying.metadata["papermill"]["status"] == "failed"
    assert after.outputs == [] and after.execution_count is None


def test_display_updates_are_stored_as_papermill_stores_them(tmp_path: Path) -> None:
    nb = write_nb(
        tmp_path / "d.ipynb",
        [
            "h = display('first', display_id=True)",
            "h.update('second')",  # changes the first cell's output
            "from IPython.display import update_display\n"
            "display('x', display_id='d')\nupdate_display('y', display_id='d')\nprint('end')",
        ],
    )
    done = kernelsup(tmp_path, "nb", "run", str(nb), "-o", "ours.ipynb")
    assert done.returncode == 0, done.stdout + done.stderr
    theirs = papermill_cli(tmp_path, str(nb), "theirs.ipynb", "--kernel", "python3")
    assert theirs.returncode == 0, theirs.stderr[-2000:]

    def shown(path: Path) -> list[list[tuple[str, Any]]]:
        return [
            [(o.output_type, o.get("data") or o.get("text")) for o in c.outputs]
            for c in code_cells(valid(path))
        ]

    ours = shown(tmp_path / "ours.ipynb")
    assert ours == shown(tmp_path / "theirs.ipynb")
    assert ours[0] == [("display_data", {"text/plain": "'second'"})]
    assert ours[1] == []


def test_session_keeps_its_state_on_a_running_supervisor(
    served: SupervisorProcess, tmp_path: Path
) -> None:
    nb = write_nb(tmp_path / "k.ipynb", ["kept = 41 + 1"])
    done = kernelsup(tmp_path, "nb", "run", "-c", str(served.config), str(nb), "--session", "nbk")
    assert done.returncode == 0, done.stdout + done.stderr
    with SyncClient(served.config) as client:
        try:
            assert client.execute("kept", session="nbk").result == "42"
        finally:
            client.close_session("nbk")


def test_ctrl_c_writes_the_notebook_and_exits_130(tmp_path: Path) -> None:
    nb = write_nb(tmp_path / "c.ipynb", ["print('one')", "import time; time.sleep(120)", "2"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelsup", "nb", "run", str(nb)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline:  # until the sleeping cell is marked running
            try:
                cells = nbformat.read(str(nb), as_version=4).cells
            except Exception:
                cells = []
            if (
                len(cells) == 3
                and cells[1].metadata.get("kernelsup", {}).get("status") == "running"
            ):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    one, slow, last = code_cells(valid(nb))
    assert status_of(one) == "ok" and status_of(slow) == "cancelled"
    assert status_of(last) == "not_run"
    assert valid(nb).metadata["kernelsup"]["exit_code"] == 130


def test_a_cell_that_ignores_the_interrupt_is_killed(tmp_path: Path) -> None:
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(120)"
    nb = write_nb(tmp_path / "stubborn.ipynb", [stubborn, "1"])
    done = kernelsup(tmp_path, "nb", "run", str(nb), "--cell-timeout", "1", "--json")
    assert done.returncode == 124, done.stderr
    message = json.loads(done.stdout)["notebooks"][0]["message"]
    assert "did not stop on the interrupt and was restarted" in message
    cell, after = code_cells(valid(nb))
    assert status_of(cell) == "timeout" and status_of(after) == "not_run"
    assert [o.evalue for o in cell.outputs if o.output_type == "error"][-1] == message


@pytest.mark.parametrize("first", ["kernelsup.cli.papermill_engine", "papermill"])
def test_the_engine_is_registered_whichever_is_imported_first(first: str) -> None:
    """papermill loads its engines' entry points while papermill.engines is imported: the
    engine's module must not import papermill.engines itself (a circular import)."""
    code = (
        f"import {first}\n"
        "from papermill.engines import papermill_engines\n"
        "from kernelsup.cli.papermill_engine import KernelsupEngine\n"
        "assert papermill_engines.get_engine('kernelsup') is KernelsupEngine\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
