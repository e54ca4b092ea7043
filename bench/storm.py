"""storm: every kernel of a pool SIGKILLed at once while requests keep arriving.

kernelsup: a pool of N kernels (16; quick 4, smoke 2), no spares, under an open-loop
load (a new ``execute("1")`` every 1/RATE s, whatever happens to the earlier ones). Each
round kills all N at once, waits until the event bus has reported every one started
again, keeps the load on a little longer, then stops it and waits for every request to
end. Measured: kill -> every death seen, kill -> all ready, each kernel's kill -> ready,
and the outcome of every request (ok, died, rejected, ...): submitted must equal the
outcomes counted.

The anchor: N jupyter_client AsyncIOLoopKernelManagers with autorestart, all SIGKILLed
at once, until each new process answers kernel_info. jupyter_client has no router, so it
has no request outcomes to show.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import trio

from bench import kernels as K
from bench.common import Report, config_dict, ms, pool_config, runtime_dir
from bench.worker import Worker

SIZE = {"smoke": 2, "quick": 4, "full": 16}
ROUNDS = {"smoke": 1, "quick": 3, "full": 3}
RATE = {"smoke": 20.0, "quick": 40.0, "full": 60.0}  # requests per second, open loop
LOAD_BEFORE_S = 0.5  # load before the kill
LOAD_AFTER_S = 0.5  # load after the last kernel is ready again
REQUEST_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0  # every request must have ended by then


@attrs.define
class Load:
    """An open-loop request generator and the outcome of everything it submitted."""

    sup: Any
    pool: str
    rate: float
    submitted: int = 0
    outcomes: dict[str, int] = attrs.field(factory=dict)
    latencies: list[tuple[float, float, str]] = attrs.field(factory=list)  # t0, dt, status
    stop: trio.Event = attrs.field(factory=trio.Event)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            i = 0
            while not self.stop.is_set():
                nursery.start_soon(self._one)
                i += 1
                with trio.move_on_at(t0 + i / self.rate):
                    await self.stop.wait()

    async def _one(self) -> None:
        self.submitted += 1
        t0 = time.time()
        try:
            r = await self.sup.execute("1", pool=self.pool, timeout=REQUEST_TIMEOUT_S)
            status = r.status if r.status != "ok" or r.result == "1" else "wrong_result"
        except Exception as exc:  # an outcome too, and a bug: counted, never lost
            status = f"raised {type(exc).__name__}"
        self.outcomes[status] = self.outcomes.get(status, 0) + 1
        self.latencies.append((t0, time.time() - t0, status))


async def _kernelsup_round(sup: Any, bus: Any, pool: str, rate: float) -> dict[str, Any]:
    victims = await K.kernels(sup, pool)
    ids = {k["id"] for k in victims}
    trace = K.KillTrace(t_signal=0.0)
    done = trio.Event()
    load = Load(sup, pool, rate)
    with (
        bus.subscribe(buffer=4096, name="bench-storm") as sub,
        trio.fail_after(DRAIN_TIMEOUT_S + K.SETTLE_TIMEOUT_S),
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.run)
            await trio.sleep(LOAD_BEFORE_S)
            nursery.start_soon(K.watch, sub, trace, ids, done)
            trace.t_signal = K.send([k["pid"] for k in victims], K.sigkill())
            await done.wait()
            await trio.sleep(LOAD_AFTER_S)
            load.stop.set()
    await K.settle(sup, pool, exclude={k["pid"] for k in victims})
    ended = sum(load.outcomes.values())
    during = [
        dt
        for t0, dt, _ in load.latencies
        if trace.t_signal <= t0 <= trace.t_signal + max(trace.started.values())
    ]
    return {
        "all_dead": max(trace.exited.values()),
        "all_ready": max(trace.started.values()),
        "ready": list(trace.started.values()),
        "submitted": load.submitted,
        "ended": ended,
        "outcomes": load.outcomes,
        "during": during,
    }


async def run(mode: str) -> Report:
    size, rounds, rate = SIZE[mode], ROUNDS[mode], RATE[mode]
    rep = Report("storm", mode, params={"kernels": size, "rounds": rounds, "rate_per_s": rate})
    s: dict[str, list[float]] = {
        k: []
        for k in (
            "ks_all_dead",
            "ks_all_ready",
            "ks_ready",
            "ks_during",
            "jc_all_dead",
            "jc_all_ready",
            "jc_ready",
        )
    }
    outcomes: dict[str, int] = {}
    submitted = ended = 0
    with runtime_dir("s") as rd:
        cfg = config_dict(
            pool_config(
                "storm", size=size, spares=0, queue_limit=100_000, queue_timeout=REQUEST_TIMEOUT_S
            )
        )
        async with Worker(rd / "w") as worker, K.supervisor(cfg, rd / "k") as (sup, bus):
            await worker.call("jc_start", name="storm", count=size)
            await K.settle(sup)
            for i in range(rounds):
                for step in ("ks", "jc") if i % 2 == 0 else ("jc", "ks"):
                    if step == "ks":
                        r = await _kernelsup_round(sup, bus, "storm", rate)
                        s["ks_all_dead"].append(ms(r["all_dead"]))
                        s["ks_all_ready"].append(ms(r["all_ready"]))
                        s["ks_ready"].extend(ms(x) for x in r["ready"])
                        s["ks_during"].extend(ms(x) for x in r["during"])
                        submitted += r["submitted"]
                        ended += r["ended"]
                        for k, v in r["outcomes"].items():
                            outcomes[k] = outcomes.get(k, 0) + v
                    else:
                        r = await worker.call("jc_kill_restart", name="storm")
                        s["jc_all_dead"].append(ms(max(r["detected_s"])))
                        s["jc_all_ready"].append(ms(r["all_ready_s"]))
                        s["jc_ready"].extend(ms(x) for x in r["ready_s"])
                        await trio.sleep(K.SETTLE_PAUSE_S)
    jc = "jupyter_client autorestart"
    rep.row(
        f"kill {size} -> every death seen",
        "ms",
        s["ks_all_dead"],
        jc + ": every death noticed",
        s["jc_all_dead"],
    )
    rep.row(
        f"kill {size} -> all {size} ready",
        "ms",
        s["ks_all_ready"],
        jc + ": all answer kernel_info",
        s["jc_all_ready"],
    )
    rep.row("kill -> each kernel ready", "ms", s["ks_ready"], jc, s["jc_ready"])
    rep.row(
        "request latency, submitted during the storm",
        "ms",
        s["ks_during"],
        jc,
        [],
        anchor_note="no router: no requests",
    )
    lost = submitted - ended
    row = rep.row(
        "requests without an outcome",
        "count",
        [float(lost)],
        jc,
        [],
        anchor_note="no router",
        target="0 (every request has an outcome)",
    )
    row.met = lost == 0
    rep.extra.update({"submitted": submitted, "ended": ended, "lost": lost, "outcomes": outcomes})
    rep.notes.append(
        f"requests: {submitted} submitted, {ended} ended, {lost} without an "
        f"outcome; outcomes {dict(sorted(outcomes.items()))}"
    )
    rep.notes.append(
        f"open-loop load of {rate:g} executes/s across the storm; 'died' = "
        "running on a kernel when it was killed (never re-run)"
    )
    return rep
