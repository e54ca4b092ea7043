"""execute: what does kernelsup add to a trivial ``execute("1")`` round trip?

Latency, one caller, one kernel. Every method runs on the *same* kernel process, in
turn, in a rotating order, so the kernel's own cost (about 4-6 ms) is identical for all:

* ``kernelsup in-process``: ``await sup.execute("1")`` on a pool of one kernel;
* ``raw pyzmq``: a DEALER (shell) and a SUB (iopub) connected to that kernel, signed with
  jupyter_client's Session, blocking zmq poll: the floor for a Python client;
* ``jupyter_client blocking`` / ``async``: BlockingKernelClient / AsyncKernelClient
  ``execute_interactive`` (which, like kernelsup, waits for the reply AND iopub idle).

The anchors run in the worker process (bench/worker.py); before each timed call a client
drops, untimed, what the other clients' requests left on its iopub socket. kernelsup's
own iopub reader parses that traffic in the background, in this process.

Through the control endpoint: ``kernelsup run`` in a subprocess with a pool of one
kernel, reached with ``kernelsup.connect(config)``, against raw
pyzmq and the blocking client on that supervisor's kernel.

The relay: what the endpoint's gate (control/gate.py) adds by itself. An echo server (a
ROUTER in this process, under trio, sending each message straight back) reached by a
DEALER in another process doing round trips of a 500-byte, two-frame message: once with
the ROUTER behind the gate as the server runs it, once with the ROUTER bound directly (what
the gate exists to avoid: libzmq aborts on EMFILE in an IPC accept).

Throughput: k callers (k = 1, 2, 4) executing back to back for a few seconds, kernelsup
(a pool of 4 kernels, in-process) against jupyter_client's AsyncKernelClient (k callers on
k kernels of its own, so neither side's traffic crosses the other's), alternating.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import trio

import kernelsup
from bench import kernels as K
from bench.common import (
    Report,
    config_dict,
    connection_file,
    ms,
    percentile,
    pool_config,
    runtime_dir,
    stop_tethered,
    to_toml,
    wait_for_output,
)
from bench.worker import Worker

ROUNDS = {"smoke": 5, "quick": 250, "full": 2000}
WARMUP = {"smoke": 2, "quick": 20, "full": 50}
CALLERS = {"smoke": (1, 2), "quick": (1, 2, 4), "full": (1, 2, 4)}
TPUT_SECONDS = {"smoke": 0.3, "quick": 1.0, "full": 4.0}
TPUT_ROUNDS = {"smoke": 1, "quick": 2, "full": 4}
RELAY_ROUNDS = {"smoke": 200, "quick": 4000, "full": 20000}
RELAY_REPEATS = {"smoke": 1, "quick": 3, "full": 5}
# How long `kernelsup run` may take to print its ready line.
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 30.0
# The repository root: where `python -m bench.tether` finds the bench package.
ROOT = str(Path(__file__).resolve().parent.parent)


async def _ks_exec(sup: Any, pool: str | None = None) -> float:
    t0 = time.perf_counter()
    r = await (sup.execute("1", pool=pool) if pool else sup.execute("1"))
    dt = time.perf_counter() - t0
    if r.status != "ok" or r.result != "1":
        raise RuntimeError(f"kernelsup execute failed: {r.status} {r.code} {r.message}")
    return dt


def _prepare_endpoint(rd: Path) -> tuple[Path, BinaryIO]:
    """Write the endpoint supervisor's config; open its log (the caller closes it)."""
    rd.mkdir(mode=0o700, exist_ok=True)
    cfg_path = rd / "ep.toml"
    cfg_path.write_text(
        to_toml(config_dict(pool_config("default", size=1, spares=0), runtime_dir=rd / "rt"))
    )
    return cfg_path, open(rd / "run.log", "wb")


@asynccontextmanager
async def endpoint_supervisor(rd: Path) -> AsyncIterator[Path]:
    """``kernelsup run`` in a subprocess (one kernel); yields its config file's path.

    It runs under ``bench.tether``, which stops it with SIGINT (a clean stop) when our
    pipe to it closes, also if this process dies; if that takes too long the whole
    group is SIGKILLed (its kernels are tethered to it)."""
    cfg_path, log = _prepare_endpoint(rd)
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "bench.tether",
            sys.executable,
            "-m",
            "kernelsup",
            "run",
            str(cfg_path),
            "-q",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        await wait_for_output(
            proc,
            b"kernelsup ready",
            SERVER_START_TIMEOUT_S,
            lambda: (
                "kernelsup run exited before it was ready: " + (rd / "run.log").read_text()[-1500:]
            ),
        )
        yield cfg_path
    finally:
        with trio.CancelScope(shield=True):
            await stop_tethered(proc, SERVER_STOP_TIMEOUT_S)
            if proc.stdout is not None:
                await proc.stdout.aclose()
            log.close()


