"""idle: what does supervising idle kernels cost the supervisor process?

For each pool size k (1, 8, 32; quick 1, 4; smoke 1) two processes hold k idle kernels:

* kernelsup: a supervisor in a subprocess (``python -m bench.idle CONFIG``: an in-process
  tree, heartbeat on at its defaults, nothing else), measured from outside with psutil;
* the anchor: the worker process holding k jupyter_client AsyncIOLoopKernelManagers with
  autorestart (their restarters poll every 3 s), measured the same way while its loop
  runs.

Windows of W seconds alternate between the two; each gives the CPU time the process used
(user + system, its children excluded) as a share of one core, and its RSS. Per kernel:
the CPU share divided by k, and the RSS added per kernel (the slope between the smallest
and the largest k; with one size only, RSS / k).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import trio

from bench import kernels as K
from bench.common import Report, config_dict, pool_config, runtime_dir, wait_for_output
from bench.worker import Worker

SIZES = {"smoke": (1,), "quick": (1, 4), "full": (1, 8, 32)}
WINDOW_S = {"smoke": 1.0, "quick": 3.0, "full": 6.0}
WINDOWS = {"smoke": 1, "quick": 2, "full": 4}
# Let start-up work (imports, first heartbeats) finish before the first window.
WARMUP_S = {"smoke": 0.5, "quick": 1.5, "full": 3.0}
CHILD_START_TIMEOUT_S = 120.0
CHILD_STOP_TIMEOUT_S = 30.0
MB = 1024 * 1024
# The repository root: where `python -m bench.idle` finds the bench package.
ROOT = str(Path(__file__).resolve().parent.parent)


# --------------------------------------------------------------------------- the child
async def _child(data: dict[str, Any]) -> None:
    async with K.supervisor(data["config"], Path(data["runtime_dir"])) as (sup, _bus):
        await K.settle(sup, pause=0)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_eof, nursery.cancel_scope)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break


async def _until_eof(scope: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some(1024):
        pass
    scope.cancel()


def _prepare_child(k: int, rd: Path) -> tuple[Path, BinaryIO]:
    """Write the child's config; open its log (the caller closes it)."""
    rd.mkdir(mode=0o700, exist_ok=True)
    cfg_path = rd / "idle.json"
    cfg_path.write_text(
        json.dumps(
            {"config": config_dict(pool_config("idle", size=k)), "runtime_dir": str(rd / "rt")}
        )
    )
    return cfg_path, open(rd / "child.log", "wb")


@asynccontextmanager
async def supervisor_process(k: int, rd: Path) -> AsyncIterator[int]:
    """A supervisor of ``k`` idle kernels in a subprocess; yields its pid once ready.

    In a session of its own (Ctrl-C reaches only the benchmark, which stops everything in
    order); stopped by closing its stdin, which also happens if this process dies, then
    SIGTERM, then SIGKILL (its kernels are tethered to it)."""
    cfg_path, log = _prepare_child(k, rd)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench.idle", str(cfg_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        await wait_for_output(
            proc,
            b"ready",
            CHILD_START_TIMEOUT_S,
            lambda: "the supervisor subprocess exited: " + (rd / "child.log").read_text()[-1500:],
        )
        yield proc.pid
    finally:
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                await proc.stdin.aclose()
            with trio.move_on_after(CHILD_STOP_TIMEOUT_S):
                await proc.wait()
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(5):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()
            log.close()


# --------------------------------------------------------------------------- measuring
def _cpu(proc: Any) -> float:
    """CPU seconds the process has used, its live threads together.

    psutil's cpu_times() counts in clock ticks (10 ms), too coarse for an idle process
    over a few seconds; on Linux the scheduler's own nanosecond count per thread
    (/proc/PID/task/TID/schedstat) is used instead. A thread that exits between two
    samples takes its time with it (the supervisor's threads are long-lived)."""
    task_dir = f"/proc/{proc.pid}/task"
    if not os.path.isdir(task_dir):
        t = proc.cpu_times()
        return float(t.user + t.system)
    total = 0
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


