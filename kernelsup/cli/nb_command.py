"""``kernelsup nb run``: run notebooks under supervision, outputs written back.

A thin shell over :mod:`kernelsup.notebook`: parse, pick the supervisor, run, report.

The supervisor: the one ``kernelsup run`` serves for the config (``-c``, default
``./supervisor.toml``) when it answers; else one embedded in this process, from that
config, for the command's duration (with a private runtime directory, so it never meets a
``kernelsup run`` of the same config); with no config file at all, embedded defaults: one
pool per kernel the notebooks name, each with a kernel ready per notebook that may run at
once. A CI job is one command.

Exit codes (kernelsup/core/codes.py): 0 every notebook ran to its end, 1 a cell raised,
124 a cell (or the notebook) ran past its timeout, 4 the kernel died, 3 refused (no pool
for the notebook's kernel, an unreadable notebook...), 2 usage or config error, 130
interrupted. For many notebooks, the first failing notebook's (in the order given).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernelsup.cli.exits import Exit, fail, supervisor_failure
from kernelsup.core.config import Config, PoolConfig, load_config
from kernelsup.core.errors import ConfigError, KernelsupError, Rejected, Unreachable, leaves

if TYPE_CHECKING:  # imported where used: the other commands need neither (tests/test_lean.py)
    from kernelsup.notebook import NotebookReport
    from kernelsup.notebook.runner import AsyncTarget

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

# How long to wait for a running supervisor's hello before running embedded instead. A
# supervisor that is there answers in milliseconds; one that is not fails the probe at once.
CONNECT_TIMEOUT_S = 5.0
DEFAULT_CONFIG = "supervisor.toml"

_X = Exit
EPILOG = (
    f"exit codes: {_X.OK:d} every notebook ran to its end, {_X.ERROR:d} a cell raised, "
    f"{_X.TIMEOUT:d} a cell or the notebook ran past its timeout, {_X.DIED:d} the kernel "
    f"died, {_X.REJECTED:d} refused (no pool for the notebook's kernel, an unreadable "
    f"notebook), {_X.USAGE:d} usage or config error, {_X.INTERRUPTED:d} interrupted. With "
    "several notebooks: the first failing one's, in the order given."
)


def register(sub: Any) -> None:
    """Add ``nb run`` to ``sub`` (argparse subparsers)."""
    nb = sub.add_parser("nb", help="run notebooks under supervision")
    nb_sub = nb.add_subparsers(dest="nb_command", required=True, metavar="COMMAND")
    p = nb_sub.add_parser(
        "run",
        epilog=EPILOG,
        help="run notebooks' code cells in a fresh kernel each, outputs written back",
    )
    p.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="the .ipynb files to run")
    p.add_argument(
        "-o",
        "--output",
        help="where to write the run notebook (default: in place); with several notebooks, "
        "a directory",
    )
    p.add_argument(
        "-c",
        "--config",
        help="the supervisor's config (default ./supervisor.toml; none: embedded defaults)",
    )
    p.add_argument("--cell-timeout", type=_positive_float, help="seconds each cell may run")
    p.add_argument("--timeout", type=_positive_float, help="seconds the whole notebook may run")
    p.add_argument(
        "--allow-errors",
        action="store_true",
        help="go on after a cell that raised (its error stays in its outputs)",
    )
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter, as papermill's -p (True/False/None, ints and floats are typed)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--pool", help="the pool to run in (default: the notebook's kernel's)")
    where.add_argument("--kernel", help="the kernel to run with, instead of the notebook's")
    p.add_argument(
        "--session",
        help="run in this named session (its state before and after is kept; one notebook)",
    )
    p.add_argument(
        "-j", "--jobs", type=_positive_int, default=1, help="notebooks run at once (default 1)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_nb_run)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {text})")
    return value


# --------------------------------------------------------------------------- outputs
def output_paths(notebooks: Sequence[str], output: str | None) -> list[str]:
    """Where each notebook is written. Raises ValueError (a usage error) when that is
    ambiguous."""
    if output is None:
        return list(notebooks)
    out = Path(output)
    if len(notebooks) == 1 and not out.is_dir():
        return [output]
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {output}: with several notebooks, -o names a directory")
    names = [Path(n).name for n in notebooks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"-o {output}: two notebooks would be written as {twice[0]}")
    out.mkdir(parents=True, exist_ok=True)
    return [str(out / name) for name in names]


# --------------------------------------------------------------------------- the target
def default_config(kernels: Sequence[str], ready: int) -> Config:
    """No config file: one pool per kernel named (``python3`` when none is), each with
    ``ready`` kernels up for the notebooks that may run at once."""
    names = list(dict.fromkeys(kernels)) or ["python3"]
    pools = [
        PoolConfig(name=_pool_name(k), kernel=k, size=1, spares=max(0, ready - 1)) for k in names
    ]
    return Config(pools=tuple(pools))


def _pool_name(kernel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", kernel)[:64] or "default"


@contextlib.asynccontextmanager
async def open_target(
    config: Config | None, *, kernels: Sequence[str], jobs: int
) -> AsyncIterator[tuple[AsyncTarget, str]]:
    """The supervisor to run on, and a few words saying which (see the module docstring).
    ``config`` None: there is no config file."""
    from kernelsup.api import open_supervisor
    from kernelsup.control.client import connect

    async with contextlib.AsyncExitStack() as stack:
        if config is not None:
            try:
                client = await stack.enter_async_context(connect(config, timeout=CONNECT_TIMEOUT_S))
            except Unreachable:
                pass  # nothing serves it: run embedded
            else:
                yield client, f"the supervisor at {client.endpoint}"
                return
        cfg = config if config is not None else default_config(kernels, jobs)
        runtime = tempfile.mkdtemp(prefix="ksnb-")
        stack.callback(shutil.rmtree, runtime, True)
        sup = await stack.enter_async_context(open_supervisor(cfg, runtime_dir=runtime))
        yield sup, "an embedded supervisor"


# --------------------------------------------------------------------------- run
async def run_all(
    args: argparse.Namespace, config: Config | None, outputs: list[str]
) -> tuple[list[NotebookReport], str]:
    """Every notebook's report, in the order given, and which supervisor ran them."""
    import trio

    from kernelsup.notebook.parameters import parse_value

    parameters = {name: parse_value(value) for name, value in args.parameter}
    kernels = [args.kernel] if args.kernel else _kernels_named(args.notebooks)
    reports: list[NotebookReport | None] = [None] * len(args.notebooks)
    async with open_target(config, kernels=kernels, jobs=args.jobs) as (target, where):
        if not args.json:
            print(f"kernelsup nb: running on {where}", file=sys.stderr, flush=True)
        limit = trio.Semaphore(args.jobs)

        async def one(i: int) -> None:
            async with limit:
                reports[i] = await _run_one(target, args, args.notebooks[i], outputs[i], parameters)

        async with trio.open_nursery() as nursery:
            for i in range(len(args.notebooks)):
                nursery.start_soon(one, i)
    return [r for r in reports if r is not None], where


