"""The client commands of ``kernelsup``: exec, status, watch, interrupt, restart and
close-session.

A thin shell over :class:`kernelsup.control.sync_client.SyncClient`. Exit codes are part of the
Contract (DESIGN.md section 7); errors print as ``<CODE> <ErrorClass>: <message>`` on
stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from kernelsup.control.sync_client import SyncClient
from kernelsup.core.errors import (
    ConfigError,
    ExecTimeout,
    KernelDied,
    KernelsupError,
    Rejected,
    RequestError,
)
from kernelsup.core.results import ExecuteResult, Output, format_status

EXIT_OK = 0
EXIT_ERROR = 1  # exec: the code raised; status: the supervisor is unreachable
EXIT_USAGE = 2
EXIT_REJECTED = 3  # rejected, unreachable, unknown kernel, some kernel not running
EXIT_DIED = 4
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130  # Ctrl-C during exec (the request is cancelled on the server)

EXEC_EXIT = {
    "ok": EXIT_OK,
    "error": EXIT_ERROR,
    "rejected": EXIT_REJECTED,
    "died": EXIT_DIED,
    "timeout": EXIT_TIMEOUT,
    "cancelled": EXIT_INTERRUPTED,
}
_STATUS_ERRORS: dict[str, type[KernelsupError]] = {
    "timeout": ExecTimeout,
    "died": KernelDied,
    "rejected": Rejected,
    "cancelled": RequestError,
}

EPILOG = (
    "exit codes: exec 0 ok, 1 error in the code, 2 usage, 3 rejected or unreachable, "
    "4 kernel died, 124 timeout, 130 interrupted; status 0 all running, 3 some not "
    "running, 1 unreachable; interrupt/restart 0 done, 3 unknown kernel or "
    "unreachable; close-session 0 closed, 3 no such session or unreachable; "
    "watch 0 on Ctrl-C"
)


def register(sub: Any) -> None:
    """Add the client commands to ``sub`` (argparse subparsers)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default="supervisor.toml",
        help="the supervisor's config file (default ./supervisor.toml)",
    )

    p = sub.add_parser(
        "exec",
        parents=[common],
        epilog=EPILOG,
        help="run code on a running supervisor and print its output",
    )
    p.add_argument("--pool", help="pool to run in (default: the first pool)")
    p.add_argument("--session", help="run in this named session (state persists)")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        help="seconds the code may run (default: the pool's exec_timeout)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object instead of streaming output",
    )
    p.add_argument("code", help="the code to run; - reads it from stdin")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser(
        "status",
        parents=[common],
        epilog=EPILOG,
        help="show every kernel's state, pid, restarts and last exit",
    )
    p.add_argument("--json", action="store_true", help="print the status JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "watch", parents=[common], epilog=EPILOG, help="follow the supervisor's events until Ctrl-C"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_watch)

    for name, verb in (
        ("interrupt", "interrupt what a kernel is running"),
        ("restart", "restart a kernel now"),
    ):
        p = sub.add_parser(name, parents=[common], epilog=EPILOG, help=verb)
        p.add_argument("kernel", help="kernel id, as shown by `kernelsup status`")
        p.set_defaults(func=cmd_kernel_action, action=name)

    p = sub.add_parser(
        "close-session",
        parents=[common],
        epilog=EPILOG,
        help="close a session: its kernel shuts down, its state is gone",
    )
    p.add_argument("session", help="session name, as given to `kernelsup exec --session`")
    p.set_defaults(func=cmd_close_session)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0 (got {text})")
    return value


def _fail(err: KernelsupError, code: int) -> int:
    print(err.describe(), file=sys.stderr, flush=True)
    return code


def _connect(args: argparse.Namespace) -> SyncClient:
    return SyncClient(args.config)


def _run(
    args: argparse.Namespace, body: Callable[[SyncClient], int], *, unreachable: int = EXIT_REJECTED
) -> int:
    """Connect, run ``body``; map config and connection errors to exit codes."""
    try:
        client = _connect(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ConfigError as err:
        return _fail(err, EXIT_USAGE)
    except KernelsupError as err:  # unreachable, wrong key, protocol version
        return _fail(err, unreachable)
    with client:
        try:
            return body(client)
        except Rejected as err:
            return _fail(err, EXIT_REJECTED)
        except KernelsupError as err:
            return _fail(err, unreachable)


# --------------------------------------------------------------------------- exec
def cmd_exec(args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code

    def body(client: SyncClient) -> int:
        kwargs: dict[str, Any] = {
            "pool": args.pool,
            "session": args.session,
            "timeout": args.timeout,
        }
        try:
            if args.json:
                result = client.execute(code, **kwargs)
                print(json.dumps(result.to_dict()), flush=True)
                return EXEC_EXIT.get(result.status, EXIT_ERROR)
            return _stream(client.stream(code, **kwargs))
        except KeyboardInterrupt:
            print("interrupted: the request was cancelled", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED

    return _run(args, body)


def _stream(items: Any) -> int:
    printed_error = False
    for item in items:
        if isinstance(item, Output):
            printed_error |= _print_output(item)
            continue
        assert isinstance(item, ExecuteResult)
        return _finish(item, printed_error)
    raise AssertionError("the stream ended without a result")


def _print_output(out: Output) -> bool:
    """Print one output where a terminal user expects it; True if it was the error."""
    if out.type == "stream":
        _write(sys.stderr if out.name == "stderr" else sys.stdout, out.text or "")
    elif out.type in ("execute_result", "display_data"):
        data = out.data or {}
        text = data.get("text/plain")
        if not isinstance(text, str):
            text = f"<{out.type}: {', '.join(sorted(data)) or 'empty'}>"
        _write(sys.stdout, text + "\n")
    elif out.type == "error":
        _write(sys.stderr, (out.text or "") + "\n")
        return True
    elif out.type == "notice":
        _write(sys.stderr, f"[kernelsup] {out.text or out.name}\n")
    return False


def _finish(result: ExecuteResult, printed_error: bool) -> int:
    if result.status == "error" and not printed_error and result.error is not None:
        tb = "\n".join(result.error.traceback) or f"{result.error.ename}: {result.error.evalue}"
        _write(sys.stderr, tb + "\n")
    cls = _STATUS_ERRORS.get(result.status)
    if cls is not None:
        message = result.message or result.status
        if result.cause is not None and result.cause.describe() not in message:
            message += f" (cause: {result.cause.describe()})"
        print(
            cls(message, code=result.code or result.status).describe(), file=sys.stderr, flush=True
        )
    return EXEC_EXIT.get(result.status, EXIT_ERROR)


def _write(stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()


# --------------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        report = client.status()
        if args.json:
            print(json.dumps(report.to_dict()), flush=True)
        else:
            print(format_status(report), flush=True)
        return EXIT_OK if report.all_running else EXIT_REJECTED

    return _run(args, body, unreachable=EXIT_ERROR)


# --------------------------------------------------------------------------- watch
def cmd_watch(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        try:
            with client.subscribe() as events:
                print(f"watching {client.endpoint} (Ctrl-C to stop)", file=sys.stderr, flush=True)
                for event in events:
                    line = json.dumps(event.to_dict()) if args.json else event.describe()
                    print(line, flush=True)
            print("the supervisor stopped", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            pass
        except Rejected as err:
            if err.code != "shutting_down":
                raise
            print("the supervisor stopped", file=sys.stderr, flush=True)
        return EXIT_OK

    return _run(args, body)


# --------------------------------------------------------------------------- interrupt
def cmd_kernel_action(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        t0 = time.monotonic()
        if args.action == "interrupt":
            client.interrupt(args.kernel)
            print(f"interrupted {args.kernel}", flush=True)
        else:
            client.restart(args.kernel)
            print(f"restarting {args.kernel} ({time.monotonic() - t0:.2f}s)", flush=True)
        return EXIT_OK

    return _run(args, body)


# --------------------------------------------------------------------------- sessions
def cmd_close_session(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        if client.close_session(args.session):
            print(f"closed session {args.session}", flush=True)
            return EXIT_OK
        print(
            Rejected(f"no open session named {args.session!r}", code="unknown_session").describe(),
            file=sys.stderr,
            flush=True,
        )
        return EXIT_REJECTED

    return _run(args, body)


__all__ = ["register"]
