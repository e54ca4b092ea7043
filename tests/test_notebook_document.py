"""The notebook package's pure parts: parameters, cell ids, outputs as Jupyter stores
them, the pool a notebook runs in, the summary table. No kernel."""

from __future__ import annotations

from typing import Any

import nbformat
import pytest

from kernelsup.core.errors import Rejected
from kernelsup.core.outputs import OutputCollector
from kernelsup.core.results import ErrorInfo, ExecuteResult, Output, StatusReport
from kernelsup.notebook import document as doc
from kernelsup.notebook.parameters import injection_index, parameters_code, parse_value
from kernelsup.notebook.report import NotebookReport, format_table
from kernelsup.notebook.runner import NotebookRun, choose_pool


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("True", True),
        ("False", False),
        ("None", None),
        ("7", 7),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        ("abc", "abc"),
        ("", ""),
    ],
)
def test_values_are_typed_as_papermill_types_them(text: str, value: Any) -> None:
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_parameters_in_python_and_bash() -> None:
    values = {"n": 3, "s": "it's", "f": float("inf"), "xs": [1, "a"], "d": {"k": None}}
    code = parameters_code(values, kernel="python3", language="python")
    scope: dict[str, Any] = {}
    exec(code, scope)  # the injected cell, run: the same values
    assert {k: scope[k] for k in values} == values
    bash = parameters_code({"n": 3, "s": "a b", "ok": True}, kernel="bash", language="bash")
    assert bash == "# Parameters\nn=3\ns='a b'\nok=true\n"
    with pytest.raises(Rejected, match="identifier"):
        parameters_code({"not a name": 1}, kernel="python3", language="python")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"parameters": {"a": object()}}, r"parameter 'a': a value must be JSON data"),
        ({"parameters": {"ok": 1, "s": {1, 2}}}, r"parameter 's': .*set is not JSON"),
        ({"parameters": {"1x": 1}}, "identifier"),
        ({"cell_timeout": 10**400}, r"cell_timeout must be a finite number > 0 \(got an integer"),
        ({"cell_timeout": float("nan")}, r"cell_timeout must be a finite number > 0 \(got nan"),
        ({"timeout": -1}, r"^timeout must be a finite number > 0 \(got -1\)"),
    ],
)
def test_a_run_refuses_what_it_could_not_use_naming_it(
    options: dict[str, Any], message: str, tmp_path: Any
) -> None:
    """Refused before any cell runs or anything is written, naming the argument: a value
    the notebook's JSON metadata cannot hold, a timeout no request could carry."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "in.ipynb"
    nbformat.write(nb, path)
    before = path.read_bytes()
    with pytest.raises(Rejected, match=message) as caught:
        NotebookRun(path, output=tmp_path / "out.ipynb", **options)
    assert caught.value.code == "bad_request"
    assert path.read_bytes() == before and not (tmp_path / "out.ipynb").exists()


def _cell(tags: list[str]) -> dict[str, Any]:
    return {"metadata": {"tags": tags}}


def test_where_the_injected_cell_goes() -> None:
    assert injection_index([_cell([]), _cell(["parameters"]), _cell([])]) == (2, False)
    assert injection_index([_cell(["parameters"]), _cell(["injected-parameters"])]) == (1, True)
    assert injection_index([_cell([]), _cell([])]) == (0, False)


def test_cell_ids_are_added_valid_and_unique() -> None:
    nb = nbformat.v4.new_notebook()
    nb.nbformat_minor = 4
    cells = [nbformat.v4.new_code_cell("1"), nbformat.v4.new_markdown_cell("x")]
    cells += [nbformat.v4.new_code_cell("2"), nbformat.v4.new_code_cell("3")]
    nb.cells = cells
    nb.cells[0]["id"] = "same"
    nb.cells[1]["id"] = "same"  # a duplicate
    nb.cells[2]["id"] = "bad id!"  # not [a-zA-Z0-9-_]
    del nb.cells[3]["id"]
    assert doc.add_cell_ids(nb) == 3
    ids = [c.id for c in nb.cells]
    assert ids[0] == "same" and len(set(ids)) == 4
    assert nb.nbformat_minor == 5
    nbformat.validate(nb)


def test_outputs_are_stored_as_jupyter_stores_them() -> None:
    result = ExecuteResult(
        "error",
        outputs=(
            Output("stream", name="stdout", text="hi\n"),
            Output(
                "display_data",
                data={"text/plain": "p", "text/html": "<b>p</b>"},
                metadata={"isolated": True},
            ),
            Output("execute_result", data={"text/plain": "3"}, metadata={}),
            Output("notice", name="truncated", text="[kernelsup: ...]"),
            Output("error", text="Traceback\nValueError: v"),
        ),
        error=ErrorInfo("ValueError", "v", ("Traceback", "ValueError: v")),
        execution_count=4,
    )
    outs = doc.outputs_of(result)
    assert [o.output_type for o in outs] == ["stream", "display_data", "execute_result", "error"]
    assert outs[1].data == {"text/plain": "p", "text/html": "<b>p</b>"}
    assert outs[1].metadata == {"isolated": True}
    assert outs[2].execution_count == 4
    assert (outs[3].ename, outs[3].evalue, outs[3].traceback) == (
        "ValueError",
        "v",
        ["Traceback", "ValueError: v"],
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=outs)])
    nbformat.validate(nb)


def test_a_display_update_changes_the_display_in_place() -> None:
    """As nbclient does: update_display_data changes the outputs with its display_id,
    in whichever cell they are, and adds none."""
    first = OutputCollector(10_000)
    first.add_message(
        "display_data",
        {"data": {"text/plain": "'a'"}, "metadata": {}, "transient": {"display_id": "d1"}},
    )
    first.add_message(
        "update_display_data",
        {"data": {"text/plain": "'b'"}, "metadata": {}, "transient": {"display_id": "d1"}},
    )
    kept = first.outputs()
    assert [(o.type, o.name, o.display_id) for o in kept] == [
        ("display_data", None, "d1"),
        ("display_data", "update", "d1"),
    ]
    assert Output.from_dict(kept[1].to_dict()) == kept[1]
    displays: doc.Displays = {}
    cell_one = doc.outputs_of(ExecuteResult("ok", outputs=tuple(kept)), displays)
    assert len(cell_one) == 1 and cell_one[0].data == {"text/plain": "'b'"}
    later = Output("display_data", name="update", data={"text/plain": "'c'"}, display_id="d1")
    assert doc.outputs_of(ExecuteResult("ok", outputs=(later,)), displays) == []
    assert cell_one[0].data == {"text/plain": "'c'"}  # the first cell's output, changed
    assert "transient" not in cell_one[0]


def _report(*pools: tuple[str, str]) -> StatusReport:
    return StatusReport(pools=tuple({"name": n, "kernel": k} for n, k in pools))


def test_the_pool_is_the_notebooks_kernels() -> None:
    report = _report(("py", "python3"), ("sh", "bash"))
    assert choose_pool(report, pool=None, kernel="bash") == ("sh", "bash")
    assert choose_pool(report, pool=None, kernel=None) == ("py", "python3")
    assert choose_pool(report, pool="sh", kernel="python3") == ("sh", "bash")
    with pytest.raises(Rejected, match=r"no pool runs the kernel 'ir'.*py \(kernel python3\)"):
        choose_pool(report, pool=None, kernel="ir")
    with pytest.raises(Rejected, match="no pool named 'x'") as caught:
        choose_pool(report, pool="x", kernel=None)
    assert caught.value.code == "unknown_pool"


def test_the_summary_table() -> None:
    ok = NotebookReport(input="a.ipynb", output="out/a.ipynb", status="ok", exit_code=0)
    bad = NotebookReport(
        input="b.ipynb",
        output="out/b.ipynb",
        status="error",
        exit_code=1,
        failed_cell=3,
        error={"ename": "KeyError", "evalue": "'k'"},
    )
    table = format_table([ok, bad]).splitlines()
    assert table[0].split() == [
        "NOTEBOOK",
        "STATUS",
        "EXIT",
        "CELLS",
        "FAILED",
        "CELL",
        "TIME",
        "OUTPUT",
    ]
    assert table[2].split()[:5] == ["b.ipynb", "error", "1", "0/0", "3"]
    assert "(KeyError)" in table[2]
    assert table[-1] == "2 notebooks: 1 ok, 1 failed"
