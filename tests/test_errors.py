"""errors.py and codes.py: the error tree as drawn, and the code table as the one truth.

The package's source is read with ``ast``: every code it writes as a literal must be a row
of ``kernelsup.core.codes.CODES``, and every row must be used somewhere. The README's table
must be the table. ``python -m tests.test_errors`` prints the README's tables.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from typing import get_args

import pytest

import kernelsup
from kernelsup.core import errors
from kernelsup.core.codes import (
    CODES,
    STATUSES,
    Exit,
    exec_exit,
    exit_for,
    result_error,
)
from kernelsup.core.errors import (
    ClientError,
    ConfigError,
    KernelStartError,
    KernelsupError,
    ProtocolError,
    Rejected,
)
from kernelsup.core.execution import default_code
from kernelsup.core.results import ExecuteResult, ExitCause, ExitKind, Status

PACKAGE = Path(kernelsup.__file__).parent
README = PACKAGE.parent / "README.md"

# Calls whose first positional argument is a code: rejected("queue_full", ...),
# proto.Error("server_busy", ...), proto.Notice(code, ...), encode_notice(code, ...).
_CODE_FIRST = {"rejected", "_rejected", "_reject_queue", "Error", "Notice", "encode_notice"}
# ... and its second: self._cancel(job, "shutting_down", ...).
_CODE_SECOND = {"_cancel"}
_CODE_SHAPE = re.compile(r"[a-z][a-z0-9_]*\Z")


# --------------------------------------------------------------------------- the walker
def _strings(node: ast.AST) -> list[tuple[str, int]]:
    """The string literals in ``node``, with their lines."""
    return [
        (n.value, n.lineno)
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def _literal_codes(node: ast.AST) -> list[tuple[str, int]]:
    """A code written as a literal, or as either branch of ``A if c else B``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [(node.value, node.lineno)]
    if isinstance(node, ast.IfExp):
        return _literal_codes(node.body) + _literal_codes(node.orelse)
    return []


def _is_code(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "code") or (
        isinstance(node, ast.Name) and node.id == "code"
    )


def codes_in(source: str) -> list[tuple[str, int]]:
    """Every code ``source`` writes as a literal, with its line: ``code="..."`` arguments,
    ``code = "..."`` (class attributes), the first argument of the calls in _CODE_FIRST,
    comparisons with a ``.code``, and the members of a ``*_CODES`` set."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "code":
                    found += _literal_codes(kw.value)
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _CODE_FIRST and node.args:
                found += _literal_codes(node.args[0])
            if name in _CODE_SECOND and len(node.args) > 1:
                found += _literal_codes(node.args[1])
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if node.value is None:
                continue
            if "code" in names and isinstance(node.value, ast.Constant):
                if isinstance(node.value.value, str):
                    found.append((node.value.value, node.value.lineno))
            if any(n.endswith("_CODES") for n in names):
                found += _strings(node.value)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_code(o) for o in operands):
                found += [
                    (text, line)
                    for o in operands
                    if not _is_code(o)
                    for text, line in _strings(o)
                    if _CODE_SHAPE.match(text)  # not `args.code == "-"` (the user's code)
                ]
    return found


def package_codes() -> dict[str, list[str]]:
    """code -> where the package writes it (``path:line``)."""
    where: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for code, line in codes_in(path.read_text()):
            where.setdefault(code, []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return where


def test_the_walker_finds_each_way_of_writing_a_code() -> None:
    source = """
class Odd(KernelsupError):
    code = "a_class_code"
class Typed(KernelsupError):
    code: ClassVar[str] = "an_annotated_code"
raise Rejected("...", code="a_keyword")
rejected("a_rejection", "...")
self._reject_queue("a_queue_rejection", "...")
proto.Error("a_reply", "...", "Rejected")
if exc.code == "a_comparison" or err.code in ("in_a_tuple", "x"):
    pass
