"""metrics: what the Prometheus metrics cost the supervisor.

One in-process tree of k idle kernels (smoke 1, quick 3, full 8) with its metrics served
on 127.0.0.1 (kernelsup/metrics/):

* a scrape: ``GET /metrics`` over a fresh TCP connection, parsed by nothing (the bytes
  only), against the anchor ``status()`` of the same supervisor (what every scrape reads
  once, a few cgroup files or a process tree walk per kernel);
* ``execute("1")`` while the metrics count every outcome and event, against the same
  execute with nothing counting (alternating: metrics on for a round, off for the next).
"""

from __future__ import annotations

import time

import trio

import kernelsup.metrics
from bench import kernels as K
from bench.common import Report, config_dict, ms, pool_config, runtime_dir
from kernelsup.core.config import MetricsConfig

SIZES = {"smoke": 1, "quick": 3, "full": 8}
ROUNDS = {"smoke": 5, "quick": 100, "full": 400}
# Executes per round of the overhead comparison.
BATCH = {"smoke": 2, "quick": 10, "full": 20}


async def _get(host: str, port: int) -> bytes:
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200 "):
        raise AssertionError(f"scrape failed: {data[:200]!r}")
    return data


async def run(mode: str) -> Report:
    k, rounds, batch = SIZES[mode], ROUNDS[mode], BATCH[mode]
    rep = Report("metrics", mode, params={"kernels": k, "rounds": rounds, "batch": batch})
    scrapes: list[float] = []
    statuses: list[float] = []
    on: list[float] = []
    off: list[float] = []
    size = 0
    with runtime_dir("x") as rd:
        config = config_dict(pool_config("default", size=k), runtime_dir=rd / "rt")
        async with K.supervisor(config, rd / "rt") as (sup, _bus):
            await K.settle(sup, pause=0)
            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    kernelsup.metrics.serve, sup, MetricsConfig(listen="127.0.0.1:0")
                )
                host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
                await _get(host, int(port))  # warm up
                for i in range(rounds):
                    for name in ("scrape", "status") if i % 2 == 0 else ("status", "scrape"):
                        t0 = time.perf_counter()
                        if name == "scrape":
                            size = len(await _get(host, int(port)))
                            scrapes.append(ms(time.perf_counter() - t0))
                        else:
                            await sup.status()
                            statuses.append(ms(time.perf_counter() - t0))
                nursery.cancel_scope.cancel()
            metrics = kernelsup.metrics.Metrics(sup)
            for i in range(rounds):
                async with trio.open_nursery() as nursery:
                    counting = i % 2 == 0
                    if counting:
                        await nursery.start(metrics.follow)
                    t0 = time.perf_counter()
                    for _ in range(batch):
                        result = await sup.execute("1")
                        assert result.status == "ok", result
                    (on if counting else off).append(ms(time.perf_counter() - t0) / batch)
                    nursery.cancel_scope.cancel()
    rep.row(
        f"scrape GET /metrics ({k} kernels)",
        "ms",
        scrapes,
        "status() of the same supervisor",
        statuses,
        detail=f"{size} bytes",
    )
    rep.row("execute('1') with the metrics counting", "ms", on, "execute('1'), no metrics", off)
    return rep
