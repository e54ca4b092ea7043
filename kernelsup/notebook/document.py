"""The notebook document: read, prepare for a run, fill a cell, write back atomically.

Everything here goes through nbformat, so what is written is what Jupyter writes: a cell's
outputs are nbformat outputs made with ``nbformat.v4.new_output`` from kernelsup's
:class:`~kernelsup.core.results.ExecuteResult` (stream, display_data with every MIME type
and its metadata, execute_result with its execution_count, error with ename, evalue and
traceback). kernelsup's own words (a notice: output truncated, state lost) are not
outputs; they go in the cell's ``metadata.kernelsup.notices``.

Preparing a run makes the notebook nbformat 4.5 with a valid, unique ``id`` on every cell
(4.4 and older have none; nbformat adds them the same way), clears the code cells'
outputs and execution counts (a stale output must not pass for this run's), injects the
parameters (parameters.py) and sets every code cell's status to ``pending``.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat as _nbformat
from nbformat import NotebookNode

from kernelsup.core.errors import Rejected
from kernelsup.core.results import ExecuteResult
from kernelsup.notebook import parameters as params

# nbformat 4.5 cell ids: 1 to 64 of these characters, unique in the notebook.
_CELL_ID = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")
META = "kernelsup"  # the key of kernelsup's metadata in the notebook and in each cell

# nbformat has no type hints: its functions are used through this, typed at this module's
# functions.
_nbf: Any = _nbformat


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def read(path: str | os.PathLike[str]) -> NotebookNode:
    """The notebook at ``path`` as nbformat 4. Raises Rejected (``bad_request``) naming
    the file for one that cannot be read or is not a notebook."""
    try:
        with warnings.catch_warnings():
            # nbformat warns about cells with no id while reading a 4.5 notebook; a run
            # adds them (prepare), so the warning says nothing to the user.
            warnings.simplefilter("ignore")
            nb: NotebookNode = _nbf.read(os.fspath(path), as_version=4)
            return nb
    except OSError as exc:
        raise Rejected(
            f"cannot read the notebook {os.fspath(path)!r}: {exc.strerror or exc}",
            code="bad_request",
        ) from None
    except Exception as exc:  # nbformat's NotJSONError, ValidationError, KeyError...
        raise Rejected(
            f"{os.fspath(path)!r} is not a notebook nbformat can read: {exc}", code="bad_request"
        ) from None


def kernel_name(nb: NotebookNode) -> str | None:
    """``metadata.kernelspec.name``, or None when the notebook names no kernel."""
    spec = nb.get("metadata", {}).get("kernelspec") or {}
    name = spec.get("name") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) and name else None


def language(nb: NotebookNode) -> str:
    meta = nb.get("metadata", {})
    info = meta.get("language_info") or {}
    spec = meta.get("kernelspec") or {}
    for source in (info, spec):
        lang = source.get("name" if source is info else "language")
        if isinstance(lang, str) and lang:
            return lang
    return "python"


def add_cell_ids(nb: NotebookNode) -> int:
    """Give every cell a valid, unique id (nbformat 4.5); returns how many were added or
    replaced."""
    nb.nbformat, nb.nbformat_minor = 4, max(5, int(nb.get("nbformat_minor", 0)))
    seen: set[str] = set()
    changed = 0
    for cell in nb.cells:
        cid = cell.get("id")
        if not (isinstance(cid, str) and _CELL_ID.match(cid)) or cid in seen:
            cid = _nbf.v4.nbbase.random_cell_id()
            while cid in seen:
                cid = _nbf.v4.nbbase.random_cell_id()
            cell["id"] = cid
            changed += 1
        seen.add(cid)
    return changed


def inject_parameters(nb: NotebookNode, values: Mapping[str, Any], *, kernel: str) -> None:
    """Put ``values`` in an ``injected-parameters`` cell (see parameters.py); nothing for
    no values. The values are kept in ``metadata.kernelsup.parameters``."""
    if not values:
        return
    source = params.parameters_code(values, kernel=kernel, language=language(nb))
    cell = _nbf.v4.new_code_cell(source=source)
    cell.metadata["tags"] = [params.INJECTED_TAG]
    index, replace = params.injection_index(nb.cells)
    if replace:
        nb.cells[index] = cell
    else:
        nb.cells.insert(index, cell)
    nb.metadata.setdefault(META, {})["parameters"] = dict(values)


def prepare(nb: NotebookNode, values: Mapping[str, Any], *, kernel: str) -> None:
    """Ready ``nb`` for a run (see the module docstring)."""
    inject_parameters(nb, values, kernel=kernel)
    add_cell_ids(nb)
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata[META] = {"status": "pending"}


# display_id -> the outputs showing that display, in any cell of the notebook.
Displays = dict[str, list[NotebookNode]]


def outputs_of(result: ExecuteResult, displays: Displays | None = None) -> list[NotebookNode]:
    """``result``'s outputs as Jupyter stores them, in order. An update of a display
    (``update_display_data``) changes the outputs of ``displays`` with its id in place, as
    nbclient does, and adds none; a display with an id is added to ``displays``."""
    found: list[NotebookNode] = []
    displays = {} if displays is None else displays
    for out in result.outputs:
        if out.type == "display_data" and out.display_id is not None and out.name == "update":
            for shown in displays.get(out.display_id, []):
                shown.data = _nbf.from_dict(dict(out.data or {}))
                shown.metadata = _nbf.from_dict(dict(out.metadata or {}))
            continue
        if out.type == "stream":
            found.append(
                _nbf.v4.new_output("stream", name=out.name or "stdout", text=out.text or "")
            )
        elif out.type in ("display_data", "execute_result"):
            extra: dict[str, Any] = {"metadata": dict(out.metadata or {})}
            if out.type == "execute_result":
                extra["execution_count"] = result.execution_count
            shown = _nbf.v4.new_output(out.type, data=dict(out.data or {}), **extra)
            if out.display_id is not None:
                displays.setdefault(out.display_id, []).append(shown)
            found.append(shown)
        elif out.type == "error":
            if result.error is not None:
                found.append(
                    error_output(result.error.ename, result.error.evalue, result.error.traceback)
                )
            else:
                found.append(error_output("Error", "", tuple((out.text or "").splitlines())))
    return found


def error_output(ename: str, evalue: str, traceback: tuple[str, ...] | list[str]) -> NotebookNode:
    """An error output; with no traceback, the ``ename: evalue`` line stands for one (what
    Jupyter's frontends and papermill's error report show)."""
    lines = list(traceback) or [f"{ename}: {evalue}"]
    out: NotebookNode = _nbf.v4.new_output("error", ename=ename, evalue=evalue, traceback=lines)
    return out


def write_atomic(nb: NotebookNode, path: str | os.PathLike[str]) -> None:
    """Write ``nb`` to ``path`` so that a reader sees the old file or the new one, never
    half of one: a temporary file beside it, flushed to disk, then renamed over it."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            _nbf.write(nb, f)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import: os.umask sets it to read it, which must not race another thread.
_UMASK = _read_umask()


__all__ = [
    "META",
    "add_cell_ids",
    "error_output",
    "inject_parameters",
    "kernel_name",
    "language",
    "now_iso",
    "outputs_of",
    "prepare",
    "read",
    "write_atomic",
]