async def _throughput(
    sup: Any,
    pool: str,
    callers: int,
    seconds: float,
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < end:
            latencies.append(await _ks_exec(sup, pool))

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    return len(latencies) / (time.perf_counter() - t0), latencies


async def run(mode: str) -> Report:
    rounds, warmup = ROUNDS[mode], WARMUP[mode]
    callers = CALLERS[mode]
    rep = Report(
        "execute",
        mode,
        params={
            "rounds": rounds,
            "warmup": warmup,
            "callers": list(callers),
            "throughput_seconds": TPUT_SECONDS[mode],
            "throughput_rounds": TPUT_ROUNDS[mode],
        },
    )
    lat: dict[str, list[float]] = {
        k: [] for k in ("ks", "raw", "blocking", "async", "ep", "ep_raw", "ep_blocking")
    }
    tput: dict[str, list[float]] = {}
    tput_lat: dict[str, list[float]] = {}
    endpoint_error = ""
    with runtime_dir("e") as rd:
        cfg = config_dict(pool_config("lat", size=1), pool_config("tput", size=max(callers)))
        async with Worker(rd / "w") as worker, K.supervisor(cfg, rd / "k") as (sup, _bus):
            await worker.call("jc_start", name="tput", count=max(callers), autorestart=False)
            await worker.call("attach_group", name="tput")
            await K.settle(sup)
            await worker.call(
                "attach", name="lat", connection_file=str(connection_file(rd / "k", "lat-0"))
            )
            ops: dict[str, Any] = {
                "ks": lambda: _ks_exec(sup, "lat"),
                "raw": lambda: worker.call("exec", name="lat", kind="raw"),
                "blocking": lambda: worker.call("exec", name="lat", kind="blocking"),
                "async": lambda: worker.call("exec", name="lat", kind="async"),
            }
            async with contextlib.AsyncExitStack() as stack:
                try:
                    cfg_path = await stack.enter_async_context(endpoint_supervisor(rd / "ep"))
                    client = await stack.enter_async_context(kernelsup.connect(str(cfg_path)))
                    await worker.call(
                        "attach",
                        name="ep",
                        connection_file=str(connection_file(rd / "ep" / "rt", "default-0")),
                    )
                except Exception as exc:  # the other rows are still worth having
                    await stack.aclose()
                    endpoint_error = (
                        f"endpoint not available: it failed to start: {type(exc).__name__}: {exc}"
                    )
                else:
                    ops["ep"] = lambda: _ks_exec(client)
                    ops["ep_raw"] = lambda: worker.call("exec", name="ep", kind="raw")
                    ops["ep_blocking"] = lambda: worker.call("exec", name="ep", kind="blocking")
                names = list(ops)
                for _ in range(warmup):
                    for name in names:
                        await ops[name]()
                for i in range(rounds):
                    shift = i % len(names)
                    for name in names[shift:] + names[:shift]:
                        lat[name].append(ms(await ops[name]()))
            for _ in range(TPUT_ROUNDS[mode]):
                for k in callers:
                    rate, ls = await _throughput(sup, "tput", k, TPUT_SECONDS[mode])
                    tput.setdefault(f"ks{k}", []).append(rate)
                    tput_lat.setdefault(f"ks{k}", []).extend(ms(x) for x in ls)
                    r = await worker.call(
                        "throughput",
                        names=[f"tput/{j}" for j in range(k)],
                        seconds=TPUT_SECONDS[mode],
                    )
                    tput.setdefault(f"jc{k}", []).append(r["count"] / r["elapsed_s"])
                    tput_lat.setdefault(f"jc{k}", []).extend(ms(x) for x in r["latencies_s"])
    _rows(rep, lat, tput, tput_lat, callers, endpoint_error)
    relay: dict[str, list[float]] = {"gate": [], "direct": []}
    for _ in range(RELAY_REPEATS[mode]):
        for how in relay:
            relay[how] += await _echo_round_trips(how, RELAY_ROUNDS[mode])
    rep.row(
        "echo round trip through the gate's relay",
        "us",
        relay["gate"],
        "a ROUTER bound directly",
        relay["direct"],
        detail="what the relay hop costs by itself",
    )
    return rep


# A DEALER doing echo round trips; prints each one's microseconds, comma-separated.
_ECHO_CLIENT = """
import sys, time, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0)
s.connect(sys.argv[1]); n = int(sys.argv[2]); out = []
for i in range(n + 50):
    t = time.perf_counter(); s.send_multipart([b"x" * 200, b"y" * 300]); s.recv_multipart()
    out.append((time.perf_counter() - t) * 1e6)
print(",".join(f"{x:.1f}" for x in out[50:]))
"""


async def _echo_round_trips(how: str, rounds: int) -> list[float]:
    """Round trips (us) from a DEALER in another process to an echo ROUTER in this one,
    behind the gate (``gate``) or bound directly (``direct``)."""
    import zmq

    from kernelsup.adapters import zmqio
    from kernelsup.control.gate import Gate, open_listener

    with runtime_dir("r") as rd:
        endpoint = f"ipc://{rd}/echo.sock"
        sock = zmqio.Socket(zmqio.context().socket(zmq.ROUTER))
        gate: Gate | None = None
        try:
            async with trio.open_nursery() as nursery:
                if how == "direct":
                    sock.zmq.bind(endpoint)
                else:
                    listener, _, _ = open_listener(endpoint)
                    gate = Gate(listener, rd, sock.zmq.connect, sock.zmq.disconnect, 8)
                    await nursery.start(gate.run)

                async def echo() -> None:
                    while True:
                        sock.try_send_multipart(await sock.recv_multipart())

                nursery.start_soon(echo)
                try:
                    done = await trio.run_process(
                        [sys.executable, "-c", _ECHO_CLIENT, endpoint, str(rounds)],
                        capture_stdout=True,
                    )
                finally:
                    if gate is not None:  # its tasks are shielded: they end only so
                        gate.close_listener()
                        gate.scope.cancel()
                    nursery.cancel_scope.cancel()
        finally:
            sock.close()
    return [float(x) for x in done.stdout.decode().split(",")]


def _rows(
    rep: Report,
    lat: dict[str, list[float]],
    tput: dict[str, list[float]],
    tput_lat: dict[str, list[float]],
    callers: tuple[int, ...],
    endpoint_error: str,
) -> None:
    name = 'execute("1") round trip'
    row = rep.row(
        f"{name}, in-process",
        "ms",
        lat["ks"],
        "raw pyzmq, same kernel",
        lat["raw"],
        target="<= 1.05x raw pyzmq",
    )
    row.met = row.ratio <= 1.05 if row.ratio is not None else None
    row = rep.row(
        f"{name}, in-process",
        "ms",
        lat["ks"],
        "jupyter_client BlockingKernelClient",
        lat["blocking"],
        target="faster than the blocking client",
    )
    row.met = row.ratio < 1.0 if row.ratio is not None else None
    rep.row(
        f"{name}, in-process", "ms", lat["ks"], "jupyter_client AsyncKernelClient", lat["async"]
    )
    note = endpoint_error
    row = rep.row(
        f"{name}, endpoint",
        "ms",
        lat["ep"],
        "raw pyzmq, same kernel",
        lat["ep_raw"],
        anchor_note=note,
        target="<= 1.15x raw pyzmq",
    )
    row.met = row.ratio <= 1.15 if row.ratio is not None else None
    row = rep.row(
        f"{name}, endpoint",
        "ms",
        lat["ep"],
        "jupyter_client BlockingKernelClient",
        lat["ep_blocking"],
        anchor_note=note,
        target="faster than the blocking client",
    )
    row.met = row.ratio < 1.0 if row.ratio is not None else None
    for k in callers:
        rep.row(
            f"executes/s, {k} caller(s) on {k} kernel(s)",
            "exec/s",
            tput[f"ks{k}"],
            "jupyter_client AsyncKernelClient",
            tput[f"jc{k}"],
            better="higher",
        )
    for k in callers:
        rep.row(
            f"latency under load, {k} caller(s)",
            "ms",
            tput_lat[f"ks{k}"],
            "jupyter_client AsyncKernelClient",
            tput_lat[f"jc{k}"],
        )
    if endpoint_error:
        rep.notes.append(endpoint_error)
    for a in ("blocking", "async"):
        if lat[a] and lat["raw"]:
            rep.notes.append(
                f"jupyter_client {a} client / raw pyzmq p50: "
                f"{percentile(lat[a], 50) / percentile(lat['raw'], 50):.3f}x"
            )
    rep.notes.append(
        "throughput: kernelsup routes k callers over a pool of "
        f"{max(callers)} kernels; jupyter_client runs k callers on k kernels"
    )
