"""``kernelsup top``: the status table, refreshed in place until Ctrl-C.

Each kernel's state, restarts, CPU %, memory (its whole containment unit) and how it is
contained, and each pool's line, as ``kernelsup status`` prints them. On a terminal the
screen is redrawn in place; into a pipe each refresh is appended, a blank line between.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from kernelsup.cli.client_commands import _positive_float, _run
from kernelsup.cli.exits import Exit
from kernelsup.control.sync_client import SyncClient
from kernelsup.core.results import format_status

# Cursor home, then clear to the end of the screen: the table is redrawn over itself.
REDRAW = "\x1b[H\x1b[J"


def register(sub: Any) -> None:
    """Add ``top`` to ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "top",
        help="the status table with CPU and memory, refreshed in place until Ctrl-C",
    )
    p.add_argument(
        "-c",
        "--config",
        default="supervisor.toml",
        help="the supervisor's config file (default ./supervisor.toml)",
    )
    p.add_argument(
        "-n",
        "--interval",
        type=_positive_float,
        default=1.0,
        help="seconds between refreshes (default 1)",
    )
    p.add_argument(
        "--count", type=int, default=0, help="stop after this many refreshes (default: never)"
    )
    p.set_defaults(func=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        terminal = sys.stdout.isatty()
        shown = 0
        try:
            while True:
                report = client.status()
                stamp = time.strftime("%H:%M:%S")
                head = (
                    f"kernelsup top: {client.endpoint}  {stamp}  "
                    f"(every {args.interval:g} s, Ctrl-C to leave)"
                )
                screen = f"{head}\n\n{format_status(report)}\n"
                sys.stdout.write((REDRAW if terminal else ("\n" if shown else "")) + screen)
                sys.stdout.flush()
                shown += 1
                if args.count and shown >= args.count:
                    return Exit.OK
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return Exit.OK

    return _run(args, body, unreachable=Exit.ERROR)


__all__ = ["register"]
