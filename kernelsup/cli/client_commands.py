"""The client commands of ``kernelsup``: exec, status, watch, interrupt, restart and
close-session.

A thin shell over :class:`kernelsup.control.sync_client.SyncClient`. Exit codes are part of
the contracts (ARCHITECTURE.md, "Contracts"): data in :mod:`kernelsup.core.codes`, used
through :mod:`kernelsup.cli.exits`
(``exec`` exits by its result's status, a command ended by an error by its code). Errors
print as ``<CODE> <ErrorClass>: <message>`` on stderr.

What a kernel prints reaches the user's terminal through
:class:`~kernelsup.core.outputs.TerminalFilter` when stdout or stderr is a terminal
(colour kept, no other control sequence: a kernel cannot clear the screen, set the window
title or make the terminal type into the user's input). A pipe or a file gets the text
exactly as the kernel printed it, as before: whatever reads it (a log, a parser, ``less
-R``) decides what to make of it, and ``--json`` escapes every control character anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from kernelsup.cli.exits import Exit, exec_exit, fail
from kernelsup.control.sync_client import SyncClient
from kernelsup.core.codes import result_error
from kernelsup.core.errors import ConfigError, KernelsupError, Rejected
from kernelsup.core.outputs import TerminalFilter
from kernelsup.core.results import ExecuteResult, Output, format_status

_X = Exit
EPILOG = (
    f"exit codes: exec {_X.OK:d} ok, {_X.ERROR:d} error in the code, {_X.USAGE:d} usage, "
    f"{_X.REJECTED:d} rejected or unreachable, {_X.DIED:d} kernel died, {_X.TIMEOUT:d} "
    f"timeout, {_X.INTERRUPTED:d} interrupted; status {_X.OK:d} all running, "
    f"{_X.REJECTED:d} some not running, {_X.ERROR:d} unreachable; interrupt/restart "
    f"{_X.OK:d} done, {_X.REJECTED:d} unknown kernel or unreachable; close-session "
    f"{_X.OK:d} closed, {_X.REJECTED:d} no such session or unreachable; watch {_X.OK:d} "
    "on Ctrl-C"
)


def config_options(*, json: bool = False) -> argparse.ArgumentParser:
    """The options a client command takes (a parent parser): ``-c/--config``, and with
    ``json`` ``--json``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default="supervisor.toml",
        help="the supervisor's config file (default ./supervisor.toml)",
    )
    if json:
        common.add_argument("--json", action="store_true", help="print JSON")
    return common


def register(sub: Any) -> None:
    """Add the client commands to ``sub`` (argparse subparsers)."""
    common = config_options()

    p = sub.add_parser(
        "exec",
        parents=[common],
        epilog=EPILOG,
        help="run code on a running supervisor and print its output",
    )
    p.add_argument("--pool", help="pool to run in (default: the first pool)")
    p.add_argument("--session", help="run in this named session (state persists)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="run on a kernel that never ran anything, destroyed after (not with --session)",
    )
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


def _connect(args: argparse.Namespace) -> SyncClient:
    return SyncClient(args.config)


def _run(
    args: argparse.Namespace,
    body: Callable[[SyncClient], int],
    *,
    unreachable: Exit | None = None,
) -> int:
    """Connect, run ``body``; an error ends the command with its code's exit. Only
    ``unreachable`` (when given) overrides that, for an error that is neither a config
    error nor, once connected, a rejection: the supervisor could not be asked."""
    try:
        client = _connect(args)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except ConfigError as err:
        return fail(err)
    except KernelsupError as err:  # unreachable, wrong key, protocol version
        return fail(err, unreachable)
    with client:
        try:
            return body(client)
        except Rejected as err:
            return fail(err)
        except KernelsupError as err:
            return fail(err, unreachable)


