"""Kernels on a real 3-node Ray cluster, under kernelsup's supervision (adapters/ray_host.py).

Every Ray process and every kernel runs inside a network namespace with only loopback up,
so nothing here can bind or reach an address outside 127.0.0.0/8. pytest itself is not in
it: one module fixture runs tests/ray_scenario.py there (a head, two worker nodes, a
supervisor whose pool is placed on them, then every fault played for real) and reads its
JSON report; each test below checks one scenario. One cluster for the module: a head costs
~7 s and ~440 MB. Whatever happens, the fixture ends every process of the namespace by pid
and fails if any is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.ray_cluster import kill_netns, netns_of, run_in_netns

REPO = Path(__file__).resolve().parent.parent
# The whole scenario: cluster start (~25 s), six faults, a `kernelsup run` SIGKILLed.
# Measured ~110 s alone on 2 cores; bounded well above for a loaded machine.
SCENARIO_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.timeout(SCENARIO_TIMEOUT_S + 120),
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="ray is not installed (pip install -e '.[test]' brings it)",
    ),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="needs root and unshare for a loopback-only network namespace",
    ),
]

Report = dict[str, Any]


def _netns_of_child(proc: subprocess.Popen[bytes], within: float = 30.0) -> str:
    """The namespace ``unshare --fork`` made: its child's, once it differs from ours."""
    ours = netns_of(os.getpid())
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(proc.pid).children():
                ns = netns_of(child.pid)
                if ns is not None and ns != ours:
                    return ns
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    raise AssertionError("the scenario's network namespace never appeared")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Report]:
    tmp = tmp_path_factory.mktemp("ray")
    out, log = tmp / "report.json", tmp / "scenario.log"
    with log.open("wb") as sink:
        proc = run_in_netns(
            [sys.executable, "-m", "tests.ray_scenario", str(out)],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    netns = _netns_of_child(proc)
    try:
        try:
            proc.wait(timeout=SCENARIO_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        data: Report = json.loads(out.read_text()) if out.exists() else {}
        data["log_tail"] = log.read_bytes()[-4000:].decode(errors="replace")
        yield data
    finally:
        left = kill_netns(netns)
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        if out.exists() and "workdir" in (written := json.loads(out.read_text())):
            shutil.rmtree(written["workdir"], ignore_errors=True)  # Ray's logs, sockets
        assert left == [], f"processes of the Ray namespace outlived the kill: {left}"


def section(report: Report, name: str) -> dict[str, Any]:
    assert name in report, f"scenario {name} did not run; log ends:\n{report['log_tail']}"
    part: dict[str, Any] = report[name]
    assert "error" not in part, part["error"]
    return part


def one_outcome_each(part: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every request submitted got exactly one outcome; returns them by request."""
    outcomes = part["outcomes"]
    assert sorted(outcomes, key=int) == [str(i) for i in range(part["submitted"])]
    assert all(len(v) == 1 for v in outcomes.values()), outcomes
    return {k: v[0] for k, v in outcomes.items()}


def the_died(outcomes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests that died; every other one ran to its end (ok), short ones included:
    those queued behind the lost kernel went elsewhere."""
    died = [o for o in outcomes.values() if o["status"] == "died"]
    assert all(o["status"] in ("ok", "died") for o in outcomes.values()), outcomes
    assert all(outcomes[str(i)]["status"] == "ok" for i in range(2, 6)), outcomes
    assert all(o["code"] == "kernel_died" and o["cause"] is not None for o in died)
    return died


def recovered(part: dict[str, Any], victim: str) -> None:
    after = {k["id"]: k for k in part["after"]}
    assert after[victim]["state"] == "idle"
    assert after[victim]["restarts"] > part.get("restarts_before", 0)
    assert all(k["node"] == "127.0.0.1" for k in after.values())


# --------------------------------------------------------------------------- the tests


def test_ray_placed_kernels_execute_keep_session_state_and_show_their_node(
    report: Report,
) -> None:
    part = section(report, "execute")
    assert [r["stdout"] for r in part["results"]] == ["42\n"] * 4
    assert part["session"]["status"] == "ok" and part["session"]["stdout"] == "42\n"
    late = part["timed_out"]  # interrupted at its deadline through the host, not killed
    assert late["status"] == "timeout" and late["interrupted"] and not late["restarted"]
    for kernel in part["kernels"]:
        assert kernel["node"] == "127.0.0.1"  # status names each kernel's node
        assert kernel["containment"] in ("cgroup", "subreaper")
    # Each kernel listens on its node's cluster address only, never on all interfaces.
    assert part["listening"] and all(ips == ["127.0.0.1"] for ips in part["listening"].values())
    assert part["usage_s"] is not None  # memory measured on the node reaches status
    # The head takes no kernels; the workers do.
    assert set(part["host_nodes"].values()) <= {"a", "b"}


def test_a_killed_kernel_ends_its_request_died_and_comes_back(report: Report) -> None:
    part = section(report, "kill_kernel")
    died = the_died(one_outcome_each(part))
    assert len(died) == 1
    assert died[0]["kernel_id"] == part["victim"]
    assert died[0]["cause"]["signal"] == 9 and died[0]["cause"]["kind"] == "failure"
    recovered(part, part["victim"])
    assert not part["pid_alive"]


def test_a_killed_host_actor_takes_its_kernel_and_says_host_lost(report: Report) -> None:
    part = section(report, "kill_host")
    died = the_died(one_outcome_each(part))
    assert [o["cause"]["kind"] for o in died] == ["host_lost"]
    assert "worker process has died" in died[0]["cause"]["detail"]
    recovered(part, part["victim"])
    assert not part["pid_alive"], "the kernel outlived its host actor"


def test_a_session_past_the_clusters_capacity_is_refused_no_capacity(report: Report) -> None:
    part = section(report, "no_capacity")
    *placed, refused = part["results"]
    assert placed and all(r["status"] == "ok" for r in placed)
    assert refused["status"] == "rejected" and refused["code"] == "no_capacity"
    running = [k for k in part["at_refusal"] if k["state"] in ("idle", "busy")]
    assert len(running) <= part["slots"]  # never more kernels than the cluster has slots
    assert part["recovered_s"] is not None  # the pool whole again once the sessions closed


def test_a_crashed_node_ends_its_request_node_lost_and_the_kernel_moves(report: Report) -> None:
    part = section(report, "crash_node")
    died = the_died(one_outcome_each(part))  # one or both: Ray may pack them on one node
    assert died and all(o["cause"]["kind"] == "node_lost" for o in died)
    assert all(o["cause"]["detail"] for o in died)  # Ray's own words (they vary by timing)
    recovered(part, part["victim"])
    assert part["node"] not in part["host_nodes"].values()  # only surviving nodes
    assert not part["pid_alive"]


def test_a_hung_node_is_noticed_by_the_heartbeat_and_its_kernels_move(report: Report) -> None:
    part = section(report, "hang_node")
    died = the_died(one_outcome_each(part))
    assert died and all(o["cause"]["kind"] in ("heartbeat", "node_lost") for o in died)
    recovered(part, part["victim"])
    assert part["node"] not in part["host_nodes"].values()
    # Once it runs again, the frozen kernel goes (fenced, or its raylet declared dead).
    assert part["frozen_kernel_gone_s"] is not None


def test_a_supervisor_cut_off_past_its_lease_has_its_kernels_fenced(report: Report) -> None:
    """SIGSTOPped (a partition as the hosts see it): no lease is renewed, each host kills
    its kernel; running again, the supervisor replaces them."""
    part = section(report, "kill_supervisor")
    assert [k["state"] for k in part["first"]] == ["idle", "idle"]
    assert part["fenced_s"] is not None, "the kernels outlived their lease"
    assert part["replaced_s"] is not None, part["kernels"]
    for kernel in part["kernels"]:
        assert kernel["restarts"] >= 1
        assert kernel["last_exit"]["kind"] == "host_lost"
        assert "lease expired" in kernel["last_exit"]["detail"]


def test_nothing_outlives_a_sigkilled_supervisor_on_any_node(report: Report) -> None:
    part = section(report, "kill_supervisor")
    assert part["ready"].startswith("kernelsup ready: 2 kernels"), part
    assert [k["node"] for k in part["kernels"]] == ["127.0.0.1"] * 2
    assert len(part["host_pids"]) == 2
    assert part["left"] == []
    # Nor anything of any host of the whole run: its reaper, or any process it tethered.
    assert part["host_left"] == [] and part["hosts_gone_s"] is not None
