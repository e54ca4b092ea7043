"""Prometheus metrics (kernelsup/metrics/) of a real `kernelsup run`, scraped over HTTP and
read with prometheus_client's own parser while requests, deaths and restarts happen."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

import kernelsup
from kernelsup.core.results import ExecuteResult
from kernelsup.metrics.collect import REFUSALS
from tests.supervisor_process import SupervisorProcess, processes_of, supervisor, write_config

METRICS = '\n[metrics]\nlisten = "127.0.0.1:0"\n'
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of one scrape, by (name, sorted labels), parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; 0 when the series does not exist yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def metrics_url(sup: SupervisorProcess) -> str:
    line = sup.ready_line
    return line.split("metrics ", 1)[1].split(";", 1)[0].strip()


@pytest.fixture
def metered() -> Iterator[SupervisorProcess]:
    yield from supervisor(
        size=2,
        spares=1,
        server="max_connections = 64\n" + METRICS,
        pool="max_output_bytes = 2048",
        restart="min_delay = 0.0\nmax_delay = 0.2\nmax_retries = -1",
    )


class Scraper:
    """Scrapes in a thread the whole time, and checks every counter only ever grows."""

    MONOTONIC_EXCEPT = ("kernelsup_kernel_cpu_seconds_total",)  # resets with its kernel

    def __init__(self, url: str) -> None:
        self.url = url
        self.scrapes = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last: Samples = {}
        while not self._stop.is_set():
            try:
                now = scrape(self.url)
            except Exception as exc:
                self.problems.append(f"scrape {self.scrapes}: {exc!r}")
                return
            self.scrapes += 1
            for key, before in last.items():
                name = key[0]
                counter = name.endswith(("_total", "_count", "_bucket", "_sum"))
                if counter and name not in self.MONOTONIC_EXCEPT and now.get(key, 0) < before:
                    self.problems.append(f"{key} went from {before} to {now.get(key)}")
            last = now
            self._stop.wait(0.05)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def wait_status(client: kernelsup.SyncClient, predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = client.status()
        if predicate(report.kernels):  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"status never got there: {client.status().kernels}")


def settled(restarts: int) -> object:
    def check(kernels: tuple[dict[str, object], ...]) -> bool:
        return (
            sum(int(k["restarts"]) for k in kernels) == restarts  # type: ignore[call-overload]
            and all(k["state"] == "idle" for k in kernels)
        )

    return check


def test_metrics_count_requests_deaths_and_restarts_as_they_happen(
    metered: SupervisorProcess,
) -> None:
    url = metrics_url(metered)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    results: list[tuple[str, ExecuteResult]] = []
    with kernelsup.SyncClient(metered.config) as client, Scraper(url) as scraper:

        def run(code: str, pool: str = "default", **kw: object) -> ExecuteResult:
            result = client.execute(code, pool=pool, **kw)  # type: ignore[arg-type]
            results.append(("default" if pool == "default" else "", result))
            return result

        for _ in range(3):
            assert run("1 + 1").status == "ok"
        assert run("1 / 0").status == "error"
        assert run("import time; time.sleep(30)", timeout=0.5).status == "timeout"
        assert run("1", pool="nope").code == "unknown_pool"
        truncated = run("print('x' * 10_000)")
        assert truncated.status == "ok" and truncated.truncated_bytes > 0
        assert run("x = 1", session="s1").status == "ok"
        # a death in a request, one from outside (SIGKILL), one by heartbeat (SIGSTOP)
        assert run("import os; os.kill(os.getpid(), 9)").status == "died"
        wait_status(client, settled(1))
        idle = [k for k in client.status().kernels if k["role"] == "pool"]
        os.kill(int(idle[0]["pid"]), signal.SIGKILL)
        wait_status(client, settled(2))
        frozen = [k for k in client.status().kernels if k["role"] == "pool"][1]
        os.kill(int(frozen["pid"]), signal.SIGSTOP)
        try:
            wait_status(client, settled(3))
        finally:
            try:
                os.kill(int(frozen["pid"]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        refused_before = total(scrape(url), "kernelsup_control_refusals_total")
        junk(metered.endpoint)
        deadline = time.monotonic() + 30
        while total(scrape(url), "kernelsup_control_refusals_total") == refused_before:
            assert time.monotonic() < deadline, "the junk message was never counted"
            time.sleep(0.05)
        status = client.status()
        stats = client.server_stats()
    assert not scraper.problems, scraper.problems
    assert scraper.scrapes >= 3

    m = scrape(url)
    # requests by outcome: exactly what the clients were told
    expected: dict[tuple[str, str, str], int] = {}
    for pool, r in results:
        key = (pool, r.status, r.code or "")
        expected[key] = expected.get(key, 0) + 1
    seen = {
        (dict(ls)["pool"], dict(ls)["status"], dict(ls)["code"]): v
        for (n, ls), v in m.items()
        if n == "kernelsup_requests_total"
    }
    assert seen == expected
    assert expected[("default", "ok", "")] == 5 and expected[("", "rejected", "unknown_pool")] == 1
    ran = [r for _, r in results if r.status != "rejected"]
    assert value(m, "kernelsup_request_run_seconds_count", pool="default") == len(ran)
    assert value(m, "kernelsup_request_queue_wait_seconds_count", pool="default") == len(ran)
    run_sum = value(m, "kernelsup_request_run_seconds_sum", pool="default")
    assert run_sum == pytest.approx(sum(r.run_s for r in ran), abs=1e-3)
    timed_out = value(m, "kernelsup_request_run_seconds_bucket", pool="default", le="0.25")
    assert timed_out < len(ran)  # the 0.5 s timeout ran longer than 0.25 s
    # output truncation
    assert value(m, "kernelsup_output_truncations_total", pool="default") == 1
    truncated_bytes = value(m, "kernelsup_output_truncated_bytes_total", pool="default")
    assert truncated_bytes == truncated.truncated_bytes
    # deaths by cause and restarts
    assert value(m, "kernelsup_kernel_exits_total", pool="default", cause="failure") == 2
    assert value(m, "kernelsup_kernel_exits_total", pool="default", cause="heartbeat") == 1
    assert value(m, "kernelsup_kernel_restarts_total", pool="default") == 3
    assert value(m, "kernelsup_heartbeat_misses_total", pool="default") >= 3
    # kernels by state: what status says
    states = [k["state"] for k in status.kernels]
    assert value(m, "kernelsup_kernels", pool="default", state="idle") == states.count("idle")
    assert total(m, "kernelsup_kernels", pool="default") == len(states)
    assert value(m, "kernelsup_kernels", pool="default", state="dead") == 0
    # sessions
    assert value(m, "kernelsup_sessions", pool="default") == 1
    assert value(m, "kernelsup_sessions_opened_total", pool="default") == 1
    # the control endpoint's refusals, as server_stats counts them
    assert total(m, "kernelsup_control_refusals_total") == 1
    counted = {key: stats[key] for key in REFUSALS if stats.get(key)}
    assert len(counted) == 1 and list(counted.values()) == [1], stats
    (key,) = counted
    assert value(m, "kernelsup_control_refusals_total", reason=REFUSALS[key]) == 1
    # each kernel's memory and CPU, and the supervisor's own
    for k in status.kernels:
        labels = {"pool": "default", "kernel": k["id"], "containment": k["containment"]}
        assert value(m, "kernelsup_kernel_memory_bytes", **labels) > 10 * 2**20
    assert value(m, "process_resident_memory_bytes") > 10 * 2**20
    assert value(m, "process_cpu_seconds_total") > 0
    assert value(m, "kernelsup_metrics_events_missed_total") == 0


def test_metrics_show_jobs_by_status(metered: SupervisorProcess, tmp_path: Path) -> None:
    url = metrics_url(metered)
    gate = tmp_path / "go"
    with kernelsup.SyncClient(metered.config) as client:
        waiting = client.submit(
            f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
            "print('x' * 1000)"
        )
        failing = client.submit("1 / 0")
        assert client.wait(failing.id, timeout=60) is not None
        deadline = time.monotonic() + 60
        while client.job(waiting.id).status != "running":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        m = scrape(url)
        assert value(m, "kernelsup_jobs", status="running") == 1
        assert value(m, "kernelsup_jobs", status="error") == 1
        assert value(m, "kernelsup_jobs", status="queued") == 0
        gate.touch()
        result = client.wait(waiting.id, timeout=60)
        assert result is not None and result.status == "ok"
        spooled = sum(job.output_bytes for job in client.jobs())
    m = scrape(url)
    assert value(m, "kernelsup_jobs", status="running") == 0
    assert value(m, "kernelsup_jobs", status="ok") == 1
    assert value(m, "kernelsup_job_spool_bytes") == spooled >= 1000
    # a job's run is a request like any other
    assert value(m, "kernelsup_requests_total", pool="default", status="ok", code="") == 1


def junk(endpoint: str) -> None:
    """One message the control endpoint must refuse (it is not a signed request)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"not", b"a", b"request"])
        sock.poll(5000)  # the refusal notice, when the server can answer one
    finally:
        sock.close()


