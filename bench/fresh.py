"""fresh: how fast and how cheap a never-used kernel is, forked from the zygote or exec'ed.

Each round, in a rotating order:

* kernelsup fork: a kernel actor started by the pool's fork server (adapters/forkserver.py),
  timed from the start call to ready (its ``kernel_info_reply``, its iopub subscription
  confirmed and the warm-up execute: more than the anchor waits for);
* kernelsup exec: the same actor, the kernel exec'ed (``launch = "exec"``);
* the anchor: a plain ipykernel cold start (IPC), launch -> ``kernel_info_reply``
  (bench/worker.py ``cold_start``).

Then, on kernels forked by a zygote with ``preload = ["numpy"]`` and by one without:
``import numpy`` as the kernel's first request (the round trip), against
``execute("1")`` on the same kernel (what any first request costs).

Memory: 8 idle kernels forked from one zygote against 8 exec'ed (cold-started) ones,
both pools of one supervisor, one at a time: the proportional set size (PSS) per kernel,
``psutil.Process.memory_full_info().pss`` summed over each kernel's unit; for the forked
pool once without and once with the zygote's own PSS shared out over the 8.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import trio

from bench import kernels as K
from bench.common import Report, config_dict, ms, pool_config, runtime_dir
from bench.worker import RawClient, Worker
from kernelsup.adapters.containment import Limits, Unit
from kernelsup.adapters.forkserver import ForkServer
from kernelsup.adapters.launch import plan_launch
from kernelsup.adapters.started import EXEC, Launcher
from kernelsup.tree.kernel import run_kernel
from kernelsup.tree.kernel_handle import KernelHandle, KernelOptions

ROUNDS = {"smoke": 2, "quick": 12, "full": 40}
NUMPY_ROUNDS = {"smoke": 1, "quick": 5, "full": 15}
IDLE_KERNELS = {"smoke": 2, "quick": 8, "full": 8}
# After the 8 kernels are ready: let their start-up work (history thread, first GC) end
# before memory is read.
MEMORY_SETTLE_S = 2.0
START_TIMEOUT_S = 120.0


async def _ready_time(
    nursery: trio.Nursery, launcher: Launcher, rd: Path, kernel_id: str, code: str = ""
) -> tuple[float, float, str]:
    """Start one kernel actor; seconds to ready, then the round trip of ``code`` as its
    first request (0 without), and how it was launched. The kernel is killed after."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    with trio.fail_after(START_TIMEOUT_S):
        handle: KernelHandle = await nursery.start(
            lambda task_status: run_kernel(
                kernel_id, KernelOptions(), rd, launcher=launcher, task_status=task_status
            )
        )
    ready = time.perf_counter() - t0
    CPU[launcher is EXEC].append(time.process_time() - cpu0 + _cpu_of(handle.pid))
    first = 0.0
    try:
        if code:
            t1 = time.perf_counter()
            r = await handle.execute(code, timeout=60.0)
            first = time.perf_counter() - t1
            assert r.status == "ok", r
        launch = _launch_of(handle)
    finally:
        handle.kill("bench")
    return ready, first, launch


# CPU seconds (the kernel's own until ready, plus this process's) of each start, by
# whether it was exec'ed: what a fresh kernel costs a machine, beside a python -c.
CPU: dict[bool, list[float]] = {False: [], True: []}


def _cpu_of(pid: int | None) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, ValueError):
        return 0.0
    return float(times.user + times.system)


def _python_c_cpu() -> float:
    """CPU seconds of one ``python -c pass`` (what a subprocess per sample costs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


async def _raw_fork_ready(server: ForkServer, rd: Path, kernel_id: str) -> tuple[float, str]:
    """The anchor's own measure on a forked kernel: the fork server's start, then a raw
    client's kernel_info_reply (no kernel actor: no iopub check, no warm-up)."""
    plan = plan_launch(kernel_id, "python3", rd)
    unit = Unit.create("auto", rd, plan.connection_file.stem, Limits())
    t0 = time.perf_counter()
    proc, output = await server.start(plan, unit)
    try:
        client = RawClient(json.loads(plan.connection_file.read_text()))
        try:
            await trio.to_thread.run_sync(client.kernel_info, START_TIMEOUT_S)
            ready = time.perf_counter() - t0
        finally:
            client.close()
    finally:
        with trio.CancelScope(shield=True):
            await proc.kill_and_reap()
            proc.cleanup_files()
            await output.aclose()
    return ready, proc.launch


async def _wait_ready(server: ForkServer) -> None:
    with trio.fail_after(START_TIMEOUT_S):
        await server.wait_ready()


def _launch_of(handle: Any) -> str:
    proc = handle._actor.proc
    return str(proc.launch) if proc is not None else "?"


def _pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.Error:
            pass
    return total


async def _pool_pss(rd: Path, launch: str, n: int) -> tuple[list[float], float]:
    """PSS per kernel (MB) of ``n`` idle kernels of one pool, and the zygote's PSS (MB)."""
    cfg = config_dict(pool_config("p", size=n, spares=0, launch=launch))
    async with K.supervisor(cfg, rd) as (sup, _bus):
        ks = await K.settle(sup, "p", pause=MEMORY_SETTLE_S)
        pool = sup.pools["p"]
        launched = {_launch_of(c.handle) for c in pool.sup.children if c.handle}
        assert launched == {launch}, launched
        per_kernel = []
        for k in ks:
            child = pool.sup.child(k["id"])
            assert child is not None and child.handle is not None
            per_kernel.append(_pss(child.handle.unit.members()) / 2**20)  # type: ignore[attr-defined]
        zygote = pool.fork_server.zygote_pid if pool.fork_server else None
        return per_kernel, (_pss([zygote]) / 2**20 if zygote else 0.0)


