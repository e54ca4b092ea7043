#!/usr/bin/env python3
"""Generate the blocking client from the async one, so the client is written once.

    .venv/bin/python scripts/unasync.py          # rewrite the generated file
    .venv/bin/python scripts/unasync.py --check  # exit 1, with a diff, if it is stale (CI)

kernelsup/control/client.py is the source; kernelsup/control/sync_client.py is made from
it, the way httpcore makes its ``_sync/`` package from ``_async/`` (its own
``scripts/unasync.py``):

1. An ``if True:  # ASYNC`` block (psycopg's convention) is async-only: the generated file
   keeps only its ``else:`` branch, one level less indented, or nothing without one.
2. Every line goes through :data:`RENAMES` (``async def`` -> ``def``, ``await x`` -> ``x``,
   ``Client`` -> ``SyncClient``...), docstrings and ``else:`` branches included, so an
   ``else:`` branch names things as the source does (``-> Client``).
3. A loop that only re-yields, ``for x in it: yield x`` once ``async`` is gone, becomes
   ``yield from it``.
4. The module docstring is replaced by :data:`SYNC_DOC`, and the result is put through
   ``ruff format`` and ruff's import sorting, as every file of the project is.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "kernelsup" / "control" / "client.py"
TARGET = ROOT / "kernelsup" / "control" / "sync_client.py"

SYNC_DOC = '''\
"""The blocking client, :class:`SyncClient`: one thread, blocking zmq, no event loop.

GENERATED from client.py by scripts/unasync.py: do not edit; change client.py and run
``python scripts/unasync.py``. The methods are :class:`Client`'s, written once there; the
socket is sync_transport.py's.
"""
'''

# (pattern, replacement), applied in order to every line.
RENAMES: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\bAsyncGenerator\[([^\[\]]+), None\]", r"Generator[\1, None, None]"),
    (r"\bAsyncGenerator\b", "Generator"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\baclosing\b", "closing"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\b__aiter__\b", "__iter__"),
    (r"\b__anext__\b", "__next__"),
    (r"\bStopAsyncIteration\b", "StopIteration"),
    (r"\bAsyncTransport\b", "SyncTransport"),
    (r"\bClientSession\b", "SyncSession"),
    (r"\bClient\b", "SyncClient"),
]

# Rule 3: a loop that only re-yields (``async for x in it: yield x``) is ``yield from it``.
_REYIELD = re.compile(r"^( *)for (\w+) in (.+):\n\1    yield \2\n", re.MULTILINE)

_ASYNC_IF = re.compile(r"( *)if True:  # ASYNC\n")


class UnasyncError(Exception):
    """The source does not have the shape this script expects."""


def _block_end(lines: list[str], start: int, indent: str) -> int:
    """The index just past the block body starting at ``start``: lines indented deeper
    than ``indent`` (and blank lines among them)."""
    deeper = indent + " "
    end = start
    for i in range(start, len(lines)):
        if lines[i].strip() == "":
            continue
        if not lines[i].startswith(deeper):
            break
        end = i + 1
    if end == start:
        raise UnasyncError(f"line {start}: an `if True:  # ASYNC` block with no body")
    return end


def drop_async_blocks(lines: list[str]) -> list[str]:
    """Rule 1: each ``if True:  # ASYNC`` block becomes its ``else:`` body, dedented."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _ASYNC_IF.fullmatch(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group(1)
        i = _block_end(lines, i + 1, indent)
        j = i
        while j < len(lines) and lines[j].strip() == "":
            j += 1
        if j < len(lines) and lines[j] == f"{indent}else:\n":
            i = _block_end(lines, j + 1, indent)
            body = lines[j + 1 : i]
            while body and body[0].strip() == "":
                body.pop(0)
            for line in body:
                if line.strip() and not line.startswith(indent + "    "):
                    raise UnasyncError(f"line {j + 1}: an else: branch not indented by 4")
                out.append(line[4:] if line.strip() else "\n")
    return out


def rename(line: str) -> str:
    """Rule 2."""
    for pattern, replacement in RENAMES:
        line = re.sub(pattern, replacement, line)
    return line


def _replace_docstring(text: str) -> str:
    match = re.match(r'"""(.*?)"""\n', text, re.DOTALL)
    if match is None:
        raise UnasyncError(f"{SOURCE.name} does not start with its docstring")
    return SYNC_DOC + text[match.end() :]


def _ruff(args: list[str], text: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise UnasyncError(f"ruff {' '.join(args)} failed:\n{done.stderr}{done.stdout}")
    return done.stdout


def unasync(source: str) -> str:
    """The sync module for the async module ``source``."""
    lines = source.splitlines(keepends=True)
    text = "".join(rename(line) for line in drop_async_blocks(lines))
    text = _REYIELD.sub(r"\1yield from \3\n", text)
    text = _replace_docstring(text)
    text = _ruff(["check", "--quiet", "--select", "I", "--fix-only", "--exit-zero"], text)
    return _ruff(["format", "--quiet"], text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that the generated file is current"
    )
    args = parser.parse_args(argv)
    try:
        wanted = unasync(SOURCE.read_text())
    except UnasyncError as exc:
        print(f"unasync: {exc}", file=sys.stderr)
        return 2
    current = TARGET.read_text() if TARGET.exists() else ""
    if current == wanted:
        return 0
    name = os.path.relpath(TARGET, ROOT)
    if args.check:
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            f"{name} (as it is)",
            f"{name} (as {SOURCE.name} makes it)",
        )
        sys.stderr.writelines(diff)
        print(f"unasync: {name} is stale: run python scripts/unasync.py", file=sys.stderr)
        return 1
    TARGET.write_text(wanted)
    print(f"unasync: wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