async def _run_one(
    target: AsyncTarget,
    args: argparse.Namespace,
    path: str,
    output: str,
    parameters: dict[str, Any],
) -> NotebookReport:
    from kernelsup.notebook import NotebookReport, run_notebook

    try:
        return await run_notebook(
            target,
            path,
            output=output,
            parameters=parameters,
            cell_timeout=args.cell_timeout,
            timeout=args.timeout,
            allow_errors=args.allow_errors,
            pool=args.pool,
            kernel=args.kernel,
            session=args.session,
        )
    except Rejected as err:  # the notebook could not be read
        return NotebookReport(
            input=path,
            output=None,
            status="rejected",
            exit_code=Exit.REJECTED,
            message=err.describe(),
        )


def _kernels_named(notebooks: Sequence[str]) -> list[str]:
    """The kernels the notebooks name (those that can be read: the others fail later,
    each in its own row)."""
    from kernelsup.notebook import document as doc

    found = []
    for path in notebooks:
        try:
            name = doc.kernel_name(doc.read(path))
        except Rejected:
            continue
        found.append(name or "python3")
    return found


def cmd_nb_run(args: argparse.Namespace) -> int:
    if args.session is not None and len(args.notebooks) > 1:
        print("kernelsup nb run: --session runs one notebook", file=sys.stderr)
        return Exit.USAGE
    try:
        outputs = output_paths(args.notebooks, args.output)
    except ValueError as exc:
        print(f"kernelsup nb run: {exc}", file=sys.stderr)
        return Exit.USAGE
    config: Config | None = None
    path = args.config or DEFAULT_CONFIG
    try:
        if args.config is not None or os.path.exists(path):
            config = load_config(path)
    except ConfigError as err:
        return fail(err)
    import trio

    from kernelsup.notebook import format_table

    try:
        reports, where = trio.run(functools.partial(run_all, args, config, outputs))
    except (KeyboardInterrupt, KernelsupError, BaseExceptionGroup) as exc:
        if any(isinstance(e, KeyboardInterrupt) for e in leaves(exc)):
            print(
                "kernelsup nb run: interrupted (each notebook is written as far as it ran)",
                file=sys.stderr,
            )
            return Exit.INTERRUPTED
        failure = supervisor_failure(exc)
        if failure is None:
            raise
        return fail(failure, Exit.ERROR)  # the supervisor failed (gave up, cannot start)
    exit_code = next((r.exit_code for r in reports if r.exit_code != Exit.OK), Exit.OK)
    if args.json:
        notebooks = [r.to_dict() for r in reports]
        print(json.dumps({"exit_code": exit_code, "ran_on": where, "notebooks": notebooks}))
    elif len(reports) == 1:
        print(_one_line(reports[0]))
    else:
        print(format_table(reports))
    return exit_code


def _one_line(r: NotebookReport) -> str:
    where = f" -> {r.output}" if r.output else ""
    cells = f"{r.cells_run}/{len(r.cells)} cells in {r.duration_s:.1f}s"
    if r.status == "ok":
        return f"{r.input}: ok, {cells}{where}"
    at = f" at cell {r.failed_cell}" if r.failed_cell is not None else ""
    return f"{r.input}: {r.status}{at}: {r.message}; {cells}{where}"


__all__ = ["open_target", "output_paths", "register", "run_all"]
