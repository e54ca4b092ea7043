"""The metrics registry of one supervisor, in Prometheus' terms.

Theory of operation
-------------------
Three sources, each read where it is cheapest and exact:

* **Events** (``tree/bus.py``): :meth:`Metrics.follow` subscribes to the bus and counts
  exits by cause, restarts, start failures, gave-ups, pool restarts and sessions opened
  and closed. The subscription's buffer rides out a restart storm; events it still misses
  are counted in ``kernelsup_metrics_events_missed_total``, never guessed.
* **Outcomes**: ``Supervisor.result_observers`` hears every request's result (in-process
  and through the control endpoint alike) with the pool that served it: requests by
  status and code, queue wait and run time histograms, output truncations.
* **State**, read at scrape time (:class:`_Status`): kernels by pool and state, each
  kernel's memory and CPU (its containment unit, ``adapters/containment.py``), sessions
  and queued requests, heartbeat misses (counted by the pools), the control endpoint's
  refusals (``Supervisor.stats_sources``), jobs by status (``tree/jobs.py``), and the
  supervisor's own CPU and memory (prometheus_client's ``ProcessCollector``: the
  standard ``process_*`` series).

Every label value comes from the config (pool names, kernel ids) or from a fixed set
(states, statuses, codes, causes, refusal reasons): nothing a client sends becomes a
label, so the registry cannot grow with what clients send.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, get_args

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from kernelsup.core import events as ev
from kernelsup.core.records import JobInfo
from kernelsup.core.results import ExecuteResult, ExitKind, Status
from kernelsup.core.slot import KernelStatus

if TYPE_CHECKING:
    from kernelsup.api import Supervisor

# Events the follower may fall behind by: a one_for_all restart of a large pool is about
# 5 events a kernel; 4,096 events are under 4 MB.
EVENT_BUFFER = 4096
# Seconds: from a request taken at once to one that waited its turn behind a long queue.
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Seconds: from `1 + 1` (about a millisecond) to an hour-long job.
RUN_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 3600)

STATES: tuple[str, ...] = get_args(KernelStatus)
JOB_STATUSES: tuple[str, ...] = ("queued", "running", *get_args(Status))
EXIT_CAUSES: frozenset[str] = frozenset(get_args(ExitKind))
# The control endpoint's counters that are refusals (control/server.py Counters), and the
# gate's: the reason label of kernelsup_control_refusals_total.
REFUSALS = {
    "unsigned": "unsigned",
    "bad_signature": "bad_signature",
    "replayed": "replayed",
    "malformed": "malformed",
    "oversized": "oversized",
    "unknown_type": "unknown_type",
    "protocol_version": "protocol_version",
    "busy": "server_busy",
    "connections_refused": "too_many_connections",
}


class Metrics:
    """The registry of one supervisor; :meth:`follow` feeds it, :meth:`exposition` reads it."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kernelsup_requests",
            "Requests by outcome: status (ok, error, timeout, died, rejected, cancelled) and "
            "error code ('' for ok).",
            ["pool", "status", "code"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "kernelsup_request_queue_wait_seconds",
            "Time a request waited for a kernel.",
            ["pool"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "kernelsup_request_run_seconds",
            "Time a request ran on its kernel.",
            ["pool"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.truncations = Counter(
            "kernelsup_output_truncations",
            "Requests whose output was cut to max_output_bytes.",
            ["pool"],
            registry=r,
        )
        self.truncated = Counter(
            "kernelsup_output_truncated_bytes",
            "Output bytes dropped by truncation.",
            ["pool"],
            registry=r,
        )
        self.exits = Counter(
            "kernelsup_kernel_exits",
            "Kernel exits by cause (normal, failure, heartbeat, start_timeout, start_failure, "
            "limit).",
            ["pool", "cause"],
            registry=r,
        )
        self.restarts = Counter(
            "kernelsup_kernel_restarts", "Kernel restarts begun.", ["pool"], registry=r
        )
        self.start_failures = Counter(
            "kernelsup_kernel_start_failures", "Kernel starts that failed.", ["pool"], registry=r
        )
        self.gave_up = Counter(
            "kernelsup_kernel_gave_up",
            "Kernels whose restarts were given up (max_retries reached).",
            ["pool"],
            registry=r,
        )
        self.pool_restarts = Counter(
            "kernelsup_pool_restarts",
            "Pools restarted by the root after escalating.",
            ["pool"],
            registry=r,
        )
        self.sessions_opened = Counter(
            "kernelsup_sessions_opened", "Sessions opened.", ["pool"], registry=r
        )
        self.sessions_closed = Counter(
            "kernelsup_sessions_closed", "Sessions closed (or expired).", ["pool"], registry=r
        )
        self.events_missed = Counter(
            "kernelsup_metrics_events_missed",
            "Events the metrics fell behind on and did not count.",
            registry=r,
        )
        r.register(_Status(sup))
        ProcessCollector(registry=r)

    # ------------------------------------------------------------------- feeding
    def observe_result(self, pool: str | None, result: ExecuteResult) -> None:
        """Count one request's outcome (``pool`` None: refused before a pool was chosen)."""
        name = pool or ""
        self.requests.labels(name, result.status, result.code or "").inc()
        if result.status != "rejected":
            self.queue_wait.labels(name).observe(max(0.0, result.queued_s))
            self.run_time.labels(name).observe(max(0.0, result.run_s))
        if result.truncated_bytes > 0:
            self.truncations.labels(name).inc()
            self.truncated.labels(name).inc(result.truncated_bytes)

    def observe_event(self, event: ev.Event) -> None:
        """Count one event from the bus."""
        pool = event.pool or ""
        kind = event.kind
        if kind == ev.KERNEL_EXITED:
            cause = event.data.get("cause")
            cause_kind = cause.get("kind") if isinstance(cause, Mapping) else None
            self.exits.labels(pool, cause_kind if cause_kind in EXIT_CAUSES else "other").inc()
        elif kind == ev.KERNEL_STARTING:
            restarts = event.data.get("restarts")
            if isinstance(restarts, int) and restarts > 0:
                self.restarts.labels(pool).inc()
        elif kind == ev.KERNEL_START_FAILED:
            self.start_failures.labels(pool).inc()
        elif kind == ev.GAVE_UP:
            self.gave_up.labels(pool).inc()
        elif kind == ev.POOL_RESTARTED:
            self.pool_restarts.labels(pool).inc()
        elif kind == ev.SESSION_OPENED:
            self.sessions_opened.labels(pool).inc()
        elif kind == ev.SESSION_CLOSED:
            self.sessions_closed.labels(pool).inc()
        elif kind == ev.LAGGED:
            dropped = event.data.get("dropped")
            if isinstance(dropped, int) and dropped > 0:
                self.events_missed.inc(dropped)

    async def follow(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Count events and outcomes until cancelled or the bus closes. Signals started
        once subscribed: nothing published after ``nursery.start`` returns is missed."""
        self.sup.result_observers.append(self.observe_result)
        try:
            with self.sup.bus.subscribe(EVENT_BUFFER, name="metrics") as sub:
                task_status.started()
                async for event in sub:
                    self.observe_event(event)
        finally:
            self.sup.result_observers.remove(self.observe_result)

    # ------------------------------------------------------------------- reading
    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


class _Status(Collector):
    """What is true now, read from status at each scrape."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterable[Metric]:
        report = self.sup.status_now()
        pools = [str(p.get("name")) for p in report.pools]
        yield from _kernel_families(report.kernels, pools)
        yield from _pool_families(report.pools)
        control = self.sup.stats_sources.get("control")
        if control is not None:
            yield from _control_families(control())
        # The supervisor's jobs (tree/jobs.py): Jobs.list() is its synchronous view.
        yield from _job_families(self.sup._jobs.list())

    def describe(self) -> Iterable[Metric]:
        return ()  # the series depend on the pools; describe nothing, collect at scrape


def _kernel_families(kernels: Iterable[Mapping[str, Any]], pools: list[str]) -> Iterator[Metric]:
    """Every pool gets every state (zeros too), so a panel's series never vanish."""
    by_state = GaugeMetricFamily(
        "kernelsup_kernels", "Kernels by pool and state.", labels=["pool", "state"]
    )
    memory = GaugeMetricFamily(
        "kernelsup_kernel_memory_bytes",
        "Resident memory of a kernel and everything it started (its containment unit).",
        labels=["pool", "kernel", "containment"],
    )
    cpu = CounterMetricFamily(
        "kernelsup_kernel_cpu_seconds",
        "CPU time of a kernel and everything it started (resets when the kernel restarts).",
        labels=["pool", "kernel", "containment"],
    )
    counts: dict[tuple[str, str], int] = {}
    for k in kernels:
        pool, state = str(k.get("pool")), str(k.get("state"))
        if pool not in pools:
            pools.append(pool)
        counts[pool, state] = counts.get((pool, state), 0) + 1
        unit = (pool, str(k.get("id")), str(k.get("containment") or ""))
        if isinstance(k.get("memory_bytes"), int):
            memory.add_metric(unit, k["memory_bytes"])
        if isinstance(k.get("cpu_seconds"), (int, float)):
            cpu.add_metric(unit, k["cpu_seconds"])
    for pool in pools:
        for state in STATES:
            by_state.add_metric([pool, state], counts.get((pool, state), 0))
    yield from (by_state, memory, cpu)


def _pool_families(pools: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    sessions = GaugeMetricFamily("kernelsup_sessions", "Open sessions.", labels=["pool"])
    max_sessions = GaugeMetricFamily(
        "kernelsup_sessions_max", "Sessions a pool may hold open.", labels=["pool"]
    )
    queued = GaugeMetricFamily(
        "kernelsup_queued_requests", "Requests waiting for a kernel.", labels=["pool"]
    )
    misses = CounterMetricFamily(
        "kernelsup_heartbeat_misses", "Heartbeat pings left unanswered.", labels=["pool"]
    )
    for p in pools:
        name = [str(p.get("name"))]
        sessions.add_metric(name, len(p.get("sessions") or ()))
        if isinstance(p.get("max_sessions"), int):
            max_sessions.add_metric(name, p["max_sessions"])
        queued.add_metric(name, p.get("queued") or 0)
        misses.add_metric(name, p.get("heartbeat_misses") or 0)
    yield from (sessions, max_sessions, queued, misses)


def _job_families(jobs: Iterable[JobInfo]) -> Iterator[Metric]:
    by_status = GaugeMetricFamily(
        "kernelsup_jobs",
        "Jobs remembered, by status: queued, running, or their result's status.",
        labels=["status"],
    )
    counts = dict.fromkeys(JOB_STATUSES, 0)
    spooled = dropped = 0
    for job in jobs:
        status = job.status if job.status in counts else "other"
        counts[status] = counts.get(status, 0) + 1
        spooled += job.output_bytes
        dropped += job.dropped_bytes
    for status, n in counts.items():
        by_status.add_metric([status], n)
    yield by_status
    yield GaugeMetricFamily(
        "kernelsup_job_spool_bytes",
        "Output bytes the remembered jobs' spools hold.",
        value=spooled,
    )
    yield GaugeMetricFamily(
        "kernelsup_job_dropped_bytes",
        "Output bytes the remembered jobs could not spool (max_job_output_bytes, "
        "max_job_spool_bytes).",
        value=dropped,
    )


def _control_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    refusals = CounterMetricFamily(
        "kernelsup_control_refusals",
        "Messages and connections the control endpoint refused, by reason.",
        labels=["reason"],
    )
    for key, reason in REFUSALS.items():
        refusals.add_metric([reason], stats.get(key) or 0)
    yield refusals
    yield CounterMetricFamily(
        "kernelsup_control_requests",
        "Valid requests the control endpoint started.",
        value=stats.get("requests") or 0,
    )
    yield CounterMetricFamily(
        "kernelsup_control_dropped",
        "Streamed outputs and events dropped for clients that did not keep up.",
        value=stats.get("dropped") or 0,
    )
    yield GaugeMetricFamily(
        "kernelsup_control_clients", "Clients connected.", value=stats.get("clients") or 0
    )
    yield GaugeMetricFamily(
        "kernelsup_control_requests_in_flight",
        "Requests the control endpoint is running.",
        value=stats.get("in_flight") or 0,
    )


__all__ = ["EVENT_BUFFER", "REFUSALS", "Metrics"]
