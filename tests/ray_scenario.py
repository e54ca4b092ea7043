"""The Ray scenarios of tests/test_ray.py, run inside a loopback-only network namespace.

``python -m tests.ray_scenario OUT.json`` must run in a fresh network namespace with only
``lo`` up (tests/ray_cluster.py ``run_in_netns`` starts it so): it starts a Ray head and two
worker nodes, runs a supervisor whose pool is placed on them, plays every fault for real,
and writes what happened to OUT.json (one section per scenario, written as each ends, so a
failure later leaves the earlier ones). The test asserts on that file; this script asserts
nothing itself, so a broken scenario is reported, not hidden.

Scenarios, in order, on one cluster (each cluster start costs ~7 s and ~440 MB a node):
``execute`` (results, sessions, every kernel's node in status, kernels bound to loopback
only), ``kill_kernel``, ``kill_host``, ``no_capacity``, ``crash_node`` (SIGKILL a raylet,
then a new node joins), ``hang_node`` (SIGSTOP a node), ``kill_supervisor`` (a ``kernelsup
run`` process SIGKILLed: nothing of it is left on any node).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import trio

from kernelsup.adapters.tether import TETHER_ENV
from kernelsup.api import Supervisor, open_supervisor
from kernelsup.core.config import Config
from kernelsup.core.results import ExecuteResult
from kernelsup.tree.bus import EventBus
from tests.ray_cluster import Cluster

# Fast failure detection (as tests/helpers.py FAST_POOL); the lease is short so fencing
# is seen within the test's bounds.
POOL: dict[str, Any] = {
    "name": "r",
    "size": 2,
    "spares": 0,
    "placement": "ray",
    "ray_resources": {"kernel_slot": 1},
    "start_timeout": 60.0,
    "queue_timeout": 120.0,
    "heartbeat": {"interval": 0.2, "misses": 3},
    "shutdown": {"grace": 1.0, "term_timeout": 1.0},
    "interrupt_grace": 2.0,
    "restart": {"min_delay": 0.0, "max_delay": 0.5, "max_retries": -1},
}
RAY: dict[str, Any] = {"lease_interval": 0.5, "lease_timeout": 5.0, "placement_timeout": 20.0}
SLOTS_PER_WORKER = 2
WAIT_S = 90.0  # bound on any condition a scenario waits for

Section = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def remote_kernels(sup: Supervisor, pool: str = "r") -> dict[str, Any]:
    """kernel id -> its RemoteKernel (adapters/ray_host.py), for the running ones."""
    out = {}
    for child in sup.pools[pool].sup.children:
        handle = child.handle
        proc = getattr(getattr(handle, "_actor", None), "proc", None)
        if proc is not None and getattr(proc, "launch", "") == "ray":
            out[child.id] = proc
    return out


async def kernels(sup: Supervisor) -> list[dict[str, Any]]:
    return [k for k in (await sup.status()).to_dict()["kernels"] if k["pool"] == "r"]


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str) -> float:
    """Poll ``predicate`` until true (bounded); returns the seconds it took."""
    t0 = time.monotonic()
    with trio.fail_after(WAIT_S):
        while not await predicate():
            await trio.sleep(0.05)
    return time.monotonic() - t0


async def all_idle(sup: Supervisor, restarted: str | None = None, at_least: int = 1) -> bool:
    ks = await kernels(sup)
    if not ks or any(k["state"] != "idle" for k in ks):
        return False
    return restarted is None or any(k["id"] == restarted and k["restarts"] >= at_least for k in ks)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def host_pid(sup: Supervisor, kernel_id: str) -> int:
    import ray

    proc = remote_kernels(sup)[kernel_id]
    return int(ray.get(proc.host.where.remote())["host_pid"])


def unit_pids(sup: Supervisor, kernel_id: str) -> list[int]:
    """The host's kernel unit and its reaper, as the host lists them."""
    import ray

    proc = remote_kernels(sup)[kernel_id]
    return [int(p) for p in ray.get(proc.host.pids.remote())]


def outcome(result: ExecuteResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "code": result.code,
        "cause": result.cause.to_dict() if result.cause is not None else None,
        "stdout": result.stdout,
        "kernel_id": result.kernel_id,
    }


