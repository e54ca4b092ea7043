"""sessions: what a session's own place costs, and what a job's spool costs.

Each round, alternating the order:

* ``open_session`` with a cwd and an env when a warm Python spare is ready: the spare is
  adapted at bind time (a silent ``os.chdir`` and ``os.environ.update``,
  tree/sessions.py), timed from the call to its return (the kernel ready);
* the anchor: the same ``open_session`` on a pool with no spare (its one kernel has run
  code), so a kernel is started for the session with cwd and env in its launch (forked
  from the pool's zygote, the default ``launch``);
* the first ``execute`` in each session (does an adapted spare answer as fast as a
  kernel started for the session?).

Then jobs: 3,000 lines (about 210 KB) printed by a job (``submit`` + ``wait``, every
output spooled to disk) against the same code through ``execute`` (its result cut at
``max_output_bytes``).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import kernels as K
from bench.common import Report, config_dict, ms, pool_config, runtime_dir
from kernelsup.api import Supervisor

ROUNDS = {"smoke": 2, "quick": 10, "full": 30}
JOB_ROUNDS = {"smoke": 2, "quick": 10, "full": 30}
FLOOD = "for i in range(3000): print(f'line {i:05d} ' + 'x' * 60)"
ENV = {"AGENT_TOKEN": "t", "PROJECT": "bench"}


async def _open(sup: Supervisor, pool: str, cwd: Path) -> tuple[float, float]:
    """Seconds to open a session (kernel ready), then its first execute; closed after."""
    t0 = time.perf_counter()
    info = await sup.open_session(pool=pool, cwd=str(cwd), env=ENV)
    opened = time.perf_counter() - t0
    t1 = time.perf_counter()
    r = await sup.execute("import os; os.getcwd()", session=info.name)
    first = time.perf_counter() - t1
    assert r.status == "ok" and r.result == repr(str(cwd)), r
    await sup.close_session(info.name)
    return opened, first


async def run(mode: str) -> Report:
    rounds = ROUNDS[mode]
    rep = Report("sessions", mode, params={"rounds": rounds, "job_rounds": JOB_ROUNDS[mode]})
    s: dict[str, list[float]] = {k: [] for k in ("adapt", "fresh", "adapt1", "fresh1")}
    jobs: dict[str, list[float]] = {"job": [], "execute": []}
    with runtime_dir("s") as rd:
        cfg = config_dict(
            pool_config("warm", size=1, spares=1),
            pool_config("cold", size=1, spares=0),
        )
        cwd = rd / "work"
        cwd.mkdir()
        async with K.supervisor(cfg, rd / "rt") as (sup, _bus):
            await K.settle(sup)
            assert (await sup.execute("x = 1", pool="cold")).status == "ok"
            for i in range(rounds):
                order = ("warm", "cold") if i % 2 == 0 else ("cold", "warm")
                for pool in order:
                    await K.settle(sup, pool, pause=0.2)  # the spare refilled, all idle
                    opened, first = await _open(sup, pool, cwd)
                    key = "adapt" if pool == "warm" else "fresh"
                    s[key].append(ms(opened))
                    s[key + "1"].append(ms(first))
            for i in range(JOB_ROUNDS[mode]):
                for step in ("job", "execute") if i % 2 == 0 else ("execute", "job"):
                    t0 = time.perf_counter()
                    if step == "job":
                        job = await sup.submit(FLOOD, pool="warm")
                        result = await sup.wait(job.id)
                    else:
                        result = await sup.execute(FLOOD, pool="warm")
                    jobs[step].append(ms(time.perf_counter() - t0))
                    assert result is not None and result.status == "ok", result
    row = rep.row(
        "open_session with cwd+env, a warm Python spare adapted",
        "ms",
        s["adapt"],
        "the same, a kernel started for the session (no spare)",
        s["fresh"],
        target="a spare's warmth kept: ratio well below 1",
    )
    row.met = row.ratio < 0.5 if row.ratio is not None else None
    rep.row(
        "first execute in a session on an adapted spare",
        "ms",
        s["adapt1"],
        "first execute in a session on a kernel started for it",
        s["fresh1"],
    )
    rep.row(
        "3,000 lines (210 KB) as a job: submit + wait, whole output spooled",
        "ms",
        jobs["job"],
        "the same through execute (result cut at max_output_bytes)",
        jobs["execute"],
    )
    rep.notes.append(
        "open_session returns once the session's kernel is ready (bound, in its cwd with "
        "its env); the fresh kernel is forked from the pool's zygote (launch = fork)"
    )
    return rep
