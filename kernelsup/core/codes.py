"""Every code kernelsup reports, as data: code -> error class, CLI exit code, meaning.

Pure: no I/O. The CLI's exit codes and error lines, the MCP server's error text and the
README's table "Error codes and exit codes" are all derived from the tables here;
tests/test_errors.py fails if the package uses a code that is not a row, or if the README
drifts from these rows.

Theory of operation
-------------------
A code reaches a user in one of two ways:

* an **error** is raised (or answered by the control endpoint): its ``code`` is a row of
  :data:`CODES`, whose ``exit`` is what a command that this error ends exits with;
* an **execute result** comes back: its ``status`` is a row of :data:`STATUSES`, which says
  which error class writes its ``<CODE> <ErrorClass>: <message>`` line and what
  ``kernelsup exec`` exits with. The line's code is the result's ``code`` (a row of
  :data:`CODES` too), or its status when it has none.

So ``exec`` exits by its result's status (a request rejected with ``shutting_down`` exits
3, one cancelled with ``shutting_down`` 130), and every command ended by an error exits by
the error's code. Two commands override that: ``status`` exits 1 when it cannot get a
report at all (its 3 says "some kernel is not running"), and ``run`` / ``mcp`` exit 1 when
the supervisor fails once the config has loaded, whatever the error. A code the table
does not know (from a newer server) goes by its error class's own row (:func:`exit_for`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from kernelsup.core.errors import (
    AuthenticationError,
    ClientError,
    ConfigError,
    ExecTimeout,
    KernelDied,
    KernelError,
    KernelStartError,
    KernelsupError,
    PoolEscalated,
    ProtocolError,
    Rejected,
    RequestError,
    RuntimeDirBusy,
    SupervisorGaveUp,
    Unreachable,
)
from kernelsup.core.results import ExecuteResult


class Exit(enum.IntEnum):
    """The exit codes of the ``kernelsup`` command (ARCHITECTURE.md, "Contracts")."""

    OK = 0  # done; exec: the code ran
    ERROR = 1  # exec: the code raised; run/mcp: the supervisor failed; status: unreachable
    USAGE = 2  # bad arguments, or a config that does not load
    REJECTED = 3  # refused, unreachable, no such kernel or session; status: not all running
    DIED = 4  # exec: the kernel died under the code
    TIMEOUT = 124  # exec: the code ran past its timeout (as timeout(1) exits)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): exec cancels its request


@attrs.frozen
class CodeRow:
    code: str
    error: type[KernelsupError] | None  # None: not kernelsup's error (the code raised)
    exit: Exit
    meaning: str


@attrs.frozen
class StatusRow:
    status: str
    error: type[KernelsupError] | None  # writes the result's error line; None: no line
    exit: Exit  # what ``kernelsup exec`` exits with
    meaning: str


_E = Exit
_CODE_ROWS = (
    # -- the config and the supervisor's own life (these end `kernelsup run`)
    CodeRow("config_invalid", ConfigError, _E.USAGE, "the config is invalid; `path` names the key"),
    CodeRow(
        "runtime_dir_busy",
        RuntimeDirBusy,
        _E.ERROR,
        "another supervisor runs with this config's runtime directory",
    ),
    CodeRow("endpoint_in_use", KernelsupError, _E.ERROR, "another supervisor serves the endpoint"),
    CodeRow("endpoint_unavailable", KernelsupError, _E.ERROR, "the endpoint cannot be bound"),
    CodeRow(
        "fd_limit",
        KernelsupError,
        _E.ERROR,
        "the open files limit (RLIMIT_NOFILE) is too low for the config's kernels",
    ),
    CodeRow(
        "pool_escalated",
        PoolEscalated,
        _E.ERROR,
        "a pool exceeded its restart intensity; the root restarts it",
    ),
    CodeRow(
        "supervisor_gave_up",
        SupervisorGaveUp,
        _E.ERROR,
        "the root exceeded its restart intensity, or every pool is dead: the supervisor stops",
    ),
    # -- kernels
    CodeRow("kernel_error", KernelError, _E.ERROR, "something happened to a kernel process"),
    CodeRow(
        "start_failure",
        KernelStartError,
        _E.ERROR,
        "a kernel could not start (no kernelspec, no program, exited early)",
    ),
    CodeRow(
        "start_timeout", KernelStartError, _E.ERROR, "a kernel was not ready within `start_timeout`"
    ),
    CodeRow(
        "ray_unavailable",
        KernelStartError,
        _E.ERROR,
        "the Ray cluster of `[ray] address` cannot be joined (a kernel placed there cannot start)",
    ),
    CodeRow("kernel_died", KernelDied, _E.DIED, "the kernel died while the code ran"),
    CodeRow("memory_limit", KernelDied, _E.DIED, "the kernel was killed at `memory_limit_mb`"),
    CodeRow("died", KernelDied, _E.DIED, "the kernel died (no more specific code)"),
    # -- how an execute ended
    CodeRow("execution_error", None, _E.ERROR, "the code raised; `error` holds its traceback"),
    CodeRow("timeout", ExecTimeout, _E.TIMEOUT, "the code ran past its timeout"),
    CodeRow(
        "cancelled",
        RequestError,
        _E.INTERRUPTED,
        "the request was cancelled (Ctrl-C, a cancel, its client went away)",
    ),
    CodeRow("request_error", RequestError, _E.REJECTED, "a request could not be carried out"),
    # -- requests refused before they ran
    CodeRow("rejected", Rejected, _E.REJECTED, "the request was refused before it ran"),
    CodeRow("bad_request", Rejected, _E.REJECTED, "an argument is invalid (a timeout <= 0...)"),
    CodeRow("unknown_pool", Rejected, _E.REJECTED, "no pool of that name"),
    CodeRow("unknown_session", Rejected, _E.REJECTED, "no open session of that name"),
    CodeRow("unknown_kernel", Rejected, _E.REJECTED, "no kernel with that id"),
    CodeRow("session_exists", Rejected, _E.REJECTED, "a session of that name is already open"),
    CodeRow("unknown_job", Rejected, _E.REJECTED, "no job with that id (or it was forgotten)"),
    CodeRow(
        "too_many_jobs",
        Rejected,
        _E.REJECTED,
        "the supervisor holds as many unfinished jobs as it keeps; wait for some to end",
    ),
    CodeRow(
        "path_outside_session",
        Rejected,
        _E.REJECTED,
        "a file path leads outside the session's directory (.., absolute, a symlink out)",
    ),
    CodeRow("file_too_large", Rejected, _E.REJECTED, "the file is larger than `max_file_bytes`"),
    CodeRow("file_not_found", Rejected, _E.REJECTED, "no such file (or it is not a regular file)"),
    CodeRow("session_pool_mismatch", Rejected, _E.REJECTED, "the session lives in another pool"),
    CodeRow("unknown_snapshot", Rejected, _E.REJECTED, "the session has no snapshot of that id"),
    CodeRow(
        "session_busy",
        Rejected,
        _E.REJECTED,
        "the session ran a request past `checkpoint_timeout`: no snapshot, restore or fork",
    ),
    CodeRow(
        "checkpoint_unsupported",
        Rejected,
        _E.REJECTED,
        "snapshots are for Python kernels; the session's kernel is another language",
    ),
    CodeRow(
        "checkpoint_skipped",
        Rejected,
        _E.REJECTED,
        "no snapshot: the namespace passed `checkpoint_max_bytes` or `checkpoint_timeout`",
    ),
    CodeRow(
        "checkpoint_failed",
        Rejected,
        _E.REJECTED,
        "a snapshot could not be saved or loaded; the message says why",
    ),
    CodeRow("queue_full", Rejected, _E.REJECTED, "the pool's queue holds `queue_limit` requests"),
    CodeRow("queue_timeout", Rejected, _E.REJECTED, "no kernel became free within `queue_timeout`"),
    CodeRow("pool_dead", Rejected, _E.REJECTED, "every kernel of the pool is dead"),
    CodeRow(
        "pool_unavailable",
        Rejected,
        _E.REJECTED,
        "no kernel of the pool can start (each failed and is retrying); the start error says why",
    ),
    CodeRow(
        "pool_exhausted",
        Rejected,
        _E.REJECTED,
        "the pool holds `max_sessions` open sessions: a new one is refused",
    ),
    CodeRow(
        "no_capacity",
        Rejected,
        _E.REJECTED,
        "no node of the Ray cluster had room for the kernel within `placement_timeout`",
    ),
    CodeRow("kernel_unavailable", Rejected, _E.REJECTED, "the kernel is not running"),
    CodeRow("session_closed", Rejected, _E.REJECTED, "the session was closed before the code ran"),
    CodeRow("shutting_down", Rejected, _E.REJECTED, "the supervisor or the kernel is stopping"),
    CodeRow("server_busy", Rejected, _E.REJECTED, "too many requests in flight; retry later"),
    CodeRow(
        "too_many_connections",
        Rejected,
        _E.REJECTED,
        "the endpoint holds `max_connections` connections, or is short of descriptors",
    ),
    # -- the control endpoint, seen from a client
    CodeRow("client_error", ClientError, _E.REJECTED, "the client side of the endpoint failed"),
    CodeRow("client_closed", ClientError, _E.REJECTED, "the client was closed"),
    CodeRow("key_missing", ClientError, _E.REJECTED, "a tcp endpoint needs `key` or `key_file`"),
    CodeRow("unreachable", Unreachable, _E.REJECTED, "no supervisor answers at the endpoint"),
    CodeRow(
        "auth_failed",
        AuthenticationError,
        _E.REJECTED,
        "a message with the wrong key, no signature, or replayed",
    ),
    CodeRow("protocol_error", ProtocolError, _E.REJECTED, "not a kernelsup message"),
    CodeRow("malformed", ProtocolError, _E.REJECTED, "a message of the wrong shape"),
    CodeRow("oversized", ProtocolError, _E.REJECTED, "a message over `max_message_bytes`"),
    CodeRow("unknown_type", ProtocolError, _E.REJECTED, "a request or reply type not known"),
    CodeRow("protocol_version", ProtocolError, _E.REJECTED, "client and server protocols differ"),
    CodeRow(
        "internal_error", KernelsupError, _E.REJECTED, "the server failed on a request (a bug)"
    ),
    CodeRow("error", KernelsupError, _E.REJECTED, "an error with no more specific code"),
)
_STATUS_ROWS = (
    StatusRow("ok", None, _E.OK, "the code ran to its end"),
    StatusRow("error", None, _E.ERROR, "the code raised: `error` has the traceback"),
    StatusRow("timeout", ExecTimeout, _E.TIMEOUT, "it ran past its timeout and was interrupted"),
    StatusRow("died", KernelDied, _E.DIED, "the kernel died under the code: `cause` says how"),
    StatusRow("rejected", Rejected, _E.REJECTED, "refused before it ran: `code` says why"),
    StatusRow(
        "cancelled", RequestError, _E.INTERRUPTED, "its caller cancelled it, or a shutdown did"
    ),
)


def _by_key(rows: tuple[CodeRow, ...]) -> Mapping[str, CodeRow]:
    table = {row.code: row for row in rows}
    if len(table) != len(rows):
        raise ValueError("a code is listed twice")
    return MappingProxyType(table)


CODES: Mapping[str, CodeRow] = _by_key(_CODE_ROWS)
STATUSES: Mapping[str, StatusRow] = MappingProxyType({row.status: row for row in _STATUS_ROWS})


def row_for(err: KernelsupError) -> CodeRow:
    """``err``'s row: its code's, else (a code this version does not know) its class's."""
    row = CODES.get(err.code)
    if row is not None:
        return row
    for cls in type(err).__mro__:
        own = vars(cls).get("code")
        if isinstance(own, str) and own in CODES:
            return CODES[own]
    return CODES[KernelsupError.code]


def exit_for(err: KernelsupError) -> Exit:
    """What a command that ``err`` ends exits with (see the theory of operation)."""
    return row_for(err).exit


def exec_exit(result: ExecuteResult) -> Exit:
    """What ``kernelsup exec`` exits with for ``result``."""
    row = STATUSES.get(result.status)
    return row.exit if row is not None else Exit.ERROR


def result_error(result: ExecuteResult) -> KernelsupError | None:
    """The error a result that did not run its course stands for, as the CLI and the MCP
    server write it (``describe()``); None for ``ok`` and ``error`` (the code's own
    traceback says it). Its code is the result's, else the status; its message names the
    exit cause unless it already does."""
    row = STATUSES.get(result.status)
    if row is None or row.error is None:
        return None
    message = result.message or result.status
    if result.cause is not None and result.cause.describe() not in message:
        message += f" (cause: {result.cause.describe()})"
    return row.error(message, code=result.code or result.status)


__all__ = [
    "CODES",
    "STATUSES",
    "CodeRow",
    "Exit",
    "StatusRow",
    "exec_exit",
    "exit_for",
    "result_error",
    "row_for",
]