async def traffic(
    sup: Supervisor, fault: Callable[[], Awaitable[None]], long_s: float = 4.0
) -> dict[str, Any]:
    """Two long requests (one per kernel) and four short ones queued behind them; once
    both kernels are busy, ``fault()``. Every request's outcomes are collected (exactly
    one is expected of each)."""
    outcomes: dict[int, list[dict[str, Any]]] = {}

    async def one(i: int, code: str) -> None:
        result = await sup.execute(code, pool="r", timeout=60)
        outcomes.setdefault(i, []).append(outcome(result))

    async def both_busy() -> bool:
        return sum(k["state"] == "busy" for k in await kernels(sup)) == 2

    await wait_for(lambda: whole(sup), "the pool whole")
    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(one, i, f"import time; time.sleep({long_s}); print('long {i}')")
        await wait_for(both_busy, "both kernels busy")
        for i in range(2, 6):
            nursery.start_soon(one, i, f"print('short {i}')")
        await fault()
    return {"submitted": 6, "outcomes": {str(k): v for k, v in outcomes.items()}}


def busy_kernel(ks: list[dict[str, Any]]) -> dict[str, Any]:
    return next(k for k in ks if k["state"] == "busy")


def node_of(cluster: Cluster, pid: int) -> str:
    """The name of the node whose raylet has ``pid`` (a host actor) among its children."""
    for name in cluster.nodes:
        try:
            if pid in {p.pid for p in cluster.node_processes(name)}:
                return name
        except LookupError:
            continue
    raise LookupError(f"pid {pid} is on no node")


# --------------------------------------------------------------------------- scenarios


async def execute(sup: Supervisor, cluster: Cluster) -> Section:
    ks = await kernels(sup)
    results = [outcome(await sup.execute("print(6 * 7)", pool="r")) for _ in range(4)]
    # A deadline interrupts the remote kernel (SIGINT through its host), which lives on.
    late = await sup.execute("import time; time.sleep(60)", pool="r", timeout=1.0)
    timed_out = {
        **outcome(late),
        "interrupted": late.interrupted,
        "restarted": late.kernel_restarted,
    }
    async with sup.session("s1", pool="r") as session:
        await session.execute("x = 41")
        kept = outcome(await session.execute("print(x + 1)"))
    await wait_for(lambda: whole(sup), "the pool whole")  # the session's kernel replaced
    ks = await kernels(sup)
    listening = {}
    for k in ks:
        conns = psutil.Process(k["pid"]).net_connections(kind="inet")
        listening[k["id"]] = sorted({c.laddr.ip for c in conns if c.status == "LISTEN"})
    hosts = {k["id"]: node_of(cluster, host_pid(sup, k["id"])) for k in ks}

    async def measured() -> bool:  # by the hosts, on their nodes, with each lease renewal
        return all((k["memory_bytes"] or 0) > 0 for k in await kernels(sup))

    usage_s = await wait_for(measured, "memory measured on the nodes")
    return {
        "timed_out": timed_out,
        "usage_s": usage_s,
        "kernels": ks,
        "results": results,
        "session": kept,
        "listening": listening,
        "host_nodes": hosts,
    }


async def kill_kernel(sup: Supervisor, cluster: Cluster) -> Section:
    box: dict[str, Any] = {}

    async def fault() -> None:
        victim = busy_kernel(await kernels(sup))
        box["victim"], box["pid"] = victim["id"], victim["pid"]
        box["t_kill"] = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

    section: Section = await traffic(sup, fault)
    box["recovered_s"] = await wait_for(lambda: all_idle(sup, box["victim"]), "replacement")
    section.update(box, after=await kernels(sup), pid_alive=alive(box["pid"]))
    return section


async def kill_host(sup: Supervisor, cluster: Cluster) -> Section:
    box: dict[str, Any] = {}

    async def fault() -> None:
        victim = busy_kernel(await kernels(sup))
        box["victim"], box["pid"] = victim["id"], victim["pid"]
        box["restarts_before"] = victim["restarts"]
        box["host_pid"] = await trio.to_thread.run_sync(host_pid, sup, victim["id"])
        os.kill(box["host_pid"], signal.SIGKILL)

    section: Section = await traffic(sup, fault)
    section["recovered_s"] = await wait_for(
        lambda: all_idle(sup, box["victim"], box["restarts_before"] + 1), "replacement"
    )
    section.update(box, after=await kernels(sup), pid_alive=alive(box["pid"]))
    return section


async def no_capacity(sup: Supervisor, cluster: Cluster) -> Section:
    """Sessions, one at a time, until the cluster's kernel slots run out: the first that
    finds no room is refused (no_capacity); once they close, the pool is whole again."""
    slots = len(cluster.workers()) * SLOTS_PER_WORKER
    results: list[dict[str, Any]] = []
    done = trio.Event()
    at_refusal: list[dict[str, Any]] = []

    async def hold(name: str, box: list[dict[str, Any]]) -> None:
        async with sup.session(name, pool="r") as session:
            box.append({"session": name, **outcome(await session.execute("print('in')"))})
            await done.wait()

    async with trio.open_nursery() as nursery:
        for i in range(slots + 1):  # the last has no slot, whatever the others took
            box: list[dict[str, Any]] = []
            nursery.start_soon(hold, f"cap{i}", box)
            with trio.fail_after(WAIT_S):
                while not box:
                    await trio.sleep(0.05)
            results.extend(box)
            if box[0]["status"] != "ok":
                at_refusal = await kernels(sup)
                break
        done.set()
    section: Section = {"slots": slots, "results": results, "at_refusal": at_refusal}
    section["recovered_s"] = await wait_for(lambda: whole(sup), "the pool whole again")
    return section


