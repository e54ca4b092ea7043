"""What the model is told: the server's instructions and each tool's description and schema.

Declarative: the handlers are in :mod:`kernelsup.mcp.server`. The words here are the only
documentation a model reads, so they describe the real state model (see the README's MCP
section): an ``execute`` without ``session`` runs in the connection's own session.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types

from kernelsup.core.config import HOUR_S, MCP_OUTPUT_CHARS_MAX, MCP_OUTPUT_CHARS_MIN

INSTRUCTIONS = (
    "Runs Python code in Jupyter kernels kept alive by a supervisor.\n"
    "State: `execute` without `session` runs in this connection's own session, a kernel "
    "nobody else uses, started at its first use: variables, imports and the working "
    "directory carry over from one of your calls to the next, until this MCP connection "
    "ends (the session is then closed) or the kernel dies (the result then says the state "
    "was lost and the next call starts fresh). A named `session` (open one with "
    "`open_session`, which can set its working directory and environment variables) is "
    "shared by every connection that names it and outlives this one: `list_sessions` "
    "finds it again, `close_session` ends it.\n"
    "Long runs: `execute` waits `block_for` seconds; code still running then keeps "
    "running as a job, and you get its id: follow it with `job_output` (its whole output, "
    "page by page) and `job_status`, stop it with `cancel_job`; `list_jobs` shows recent "
    "jobs. A job in a named session survives this connection. Past its `timeout` the code "
    "is interrupted (the kernel is restarted if it ignores the interrupt).\n"
    "Output: a result shows at most `max_output_chars` characters; past that its middle is "
    "cut and a marker line says how to page through it with `job_output`. Colour and "
    "other terminal escape codes are removed.\n"
    "Files: `put_file`, `get_file` and `list_files` work in a session's working directory "
    "(text, or base64 for binary files).\n"
    "Snapshots: `snapshot_session` saves a session's variables, `restore_session` loads "
    "them back, `fork_session` starts a new session from them; with checkpoints on (the "
    "pool's `checkpoint`), a session whose kernel died comes back with its variables and "
    "the result says what was restored.\n"
    "`status` lists the kernels; `interrupt` and `restart` act on a session's kernel."
)

_STRING = {"type": "string", "minLength": 1}
_SESSION = {
    **_STRING,
    "description": "a session name (1 to 128 printable characters); default: this "
    "connection's own session",
}
_POOL = {**_STRING, "description": "the pool (default: the first pool)"}
_MAX_CHARS = {
    "type": "integer",
    "minimum": MCP_OUTPUT_CHARS_MIN,
    "maximum": MCP_OUTPUT_CHARS_MAX,
    "description": "characters of text this result may give you (default: the server's "
    "max_output_chars); past it the middle is cut",
}
_JOB_ID = {"job_id": {**_STRING, "description": "a job id, as `execute` or `list_jobs` gave it"}}
_KERNEL_TARGET = {
    "session": _SESSION,
    "kernel_id": {**_STRING, "description": "a kernel id, as `status` shows it"},
}
_PATH = {**_STRING, "description": "a path relative to the session's working directory"}


def schema(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    """A tool's input schema: an object of these properties, no others."""
    result: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        result["required"] = list(required)
    return result


_READ_ONLY = types.ToolAnnotations(read_only_hint=True)
_DESTRUCTIVE = types.ToolAnnotations(destructive_hint=True)