_SOME_CODES = frozenset({"in_a_set"})
code = sys.stdin.read() if args.code == "-" else args.code
ExecuteResult("rejected", status="not_a_code", startup_code="nor_this")
raise Rejected("...", code="one_branch" if write else "the_other")
self._cancel(job, "a_cancel", "...")
"""
    assert sorted(code for code, _ in codes_in(source)) == sorted(
        [
            "a_class_code",
            "an_annotated_code",
            "a_keyword",
            "a_rejection",
            "a_queue_rejection",
            "a_reply",
            "a_comparison",
            "in_a_tuple",
            "x",
            "in_a_set",
            "one_branch",
            "the_other",
            "a_cancel",
        ]
    )


def test_every_code_the_package_writes_is_a_row() -> None:
    used = package_codes()
    assert {"queue_full", "server_busy", "auth_failed", "config_invalid"} <= set(used)
    unknown = {code: where for code, where in used.items() if code not in CODES}
    assert not unknown, f"codes missing from kernelsup/core/codes.py: {unknown}"


def test_the_refusal_labels_that_are_codes_are_rows() -> None:
    """kernelsup_control_refusals_total's reasons: the server's own counters (unsigned,
    bad_signature, replayed are not codes) and the codes it refuses with."""
    from kernelsup.metrics.collect import REFUSALS

    not_codes = {"unsigned", "bad_signature", "replayed"}
    assert sorted(set(REFUSALS.values()) - not_codes - set(CODES)) == []


def test_no_row_is_stale() -> None:
    """Each row is written somewhere: as a literal, as the default code of a result
    status, or as the kind of a start failure (a KernelStartError's code)."""
    used = set(package_codes())
    used |= {code for status in get_args(Status) if (code := default_code(status))}
    used |= {kind for kind in get_args(ExitKind) if kind.startswith("start_")}
    assert sorted(set(CODES) - used) == []


def test_codes_are_snake_case_and_meanings_one_line() -> None:
    for row in CODES.values():
        assert _CODE_SHAPE.match(row.code), row
        assert row.meaning and "\n" not in row.meaning and "|" not in row.meaning, row


# --------------------------------------------------------------------------- statuses
def test_every_result_status_is_a_row_and_its_default_code_too() -> None:
    assert list(STATUSES) == list(get_args(Status))
    for status in get_args(Status):
        code = default_code(status)
        assert code is None or code in CODES, status


@pytest.mark.parametrize(
    ("result", "line", "exit_code"),
    [
        (ExecuteResult("ok"), None, 0),
        (ExecuteResult("error", code="execution_error"), None, 1),
        (
            ExecuteResult("timeout", code="timeout", message="ran past 1 s"),
            "timeout ExecTimeout: ran past 1 s",
            124,
        ),
        (
            ExecuteResult("died", code="kernel_died", cause=ExitCause("failure", code=1)),
            "kernel_died KernelDied: died (cause: exit(1))",
            4,
        ),
        (
            ExecuteResult(
                "died", message="kernel k died: exit(1)", cause=ExitCause("failure", code=1)
            ),
            "died KernelDied: kernel k died: exit(1)",
            4,
        ),
        (
            ExecuteResult("rejected", code="queue_full", message="full"),
            "queue_full Rejected: full",
            3,
        ),
        (
            ExecuteResult("cancelled", code="shutting_down", message="stopping"),
            "shutting_down RequestError: stopping",
            130,
        ),
    ],
)
def test_a_result_reads_and_exits_by_its_status(
    result: ExecuteResult, line: str | None, exit_code: int
) -> None:
    err = result_error(result)
    assert (err.describe() if err is not None else None) == line
    assert exec_exit(result) == exit_code


# --------------------------------------------------------------------------- exits
def test_config_errors_exit_2_and_what_reaches_a_client_exits_3() -> None:
    """The Contract: a client command ended by an error exits 3, unless it is a config
    error (2); errors of the tree itself end `kernelsup run` with 1."""
    for row in CODES.values():
        if row.error is None:
            continue
        if issubclass(row.error, ConfigError):
            assert row.exit == Exit.USAGE, row
        elif row.code == "supervisor_gave_up":
            assert row.exit == Exit.ERROR, row
        elif issubclass(row.error, (Rejected, ClientError)):
            assert row.exit == Exit.REJECTED, row


@pytest.mark.parametrize(
    ("err", "exit_code"),
    [
        (Rejected("x", code="unknown_pool"), Exit.REJECTED),
        (Rejected("x", code="from_a_newer_server"), Exit.REJECTED),
        (ProtocolError("x", code="from_a_newer_server"), Exit.REJECTED),
        (KernelStartError("x", code="from_a_newer_server"), Exit.ERROR),
        (KernelsupError("x", code="from_a_newer_server"), Exit.REJECTED),
        (ConfigError("x"), Exit.USAGE),
        (errors.SupervisorGaveUp("x"), Exit.ERROR),
    ],
)
def test_exit_for_an_unknown_code_goes_by_its_class(err: KernelsupError, exit_code: Exit) -> None:
    assert exit_for(err) == exit_code


# --------------------------------------------------------------------------- classes
def _core_classes() -> list[type[KernelsupError]]:
    return [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, KernelsupError) and c.__module__ == errors.__name__
    ]


