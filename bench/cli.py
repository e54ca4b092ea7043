"""cli: how long does ``kernelsup exec "1"`` take as a whole process?

What a shell script, a CI step or an agent that shells out pays per call: start an
interpreter, import the client, read the config and key, connect, execute, print, exit.
Against a ``kernelsup run`` subprocess with a pool of one kernel (bench/execute.py's
endpoint supervisor), each sample a new process, in a rotating order with its anchor:

* ``python -c pass``: the same interpreter (the virtualenv's, with its site-packages and
  the editable install's import hook) starting and exiting: the floor for any command;
* ``python -c "import attrs, cattrs, zmq, tomllib"``: the libraries the client imports
  (what kernelsup's own modules add is the next row's difference);
* ``python -c "import kernelsup.control.sync_client"``: the client's imports alone;
* ``kernelsup exec "1"`` through the console script (what users type) and through
  ``python -m kernelsup``, to see what the entry point adds.

The commands run with bytecode caching on (PYTHONDONTWRITEBYTECODE unset), so the
warm-up writes the ``.pyc`` of whatever changed, as an installed package has them: with
it set and a source file newer than its cache, every start would compile it again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Report, ms, runtime_dir
from bench.execute import ROOT, endpoint_supervisor

ROUNDS = {"smoke": 3, "quick": 40, "full": 200}
WARMUP = {"smoke": 1, "quick": 3, "full": 5}
# The target for the whole process, p50.
TARGET_S = 0.12
COMMAND_TIMEOUT_S = 60.0
SCRIPT = Path(sys.executable).parent / "kernelsup"


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _time(argv: list[str], expect: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT, env=ENV
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0 or proc.stdout != expect:
        raise RuntimeError(
            f"{argv[-3:]} failed: exit {proc.returncode}, stdout {proc.stdout!r}, "
            f"stderr {proc.stderr[-500:]!r}"
        )
    return dt


async def run(mode: str) -> Report:
    rounds, warmup = ROUNDS[mode], WARMUP[mode]
    rep = Report("cli", mode, params={"rounds": rounds, "warmup": warmup})
    with runtime_dir("c") as rd:
        async with endpoint_supervisor(rd / "ep") as cfg_path:
            cfg = str(cfg_path)
            py = sys.executable
            commands = {
                "pass": ([py, "-c", "pass"], ""),
                "libraries": ([py, "-c", "import attrs, cattrs, zmq, tomllib"], ""),
                "import": ([py, "-c", "import kernelsup.control.sync_client"], ""),
                "module": ([py, "-m", "kernelsup", "exec", "-c", cfg, "1"], "1\n"),
            }
            if SCRIPT.exists():
                commands["script"] = ([str(SCRIPT), "exec", "-c", cfg, "1"], "1\n")
            else:
                rep.notes.append(f"no console script at {SCRIPT}: not measured")
            names = list(commands)
            samples: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(warmup):
                for name in names:
                    _time(*commands[name])
            for i in range(rounds):
                shift = i % len(names)
                for name in names[shift:] + names[:shift]:
                    samples[name].append(ms(_time(*commands[name])))
    whole = "script" if "script" in samples else "module"
    row = rep.row(
        'kernelsup exec "1", whole process',
        "ms",
        samples[whole],
        "python -c pass",
        samples["pass"],
        target=f"<= {TARGET_S * 1000:.0f} ms p50",
        detail="the console script" if whole == "script" else "python -m kernelsup",
    )
    ks = row.ks_stats
    row.met = ks.p50 <= TARGET_S * 1000 if ks is not None else None
    rep.row(
        'python -m kernelsup exec "1"', "ms", samples["module"], "python -c pass", samples["pass"]
    )
    rep.row(
        "import attrs, cattrs, zmq, tomllib (the client's libraries)",
        "ms",
        samples["libraries"],
        "python -c pass",
        samples["pass"],
    )
    rep.row(
        "import kernelsup.control.sync_client",
        "ms",
        samples["import"],
        "python -c pass",
        samples["pass"],
    )
    if "script" in samples:
        rep.row(
            'kernelsup exec "1", the console script',
            "ms",
            samples["script"],
            'python -m kernelsup exec "1"',
            samples["module"],
            detail="what the entry point adds (or saves)",
        )
    return rep