# --------------------------------------------------------------------------- exec
def cmd_exec(args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code

    def body(client: SyncClient) -> int:
        kwargs: dict[str, Any] = {
            "pool": args.pool,
            "session": args.session,
            "timeout": args.timeout,
            "fresh": args.fresh,
        }
        try:
            if args.json:
                result = client.execute(code, **kwargs)
                print(json.dumps(result.to_dict()), flush=True)
                return exec_exit(result)
            return _stream(client.stream(code, **kwargs))
        except KeyboardInterrupt:
            print("interrupted: the request was cancelled", file=sys.stderr, flush=True)
            return Exit.INTERRUPTED

    return _run(args, body)


class _Writer:
    """One of the command's output streams: a kernel's text goes through a
    :class:`TerminalFilter` when the stream is a terminal, as it is otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.filter = TerminalFilter() if _is_terminal(stream) else None

    def write(self, text: str) -> None:
        if self.filter is not None:
            text = self.filter.feed(text)
        if text:
            self.stream.write(text)
            self.stream.flush()

    def end(self) -> None:
        """Nothing more comes: a colour the kernel left on is reset."""
        if self.filter is not None:
            self.stream.write(self.filter.end())
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class _Console:
    """Where ``exec`` writes: stdout and stderr, each with its own filter."""

    def __init__(self) -> None:
        self.out = _Writer(sys.stdout)
        self.err = _Writer(sys.stderr)

    def end(self) -> None:
        self.out.end()
        self.err.end()


def _stream(items: Any) -> int:
    console = _Console()
    printed_error = False
    try:
        for item in items:
            if isinstance(item, Output):
                printed_error |= _print_output(console, item)
                continue
            assert isinstance(item, ExecuteResult)
            return _finish(console, item, printed_error)
    finally:
        console.end()
    raise AssertionError("the stream ended without a result")


def _print_output(console: _Console, out: Output) -> bool:
    """Print one output where a terminal user expects it; True if it was the error."""
    if out.type == "stream":
        (console.err if out.name == "stderr" else console.out).write(out.text or "")
    elif out.type in ("execute_result", "display_data"):
        data = out.data or {}
        text = data.get("text/plain")
        if not isinstance(text, str):
            text = f"<{out.type}: {', '.join(sorted(data)) or 'empty'}>"
        console.out.write(text + "\n")
    elif out.type == "error":
        console.err.write((out.text or "") + "\n")
        return True
    elif out.type == "notice":
        text = out.text or out.name or ""
        # kernelsup's own notices say "[kernelsup: ...]" already
        console.err.write((text if text.startswith("[kernelsup") else f"[kernelsup] {text}") + "\n")
    return False


def _finish(console: _Console, result: ExecuteResult, printed_error: bool) -> int:
    if result.status == "error" and not printed_error and result.error is not None:
        tb = "\n".join(result.error.traceback) or f"{result.error.ename}: {result.error.evalue}"
        console.err.write(tb + "\n")
    err = result_error(result)
    if err is not None:  # its message may quote the kernel's last words
        console.err.write(err.describe() + "\n")
    return exec_exit(result)


# --------------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        report = client.status()
        if args.json:
            print(json.dumps(report.to_dict()), flush=True)
        else:
            print(format_status(report), flush=True)
        return Exit.OK if report.all_running else Exit.REJECTED

    # 3 already says "some kernel is not running": no report at all is 1
    return _run(args, body, unreachable=Exit.ERROR)


# --------------------------------------------------------------------------- watch
def cmd_watch(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        try:
            with client.subscribe() as events:
                print(f"watching {client.endpoint} (Ctrl-C to stop)", file=sys.stderr, flush=True)
                out = _Writer(sys.stdout)  # an exit's detail quotes the kernel's output
                for event in events:
                    line = json.dumps(event.to_dict()) if args.json else event.describe()
                    out.write(line + "\n")
                out.end()
            print("the supervisor stopped", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            pass
        except Rejected as err:
            if err.code != "shutting_down":  # the supervisor stopping ends a watch cleanly
                raise
            print("the supervisor stopped", file=sys.stderr, flush=True)
        return Exit.OK

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
        return Exit.OK

    return _run(args, body)


# --------------------------------------------------------------------------- sessions
def cmd_close_session(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        if client.close_session(args.session):
            print(f"closed session {args.session}", flush=True)
            return Exit.OK
        return fail(Rejected(f"no open session named {args.session!r}", code="unknown_session"))

    return _run(args, body)


__all__ = ["register"]
