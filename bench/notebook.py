"""notebook: how long does a notebook run take as a whole command, against papermill?

What a CI step pays per notebook: a 10-cell notebook (prints, a loop, a display, an
injected parameter), each sample a new process, in a rotating order with its anchor,
``papermill in.ipynb out.ipynb -p n 3`` (its default engine, nbclient, which starts a
kernel for the run):

* ``kernelsup nb run`` with no config: an embedded supervisor for the command's duration
  (it starts a kernel too, and the supervision tree around it);
* ``kernelsup nb run -c CFG`` on a running ``kernelsup run`` (bench/execute.py's endpoint
  supervisor, one kernel and a spare): the kernel is already warm;
* ``papermill --engine kernelsup`` on that running supervisor (``KERNELSUP_CONFIG``);
* eight notebooks: ``kernelsup nb run -j 2`` on the running supervisor against eight
  papermill commands one after the other (what a CI script does without it).

Every command must exit 0 and write a notebook; a failure ends the benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Report, ms, runtime_dir
from bench.execute import endpoint_supervisor

ROUNDS = {"smoke": 1, "quick": 5, "full": 20}
WARMUP = {"smoke": 0, "quick": 1, "full": 2}
# Notebooks in the many-notebooks row (smoke: just enough to exercise -j 2).
MANY = {"smoke": 2, "quick": 8, "full": 8}
COMMAND_TIMEOUT_S = 300.0
CELLS = [
    "n = 1",
    "import math, sys",
    "print('n is', n)",
    "total = sum(math.sqrt(i) for i in range(100_000))",
    "print(f'{total:.3f}')",
    "for i in range(5):\n    print('line', i)",
    "from IPython.display import display, HTML\ndisplay(HTML('<b>bold</b>'))",
    "print('to stderr', file=sys.stderr)",
    "{'n': n, 'total': round(total)}",
    "n * 2",
]


def write_notebook(path: Path) -> Path:
    cells = [
        {
            "cell_type": "code",
            "id": f"c{i}",
            "execution_count": None,
            "metadata": {"tags": ["parameters"] if i == 0 else []},
            "outputs": [],
            "source": src,
        }
        for i, src in enumerate(CELLS)
    ]
    doc = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(doc))
    return path


def _time(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{argv[:6]} failed: exit {proc.returncode}, stderr {proc.stderr[-800:]!r}"
        )
    return dt


async def run(mode: str) -> Report:
    rounds, warmup = ROUNDS[mode], WARMUP[mode]
    count = MANY[mode]
    rep = Report("notebook", mode, params={"rounds": rounds, "cells": len(CELLS), "many": count})
    py = sys.executable
    with runtime_dir("n") as rd:
        work = rd / "work"
        work.mkdir()
        nb = str(write_notebook(work / "in.ipynb"))
        many = [str(write_notebook(work / f"m{i}.ipynb")) for i in range(count)]
        params = ["-p", "n", "3"]
        async with endpoint_supervisor(rd / "ep") as cfg_path:
            cfg = str(cfg_path)
            pm = [py, "-m", "papermill", "--no-progress-bar", "--kernel", "python3"]
            ks = [py, "-m", "kernelsup", "nb", "run"]
            commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
                "papermill": ([*pm, nb, "pm.ipynb", *params], None),
                "embedded": ([*ks, nb, "-o", "emb.ipynb", *params], None),
                "running": ([*ks, "-c", cfg, nb, "-o", "run.ipynb", *params], None),
                "engine": (
                    [*pm, "--engine", "kernelsup", nb, "eng.ipynb", *params],
                    {"KERNELSUP_CONFIG": cfg},
                ),
            }
            names = list(commands)
            samples: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(warmup):
                for name in names:
                    _time(commands[name][0], work, commands[name][1])
            for i in range(rounds):
                shift = i % len(names)
                for name in names[shift:] + names[:shift]:
                    argv, env = commands[name]
                    samples[name].append(ms(_time(argv, work, env)))
            sequential: list[float] = []
            parallel: list[float] = []
            for i in range(max(1, rounds // 2)):
                runs = [
                    lambda: sum(
                        _time([*pm, m, f"s{j}.ipynb", *params], work) for j, m in enumerate(many)
                    ),
                    lambda: _time([*ks, "-c", cfg, *many, "-o", "outs", "-j", "2", *params], work),
                ]
                order = runs if i % 2 == 0 else runs[::-1]
                for fn in order:
                    (sequential if fn is runs[0] else parallel).append(ms(fn()))
    anchor = "papermill (nbclient)"
    rep.row(
        "kernelsup nb run, embedded (no config)",
        "ms",
        samples["embedded"],
        anchor,
        samples["papermill"],
    )
    rep.row(
        "kernelsup nb run on a running supervisor",
        "ms",
        samples["running"],
        anchor,
        samples["papermill"],
    )
    rep.row(
        "papermill --engine kernelsup on a running supervisor",
        "ms",
        samples["engine"],
        anchor,
        samples["papermill"],
    )
    rep.row(
        f"{count} notebooks: kernelsup nb run -j 2 on a running supervisor",
        "ms",
        parallel,
        f"{count} papermill commands, one after the other",
        sequential,
    )
    return rep