async def _window(proc: Any, seconds: float) -> tuple[float, float]:
    """(CPU share of one core in %, RSS in MB) over one window."""
    c0, t0 = _cpu(proc), trio.current_time()
    await trio.sleep(seconds)
    c1, t1 = _cpu(proc), trio.current_time()
    return 100.0 * (c1 - c0) / (t1 - t0), proc.memory_info().rss / MB


async def run(mode: str) -> Report:
    import psutil

    sizes, window, windows = SIZES[mode], WINDOW_S[mode], WINDOWS[mode]
    rep = Report(
        "idle",
        mode,
        params={
            "sizes": list(sizes),
            "window_s": window,
            "windows": windows,
            "heartbeat_interval_s": 1.0,
        },
    )
    cpu: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}
    uss: dict[str, float] = {}
    with runtime_dir("i") as rd:
        for k in sizes:
            async with Worker(rd / f"w{k}") as worker, supervisor_process(k, rd / f"k{k}") as spid:
                await worker.call("jc_start", name="idle", count=k)
                wpid = await worker.call("pid")
                ks, jc = psutil.Process(spid), psutil.Process(wpid)
                await trio.sleep(WARMUP_S[mode])
                for _ in range(windows):
                    share, mem = await _window(ks, window)
                    cpu.setdefault(f"ks{k}", []).append(share)
                    rss.setdefault(f"ks{k}", []).append(mem)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(lambda: worker.call("idle", seconds=window + 0.6))
                        await trio.sleep(0.3)
                        share, mem = await _window(jc, window)
                    cpu.setdefault(f"jc{k}", []).append(share)
                    rss.setdefault(f"jc{k}", []).append(mem)
                uss[f"ks{k}"] = ks.memory_full_info().uss / MB
                uss[f"jc{k}"] = jc.memory_full_info().uss / MB
    jc_name = "jupyter_client managers + restarters"
    for k in sizes:
        rep.row(f"supervisor CPU, {k} idle kernel(s)", "%", cpu[f"ks{k}"], jc_name, cpu[f"jc{k}"])
    for k in sizes:
        row = rep.row(
            f"supervisor CPU per kernel, {k} kernel(s)",
            "%",
            [x / k for x in cpu[f"ks{k}"]],
            jc_name,
            [x / k for x in cpu[f"jc{k}"]],
            target="< 2 % of one core per kernel",
        )
        st = row.ks_stats
        row.met = st.p50 < 2.0 if st else None
    for k in sizes:
        rep.row(f"supervisor RSS, {k} idle kernel(s)", "MB", rss[f"ks{k}"], jc_name, rss[f"jc{k}"])
    lo, hi = sizes[0], sizes[-1]
    if hi > lo:

        def slope(tag: str) -> list[float]:
            return [
                (b - a) / (hi - lo)
                for a, b in zip(rss[f"{tag}{lo}"], rss[f"{tag}{hi}"], strict=True)
            ]

        name, ks_per, jc_per = (
            f"supervisor RSS per added kernel ({lo} -> {hi})",
            slope("ks"),
            slope("jc"),
        )
    else:
        name, ks_per, jc_per = (
            f"supervisor RSS / kernels ({hi})",
            [x / hi for x in rss[f"ks{hi}"]],
            [x / hi for x in rss[f"jc{hi}"]],
        )
    row = rep.row(name, "MB", ks_per, jc_name, jc_per, target="< 1 MB per kernel")
    row.met = row.ks_stats.p50 < 1.0 if row.ks_stats else None
    rep.extra["uss_mb"] = {key: round(v, 2) for key, v in uss.items()}
    rep.notes.append(
        "CPU in % of one core, user + system time of the supervising process "
        "only (the kernels' own CPU is not counted); heartbeat interval 1 s"
    )
    rep.notes.append(f"USS (MB, memory unique to the process): {rep.extra['uss_mb']}")
    if hi == lo:
        rep.notes.append(
            "one pool size only: memory per kernel is RSS / k, which counts "
            "the interpreter's fixed cost; quick and full modes give the slope"
        )
    return rep


if __name__ == "__main__":
    trio.run(_child, json.loads(Path(sys.argv[1]).read_text()))
