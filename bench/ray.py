"""ray: kernels on a Ray cluster against kernels on this machine, in the same run.

``python -m bench.ray [--rounds N] [--idle K] [--json FILE]`` (root: it re-runs itself in a
network namespace with only loopback up, where it starts a Ray head and two worker nodes;
not part of ``python -m bench all``, which needs neither root nor ray). One supervisor holds
two pools of one kernel each, ``local`` (this machine, TCP like the remote one) and ``ray``
(a host actor on a worker node). Measured, each beside its local anchor:

* execute round trip: ``execute("1")``, alternating pools;
* kill -> noticed: SIGKILL the kernel, until ``kernel_exited`` (the pidfd locally, the
  host's pending ``wait_exit`` call for the remote one);
* kill -> replacement ready: until ``kernel_started`` again;
* node crash -> noticed and -> replacement ready (remote only: SIGKILL the raylet of the
  kernel's node; a new node joins before the next round). Its anchor is the local kill.
* the supervisor's CPU per idle kernel (heartbeat pings, and for a remote kernel its lease
  renewals), with ``--idle`` kernels of each kind; and its CPU per iopub message
  (a kernel printing 20,000 lines), local and remote.

The figures Jupyter Enterprise Gateway 3.3 reached on one machine (issue 19): death noticed
in 0.13-2.75 s (a 3 s poll), a frozen kernel never, ~48 ms per execute through its
websocket against 7.4 ms direct.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HEALTH = "RAY_health_check_period_ms=1000 RAY_health_check_timeout_ms=1000 (x3)"


def _inside(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    import trio

    from kernelsup.api import Supervisor, open_supervisor
    from kernelsup.core import events as ev
    from kernelsup.core.config import Config
    from kernelsup.tree.bus import EventBus
    from tests.ray_cluster import Cluster

    workdir = Path(tempfile.mkdtemp(prefix="ksbench-ray-"))
    cluster = Cluster(workdir / "ray")
    t0 = time.monotonic()
    cluster.start_head()
    head_s = time.monotonic() - t0
    t0 = time.monotonic()
    cluster.add_worker("a", 64)
    node_s = time.monotonic() - t0
    cluster.add_worker("b", 64)
    common = {
        "size": 1,
        "spares": 0,
        "transport": "tcp",
        "restart": {"min_delay": 0.0, "max_delay": 0.5, "max_retries": -1},
    }
    on_ray = {"placement": "ray", "ray_resources": {"kernel_slot": 1}}

    def config_of(name: str, *pools: dict[str, Any]) -> Config:
        return Config.from_dict(
            {
                "supervisor": {"runtime_dir": str(workdir / name)},
                "ray": {"address": cluster.address, "placement_timeout": 60.0},
                "pool": list(pools),
            }
        )

    config = config_of("rt", {"name": "local", **common}, {"name": "ray", **common, **on_ray})
    bus = EventBus()
    out: dict[str, Any] = {
        "head_start_s": head_s,
        "node_start_s": node_s,
        "workdir": str(workdir),  # removed by the outer process once all is killed
    }
    me = psutil.Process()

    async def idle(sup: Supervisor, pool: str) -> list[dict[str, Any]]:
        """The pool's kernels once all are idle (polled: status has no change event)."""
        with trio.fail_after(120):
            while True:
                ks = [k for k in (await sup.status()).to_dict()["kernels"] if k["pool"] == pool]
                if ks and all(k["state"] == "idle" for k in ks):
                    return ks
                await trio.sleep(0.05)

    async def until(kind: str, kernel_id: str, sub: Any) -> float:
        async for e in sub:
            if e.kind == kind and e.kernel_id == kernel_id:
                return time.monotonic()
        raise AssertionError("the bus closed")

    async def kill_round(sup: Supervisor, pool: str, how: str) -> tuple[float, float]:
        k = (await idle(sup, pool))[0]
        with bus.subscribe(name="bench-ray") as sub:
            t = time.monotonic()
            if how == "kill":
                os.kill(k["pid"], signal.SIGKILL)
            else:  # crash the node holding it
                for name in cluster.workers():
                    if k["pid"] in {p.pid for p in cluster.node_processes(name)}:
                        cluster.crash(name)
                        break
            with trio.fail_after(120):
                seen = await until(ev.KERNEL_EXITED, k["id"], sub)
                ready = await until(ev.KERNEL_STARTED, k["id"], sub)
        return seen - t, ready - t

    async def cpu_over(seconds: float) -> float:
        c0 = sum(me.cpu_times()[:2])
        await trio.sleep(seconds)
        return sum(me.cpu_times()[:2]) - c0

    async def main() -> None:
        async with open_supervisor(config, bus=bus) as sup:
            rtt: dict[str, list[float]] = {"local": [], "ray": []}
            for _ in range(args.rounds * 10):
                for pool in ("local", "ray"):
                    t = time.perf_counter()
                    result = await sup.execute("1", pool=pool)
                    assert result.status == "ok", result
                    rtt[pool].append(time.perf_counter() - t)
            out["execute_ms"] = {p: _stats(v) for p, v in rtt.items()}
            kills: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
            for _ in range(args.rounds):
                for pool in ("local", "ray"):
                    kills[pool].append(await kill_round(sup, pool, "kill"))
            out["kill_noticed_ms"] = {p: _stats([a for a, _ in v]) for p, v in kills.items()}
            out["kill_ready_ms"] = {p: _stats([b for _, b in v]) for p, v in kills.items()}
            crashes = []
            for i in range(args.crashes):
                crashes.append(await kill_round(sup, "ray", "crash"))
                await trio.to_thread.run_sync(cluster.add_worker, f"n{i}", 64)
            out["crash_noticed_ms"] = _stats([a for a, _ in crashes])
            out["crash_ready_ms"] = _stats([b for _, b in crashes])
            # iopub: 20,000 printed lines, each a message, through each kind of kernel.
            code = "import sys\nfor i in range(20000):\n    print(i); sys.stdout.flush()"
            for pool in ("local", "ray"):
                c0 = sum(me.cpu_times()[:2])
                t = time.perf_counter()
                result = await sup.execute(code, pool=pool, timeout=300)
                wall = time.perf_counter() - t
                cpu = sum(me.cpu_times()[:2]) - c0
                out[f"iopub_{pool}"] = {
                    "wall_s": wall,
                    "supervisor_cpu_us_per_message": 1e6 * cpu / 20000,
                    "status": result.status,
                }
        # Idle cost: a supervisor of --idle idle kernels of one kind, its CPU over a window
        # (heartbeat pings; for remote kernels also their lease renewals through Ray), per
        # kernel (the supervisor's own fixed share included: an upper bound).
        for kind, extra in (("local", {}), ("ray", on_ray)):
            pool = {"name": "idle", **common, **extra, "size": args.idle}
            async with open_supervisor(config_of(f"rt-idle-{kind}", pool)) as idle_sup:
                await idle(idle_sup, "idle")
                await trio.sleep(2)
                cpu = await cpu_over(args.window)
            out[f"idle_cpu_ms_per_s_per_kernel_{kind}"] = 1000 * cpu / args.window / args.idle

    trio.run(main)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "n": len(ms),
        "p50": statistics.median(ms),
        "min": ms[0],
        "max": ms[-1],
    }


