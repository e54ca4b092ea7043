"""hang: SIGSTOP a kernel; how long until kernelsup says so and has a replacement ready?

A stopped process keeps its sockets open and its pid alive, so only the heartbeat can
tell. kernelsup is measured at the default heartbeat (interval 1 s, 3 misses) and at a
fast one (interval 0.2 s, 3 misses): SIGSTOP, then ``kernel_exited`` with cause
``heartbeat`` (detected) and ``kernel_started`` (replacement ready) from the event bus.

The anchor, jupyter_client's AsyncIOLoopKernelManager with autorestart, only polls whether
the process exists, so it is expected never to notice. It is watched for the whole time
kernelsup is being measured (at least ``ANCHOR_MIN_S``), concurrently: it is idle while
it waits, so it costs the measurements nothing, and the run gets a long window for free.
It is reported as "not detected within T s" when it does not notice.
"""

from __future__ import annotations

from typing import Any

import trio

from bench import kernels as K
from bench.common import Report, config_dict, ms, pool_config, runtime_dir
from bench.worker import Worker

ROUNDS = {"smoke": (1, 1), "quick": (3, 5), "full": (10, 20)}  # (default, fast)
# The anchor is watched at least this long (jupyter_client polls every 3 s).
ANCHOR_MIN_S = {"smoke": 4.0, "quick": 10.0, "full": 30.0}
ANCHOR_MAX_S = 900.0
SETTINGS = {"default": (1.0, 3), "fast": (0.2, 3)}


async def _kernelsup_once(sup: Any, bus: Any, pool: str) -> dict[str, Any]:
    victim = next(k for k in await K.kernels(sup, pool) if k["role"] == "pool")
    trace = K.KillTrace(t_signal=0.0)
    done = trio.Event()
    with bus.subscribe(name="bench-hang") as sub, trio.fail_after(K.SETTLE_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(K.watch, sub, trace, {victim["id"]}, done)
            trace.t_signal = K.send([victim["pid"]], K.sigstop())
            await done.wait()
            nursery.cancel_scope.cancel()
    await K.settle(sup, pool, exclude={victim["pid"]})
    return {
        "detected": trace.exited[victim["id"]],
        "ready": trace.started[victim["id"]],
        "cause": trace.causes[victim["id"]],
    }


async def run(mode: str) -> Report:
    n_default, n_fast = ROUNDS[mode]
    rep = Report(
        "hang",
        mode,
        params={
            "rounds_default": n_default,
            "rounds_fast": n_fast,
            "heartbeat": {k: {"interval": v[0], "misses": v[1]} for k, v in SETTINGS.items()},
        },
    )
    samples: dict[str, list[float]] = {
        f"{s}_{m}": [] for s in SETTINGS for m in ("detected", "ready")
    }
    causes: dict[str, list[str]] = {s: [] for s in SETTINGS}
    anchor: dict[str, Any] = {}
    with runtime_dir("h") as rd:
        cfg = config_dict(
            *(
                pool_config(name, size=1, spares=0, heartbeat=iv, misses=m)
                for name, (iv, m) in SETTINGS.items()
            )
        )
        stop_file = rd / "w" / "stop-hang"
        async with Worker(rd / "w") as worker, K.supervisor(cfg, rd / "k") as (sup, bus):
            await worker.call("jc_start", name="h")
            await K.settle(sup)

            async def watch_anchor() -> None:
                anchor.update(
                    await worker.call(
                        "jc_hang",
                        name="h",
                        min_seconds=ANCHOR_MIN_S[mode],
                        max_seconds=ANCHOR_MAX_S,
                        stop_file=str(stop_file),
                    )
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_anchor)
                for setting in _interleave(n_default, n_fast):
                    r = await _kernelsup_once(sup, bus, setting)
                    samples[f"{setting}_detected"].append(ms(r["detected"]))
                    samples[f"{setting}_ready"].append(ms(r["ready"]))
                    causes[setting].append(r["cause"])
                stop_file.touch()
    waited = anchor.get("waited_s", 0.0)
    jc_detected = [ms(anchor["detected_s"])] if anchor.get("detected") else []
    note = "" if jc_detected else f"not detected within {waited:.0f} s"
    jc = "jupyter_client autorestart"
    for setting, (interval, misses) in SETTINGS.items():
        bound = interval * (misses + 0.5)
        label = f"interval {interval:g} s x {misses}"
        row = rep.row(
            f"SIGSTOP -> detected ({label})",
            "ms",
            samples[f"{setting}_detected"],
            jc + ": SIGSTOP -> detected",
            jc_detected,
            anchor_note=note,
            anchor_censored_at=ms(waited) if note else None,
            target=f"p99 <= {bound:g} s = interval x (misses + 0.5)",
        )
        st = row.ks_stats
        row.met = st.p99 <= bound * 1000 if st else None
        if st:
            row.detail = (
                f"p50 is {st.p50 / 1000 / interval:.2f} intervals; the design "
                f"bound is interval x (misses + 1) = {interval * (misses + 1):g} s"
            )
        rep.row(
            f"SIGSTOP -> replacement ready ({label})",
            "ms",
            samples[f"{setting}_ready"],
            jc + ": SIGSTOP -> replacement ready",
            [],
            anchor_note=note or "not measured",
            anchor_censored_at=ms(waited) if note else None,
        )
    rep.extra["causes"] = causes
    rep.extra["anchor"] = anchor
    rep.notes.append(
        f"jupyter_client: {note or 'detected'} (its restarter only polls "
        "whether the process exists, and a stopped process exists)"
    )
    for row in rep.rows:
        if row.detail:
            rep.notes.append(f"{row.name}: {row.detail}")
    return rep


def _interleave(n_default: int, n_fast: int) -> list[str]:
    """Spread the two settings evenly over the run (the slow one does not come last)."""
    total = n_default + n_fast
    out: list[str] = []
    d = f = 0
    for _ in range(total):
        if d < n_default and (f >= n_fast or (d + 0.5) / n_default <= (f + 0.5) / n_fast):
            out.append("default")
            d += 1
        else:
            out.append("fast")
            f += 1
    return out