async def whole(sup: Supervisor) -> bool:
    """The pool's two kernels up and idle, and nothing else of it left."""
    ks = await kernels(sup)
    return len(ks) == 2 and all(k["state"] == "idle" for k in ks)


async def crash_node(sup: Supervisor, cluster: Cluster) -> Section:
    box: dict[str, Any] = {}

    async def fault() -> None:
        victim = busy_kernel(await kernels(sup))
        pid = await trio.to_thread.run_sync(host_pid, sup, victim["id"])
        box.update(victim=victim["id"], pid=victim["pid"], restarts_before=victim["restarts"])
        box["node"] = node_of(cluster, pid)
        box["t_kill"] = time.monotonic()
        cluster.crash(box["node"])

    section: Section = await traffic(sup, fault)
    section["recovered_s"] = await wait_for(
        lambda: all_idle(sup, box["victim"], box["restarts_before"] + 1), "replacement"
    )
    ks = await kernels(sup)
    hosts = {k["id"]: node_of(cluster, host_pid(sup, k["id"])) for k in ks}
    section.update(box, after=ks, host_nodes=hosts, pid_alive=alive(box["pid"]))
    # The next scenario needs two nodes again (in a thread: the supervisor keeps running).
    await trio.to_thread.run_sync(cluster.add_worker, "c", SLOTS_PER_WORKER)
    return section


async def hang_node(sup: Supervisor, cluster: Cluster) -> Section:
    box: dict[str, Any] = {}
    frozen: list[psutil.Process] = []

    async def fault() -> None:
        victim = busy_kernel(await kernels(sup))
        pid = await trio.to_thread.run_sync(host_pid, sup, victim["id"])
        box.update(victim=victim["id"], pid=victim["pid"], restarts_before=victim["restarts"])
        box["node"] = node_of(cluster, pid)
        frozen.extend(cluster.hang(box["node"]))

    try:
        section: Section = await traffic(sup, fault)
        section["recovered_s"] = await wait_for(
            lambda: all_idle(sup, box["victim"], box["restarts_before"] + 1), "replacement"
        )
        ks = await kernels(sup)
        hosts = {k["id"]: node_of(cluster, host_pid(sup, k["id"])) for k in ks}
        section.update(box, after=ks, host_nodes=hosts)
    finally:
        for proc in frozen:  # let the node learn it was declared dead, and go
            try:
                proc.resume()
            except psutil.Error:
                pass
    # Once resumed, the hung node's kernel must go (its raylet exits as dead, its lease
    # ran out): nothing of it outlives the freeze.
    t0 = time.monotonic()
    while alive(box["pid"]) and time.monotonic() - t0 < WAIT_S:
        await trio.sleep(0.1)
    section["frozen_kernel_gone_s"] = None if alive(box["pid"]) else time.monotonic() - t0
    return section


