"""``kernelsup mcp``: serve supervised kernels to an MCP client (a coding agent) over stdio.

A thin shell over :mod:`kernelsup.mcp.server`: parse, load the config, ``trio.run``.
stdout carries the MCP protocol, so this command prints only to stderr. Exit codes
(:mod:`kernelsup.cli.exits`): 0 when stdin closes (or on SIGINT/SIGTERM), 1 if the
embedded supervisor failed, 2 for a usage or config error or a missing ``mcp`` package.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from kernelsup.cli.exits import Exit, fail, supervisor_failure
from kernelsup.core.config import Config, load_config
from kernelsup.core.errors import ConfigError, KernelsupError

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

EPILOG = (
    f"exit codes: {Exit.OK:d} stdin closed or SIGINT/SIGTERM, {Exit.ERROR:d} the embedded "
    f"supervisor failed, {Exit.USAGE:d} usage or config error (or the mcp package is "
    "missing). Tool errors, such as an unreachable supervisor, are answered to the client "
    "and never end the server."
)


def register(sub: Any) -> None:
    """Add ``mcp`` to ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "mcp", epilog=EPILOG, help="serve the kernels to an MCP client (coding agent) over stdio"
    )
    p.add_argument(
        "-c",
        "--config",
        default="supervisor.toml",
        help="the supervisor's config file (default ./supervisor.toml); without "
        "--embedded also an endpoint (ipc://...)",
    )
    p.add_argument(
        "--embedded",
        action="store_true",
        help="run the supervision tree in this process instead of connecting to `kernelsup run`",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="with --embedded: no event log on stderr"
    )
    p.set_defaults(func=cmd_mcp)


def cmd_mcp(args: argparse.Namespace) -> int:
    try:
        from kernelsup.mcp.server import serve_stdio
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("mcp", "mcp_types"):
            raise
        print(
            f"kernelsup mcp needs the mcp package ({exc}): pip install 'kernelsup[mcp]'",
            file=sys.stderr,
            flush=True,
        )
        return Exit.USAGE
    target: Config | str = args.config
    try:
        if args.embedded or not args.config.startswith(("ipc://", "tcp://")):
            target = load_config(args.config)
    except ConfigError as err:
        return fail(err)
    import trio  # here: the other commands of the CLI do not need it (tests/test_lean.py)

    try:
        reason = trio.run(
            functools.partial(
                serve_stdio,
                target,
                embedded=args.embedded,
                log_stream=None if args.quiet else sys.stderr,
            )
        )
    except KeyboardInterrupt:
        return Exit.OK
    except (KernelsupError, BaseExceptionGroup) as exc:
        failure = supervisor_failure(exc)
        if failure is None:
            raise
        return fail(failure, Exit.ERROR)  # whatever its code: the supervisor failed
    print(f"kernelsup mcp: stopped ({reason})", file=sys.stderr, flush=True)
    return Exit.OK


__all__ = ["register"]
