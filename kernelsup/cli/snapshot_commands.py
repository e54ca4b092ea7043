"""``kernelsup snapshot SESSION``, ``kernelsup restore SESSION [ID]`` and ``kernelsup fork
SESSION NAME``: a session's state saved, loaded back, or copied into a new session.

A thin shell over the SyncClient, like session_commands.py: ``-c/--config``, ``--json``,
errors as ``<CODE> <ErrorClass>: <message>`` with their code's exit.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kernelsup.cli.client_commands import _run, config_options
from kernelsup.cli.exits import Exit
from kernelsup.control.sync_client import SyncClient
from kernelsup.core.snapshots import RestoreInfo, SnapshotInfo

EPILOG = (
    f"exit codes: {Exit.OK:d} done, {Exit.USAGE:d} usage, {Exit.REJECTED:d} refused (unknown "
    "session or snapshot, a kernel that is not Python, past checkpoint_max_bytes or "
    "checkpoint_timeout) or unreachable"
)


def register(sub: Any) -> None:
    """Add snapshot, restore and fork to ``sub`` (argparse subparsers)."""
    common = config_options(json=True)
    p = sub.add_parser(
        "snapshot", parents=[common], epilog=EPILOG, help="save a session's variables now"
    )
    p.add_argument("session")
    p.set_defaults(func=cmd_snapshot)
    p = sub.add_parser(
        "restore", parents=[common], epilog=EPILOG, help="load a snapshot into a session"
    )
    p.add_argument("session")
    p.add_argument("snapshot_id", nargs="?", help="which one (default: the latest)")
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser(
        "fork", parents=[common], epilog=EPILOG, help="open a new session from a session's state"
    )
    p.add_argument("session", help="the session to start from")
    p.add_argument("name", help="the new session's name")
    p.set_defaults(func=cmd_fork)


def _describe_snapshot(info: SnapshotInfo) -> str:
    lines = [
        f"snapshot {info.id} of {info.session}: {info.bytes} bytes, "
        f"{len(info.names) + len(info.modules)} names in {info.seconds:.2f} s",
        "saved: " + (", ".join([*info.names, *info.modules]) or "nothing"),
    ]
    lines += [f"not saved: {name} ({why})" for name, why in info.skipped.items()]
    return "\n".join(lines)


def _describe_restore(info: RestoreInfo) -> str:
    lines = [
        f"session {info.session} from snapshot {info.snapshot_id}: "
        + (", ".join(info.restored) or "nothing restored")
    ]
    lines += [f"not restored: {name} ({why})" for name, why in info.not_restored.items()]
    return "\n".join(lines)


def _print(args: argparse.Namespace, record: SnapshotInfo | RestoreInfo, text: str) -> int:
    print(json.dumps(record.to_dict()) if args.json else text, flush=True)
    return Exit.OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        info = client.snapshot(args.session)
        return _print(args, info, _describe_snapshot(info))

    return _run(args, body)


def cmd_restore(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        info = client.restore(args.session, args.snapshot_id)
        return _print(args, info, _describe_restore(info))

    return _run(args, body)


def cmd_fork(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        info = client.fork_session(args.session, args.name)
        return _print(args, info, _describe_restore(info))

    return _run(args, body)