def kill_supervisor(cluster: Cluster, workdir: Path) -> Section:
    """``kernelsup run`` on the cluster: stopped past the lease (its kernels are fenced,
    then replaced), then SIGKILLed (its host actors and kernels go)."""
    runtime_dir = workdir / "rt-run"
    config = workdir / "run.toml"
    config.write_text(f"""
[supervisor]
runtime_dir = "{runtime_dir}"
[ray]
address = "{cluster.address}"
lease_interval = {RAY["lease_interval"]}
lease_timeout = {RAY["lease_timeout"]}
[[pool]]
name = "r"
size = 2
spares = 0
placement = "ray"
ray_resources = {{ kernel_slot = 1 }}
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelsup", "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ready = ""
    assert proc.stdout is not None
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode(errors="replace")
        if not line or line.startswith("kernelsup ready"):
            ready = line
            break

    def status() -> list[dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, "-m", "kernelsup", "status", "--json", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return list(json.loads(done.stdout)["kernels"]) if done.stdout.strip() else []

    def poll(predicate: Callable[[], bool]) -> float | None:
        t0 = time.monotonic()
        while not predicate():
            if time.monotonic() - t0 > WAIT_S:
                return None
            time.sleep(0.1)
        return time.monotonic() - t0

    # A partition, played by stopping the supervisor: no lease renewed, so each host kills
    # its kernel after lease_timeout; once it runs again it sees them gone and replaces them.
    first = status()
    first_pids = [k["pid"] for k in first if k.get("pid")]
    os.kill(proc.pid, signal.SIGSTOP)
    fenced_s = poll(lambda: not any(alive(p) for p in first_pids))
    os.kill(proc.pid, signal.SIGCONT)
    back: list[dict[str, Any]] = []

    def replaced() -> bool:
        back[:] = status()
        return len(back) == 2 and all(k["state"] == "idle" and k["restarts"] for k in back)

    replaced_s = poll(replaced)
    ks = status()
    kernel_pids = [k["pid"] for k in ks if k.get("pid")]
    # The host actors are the kernels' parents on their nodes.
    host_pids = [psutil.Process(pid).ppid() for pid in kernel_pids if alive(pid)]
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    watched = kernel_pids + host_pids
    while any(alive(p) for p in watched) and time.monotonic() - t0 < WAIT_S:
        time.sleep(0.05)
    # And nothing of any host is left on any node: no process carrying a host's tether
    # marker (kernels and all they started), no host's reaper.
    host_left: list[int] = []

    def hosts_gone() -> bool:
        host_left[:] = host_processes()
        return not host_left

    hosts_gone_s = poll(hosts_gone)
    return {
        "host_left": [_describe(p) for p in host_left],
        "hosts_gone_s": hosts_gone_s,
        "ready": ready.strip(),
        "first": first,
        "fenced_s": fenced_s,
        "replaced_s": replaced_s,
        "kernels": ks,
        "host_pids": host_pids,
        "left": [p for p in watched if alive(p)],
        "gone_s": time.monotonic() - t0,
    }


HOST_DIRS = f"/tmp/kernelsup-{os.getuid()}/ray-"  # each host's runtime dir (ray_host.py)


def host_processes() -> list[int]:
    """Live processes of any host: its reaper, or anything with its tether marker."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            marker = (proc.info["environ"] or {}).get(TETHER_ENV, "")
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if marker.startswith(HOST_DIRS) or ("adapters.tether" in cmdline and HOST_DIRS in cmdline):
            found.append(proc.pid)
    return found


def _describe(pid: int) -> str:
    try:
        return f"{pid} {' '.join(psutil.Process(pid).cmdline())[:200]}"
    except psutil.Error:
        return str(pid)


# --------------------------------------------------------------------------- main

IN_SUPERVISOR: list[Callable[[Supervisor, Cluster], Awaitable[Section]]] = [
    execute,
    kill_kernel,
    kill_host,
    no_capacity,
    crash_node,
    hang_node,
]


def main(out: Path) -> None:
    report: dict[str, Any] = {"netns": os.readlink("/proc/self/ns/net")}

    def save() -> None:
        out.write_text(json.dumps(report, indent=1, default=str))

    # Short (Ray's socket paths in it must fit 107 bytes); the test removes it.
    workdir = Path(tempfile.mkdtemp(prefix="ksray-"))
    report["workdir"] = str(workdir)
    save()
    cluster = Cluster(workdir / "ray")
    t0 = time.monotonic()
    cluster.start_head()
    report["head_start_s"] = time.monotonic() - t0
    for name in ("a", "b"):
        cluster.add_worker(name, SLOTS_PER_WORKER)
    report["cluster_start_s"] = time.monotonic() - t0
    save()
    config = Config.from_dict(
        {
            "supervisor": {"runtime_dir": str(workdir / "rt")},
            "ray": {"address": cluster.address, **RAY},
            "pool": [POOL],
        }
    )

    bus = EventBus()

    async def in_supervisor() -> None:
        async with open_supervisor(config, bus=bus) as sup:
            for scenario in IN_SUPERVISOR:
                t1 = time.monotonic()
                since = time.time()
                try:
                    section = await scenario(sup, cluster)
                except Exception:  # reported: the test fails on it
                    section = {"error": traceback.format_exc()}
                section["took_s"] = time.monotonic() - t1
                section["events"] = [e.describe() for e in bus.recent() if e.time >= since]
                report[scenario.__name__] = section
                save()

    try:
        trio.run(in_supervisor)
    except BaseException:  # reported: the test fails on it
        report["supervisor_error"] = traceback.format_exc()
        save()
    try:
        report["kill_supervisor"] = kill_supervisor(cluster, workdir)
    except Exception:  # reported: the test fails on it
        report["kill_supervisor"] = {"error": traceback.format_exc()}
    report["done"] = True
    save()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