async def run(mode: str) -> Report:
    rounds = ROUNDS[mode]
    rep = Report("fresh", mode, params={"rounds": rounds, "idle_kernels": IDLE_KERNELS[mode]})
    s: dict[str, list[float]] = {
        k: []
        for k in (
            "fork",
            "exec",
            "cold",
            "raw",
            "numpy_pre",
            "numpy_none",
            "one_pre",
            "python_c_cpu",
        )
    }
    launches: dict[str, set[str]] = {"fork": set(), "exec": set()}
    with runtime_dir("f") as rd:
        async with Worker(rd / "w") as worker, trio.open_nursery() as nursery:
            server = ForkServer()
            preloaded = ForkServer(("numpy",))
            plain = ForkServer()
            for fs in (server, preloaded, plain):
                nursery.start_soon(fs.run)
            (rd / "k").mkdir(mode=0o700)
            # The first start makes each zygote; wait for them, as a running pool has.
            for fs in (server, preloaded, plain):
                await _ready_time(nursery, fs, rd / "k", "warm")
                await _wait_ready(fs)
            CPU[False].clear()
            CPU[True].clear()
            steps = ["fork", "exec", "cold", "raw"]
            for i in range(rounds):
                for step in steps[i % 4 :] + steps[: i % 4]:
                    if step == "raw":
                        ready, how = await _raw_fork_ready(server, rd / "k", f"raw{i}")
                        s["raw"].append(ms(ready))
                        launches["fork"].add(how)
                        continue
                    if step == "cold":
                        r = await worker.call("cold_start")
                        s["cold"].append(ms(r["ready_s"]))
                        s["python_c_cpu"].append(ms(_python_c_cpu()))
                        continue
                    launcher: Launcher = server if step == "fork" else EXEC
                    ready, _, how = await _ready_time(nursery, launcher, rd / "k", f"{step}{i}")
                    s[step].append(ms(ready))
                    launches[step].add(how)
            for i in range(NUMPY_ROUNDS[mode]):
                _, t, how = await _ready_time(nursery, preloaded, rd / "k", f"n{i}", "import numpy")
                s["numpy_pre"].append(ms(t))
                assert how == "fork", how
                _, t, how = await _ready_time(nursery, plain, rd / "k", f"m{i}", "import numpy")
                s["numpy_none"].append(ms(t))
                _, t, how = await _ready_time(nursery, preloaded, rd / "k", f"o{i}", "1")
                s["one_pre"].append(ms(t))
            nursery.cancel_scope.cancel()
        n = IDLE_KERNELS[mode]
        fork_pss, zygote_pss = await _pool_pss(rd / "pf", "fork", n)
        exec_pss, _ = await _pool_pss(rd / "pe", "exec", n)
    assert launches == {"fork": {"fork"}, "exec": {"exec"}}, launches
    cold = "plain ipykernel cold start (launch -> kernel_info_reply)"
    row = rep.row(
        "fresh kernel forked (launch -> kernel_info_reply)",
        "ms",
        s["raw"],
        cold,
        s["cold"],
        target=">= 5x faster than a cold start (ratio <= 0.2)",
    )
    row.met = row.ratio <= 0.2 if row.ratio is not None else None
    rep.row("fresh kernel ready, forked (kernelsup actor)", "ms", s["fork"], cold, s["cold"])
    rep.row("fresh kernel ready, exec'ed (kernelsup actor)", "ms", s["exec"], cold, s["cold"])
    rep.row("fresh kernel ready, forked", "ms", s["fork"], "the same, exec'ed", s["exec"])
    rep.row(
        "import numpy, first request, preload = [numpy]",
        "ms",
        s["numpy_pre"],
        "import numpy, first request, no preload",
        s["numpy_none"],
    )
    row = rep.row(
        "import numpy, first request, preload = [numpy]",
        "ms",
        s["numpy_pre"],
        'execute("1"), first request, same zygote',
        s["one_pre"],
        target="next to nothing: within 2x of a trivial first request",
    )
    row.met = row.ratio <= 2.0 if row.ratio is not None else None
    row = rep.row(
        f"PSS per idle kernel, {n} forked",
        "MB",
        fork_pss,
        f"PSS per idle kernel, {n} exec'ed (cold)",
        exec_pss,
        target=">= 2x less (ratio <= 0.5)",
    )
    row.met = row.ratio <= 0.5 if row.ratio is not None else None
    shared_out = [p + zygote_pss / n for p in fork_pss]
    rep.row(
        f"PSS per idle kernel, {n} forked + the zygote's share",
        "MB",
        shared_out,
        f"PSS per idle kernel, {n} exec'ed (cold)",
        exec_pss,
    )
    rep.row(
        "CPU of a fresh kernel's start, forked (kernel until ready + supervisor)",
        "ms",
        [ms(c) for c in CPU[False]],
        "CPU of a python -c pass",
        s["python_c_cpu"],
    )
    rep.row(
        "CPU of a fresh kernel's start, exec'ed (kernel until ready + supervisor)",
        "ms",
        [ms(c) for c in CPU[True]],
        "CPU of a python -c pass",
        s["python_c_cpu"],
    )
    rep.extra["zygote_pss_mb"] = zygote_pss
    rep.notes.append(
        "kernelsup's ready time is an actor's: kernel_info_reply, the iopub subscription "
        "confirmed and a warm-up execute; the anchor stops at kernel_info_reply"
    )
    return rep
