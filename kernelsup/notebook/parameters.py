"""Notebook parameters the way papermill injects them.

The cell tagged ``parameters`` holds the notebook's defaults; the values given for a run go
in a new code cell tagged ``injected-parameters`` right after it (or in place of an
injected cell left by an earlier run, or first when no cell is tagged ``parameters``), so
they override the defaults and a reader of the output notebook sees what the run used.
A value is written as code in the kernel's language: Python and bash here; other languages
through papermill's translators when papermill is installed.
"""

from __future__ import annotations

import importlib
import json
import math
import shlex
from collections.abc import Mapping
from typing import Any

from kernelsup.core.errors import Rejected

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
COMMENT = "# Parameters"

_IDENTIFIER_HINT = "a parameter name must be an identifier (letters, digits and _)"


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value typed as papermill's command line types it: True, False
    and None by name, then int, then float, else the string as it is."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _python(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_python(k)}: {_python(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    return repr(str(value))


def _bash(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "(" + " ".join(_bash(v) for v in value) + ")"
    if isinstance(value, (int, float)):
        return str(value)
    return shlex.quote(str(value))


def check_parameters(parameters: Mapping[str, Any]) -> None:
    """Refuse a parameter the run could not record: the values go into the notebook's
    metadata (``papermill.parameters``, as papermill writes them), which is JSON. Raises
    Rejected (``bad_request``) naming the parameter."""
    for name, value in parameters.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise Rejected(f"{_IDENTIFIER_HINT}; got {name!r}", code="bad_request")
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError, RecursionError) as exc:
            raise Rejected(
                f"parameter {name!r}: a value must be JSON data (a string, number, "
                f"true/false, null, or a list or dict of those): {exc}",
                code="bad_request",
            ) from None


def parameters_code(parameters: Mapping[str, Any], *, kernel: str, language: str) -> str:
    """The injected cell's source for ``parameters`` in the notebook's language. Raises
    Rejected (``bad_request``) for a name that is not an identifier or a language with no
    translation."""
    for name in parameters:
        if not (isinstance(name, str) and name.isidentifier()):
            raise Rejected(f"{_IDENTIFIER_HINT}; got {name!r}", code="bad_request")
    lang = language.lower()
    if lang == "python" or kernel.startswith("python"):
        lines = [f"{name} = {_python(value)}" for name, value in parameters.items()]
    elif lang == "bash" or kernel == "bash":
        lines = [f"{name}={_bash(value)}" for name, value in parameters.items()]
    else:
        return _papermill_code(parameters, kernel=kernel, language=language)
    return "\n".join([COMMENT, *lines]) + "\n"


def _papermill_code(parameters: Mapping[str, Any], *, kernel: str, language: str) -> str:
    try:
        translators: Any = importlib.import_module("papermill.translators")
    except ImportError:
        translators = None
    if translators is not None:
        try:
            code = translators.translate_parameters(
                kernel, language, dict(parameters), "Parameters"
            )
            return str(code)
        except Exception as exc:  # papermill's PapermillException: no translator
            why = str(exc)
    else:
        why = "papermill, whose translators know more languages, is not installed"
    raise Rejected(
        f"cannot write parameters in the notebook's language {language!r} (kernel "
        f"{kernel!r}): kernelsup writes Python and bash; {why}",
        code="bad_request",
    )


def tags(cell: Mapping[str, Any]) -> list[str]:
    found = cell.get("metadata", {}).get("tags", [])
    return [t for t in found if isinstance(t, str)] if isinstance(found, list) else []


def injection_index(cells: list[Any]) -> tuple[int, bool]:
    """Where the injected cell goes: ``(index, replace)``. An earlier run's injected cell
    is replaced; else the cell goes after the ``parameters`` cell, else first."""
    for i, cell in enumerate(cells):
        if INJECTED_TAG in tags(cell):
            return i, True
    for i, cell in enumerate(cells):
        if PARAMETERS_TAG in tags(cell):
            return i + 1, False
    return 0, False


__all__ = [
    "INJECTED_TAG",
    "PARAMETERS_TAG",
    "check_parameters",
    "injection_index",
    "parameters_code",
    "parse_value",
    "tags",
]