def _table(r: dict[str, Any]) -> str:
    rows = [
        "| what | on a Ray node | on this machine (anchor) | ratio |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("execute_ms", "execute round trip, p50 ms"),
        ("kill_noticed_ms", "kernel SIGKILL -> noticed, p50 ms"),
        ("kill_ready_ms", "kernel SIGKILL -> replacement ready, p50 ms"),
    ):
        remote, local = r[key]["ray"]["p50"], r[key]["local"]["p50"]
        rows.append(f"| {label} | {remote:.1f} | {local:.1f} | {remote / local:.2f} |")
    local_kill = r["kill_noticed_ms"]["local"]["p50"]
    local_ready = r["kill_ready_ms"]["local"]["p50"]
    rows.append(
        f"| node crash (raylet SIGKILL) -> noticed, p50 ms | {r['crash_noticed_ms']['p50']:.0f} "
        f"| {local_kill:.1f} (a local kill) | {r['crash_noticed_ms']['p50'] / local_kill:.0f} |"
    )
    rows.append(
        f"| node crash -> replacement ready on another node, p50 ms | "
        f"{r['crash_ready_ms']['p50']:.0f} | {local_ready:.0f} (a local kill) | "
        f"{r['crash_ready_ms']['p50'] / local_ready:.1f} |"
    )
    idle_l = r["idle_cpu_ms_per_s_per_kernel_local"]
    idle_r = r["idle_cpu_ms_per_s_per_kernel_ray"]
    rows.append(
        f"| supervisor CPU per idle kernel, ms per s | {idle_r:.2f} | {idle_l:.2f} | "
        f"{idle_r / idle_l:.2f} |"
    )
    il, ir = r["iopub_local"], r["iopub_ray"]
    rows.append(
        f"| supervisor CPU per iopub message, us | {ir['supervisor_cpu_us_per_message']:.0f} "
        f"| {il['supervisor_cpu_us_per_message']:.0f} | "
        f"{ir['supervisor_cpu_us_per_message'] / il['supervisor_cpu_us_per_message']:.2f} |"
    )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ray", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--crashes", type=int, default=2)
    p.add_argument("--idle", type=int, default=4, help="idle kernels of each kind")
    p.add_argument("--window", type=float, default=10.0, help="seconds of idle CPU sampling")
    p.add_argument("--json", type=Path)
    p.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inside is not None:
        args.inside.write_text(json.dumps(_inside(args), indent=1))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import psutil

    from tests.ray_cluster import kill_netns, netns_of, run_in_netns

    out = Path(tempfile.mkdtemp(prefix="ksbench-")) / "ray.json"
    argv = [sys.executable, "-m", "bench.ray", "--inside", str(out)]
    argv += ["--rounds", str(args.rounds), "--crashes", str(args.crashes)]
    argv += ["--idle", str(args.idle), "--window", str(args.window)]
    proc = run_in_netns(argv, cwd=Path(__file__).resolve().parent.parent)
    netns = None
    try:
        while netns is None and proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children():
                    ns = netns_of(child.pid)
                    if ns != netns_of(os.getpid()):
                        netns = ns
            time.sleep(0.05)
        proc.wait(timeout=1800)
    finally:
        if netns is not None:
            kill_netns(netns)
        if proc.poll() is None:
            proc.kill()
    result = json.loads(out.read_text())
    shutil.rmtree(result.pop("workdir"), ignore_errors=True)
    shutil.rmtree(out.parent, ignore_errors=True)
    result["health_check"] = HEALTH
    print(_table(result))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
