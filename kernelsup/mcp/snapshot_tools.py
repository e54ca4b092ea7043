"""The snapshot tools of ``kernelsup mcp``: save a session's variables, load them back,
or start a new session from them (core/snapshots.py, tree/checkpoints.py).

Without ``session`` they act on this connection's own session (the one ``execute``
without a session runs in), so a model can save its work before something risky, go
back to it, or branch it into a second session to try another approach.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mcp_types as types

from kernelsup.core.errors import Rejected
from kernelsup.core.snapshots import RestoreInfo, SnapshotInfo
from kernelsup.mcp.handlers import Connection, Context, Handler, text_result
from kernelsup.mcp.text import clip
from kernelsup.mcp.tools import schema

META_SNAPSHOT = "kernelsup/snapshot"
META_RESTORE = "kernelsup/restore"

_SESSION = {
    "type": "string",
    "minLength": 1,
    "description": "the session (default: this connection's own, where execute runs "
    "without a session)",
}


TOOLS = [
    types.Tool(
        name="snapshot_session",
        description=(
            "Save a session's variables now (Python kernels), to come back to them with "
            "restore_session, or automatically if its kernel dies (when the pool has "
            "checkpoint = after_execute). Says what was saved and what could not be (open "
            "files, sockets, generators, threads: re-create those after a restore)."
        ),
        input_schema=schema({"session": _SESSION}),
    ),
    types.Tool(
        name="restore_session",
        description=(
            "Load a snapshot of a session (its latest by default) into its kernel: the "
            "saved variables replace those of the same names. Says what came back."
        ),
        input_schema=schema(
            {
                "session": _SESSION,
                "snapshot_id": {
                    "type": "string",
                    "minLength": 1,
                    "description": "which snapshot (from snapshot_session); default latest",
                },
            }
        ),
    ),
    types.Tool(
        name="fork_session",
        description=(
            "Open a new session, with a kernel of its own, starting from a session's "
            "current variables: try something there without touching the original. Run "
            'code in it with execute(session="NAME").'
        ),
        input_schema=schema(
            {
                "source": _SESSION,
                "name": {"type": "string", "minLength": 1, "description": "the new session"},
            },
            "name",
        ),
    ),
]


def snapshot_text(info: SnapshotInfo) -> str:
    saved = [*info.names, *info.modules]
    lines = [
        f"snapshot {info.id} of session {info.session!r}: {len(saved)} names, "
        f"{info.bytes} bytes, {info.seconds:.2f} s",
        "saved: " + (", ".join(saved) or "nothing"),
    ]
    lines += [f"not saved: {name}: {why}" for name, why in info.skipped.items()]
    return "\n".join(lines) + "\n"


def restore_text(info: RestoreInfo) -> str:
    lines = [
        f"session {info.session!r} loaded snapshot {info.snapshot_id}: "
        + (", ".join(info.restored) or "nothing came back")
    ]
    lines += [f"not restored: {name}: {why}" for name, why in info.not_restored.items()]
    return "\n".join(lines) + "\n"


def _arg(args: Mapping[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise Rejected(f"{name} must be a non-empty string", code="bad_request")
    return value


async def snapshot_session(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    session = await conn.session(_arg(args, "session"))
    info = await conn.backend.snapshot(session)
    text = clip(snapshot_text(info), conn.config.max_output_chars).text
    return text_result(text, meta={META_SNAPSHOT: info.to_dict()})


async def restore_session(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    session = await conn.session(_arg(args, "session"))
    info = await conn.backend.restore(session, _arg(args, "snapshot_id"))
    text = clip(restore_text(info), conn.config.max_output_chars).text
    return text_result(text, meta={META_RESTORE: info.to_dict()})


async def fork_session(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    name = _arg(args, "name")
    if name is None:
        raise Rejected("fork_session needs the new session's name", code="bad_request")
    source = await conn.session(_arg(args, "source"))
    info = await conn.backend.fork_session(source, name)
    text = clip(restore_text(info), conn.config.max_output_chars).text
    return text_result(text, meta={META_RESTORE: info.to_dict()})


HANDLERS: dict[str, Handler] = {
    "snapshot_session": snapshot_session,
    "restore_session": restore_session,
    "fork_session": fork_session,
}

__all__ = ["HANDLERS", "TOOLS", "restore_text", "snapshot_text"]
