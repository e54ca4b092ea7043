"""The documents stay true to the tree: every module path that README.md and
ARCHITECTURE.md name exists, every package folder is in ARCHITECTURE.md's layer table, and
nothing in the repository points at a file outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "ARCHITECTURE.md")
# `core/slot.py`, `kernelsup/adapters/tether.py`, `tests/test_slot.py`, `scripts/unasync.py`
_PATH = re.compile(r"`((?:[\w.]+/)*[\w.]+\.py)`")
_SEARCH = ("", "kernelsup/")


def _named_paths(doc: str) -> set[str]:
    return set(_PATH.findall((ROOT / doc).read_text()))


@pytest.mark.parametrize("doc", DOCS)
def test_every_module_a_document_names_exists(doc: str) -> None:
    missing = sorted(
        p for p in _named_paths(doc) if not any((ROOT / base / p).is_file() for base in _SEARCH)
    )
    assert not missing, f"{doc} names files that do not exist: {missing}"


def test_every_package_folder_is_a_layer_in_the_architecture() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    folders = sorted(
        p.name for p in (ROOT / "kernelsup").iterdir() if (p / "__init__.py").is_file()
    )
    assert folders, "no package folders found"
    missing = [f for f in folders if f"`kernelsup/{f}/`" not in text]
    assert not missing, f"ARCHITECTURE.md's layer table lacks {missing}"


def test_nothing_points_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    outside = re.compile(r"\.\./shared|DESIGN\.md")
    hits = [
        f
        for f in files
        if f != "tests/test_docs.py"
        and (ROOT / f).is_file()
        and outside.search((ROOT / f).read_text(errors="replace"))
    ]
    assert not hits, f"these files refer to something outside the repository: {hits}"