TOOLS = [
    types.Tool(
        name="execute",
        description=(
            "Run Python code in a supervised Jupyter kernel; returns stdout and stderr as "
            "printed, Out[n] for the value of the last expression, the traceback of an "
            "error, images as image content, and notices (output cut, timeout, kernel "
            "restarted, state lost), ending with a status line. Without `session` the code "
            "runs in this connection's own session: state persists between your calls and "
            "nobody else's code runs there; it is closed when this connection ends. With "
            "`session`, in that named session (made if it does not exist), reachable from "
            "other connections and kept after this one. If the code is still running after "
            "`block_for` seconds, you get a job id instead of the result: the code goes on; "
            "follow it with `job_output` / `job_status`, stop it with `cancel_job`. Past "
            "`timeout` seconds (default: the pool's exec_timeout) the kernel is interrupted, "
            "and restarted if it ignores the interrupt. With `fresh`, the code runs on a "
            "kernel that never ran anything and is destroyed after (nothing kept, nothing "
            "seen from other calls; not with `session`), and the call waits for its result."
        ),
        input_schema=schema(
            {
                "code": {"type": "string", "description": "the Python code to run"},
                "session": _SESSION,
                "block_for": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": HOUR_S,
                    "description": "seconds to wait for the result before answering with a "
                    "job id (default: the server's block_for, about 10)",
                },
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "seconds the code may run",
                },
                "pool": _POOL,
                "max_output_chars": _MAX_CHARS,
                "fresh": {
                    "type": "boolean",
                    "description": "run on a never-used kernel, destroyed after",
                },
            },
            "code",
        ),
    ),
    types.Tool(
        name="job_status",
        description=(
            "A job's status (queued, running, or how it ended), its times and output size; "
            "once it has ended, its result as `execute` shows it."
        ),
        input_schema=schema({**_JOB_ID, "max_output_chars": _MAX_CHARS}, "job_id"),
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="job_output",
        description=(
            "A page of a job's whole output (everything it printed, in order, colour codes "
            "removed), from byte `offset` (start at 0). The page ends with a line giving "
            "the next offset, and whether the job is still running. Call it again with "
            "that offset for more; while the job runs, new output appears at the end."
        ),
        input_schema=schema(
            {
                **_JOB_ID,
                "offset": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "byte offset in the job's output (default 0)",
                },
                "max_output_chars": _MAX_CHARS,
            },
            "job_id",
        ),
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="cancel_job",
        description=(
            "Stop a job: a running one is interrupted (its kernel restarted if it ignores "
            "the interrupt), a queued one never starts. Its output so far stays readable."
        ),
        input_schema=schema(dict(_JOB_ID), "job_id"),
        annotations=_DESTRUCTIVE,
    ),
    types.Tool(
        name="list_jobs",
        description="Recent jobs, newest first: id, session, status, output size, times.",
        input_schema=schema({}),
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="open_session",
        description=(
            "Open a named session: a kernel of its own, running in `cwd` (default: a new "
            "private directory, removed when the session closes) with the environment "
            "variables `env` added; a replacement kernel (after a crash) gets the same. "
            "Other connections reach it by name; it stays until `close_session` or "
            "session_idle_timeout. Without `name`, one is made up and returned."
        ),
        input_schema=schema(
            {
                "name": {**_STRING, "description": "the session's name"},
                "cwd": {**_STRING, "description": "the kernel's working directory"},
                "env": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "environment variables for the kernel",
                },
                "pool": _POOL,
            }
        ),
    ),
    types.Tool(
        name="list_sessions",
        description=(
            "The open sessions: name, pool, kernel, working directory, environment "
            "variable names, state, executions, last use. This connection's own session "
            "is marked."
        ),
        input_schema=schema({}),
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="close_session",
        description=(
            "Close a session: its kernel is shut down and never reused; its private "
            "working directory is removed. The next `execute` naming it starts a fresh "
            "session. Without `session`: this connection's own session."
        ),
        input_schema=schema({"session": _SESSION}),
        annotations=_DESTRUCTIVE,
    ),
    types.Tool(
        name="put_file",
        description=(
            "Write a file into a session's working directory (made if missing, replaced if "
            "there): give `text` (UTF-8), or `base64` for binary content."
        ),
        input_schema=schema(
            {
                "path": _PATH,
                "text": {"type": "string", "description": "the content, as text"},
                "base64": {"type": "string", "description": "the content, base64-encoded"},
                "session": _SESSION,
            },
            "path",
        ),
    ),
    types.Tool(
        name="get_file",
        description=(
            "Read a file from a session's working directory: UTF-8 text as text (its "
            "middle cut past max_output_chars), a PNG, JPEG, GIF or WebP image as an image, "
            "anything else as base64 (within max_output_chars)."
        ),
        input_schema=schema(
            {"path": _PATH, "session": _SESSION, "max_output_chars": _MAX_CHARS}, "path"
        ),
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="list_files",
        description="The names in a directory of a session (directories end with '/').",
        input_schema=schema(
            {
                "path": {
                    **_PATH,
                    "description": "a directory, relative to the session's "
                    "working directory (default '.')",
                },
                "session": _SESSION,
            }
        ),
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="status",
        description=(
            "List the kernels (id, pool, role, state, pid, restarts, session, uptime, last "
            "exit) and the pools."
        ),
        input_schema=schema({}),
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="interrupt",
        description=(
            "Interrupt what a session's kernel (or the kernel `kernel_id`) is running, "
            "like Ctrl-C; its state is kept. Without either: this connection's session."
        ),
        input_schema=schema(dict(_KERNEL_TARGET)),
    ),
    types.Tool(
        name="restart",
        description=(
            "Restart a session's kernel (or the kernel `kernel_id`) now: a new process, so "
            "its variables are gone (the session's cwd and env are kept). Without either: "
            "this connection's session."
        ),
        input_schema=schema(dict(_KERNEL_TARGET)),
        annotations=_DESTRUCTIVE,
    ),
]

__all__ = ["INSTRUCTIONS", "TOOLS", "schema"]
