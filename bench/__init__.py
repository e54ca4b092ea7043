"""kernelsup's benchmark harness: each benchmark runs kernelsup and its anchor in the same
run, alternating, and reports p50/p95/p99 and the ratio (ARCHITECTURE.md, "Benchmarks").

Run ``python -m bench NAME [--quick | --smoke] [--json FILE] [--plot FILE.png]``; one
module per benchmark, each with ``async def run(mode) -> Report``:

* ``restart``  SIGKILL -> death seen, replacement ready, next execute ok (with and without a
  spare), against jupyter_client's autorestart and a plain ipykernel cold start;
* ``hang``     SIGSTOP -> detected and replaced, at the default heartbeat and at 0.2 s,
  against jupyter_client (which does not notice);
* ``execute``  a trivial execute round trip in-process and through the control endpoint,
  against raw pyzmq and jupyter_client's clients on the same kernel; executes per second;
* ``storm``    every kernel of a pool SIGKILLed at once while requests keep arriving;
* ``idle``     the supervisor process's CPU and memory per idle kernel;
* ``fresh``    a never-used kernel forked from the zygote against exec'ed and a plain cold
  start; ``import numpy`` with and without ``preload``; PSS of idle forked kernels;
* ``evaluation`` 300 independent snippets, each on a fresh kernel (passes, failures,
  infinite loops stopped at 2 s, ``os._exit``), against a ``python -c`` per sample and a
  jupyter_client KernelManager per sample;
* ``sessions`` ``open_session`` with cwd and env on an adapted warm spare against a
  kernel started for the session; a job's spooled output against the same ``execute``;
* ``mcp``      an ``execute`` tool call through ``kernelsup mcp`` (small, and 1.3 MB
  budgeted to 20,000 characters) against ``Client.execute`` through the endpoint.

* ``notebook`` a 10-cell notebook as a whole command (``kernelsup nb run`` embedded and on a
  running supervisor, ``papermill --engine kernelsup``) and eight with ``-j 2``, against
  papermill's default engine.
* ``snapshot`` a session's namespace saved and restored (a 100 MB array, 10,000 small
  objects, a model-sized object) against pickle.dump/load in the kernel; the latency
  ``checkpoint = "after_execute"`` adds to each request.

* ``metrics``  a scrape of ``/metrics`` against ``status()`` of the same supervisor, and
  ``execute`` with the metrics counting against it without them.

Shared pieces: ``common`` (statistics, table, JSON, plot, machine line), ``kernels``
(kernelsup's side), ``worker`` (the anchors' process).
"""

from __future__ import annotations

BENCHMARKS = (
    "restart",
    "hang",
    "execute",
    "storm",
    "idle",
    "cli",
    "fresh",
    "evaluation",
    "sessions",
    "mcp",
    "snapshot",
    "notebook",
    "metrics",
)

__all__ = ["BENCHMARKS"]
