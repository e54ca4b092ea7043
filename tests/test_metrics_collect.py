"""The metrics registry (kernelsup/metrics/collect.py) and the HTTP answers
(kernelsup/metrics/http.py) in process, without kernels: what each event and outcome
counts, that labels stay within fixed sets, and the exposition prometheus_client parses."""

from __future__ import annotations

from typing import Any

import attrs
from prometheus_client.parser import text_string_to_metric_families

from kernelsup.core import events as ev
from kernelsup.core.results import ExecuteResult, StatusReport
from kernelsup.metrics.collect import STATES, Metrics
from kernelsup.metrics.http import _response
from kernelsup.tree.bus import EventBus


@attrs.define
class _NoJobs:
    def list(self) -> list[Any]:
        return []


@attrs.define
class FakeSupervisor:
    """What Metrics reads of a Supervisor: its bus, status, observers and sources."""

    bus: EventBus = attrs.field(factory=EventBus)
    report: StatusReport = attrs.field(factory=StatusReport)
    result_observers: list[Any] = attrs.field(factory=list)
    stats_sources: dict[str, Any] = attrs.field(factory=dict)
    _jobs: _NoJobs = attrs.field(factory=_NoJobs)

    def status_now(self) -> StatusReport:
        return self.report


CGROUP = {"containment": "cgroup"}


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metrics() -> tuple[Metrics, FakeSupervisor]:
    sup = FakeSupervisor()
    return Metrics(sup), sup  # type: ignore[arg-type]


def test_events_count_exits_by_cause_and_restarts() -> None:
    m, _ = metrics()
    bus = EventBus()
    exited = {"cause": {"kind": "heartbeat"}, "text": "heartbeat", "restarts": 0}
    m.observe_event(bus.publish(ev.KERNEL_EXITED, pool="p", kernel_id="p-0", **exited))
    strange = {"cause": {"kind": "from-a-newer-server"}, "text": "?", "restarts": 0}
    m.observe_event(bus.publish(ev.KERNEL_EXITED, pool="p", kernel_id="p-0", **strange))
    m.observe_event(bus.publish(ev.KERNEL_STARTING, pool="p", kernel_id="p-0", restarts=0))
    m.observe_event(bus.publish(ev.KERNEL_STARTING, pool="p", kernel_id="p-0", restarts=1))
    m.observe_event(bus.publish(ev.SESSION_OPENED, pool="p", session="s"))
    got = samples(m)
    assert got[("kernelsup_kernel_exits_total", (("cause", "heartbeat"), ("pool", "p")))] == 1
    assert got[("kernelsup_kernel_exits_total", (("cause", "other"), ("pool", "p")))] == 1
    assert got[("kernelsup_kernel_restarts_total", (("pool", "p"),))] == 1
    assert got[("kernelsup_sessions_opened_total", (("pool", "p"),))] == 1


def test_a_lagged_subscription_is_counted_as_missed_events() -> None:
    m, _ = metrics()
    lag = ev.Event(ev.LAGGED, 0.0, None, None, {"dropped": 7}, 1)
    m.observe_event(lag)
    assert samples(m)[("kernelsup_metrics_events_missed_total", ())] == 7


def test_outcomes_count_by_status_and_code_with_times_and_truncation() -> None:
    m, _ = metrics()
    m.observe_result("p", ExecuteResult("ok", queued_s=0.002, run_s=0.3))
    m.observe_result("p", ExecuteResult("ok", truncated_bytes=500))
    m.observe_result(None, ExecuteResult("rejected", code="unknown_pool"))
    got = samples(m)
    ok = ("kernelsup_requests_total", (("code", ""), ("pool", "p"), ("status", "ok")))
    refused = (
        "kernelsup_requests_total",
        (("code", "unknown_pool"), ("pool", ""), ("status", "rejected")),
    )
    assert got[ok] == 2 and got[refused] == 1
    assert got[("kernelsup_request_run_seconds_count", (("pool", "p"),))] == 2
    assert got[("kernelsup_request_run_seconds_bucket", (("le", "0.25"), ("pool", "p")))] == 1
    assert ("kernelsup_request_run_seconds_count", (("pool", ""),)) not in got  # refused: never ran
    assert got[("kernelsup_output_truncations_total", (("pool", "p"),))] == 1
    assert got[("kernelsup_output_truncated_bytes_total", (("pool", "p"),))] == 500


def test_kernels_by_state_list_every_state_of_each_pool() -> None:
    m, sup = metrics()
    sup.report = StatusReport(
        kernels=(
            {
                "id": "p-0",
                "pool": "p",
                "state": "idle",
                "memory_bytes": 1000,
                "containment": "cgroup",
            },
            {
                "id": "p-1",
                "pool": "p",
                "state": "busy",
                "cpu_seconds": 1.5,
                "containment": "cgroup",
            },
        ),
        pools=(
            {"name": "p", "sessions": ["a", "b"], "queued": 3, "heartbeat_misses": 4},
            {"name": "empty"},
        ),
    )
    got = samples(m)
    by_state = {
        (dict(ls)["pool"], dict(ls)["state"]): v
        for (n, ls), v in got.items()
        if n == "kernelsup_kernels"
    }
    zeros = {(pool, state): 0.0 for pool in ("p", "empty") for state in STATES}
    assert by_state == {**zeros, ("p", "idle"): 1.0, ("p", "busy"): 1.0}
    unit = (("containment", "cgroup"), ("kernel", "p-0"), ("pool", "p"))
    assert got[("kernelsup_kernel_memory_bytes", unit)] == 1000
    busy = (("containment", "cgroup"), ("kernel", "p-1"), ("pool", "p"))
    assert got[("kernelsup_kernel_cpu_seconds_total", busy)] == 1.5
    assert got[("kernelsup_sessions", (("pool", "p"),))] == 2
    assert got[("kernelsup_queued_requests", (("pool", "p"),))] == 3
    assert got[("kernelsup_heartbeat_misses_total", (("pool", "p"),))] == 4


def test_the_control_endpoints_refusals_by_reason() -> None:
    m, sup = metrics()
    sup.stats_sources["control"] = lambda: {"busy": 2, "unsigned": 1, "connections_refused": 5}
    got = samples(m)
    refusals = {
        dict(ls)["reason"]: v
        for (n, ls), v in got.items()
        if n == "kernelsup_control_refusals_total"
    }
    assert refusals["server_busy"] == 2 and refusals["unsigned"] == 1
    assert refusals["too_many_connections"] == 5 and refusals["malformed"] == 0


def test_http_answers() -> None:
    m, _ = metrics()
    ok = _response(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", m)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=")
    head, body = ok.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head and b"kernelsup_requests" in body
    only_head = _response(b"HEAD /metrics HTTP/1.1\r\n\r\n", m)
    assert only_head.endswith(b"\r\n\r\n") and b"Content-Length: 0" not in only_head
    assert _response(b"GET /nope HTTP/1.1\r\n\r\n", m).startswith(b"HTTP/1.1 404 ")
    assert _response(b"DELETE /metrics HTTP/1.1\r\n\r\n", m).startswith(b"HTTP/1.1 405 ")
    assert _response(b"\x00\xff garbage\r\n\r\n", m).startswith(b"HTTP/1.1 400 ")
