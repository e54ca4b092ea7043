"""The ``kernelsup`` command: a thin shell over the library (parse, load, trio.run).

Exit codes are part of the Contract (ARCHITECTURE.md, "Contracts"): they are data in
:mod:`kernelsup.core.codes`, used through :mod:`kernelsup.cli.exits`. Errors print as
``<CODE> <ErrorClass>: <message>`` on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from kernelsup.cli.exits import Exit, fail, supervisor_failure
from kernelsup.core.config import Config, load_config
from kernelsup.core.errors import ConfigError, KernelsupError

if TYPE_CHECKING:
    from kernelsup.api import Supervisor

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


def _load(path: str) -> Config:
    return load_config(path)


# --------------------------------------------------------------------------- check
def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
    except ConfigError as err:
        return fail(err)
    pools = ", ".join(
        f"{p.name} ({p.size} x {p.kernel}, {p.spares} spare"
        + (f", on the Ray cluster at {cfg.ray.address})" if p.placement == "ray" else ")")
        for p in cfg.pools
    )
    print(f"{args.config}: valid; pools: {pools}")
    return Exit.OK


# --------------------------------------------------------------------------- run
async def _run(cfg: Config, *, log_json: bool, log_stream: TextIO | None) -> None:
    import trio

    from kernelsup.api import open_supervisor
    from kernelsup.control import server
    from kernelsup.tree.bus import EventBus, EventLog

    bus = EventBus()
    async with trio.open_nursery() as nursery:
        log = EventLog(cfg.supervisor.log_file or None)
        await nursery.start(functools.partial(log.run, bus, log_stream, json_lines=log_json))
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_supervisor(cfg, bus=bus) as sup:
                endpoint = await nursery.start(server.serve, sup, cfg)
                url = None
                if cfg.metrics.listen:
                    from kernelsup import metrics

                    url = await nursery.start(metrics.serve, sup, cfg.metrics)
                print(_ready_line(sup, endpoint, metrics=url), flush=True)
                async for signum in signals:
                    await sup.aclose(f"received {signal.Signals(signum).name}")
                    break
        nursery.cancel_scope.cancel()
    bus.close()


def _ready_line(sup: Supervisor, endpoint: str, *, metrics: str | None = None) -> str:
    """``kernelsup ready: N kernels in P pool(s); [metrics URL; ]endpoint E``, and when
    some kernels are not up (each has failed a start and retries with backoff), how many,
    and why."""
    report = sup.status_now()
    total = len(report.kernels)
    up = sum(1 for k in report.kernels if k.get("state") in ("idle", "busy"))
    line = f"kernelsup ready: {total} kernels in {len(report.pools)} pool(s); "
    line += (f"metrics {metrics}; " if metrics else "") + f"endpoint {endpoint}"
    if up < total:
        failed = [k for k in report.kernels if k.get("start_error")]
        line += f"; {total - up} of them not up"
        if failed:
            reason = str(failed[-1]["start_error"]).splitlines()[0]
            line += f" ({len(failed)} failed to start: {reason})"
    return line


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
    except ConfigError as err:
        return fail(err)
    too_few = _open_files(cfg, quiet=args.quiet)
    if too_few is not None:
        return fail(too_few, Exit.ERROR)
    import trio  # here, not at the top: the client commands need no event loop

    try:
        with open(os.devnull, "w") if args.quiet else _stderr() as log_stream:
            trio.run(functools.partial(_run, cfg, log_json=args.log_json, log_stream=log_stream))
    except (KernelsupError, BaseExceptionGroup) as exc:
        failure = supervisor_failure(exc)
        if failure is None:
            raise
        return fail(failure, Exit.ERROR)  # whatever its code: the supervisor failed
    return Exit.OK


def _open_files(cfg: Config, *, quiet: bool) -> KernelsupError | None:
    """Raise the open files limit to the hard limit (said on stderr); the error to exit
    with if even that is too low for the config's kernels and a few clients."""
    from kernelsup.adapters.runtime import raise_open_files_limit
    from kernelsup.control.server import descriptors_needed

    before, limit = raise_open_files_limit()
    if limit != before and not quiet:
        print(f"open files limit (RLIMIT_NOFILE) raised from {before} to {limit}", file=sys.stderr)
    needed = descriptors_needed(cfg)
    if limit >= needed:
        return None
    kernels = sum(pool.size + pool.spares for pool in cfg.pools)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return KernelsupError(
        f"the open files limit (RLIMIT_NOFILE) is {limit} (hard limit {hard}); {kernels} "
        f"kernels, the control endpoint and a few clients need at least {needed}: raise it "
        f"(ulimit -n {needed}) or run fewer kernels",
        code="fd_limit",
        limit=limit,
        needed=needed,
    )


@contextlib.contextmanager
def _stderr() -> Iterator[TextIO]:
    yield sys.stderr


# --------------------------------------------------------------------------- parser
# The client commands (cli/client_commands.py): when argv names one of them, only that
# module's parsers are built. Building every command's parser (and importing the other
# commands' modules) took three times as long (120 ms against 40 ms, at load 12), for a
# `kernelsup exec "1"` that needs one (bench/cli.py). A command not listed here builds
# them all, as `--help` does.
CLIENT_COMMANDS = frozenset({"exec", "status", "watch", "interrupt", "restart", "close-session"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or only the client commands' when ``command`` is one
    of them."""
    parser = argparse.ArgumentParser(
        prog="kernelsup", description="Keep Jupyter kernels alive and answering."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in CLIENT_COMMANDS:
        from kernelsup.cli import client_commands

        client_commands.register(sub)
        return parser

    p = sub.add_parser("run", help="run the supervision tree in the foreground")
    p.add_argument(
        "config",
        nargs="?",
        default="supervisor.toml",
        help="config file (default ./supervisor.toml)",
    )
    p.add_argument("--log-json", action="store_true", help="log events as JSON lines")
    p.add_argument("-q", "--quiet", action="store_true", help="no event log on stderr")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config file")
    p.add_argument("config", nargs="?", default="supervisor.toml")
    p.set_defaults(func=cmd_check)

    add_client_commands(sub)
    return parser


def add_client_commands(sub: Any) -> None:
    """exec, status, watch, interrupt, restart: see kernelsup/cli/client_commands.py."""
    from kernelsup.cli import (
        client_commands,
        console,
        mcp_command,
        nb_command,
        session_commands,
        snapshot_commands,
        top,
    )

    client_commands.register(sub)
    session_commands.register(sub)
    snapshot_commands.register(sub)
    mcp_command.register(sub)
    nb_command.register(sub)
    console.register(sub)
    top.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list[0] if args_list else None)
    args = parser.parse_args(args_list)
    code: int = args.func(args)
    return int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
