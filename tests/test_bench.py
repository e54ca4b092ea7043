"""The benchmark harness cannot rot: every benchmark runs in its smallest mode (``--smoke``)
through the real command line, and its JSON has the expected shape and sane values.

No speed is asserted here (speed is measured in bench/, not in tests: ARCHITECTURE.md,
"Testing"); only that each measure exists, is positive where it is a time, has its anchor or
a note saying why not, and that the storm accounted for every request. Each run gets a
private temporary directory, and afterwards no process may still mention it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import BENCHMARKS
from bench.common import Report, Row, Stats, config_dict, percentile, pool_config, table, to_toml
from tests.helpers import assert_nothing_left

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 150


def _run_bench(name: str, tmp: Path, *extra: str) -> tuple[dict[str, Any], str]:
    out = tmp / f"{name}.json"
    env = {**os.environ, "KERNELSUP_BENCH_TMP": str(tmp)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", name, "--smoke", "--json", str(out), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.startswith("machine: "), proc.stdout[:500]
    data: dict[str, Any] = json.loads(out.read_text())
    assert_nothing_left(tmp)
    return data, proc.stdout


def _check_common(data: dict[str, Any], name: str) -> dict[str, Any]:
    m = data["machine"]
    for key in ("cores", "python", "ipykernel", "jupyter_client", "trio", "pyzmq"):
        assert m[key], key
    rep: dict[str, Any] = data["reports"][name]
    assert rep["benchmark"] == name and rep["mode"] == "smoke"
    assert rep["skipped"] == "", rep["skipped"] + "\n" + "\n".join(rep["notes"])
    assert rep["rows"]
    for row in rep["rows"]:
        assert {
            "name",
            "unit",
            "kernelsup",
            "anchor",
            "anchor_name",
            "ratio",
            "ratio_below",
            "target",
            "met",
            "samples",
        } <= set(row)
        ks = row["kernelsup"]
        if ks is None:  # only a measure that cannot be taken yet, and it says why
            assert row["anchor_note"], row
            continue
        assert ks["n"] == len(row["samples"]["kernelsup"]) >= 1
        assert ks["min"] <= ks["p50"] <= ks["p95"] <= ks["p99"] <= ks["max"]
        if row["unit"] in ("ms", "exec/s"):
            assert ks["min"] > 0, row
        else:
            assert ks["min"] >= 0, row
        if row["anchor"] is not None:
            assert row["anchor"]["n"] >= 1
            if row["anchor"]["p50"] > 0:
                assert row["ratio"] is not None and row["ratio"] > 0, row
        else:
            assert row["anchor_note"], row  # a missing anchor always says why
        if row["target"]:
            assert row["met"] in (True, False), row
    return rep


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke(name: str, bench_tmp: Path) -> None:
    data, stdout = _run_bench(name, bench_tmp)
    rep = _check_common(data, name)
    assert f"## {name} (smoke" in stdout and "| measure" in stdout
    rows = {r["name"]: r for r in rep["rows"]}
    if name == "restart":
        death = rows["kill -> death seen (kernel_exited)"]
        assert death["ratio"] is not None and death["anchor"]["n"] == 2
        assert any(r["anchor_name"] == "plain ipykernel cold start" for r in rep["rows"])
    elif name == "hang":
        detected = [r for r in rep["rows"] if r["name"].startswith("SIGSTOP -> detected")]
        assert len(detected) == 2
        for r in detected:  # jupyter_client either noticed (a ratio) or a bound is given
            assert r["ratio"] is not None or (r["ratio_below"] or 0) > 0, r
    elif name == "execute":
        inproc = [r for r in rep["rows"] if r["name"].endswith("in-process")]
        assert {r["anchor_name"] for r in inproc} >= {
            "raw pyzmq, same kernel",
            "jupyter_client BlockingKernelClient",
        }
        for r in (r for r in rep["rows"] if r["name"].endswith("endpoint")):
            assert r["kernelsup"] is not None or "endpoint not available" in r["anchor_note"]
        assert any(r["unit"] == "exec/s" for r in rep["rows"])
    elif name == "storm":
        extra = rep["extra"]
        assert extra["submitted"] > 0
        assert extra["lost"] == 0
        assert extra["ended"] == extra["submitted"] == sum(extra["outcomes"].values())
        assert rows["requests without an outcome"]["met"] is True
    elif name == "fresh":
        forked = rows["fresh kernel forked (launch -> kernel_info_reply)"]
        assert forked["ratio"] is not None and forked["anchor"]["n"] == 2
        assert all(r["kernelsup"]["p50"] > 0 for r in rep["rows"] if r["unit"] == "MB")
    elif name == "evaluation":
        # every sample's outcome right, no sample seeing another's variables, all sides
        assert rep["extra"]["wrong"] == {"kernelsup": [], "python -c": [], "jupyter_client": []}
        assert all(r["ratio"] is not None for r in rep["rows"])
    elif name == "idle":
        assert any(r["unit"] == "%" for r in rep["rows"])
        assert all(r["kernelsup"]["p50"] > 0 for r in rep["rows"] if r["unit"] == "MB")


# --------------------------------------------------------------------------- pure parts
def test_percentiles_interpolate() -> None:
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == 95.0
    s = Stats.of([5.0, 1.0, 3.0])
    assert (s.n, s.p50, s.min, s.max, s.mean) == (3, 3.0, 1.0, 5.0, 3.0)


def test_rows_ratio_and_table() -> None:
    rep = Report("demo", "smoke")
    rep.row(
        "fast thing", "ms", [1.0, 2.0, 3.0], "anchor", [4.0, 4.0], target="p50 < 5 ms", met=True
    )
    rep.row(
        "unseen",
        "ms",
        [2.0],
        "anchor",
        [],
        anchor_note="not detected within 10 s",
        anchor_censored_at=10_000.0,
    )
    first, second = rep.rows
    assert first.ratio == 0.5 and second.ratio is None and second.ratio_bound == 0.0002
    text = table(rep)
    assert "0.5x" in text and "met: p50 < 5 ms" in text and "<0.0002x" in text
    assert "not detected within 10 s" in text
    assert json.loads(json.dumps(rep.to_dict()))["rows"][0]["ratio"] == 0.5


def test_toml_round_trips_through_kernelsup_config() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    import kernelsup

    data = config_dict(
        pool_config("p", size=3, spares=1, heartbeat=0.2), runtime_dir=Path("/tmp/x")
    )
    cfg = kernelsup.Config.from_dict(tomllib.loads(to_toml(data)))
    pool = cfg.pool("p")
    assert (pool.size, pool.spares, pool.heartbeat.interval) == (3, 1, 0.2)
    assert cfg.supervisor.runtime_dir == "/tmp/x"


def test_plot_writes_png_or_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.common import PlotUnavailable, machine, plot

    rep = Report(
        "demo",
        "smoke",
        rows=[
            Row("lat", "ms", [1.0, 2.0, 5.0], "anchor", [3.0, 4.0]),
            Row("rate", "exec/s", [100.0], "anchor", [80.0], better="higher"),
        ],
    )
    info = machine()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(PlotUnavailable, match="pip install"):
            plot(tmp_path / "x.png", info, [rep])
        return
    plot(tmp_path / "x.png", info, [rep])
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were missing
    with pytest.raises(PlotUnavailable, match="pip install"):
        plot(tmp_path / "y.png", info, [rep])


def test_execute_without_endpoint_says_so() -> None:
    """When `kernelsup run` could not be started for the endpoint rows, they say why."""
    from bench.common import render
    from bench.execute import _rows

    lat = {k: [5.0, 6.0] for k in ("ks", "raw", "blocking", "async")}
    lat.update({"ep": [], "ep_raw": [], "ep_blocking": []})
    rep = Report("execute", "smoke")
    _rows(
        rep,
        lat,
        {"ks1": [190.0], "jc1": [200.0]},
        {"ks1": [5.0], "jc1": [5.0]},
        (1,),
        "endpoint not available: it failed to start: Unreachable: no supervisor",
    )
    endpoint = [r for r in rep.rows if r.name.endswith("endpoint")]
    assert endpoint and all(not r.kernelsup and r.met is None for r in endpoint)
    assert all("endpoint not available" in r.anchor_note for r in endpoint)
    assert "- endpoint not available" in render(rep)
