"""The chaos soak (bench/chaos.py): its audit, with tables, and a short seeded run.

The run goes through the real command line against a real ``kernelsup run``: 150 requests
from 2 clients while kernels are SIGKILLed, SIGSTOPped, ``os._exit``-ed and their sessions
closed. It must show that the supervisor kept answering, that every request had exactly
one outcome and none ran twice, and that SIGTERM left nothing behind. The supervisor's
footprint (fds, RSS within 10 %) is judged by the long run (``--requests 10000``) only: a
few seconds of load is too short for a heap to reach its working set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from bench.chaos import (
    KINDS,
    SESSIONS,
    Audit,
    Outcome,
    Planned,
    audit,
    code_for,
    make_plan,
    parse_ledger,
)
from tests.helpers import assert_nothing_left

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 100


# --------------------------------------------------------------------------- the plan
def test_plan_is_seeded_and_well_formed() -> None:
    plan = make_plan(500, seed=3)
    assert plan == make_plan(500, seed=3)
    assert plan != make_plan(500, seed=4)
    assert len({p.rid for p in plan}) == 500
    kinds = {k.name: k for k in KINDS}
    assert {p.kind for p in plan} <= set(kinds)
    assert {"plain", "session", "timeout", "exit"} <= {p.kind for p in plan}
    for p in plan:
        assert (p.session in SESSIONS) if kinds[p.kind].session else p.session is None


def test_request_code_writes_its_id_to_the_ledger_first(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    for p in (Planned("r1", "plain"), Planned("r2", "session", "s0"), Planned("r3", "error")):
        namespace: dict[str, Any] = {}
        try:
            exec(code_for(p, ledger), namespace)
        except ZeroDivisionError:
            assert p.kind == "error"
    assert parse_ledger(ledger.read_text()) == ["r1", "r2", "r3"]
    assert ledger.read_text().splitlines()[0] == f"r1 {os.getpid()}"


# --------------------------------------------------------------------------- the audit
def _out(rid: str, status: str = "ok", own: bool | None = True) -> Outcome:
    return Outcome(rid, "plain", status, None, 0.01, own if status == "ok" else None)


SENT = [Planned(f"r{i}", "plain") for i in range(4)]
CLEAN = {p.rid: _out(p.rid) for p in SENT}


def _audit(
    outcomes: dict[str, Outcome] | None = None,
    extra: tuple[str, ...] = (),
    ledger: tuple[str, ...] = ("r0", "r1", "r2", "r3"),
) -> Audit:
    return audit(SENT, CLEAN if outcomes is None else outcomes, list(extra), list(ledger))


def test_audit_of_a_clean_run_finds_nothing() -> None:
    a = _audit()
    assert a.violations() == []
    assert (a.submitted, a.with_outcome, a.by_status) == (4, 4, {"ok": 4})


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            {"outcomes": {k: v for k, v in CLEAN.items() if k != "r2"}},
            ("requests without an outcome: 1 (r2)",),
        ),
        ({"extra": ("r1",)}, ("requests with more than one outcome: 1 (r1)",)),
        ({"ledger": ("r0", "r1", "r2", "r3", "r1")}, ("requests run twice (ledger): 1 (r1)",)),
        ({"ledger": ("r0", "r1", "r2", "r3", "zz")}, ("ledger ids never submitted: 1 (zz)",)),
        ({"ledger": ("r0", "r1", "r3")}, ("ok/error requests missing from the ledger: 1 (r2)",)),
        (
            {"outcomes": {**CLEAN, "r3": _out("r3", "rejected")}},
            ("rejected requests that ran (ledger): 1 (r3)",),
        ),
        (
            {"outcomes": {**CLEAN, "r0": _out("r0", own=False)}},
            ("ok results that are not the request's own: 1 (r0)",),
        ),
        (
            {"outcomes": {**CLEAN, "r0": _out("r0", "raised")}},
            ("client calls that raised: 1 (r0)",),
        ),
    ],
)
def test_audit_names_each_violation(case: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert tuple(_audit(**case).violations()) == expected


def test_audit_accepts_what_chaos_legitimately_causes() -> None:
    """A request that died may or may not have reached the ledger; a rejected one that
    never ran is not in it; a timeout is counted, not judged."""
    outcomes = {
        **CLEAN,
        "r1": _out("r1", "died"),
        "r2": _out("r2", "died"),
        "r3": _out("r3", "rejected"),
    }
    a = _audit(outcomes, ledger=("r0", "r1"))
    assert a.violations() == []
    assert a.by_status == {"died": 2, "ok": 1, "rejected": 1}


def test_audit_counts_the_codes_of_what_did_not_succeed() -> None:
    outcomes = {
        **CLEAN,
        "r1": attrs.evolve(_out("r1", "died"), code="kernel_died"),
        "r2": attrs.evolve(_out("r2", "rejected"), code="session_closed"),
        "r3": attrs.evolve(_out("r3", "died"), code="kernel_died"),
    }
    assert _audit(outcomes, ledger=("r0",)).by_code == {
        "died: kernel_died": 2,
        "rejected: session_closed": 1,
    }


# --------------------------------------------------------------------------- a real run
# Rows of the report that must be met in any run, however short.
ESSENTIAL = (
    "supervisor answered throughout",
    "requests sent (plan + warm-up + chaos)",
    "requests without an outcome (lost)",
    "requests run twice (ledger)",
    "ok/error requests missing from the ledger",
    "rejected requests that ran, or ledger ids never sent",
    "ok results not the request's own",
    "client calls that raised",
    "slowest request",
    "`kernelsup run` exit status after SIGTERM",
    "processes tethered to the runtime dir after it",
)


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_short_seeded_soak_keeps_every_invariant(bench_tmp: Path) -> None:
    out = bench_tmp / "chaos.json"
    env = {**os.environ, "KERNELSUP_BENCH_TMP": str(bench_tmp)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "chaos",
            "--smoke",
            "--requests",
            "150",
            "--clients",
            "2",
            "--seed",
            "7",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode in (0, 1) and out.exists(), report  # 1: an invariant failed
    assert "## chaos (smoke" in proc.stdout, report
    rep = json.loads(out.read_text())["reports"]["chaos"]
    extra = rep["extra"]
    assert rep["params"]["requests"] == 150 and rep["params"]["clients"] == 2
    rows = {r["name"]: r for r in rep["rows"]}
    failed = [name for name in ESSENTIAL if rows[name]["met"] is not True]
    assert not failed, f"{failed}\n{extra['violations']}\n{report}"
    sent = rows["requests sent (plan + warm-up + chaos)"]["kernelsup"]["p50"]
    assert sum(extra["outcomes"].values()) == sent >= 150  # exactly one outcome each
    assert extra["outcomes"]["ok"] > 0 and extra["outcomes"].get("died", 0) > 0
    assert extra["exit_code"] == 0 and extra["left_after_sigterm"] == []
    assert sum(extra["chaos_actions"].values()) > 0
    assert extra["kernel_exits_by_cause"]  # kernels did die, and were seen dying
    assert (proc.returncode == 0) == (extra["violations"] == [])
    assert_nothing_left(bench_tmp)
