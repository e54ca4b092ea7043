"""evaluation: an evaluation service's workload, every sample on a fresh interpreter.

N independent snippets (300 in full and quick runs) of four kinds, in a fixed shuffled
order: passes (print a sum), failures (raise ValueError), infinite loops (stopped at a
2 s timeout) and ``os._exit(3)``. Every sample first prints the ``SAMPLE_*`` globals it
can see, then defines its own: a sample that sees another's variable is a failure, and
so is any outcome other than its kind's (checked for every sample of every approach).

Side by side, each with ``WORKERS`` samples in flight (the machine's 2 cores):

* kernelsup: ``execute(code, fresh=True, timeout=2)`` on an in-process supervisor whose
  pool keeps ``fresh_spares`` forked kernels ready;
* a fresh ``python -c`` subprocess per sample (killed at 2 s);
* jupyter_client: a ``KernelManager`` started and shut down per sample, the sample run
  through its blocking client (in a subprocess of its own: ``python -m bench.evaluation
  jc N WORKERS``); it takes about 0.6 s a sample, so quick runs give it fewer samples
  (the figure is samples per second, the same mix).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import trio

from bench import kernels as K
from bench.common import RUNTIME_PREFIX, Report, config_dict, pool_config, runtime_dir
from bench.worker import ROOT

SAMPLES = {"smoke": 8, "quick": 300, "full": 300}
JC_SAMPLES = {"smoke": 4, "quick": 40, "full": 300}
WORKERS = 2
TIMEOUT_S = 2.0
# Of every 50 samples: kinds and how many.
MIX = {"pass": 40, "fail": 6, "loop": 1, "exit": 3}
SEED = 16
# Bounds on the anchors' own work (a sample can take at most the timeout plus start-up).
SAMPLE_BOUND_S = 60.0


def samples(n: int) -> list[tuple[int, str]]:
    """``n`` (index, kind) pairs in the MIX's proportions, shuffled with a fixed seed; every
    kind present when ``n`` allows."""
    kinds = [k for k, count in MIX.items() for _ in range(count)]
    out = [(i, kinds[i % len(kinds)]) for i in range(n)]
    if n < len(kinds):  # smoke: one of each kind first
        out = [(i, k) for i, k in enumerate((list(MIX) * n)[:n])]
    random.Random(SEED).shuffle(out)
    return out


def code_of(i: int, kind: str) -> str:
    head = (
        "print('SEEN', sorted(n for n in globals() if n.startswith('SAMPLE_')), flush=True)\n"
        f"SAMPLE_{i} = {i}\n"
    )
    body = {
        "pass": f"print(sum(range({i})))",
        "fail": f"raise ValueError('sample {i}')",
        "loop": "while True:\n    pass",
        "exit": "import os\nos._exit(3)",
    }[kind]
    return head + body


def expected_stdout(i: int, kind: str) -> str:
    return "SEEN []\n" + (f"{sum(range(i))}\n" if kind == "pass" else "")


# Prefix of a sample that ran past its deadline although its code ends by itself: the
# machine was too busy to run it in 2 s (a real outcome of a wall-clock deadline, which
# the python -c anchor meets as well), counted apart from wrong outcomes.
LATE = "late: "


def check_result(i: int, kind: str, status: str, stdout: str, detail: str) -> str:
    """Why this outcome is wrong for its sample (empty: it is right; LATE first: it ran
    past its deadline)."""
    want = {"pass": "ok", "fail": "error", "loop": "timeout", "exit": "died"}[kind]
    if status == "timeout" and kind != "loop":
        return f"{LATE}sample {i} ({kind}) passed the {TIMEOUT_S:g} s deadline"
    if status != want:
        return f"sample {i} ({kind}): {status}, expected {want}"
    seen_line = stdout.splitlines()[0] if stdout else ""
    # A process that died (os._exit) may take its last output with it: then nothing
    # is seen, which is no leak; anything seen must be nothing.
    if seen_line != "SEEN []" and (stdout or kind in ("pass", "fail")):
        return f"sample {i} ({kind}) saw other samples' variables: {seen_line!r}"
    if kind == "pass" and stdout != expected_stdout(i, kind):
        return f"sample {i}: stdout {stdout!r}"
    if kind == "fail" and "ValueError" not in detail:
        return f"sample {i}: error {detail!r}"
    if kind == "exit" and detail != "exit(3)":
        return f"sample {i}: died of {detail!r}"
    return ""


# --------------------------------------------------------------------------- kernelsup
async def _kernelsup(work: list[tuple[int, str]]) -> tuple[float, list[str]]:
    wrong: list[str] = []
    with runtime_dir("e") as rd:
        cfg = config_dict(pool_config("eval", size=1, spares=0, fresh_spares=WORKERS))
        async with K.supervisor(cfg, rd) as (sup, _bus):
            await K.settle(sup, "eval")
            queue = list(reversed(work))

            async def worker() -> None:
                while queue:
                    i, kind = queue.pop()
                    r = await sup.execute(code_of(i, kind), fresh=True, timeout=TIMEOUT_S)
                    detail = ""
                    if r.error is not None:
                        detail = r.error.ename
                    elif r.cause is not None:
                        detail = r.cause.describe()
                    if problem := check_result(i, kind, r.status, r.stdout, detail):
                        wrong.append(problem)

            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(WORKERS):
                    nursery.start_soon(worker)
            elapsed = time.perf_counter() - t0
    return len(work) / elapsed, wrong


# --------------------------------------------------------------------------- python -c
def _python_c_one(i: int, kind: str) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", code_of(i, kind)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return check_result(i, kind, "timeout", out, "")
    if done.returncode == 0:
        status, detail = "ok", ""
    elif done.returncode == 1:
        status, detail = "error", done.stderr.strip().splitlines()[-1] if done.stderr else ""
    else:
        status, detail = "died", f"exit({done.returncode})"
    return check_result(i, kind, status, done.stdout, detail)


def _python_c(work: list[tuple[int, str]]) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        problems = list(pool.map(lambda s: _python_c_one(*s), work))
    return len(work) / (time.perf_counter() - t0), [p for p in problems if p]


# --------------------------------------------------------------------------- jupyter_client
def _jc_one(i: int, kind: str) -> str:
    from jupyter_client.manager import KernelManager

    # IPC sockets of its own: two managers in one directory pick the same names.
    scratch = tempfile.mkdtemp(prefix="kbj", dir=RUNTIME_PREFIX)
    km = KernelManager(kernel_name="python3", transport="ipc", ip=f"{scratch}/k")
    km.connection_file = f"{scratch}/k.json"
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=SAMPLE_BOUND_S)
            out: list[str] = []
            box: dict[str, Any] = {}

            def on_iopub(msg: dict[str, Any]) -> None:
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    box["ename"] = msg["content"]["ename"]

            try:
                reply = kc.execute_interactive(
                    code_of(i, kind), timeout=TIMEOUT_S, output_hook=on_iopub
                )
                status = reply["content"]["status"]
                detail = box.get("ename", "")
            except TimeoutError:
                status, detail = "timeout", ""
            if kind == "exit" and status == "timeout" and not km.is_alive():
                # No reply comes from a kernel that died mid-request: execute_interactive
                # waits out its timeout, then the manager says it is gone.
                process = getattr(km.provisioner, "process", None)
                status = "died"
                detail = f"exit({process.returncode if process is not None else '?'})"
            return check_result(i, kind, status, "".join(out), detail)
        finally:
            kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _jc(n: int) -> tuple[float, list[str]]:
    """jupyter_client's blocking clients do not share a process's threads well: one
    process per worker."""
    work = samples(n)
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_noop, range(WORKERS)))  # the workers' own start-up is not timed
        t0 = time.perf_counter()
        problems = list(pool.map(_jc_one, *zip(*work, strict=True)))
        elapsed = time.perf_counter() - t0
    return n / elapsed, [p for p in problems if p]


def _noop(_: int) -> None:
    import jupyter_client.manager  # noqa: F401  (imported before the clock starts)


async def _jc_subprocess(n: int) -> tuple[float, list[str]]:
    done = await trio.run_process(
        [sys.executable, "-m", "bench.evaluation", "jc", str(n)],
        capture_stdout=True,
        cwd=ROOT,
    )
    data = json.loads(done.stdout)
    return data["rate"], data["wrong"]


# --------------------------------------------------------------------------- the report
async def run(mode: str) -> Report:
    n, jc_n = SAMPLES[mode], JC_SAMPLES[mode]
    work = samples(n)
    rep = Report(
        "evaluation",
        mode,
        params={"samples": n, "jupyter_client_samples": jc_n, "workers": WORKERS, "mix": MIX},
    )
    ks_rate, ks_wrong = await _kernelsup(work)
    pc_rate, pc_wrong = await trio.to_thread.run_sync(_python_c, work)
    jc_rate, jc_wrong = await _jc_subprocess(jc_n)
    row = rep.row(
        "samples/s, execute(fresh=True)",
        "/s",
        [ks_rate],
        "a python -c subprocess per sample",
        [pc_rate],
        better="higher",
        target=">= 2x",
    )
    row.met = row.ratio >= 2.0 if row.ratio is not None else None
    row = rep.row(
        "samples/s, execute(fresh=True)",
        "/s",
        [ks_rate],
        "a jupyter_client KernelManager start/stop per sample",
        [jc_rate],
        better="higher",
        target=">= 10x",
    )
    row.met = row.ratio >= 10.0 if row.ratio is not None else None
    problems = {"kernelsup": ks_wrong, "python -c": pc_wrong, "jupyter_client": jc_wrong}
    rep.extra["wrong"] = {k: [p for p in v if not p.startswith(LATE)] for k, v in problems.items()}
    rep.extra["late"] = {k: [p for p in v if p.startswith(LATE)] for k, v in problems.items()}
    for who in problems:
        wrong, late = rep.extra["wrong"][who], rep.extra["late"][who]
        rep.notes.append(
            f"{who}: {len(wrong)} samples with a wrong outcome"
            + (f" (first: {wrong[0]})" if wrong else "")
            + f", {len(late)} past the deadline though they end by themselves"
        )
    return rep


if __name__ == "__main__":
    if sys.argv[1:2] == ["jc"]:
        rate, wrong = _jc(int(sys.argv[2]))
        print(json.dumps({"rate": rate, "wrong": wrong}))