def _all_subclasses(cls: type[KernelsupError]) -> list[type[KernelsupError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _import_everything() -> None:
    for info in pkgutil.walk_packages(kernelsup.__path__, "kernelsup."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def test_every_error_class_code_is_a_row_of_its_class() -> None:
    _import_everything()
    classes: list[type[KernelsupError]] = [KernelsupError, *_all_subclasses(KernelsupError)]
    for cls in classes:
        if not cls.__module__.startswith("kernelsup."):
            continue  # a test's own subclass
        assert cls.code in CODES, cls
    for cls in _core_classes():
        assert CODES[cls.code].error is cls, cls


def test_rows_name_classes_of_the_error_tree() -> None:
    core = set(_core_classes())
    assert {row.error for row in CODES.values()} - {None} <= core
    assert {row.error for row in STATUSES.values()} - {None} <= core


def test_only_the_errors_module_defines_error_classes() -> None:
    _import_everything()
    elsewhere = [
        f"{c.__module__}.{c.__name__}"
        for c in _all_subclasses(KernelsupError)
        if c.__module__.startswith("kernelsup.") and c.__module__ != errors.__name__
    ]
    assert elsewhere == []


def _drawn_tree() -> list[tuple[int, str, list[str]]]:
    """(depth, class name, codes) for each line of the tree in errors.py's docstring."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in block.splitlines():
        m = re.fullmatch(r"    (?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+) +(?P<codes>\S.*)", line)
        assert m is not None, f"not a line of the tree: {line!r}"
        assert len(m["indent"]) % 4 == 0, line
        codes = [c.strip() for c in m["codes"].split(",")]
        rows.append((len(m["indent"]) // 4, m["name"], codes))
    return rows


def test_the_drawn_tree_is_the_class_tree() -> None:
    rows = _drawn_tree()
    classes = {c.__name__: c for c in _core_classes()}
    assert sorted(name for _, name, _ in rows) == sorted(classes)
    parents: list[str] = []
    for depth, name, codes in rows:
        del parents[depth:]
        cls = classes[name]
        drawn_parent = parents[-1] if parents else "Exception"
        assert drawn_parent == cls.__bases__[0].__name__, name
        assert codes[0] == cls.code, name
        assert all(CODES[code].error is cls for code in codes), name
        parents.append(name)


# --------------------------------------------------------------------------- the README
SECTION = "## Error codes and exit codes"


def readme_tables() -> list[str]:
    """The README's tables of this section, as they must read."""
    lines = ["| result status | its error line | `exec` exits | meaning |", "|---|---|---|---|"]
    for s in STATUSES.values():
        cls = f"`{s.error.__name__}`" if s.error is not None else "(none)"
        lines.append(f"| `{s.status}` | {cls} | {int(s.exit)} | {s.meaning} |")
    lines += ["", "| code | error class | exit | meaning |", "|---|---|---|---|"]
    for c in CODES.values():
        cls = f"`{c.error.__name__}`" if c.error is not None else "(none)"
        lines.append(f"| `{c.code}` | {cls} | {int(c.exit)} | {c.meaning} |")
    return lines


def test_the_readme_table_is_the_code_table() -> None:
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    tables = [line for line in section.splitlines() if line.startswith("|") or not line.strip()]
    # the table lines in order, one blank line between tables
    got = "\n".join(tables).strip()
    got = re.sub(r"\n\s*\n+", "\n\n", got)
    expected = "\n".join(readme_tables())
    assert got == expected, f"README.md's tables should read:\n{expected}"


if __name__ == "__main__":
    print("\n".join(readme_tables()))
