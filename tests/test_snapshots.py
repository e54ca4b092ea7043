"""Saving and restoring a namespace: the requests core/snapshots.py writes, run here on
plain dicts exactly as a kernel runs them on its globals (real pickling, real files)."""

from __future__ import annotations

import json
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from kernelsup.core import kernel_snapshot, snapshots


def save(ns: dict[str, Any], tmp: Path, max_bytes: int = 10**8, timeout: float = 30.0) -> dict:
    exec(snapshots.save_request(str(tmp / "s.pkl"), str(tmp / "r.json"), max_bytes, timeout), ns)
    return snapshots.read_report((tmp / "r.json").read_text())


def load(tmp: Path) -> tuple[dict[str, Any], dict]:
    ns: dict[str, Any] = {}
    exec(snapshots.load_request(str(tmp / "s.pkl"), str(tmp / "r2.json")), ns)
    return ns, snapshots.read_report((tmp / "r2.json").read_text())


def user(ns: dict[str, Any]) -> set[str]:
    return {k for k in ns if not k.startswith("__")}


def test_a_round_trip_keeps_values_functions_modules_and_shared_objects(tmp_path: Path) -> None:
    import collections

    shared = [1, 2, 3]
    ns: dict[str, Any] = {
        "data": shared,
        "alias": shared,
        "square": lambda x: x * x,
        "col": collections,
        "Point": collections.namedtuple("Point", "x y"),
    }
    exec("class Model:\n    def __init__(self): self.w = 3\nm = Model()\n", ns)
    report = save(ns, tmp_path)
    assert report["ok"] is True and report["skipped"] == {}
    assert report["names"] == ["Model", "Point", "alias", "data", "m", "square"]
    assert report["modules"] == ["col"]
    assert report["bytes"] == (tmp_path / "s.pkl").stat().st_size > 0

    restored, back = load(tmp_path)
    assert back["ok"] is True and back["not_restored"] == {}
    assert back["restored"] == ["Model", "Point", "alias", "col", "data", "m", "square"]
    assert restored["alias"] is restored["data"] == [1, 2, 3]
    assert restored["square"](7) == 49
    assert restored["col"] is collections
    assert restored["m"].w == 3 and type(restored["m"]).__name__ == "Model"
    assert user(restored) == set(back["restored"])


def test_what_cannot_be_saved_is_named_with_its_reason_and_the_rest_is_saved(
    tmp_path: Path,
) -> None:
    handle = open(tmp_path / "f.txt", "w")
    try:
        ns: dict[str, Any] = {
            "kept": {"a": 1},
            "fh": handle,
            "lock": threading.Lock(),
            "gen": (i for i in range(3)),
        }
        report = save(ns, tmp_path)
    finally:
        handle.close()
    assert report["ok"] is True
    assert report["names"] == ["kept"]
    assert set(report["skipped"]) == {"fh", "lock", "gen"}
    assert "open file" in report["skipped"]["fh"]
    assert "lock" in report["skipped"]["lock"]
    assert "generator" in report["skipped"]["gen"]
    restored, _ = load(tmp_path)
    assert user(restored) == {"kept"}


def test_ipython_bookkeeping_is_not_saved(tmp_path: Path) -> None:
    ns: dict[str, Any] = {
        "In": ["", "x = 1"],
        "Out": {},
        "_": 1,
        "__": 2,
        "_i": "x",
        "_i7": "x",
        "_7": 7,
        "_oh": {},
        "exit": None,
        "x": 1,
        "_mine": 2,
    }
    report = save(ns, tmp_path)
    assert report["names"] == ["_mine", "x"]


def test_a_namespace_over_max_bytes_is_refused_and_the_previous_snapshot_kept(
    tmp_path: Path,
) -> None:
    save({"small": 1}, tmp_path)
    before = (tmp_path / "s.pkl").read_bytes()
    report = save({"big": b"x" * 100_000}, tmp_path, max_bytes=10_000)
    assert report["ok"] is False and report["reason"] == "max_bytes"
    assert "checkpoint_max_bytes = 10000" in str(
        snapshots.failure(report, max_bytes=10_000, timeout=1.0)
    )
    assert (tmp_path / "s.pkl").read_bytes() == before
    assert not (tmp_path / "s.pkl.tmp").exists()


def test_a_snapshot_past_its_timeout_stops_and_says_so(tmp_path: Path) -> None:
    report = save({"x": list(range(1000))}, tmp_path, timeout=0.0)
    assert report["ok"] is False and report["reason"] == "timeout"
    assert "checkpoint_timeout" in str(snapshots.failure(report, max_bytes=1, timeout=0.0))
    assert not (tmp_path / "s.pkl").exists()


def test_a_module_that_cannot_be_imported_again_is_named(tmp_path: Path) -> None:
    gone = types.ModuleType("kernelsup_no_such_module_anywhere")
    save({"gone": gone, "x": 1}, tmp_path)
    restored, report = load(tmp_path)
    assert report["restored"] == ["x"]
    assert "ModuleNotFoundError" in report["not_restored"]["gone"]
    assert "gone" not in restored


def test_a_damaged_snapshot_restores_nothing_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "s.pkl").write_bytes(b"not a pickle")
    restored, report = load(tmp_path)
    assert report["ok"] is False and report["restored"] == []
    assert "error" in report and user(restored) == set()


def test_reports_stay_bounded_however_many_names_fail(tmp_path: Path) -> None:
    ns = {f"g{i}": (j for j in range(1)) for i in range(kernel_snapshot.MAX_REPORTED + 50)}
    report = save(ns, tmp_path)
    assert len(report["skipped"]) == kernel_snapshot.MAX_REPORTED
    assert report["skipped_more"] == 50
    assert len((tmp_path / "r.json").read_bytes()) < snapshots.MAX_REPORT_BYTES


def test_the_request_leaves_no_name_behind(tmp_path: Path) -> None:
    ns: dict[str, Any] = {"x": 1}
    save(ns, tmp_path)
    assert user(ns) == {"x"}


@pytest.mark.parametrize("text", ["[]", "1", "{bad json"])
def test_a_report_that_is_not_an_object_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        snapshots.read_report(text)


def test_snapshot_info_round_trips() -> None:
    report = json.loads(
        '{"ok": true, "bytes": 10, "names": ["a"], "skipped": {"g": "TypeError"},'
        ' "modules": ["np"], "seconds": 0.5}'
    )
    info = snapshots.SnapshotInfo.from_report(report, id="s1", session="w", created=1.0)
    assert snapshots.SnapshotInfo.from_dict(info.to_dict()) == info
    assert info.skipped == {"g": "TypeError"} and info.names == ("a",)