def test_metrics_http_answers_only_get_of_metrics(metered: SupervisorProcess) -> None:
    url = metrics_url(metered)
    base = url.removesuffix("/metrics")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/other", timeout=10)
    info.value.close()
    assert info.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=10)
    info.value.close()
    assert info.value.code == 405 and info.value.headers["Allow"] == "GET, HEAD"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as head:
        assert head.status == 200 and head.read() == b""
        assert int(head.headers["Content-Length"]) > 0
    # a request head that never ends is cut off, and the server keeps serving
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            for _ in range(64):
                raw.sendall(b"X" * 1024)
        except OSError:
            pass  # closed on us: that is the point
        raw.settimeout(10)
        try:
            assert raw.recv(100) == b""
        except ConnectionResetError:
            pass
    assert value(scrape(url), "kernelsup_kernels", pool="default", state="idle") >= 1


def test_run_refuses_a_metrics_address_it_cannot_bind(tmp_path: Path) -> None:
    """Another process has the port: run says so, naming the key, and exits."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        gen = supervisor(
            tmp_path, size=1, spares=0, server=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        )
        with pytest.raises(AssertionError) as info:
            next(gen)
        gen.close()
    finally:
        holder.close()
    assert "metrics.listen: cannot listen on 127.0.0.1:" in str(info.value)


def test_metrics_stop_with_the_supervisor(tmp_path: Path) -> None:
    running = supervisor(tmp_path, size=1, spares=0, server=METRICS)
    sup = next(running)
    url = metrics_url(sup)
    assert value(scrape(url), "kernelsup_kernels", pool="default", state="idle") == 1
    with pytest.raises(StopIteration):
        next(running)  # SIGTERM: exit 0, nothing left behind
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(url, timeout=10)
    assert isinstance(info.value.reason, ConnectionRefusedError)


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_metrics_address_that_is_not_loopback_is_refused_without_allow_remote(
    tmp_path: Path, command: str
) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(
        f'[supervisor]\nruntime_dir = "{tmp_path / "rt"}"\n[metrics]\nlisten = "0.0.0.0:9464"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "kernelsup", command, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("config_invalid ConfigError: ")
    assert "$.metrics.listen: host '0.0.0.0' is not loopback" in proc.stderr
    assert "[metrics] allow_remote = true" in proc.stderr
    assert not (tmp_path / "rt").exists()  # run refused before it made anything


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_allow_remote_listens_on_every_interface_in_a_namespace_with_only_loopback(
    tmp_path: Path,
) -> None:
    """``0.0.0.0`` with allow_remote binds where it says; run in a network namespace of its
    own (only loopback up), so nothing is exposed, and scraped from inside it."""
    config = write_config(
        tmp_path,
        tmp_path / "rt",
        size=1,
        spares=0,
        server='\n[metrics]\nlisten = "0.0.0.0:0"\nallow_remote = true\n',
    )
    script = f"ip link set lo up && exec {sys.executable} -m kernelsup run {config}"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no network namespaces here: {probe.stderr.decode().strip()}")
    proc = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " metrics http://0.0.0.0:" in line, line
        url = line.split("metrics ", 1)[1].split(";", 1)[0].replace("0.0.0.0", "127.0.0.1")
        scraped = subprocess.run(
            [
                "nsenter",
                f"--net=/proc/{proc.pid}/ns/net",
                sys.executable,
                "-c",
                f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert scraped.returncode == 0, scraped.stderr
        assert 'kernelsup_kernels{pool="default",state="idle"} 1.0' in scraped.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert processes_of(tmp_path / "rt") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
