"""``python -m bench NAME [--quick | --smoke] [--json FILE] [--plot FILE.png]``.

NAME is one of restart, hang, execute, storm, idle, or all. The default mode is the full
one; ``--quick`` keeps each benchmark under a minute on 2 cores; ``--smoke`` is the
smallest run that still exercises every path (the test suite uses it).

``python -m bench chaos [--requests N] [--seed S] [--clients C] [--json FILE]`` is the
chaos soak (bench/chaos.py): not a comparison, so not part of ``all``; it exits 1 when one
of its invariants fails.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

import trio

if sys.version_info < (3, 11):  # pragma: no cover - trio brings the backport there
    from exceptiongroup import BaseExceptionGroup

from bench import BENCHMARKS
from bench.common import (
    PlotUnavailable,
    Report,
    machine,
    machine_line,
    plot,
    render,
    write_json,
)
from kernelsup.core.codes import Exit

SOAK = "chaos"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="kernelsup benchmarks, each beside its anchor."
    )
    p.add_argument(
        "name",
        choices=[*BENCHMARKS, SOAK, "all"],
        help=f"which benchmark (or all, which leaves out {SOAK})",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="fewer samples: under a minute per benchmark on 2 cores",
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run that exercises every path (for tests)",
    )
    p.add_argument("--json", metavar="FILE", help="write the reports as JSON")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the distributions (needs the plot extra: matplotlib)",
    )
    soak = p.add_argument_group(f"{SOAK} only")
    soak.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="requests to send (default: 10000; --quick 1000, --smoke 150)",
    )
    soak.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seeds the request plan and the chaos (default 0)",
    )
    soak.add_argument(
        "--clients",
        type=int,
        metavar="C",
        help="concurrent clients (default: 6; --quick 4, --smoke 2)",
    )
    return p


def run_one(name: str, mode: str, **options: Any) -> Report:
    module = importlib.import_module(f"bench.{name}")
    t0 = time.monotonic()
    try:
        report: Report = trio.run(functools.partial(module.run, mode, **options))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken benchmark must not hide the others' results
        report = _failed(name, mode, exc)
    except BaseExceptionGroup as group:  # Ctrl-C inside a nursery arrives wrapped
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise
    report.wall_s = time.monotonic() - t0
    return report


def _failed(name: str, mode: str, exc: BaseException) -> Report:
    report = Report(name, mode, skipped=f"failed: {type(exc).__name__}: {exc}")
    report.notes.append("traceback:\n" + "".join(traceback.format_exception(exc)))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.plot:  # fail before measuring, not after
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("--plot needs matplotlib: pip install -e '.[plot]'", file=sys.stderr)
            return Exit.USAGE
    for flag in ("requests", "clients"):
        value = getattr(args, flag)
        if value is not None and (args.name != SOAK or value < 1):
            print(f"--{flag} is for {SOAK} only, and at least 1", file=sys.stderr)
            return Exit.USAGE
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    info = machine()
    print(machine_line(info), flush=True)
    reports: list[Report] = []
    status = Exit.OK
    try:
        for name in names:
            options = (
                {"requests": args.requests, "seed": args.seed, "clients": args.clients}
                if name == SOAK
                else {}
            )
            report = run_one(name, mode, **options)
            reports.append(report)
            print("\n" + render(report), flush=True)
            if report.skipped.startswith("failed") or report.extra.get("violations"):
                status = Exit.ERROR
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        status = Exit.INTERRUPTED
    if args.json:
        write_json(args.json, info, reports, argv)
        print(f"\nJSON written to {args.json}")
    if args.plot and reports:
        try:
            plot(args.plot, info, reports)
            print(f"plot written to {args.plot}")
        except PlotUnavailable as exc:
            print(str(exc), file=sys.stderr)
            status = status or Exit.USAGE
    return status


if __name__ == "__main__":
    sys.exit(main())
