"""The session, job and file commands of ``kernelsup``: sessions (list, open, close),
submit, job (status, wait, output, cancel), jobs, put and get.

A thin shell over :class:`kernelsup.control.sync_client.SyncClient`, like
client_commands.py (whose connection and error handling it shares): every command takes
``-c/--config`` and ``--json`` (one JSON object; ``job output --follow --json`` one per
page), errors print as ``<CODE> <ErrorClass>: <message>`` and exit by their code
(:mod:`kernelsup.core.codes`). ``job wait`` exits as ``exec`` does for the job's result,
and 124 when the job is still running at ``--timeout``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import sys
from typing import Any

from kernelsup.cli.client_commands import _positive_float, _run, config_options
from kernelsup.cli.exits import Exit, exec_exit, fail
from kernelsup.control.sync_client import SyncClient
from kernelsup.core.codes import result_error
from kernelsup.core.errors import Rejected
from kernelsup.core.records import JobInfo, SessionInfo

# job output --follow: how long one wait for the job's end lasts between pages that
# brought nothing (the wait returns as soon as the job ends, so this is only the pace of
# a quiet job's polling).
FOLLOW_WAIT_S = 0.5
PAGE_BYTES = 65536

_X = Exit
EPILOG = (
    f"exit codes: {_X.OK:d} done, {_X.USAGE:d} usage, {_X.REJECTED:d} refused, unknown "
    f"session or job, or unreachable; job wait: as exec for the job's result "
    f"({_X.OK:d} ok, {_X.ERROR:d} error, {_X.DIED:d} died, {_X.TIMEOUT:d} timeout or still "
    f"running at --timeout, {_X.INTERRUPTED:d} cancelled)"
)


def register(sub: Any) -> None:
    """Add sessions, submit, job, jobs, put and get to ``sub`` (argparse subparsers)."""
    common = config_options(json=True)
    # The same options on a verb under a group (sessions list, job status ...): given
    # there they count, not given they leave the group's value (argparse would otherwise
    # put the verb's default over `kernelsup job -c x.toml status ID`'s -c).
    leaf = argparse.ArgumentParser(add_help=False)
    leaf.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, help="the supervisor's config file"
    )
    leaf.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    p = sub.add_parser(
        "sessions", parents=[common], epilog=EPILOG, help="list, open, close sessions"
    )
    p.set_defaults(func=cmd_sessions_list)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    q = verbs.add_parser("list", parents=[leaf], epilog=EPILOG, help="the open sessions")
    q.set_defaults(func=cmd_sessions_list)
    q = verbs.add_parser(
        "open", parents=[leaf], epilog=EPILOG, help="open a session with a kernel of its own"
    )
    q.add_argument("name", nargs="?", help="its name (default: one is made)")
    q.add_argument("--pool", help="pool (default: the first)")
    q.add_argument("--cwd", help="its directory, absolute (default: a private one)")
    q.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a variable (repeat)"
    )
    q.add_argument("--idle-timeout", type=_seconds, help="close it after this long idle; 0 never")
    q.add_argument("--lifetime", type=_positive_float, help="close it this long after it opens")
    q.set_defaults(func=cmd_sessions_open)
    q = verbs.add_parser("close", parents=[leaf], epilog=EPILOG, help="close a session")
    q.add_argument("name")
    q.set_defaults(func=cmd_sessions_close)

    p = sub.add_parser(
        "submit", parents=[common], epilog=EPILOG, help="start code as a job; prints its id"
    )
    p.add_argument("--session", help="run in this session")
    p.add_argument("--pool", help="pool (default: the first, or the session's)")
    p.add_argument("--timeout", type=_positive_float, help="seconds the code may run")
    p.add_argument("code", help="the code; - reads it from stdin")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("job", parents=[common], epilog=EPILOG, help="one job: status, wait, ...")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    q = verbs.add_parser("status", parents=[leaf], epilog=EPILOG, help="the job's status")
    q.add_argument("job_id")
    q.set_defaults(func=cmd_job_status)
    q = verbs.add_parser("wait", parents=[leaf], epilog=EPILOG, help="wait for its result")
    q.add_argument("job_id")
    q.add_argument("--timeout", type=_seconds, help="give up waiting after this long")
    q.set_defaults(func=cmd_job_wait)
    q = verbs.add_parser("output", parents=[leaf], epilog=EPILOG, help="its whole output")
    q.add_argument("job_id")
    q.add_argument("--offset", type=_count, default=0, help="from this byte of its output")
    q.add_argument("--follow", "-f", action="store_true", help="follow it until it ends")
    q.set_defaults(func=cmd_job_output)
    q = verbs.add_parser("cancel", parents=[leaf], epilog=EPILOG, help="cancel it")
    q.add_argument("job_id")
    q.set_defaults(func=cmd_job_cancel)

    p = sub.add_parser("jobs", parents=[common], epilog=EPILOG, help="recent jobs, newest first")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser(
        "put", parents=[common], epilog=EPILOG, help="copy a file into a session's directory"
    )
    p.add_argument("session")
    p.add_argument("local", help="the file to send; - reads stdin")
    p.add_argument("remote", nargs="?", help="its path in the session (default: its name)")
    p.set_defaults(func=cmd_put)

    p = sub.add_parser(
        "get", parents=[common], epilog=EPILOG, help="copy a file out of a session's directory"
    )
    p.add_argument("session")
    p.add_argument("remote", help="its path in the session")
    p.add_argument("local", nargs="?", default="-", help="where to write it (default: stdout)")
    p.set_defaults(func=cmd_get)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0 (got {text})")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value), flush=True)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# --------------------------------------------------------------------------- sessions
def _session_rows(infos: list[SessionInfo]) -> str:
    rows = [["NAME", "POOL", "KERNEL", "STATE", "RUNS", "LAST USED", "CWD", "ENV"]]
    for s in infos:
        rows.append(
            [
                s.name,
                s.pool,
                s.kernel_id or "-",
                s.state,
                str(s.executions),
                _when(s.last_used),
                s.cwd,
                ",".join(s.env) or "-",
            ]
        )
    return _table(rows)


def cmd_sessions_list(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        infos = client.sessions()
        if args.json:
            _print_json([s.to_dict() for s in infos])
        elif infos:
            print(_session_rows(infos), flush=True)
        else:
            print("no open sessions", flush=True)
        return Exit.OK

    return _run(args, body)


def cmd_sessions_open(args: argparse.Namespace) -> int:
    env: dict[str, str] = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq or not name:
            return fail(Rejected(f"--env takes NAME=VALUE (got {item!r})", code="bad_request"))
        env[name] = value

    def body(client: SyncClient) -> int:
        info = client.open_session(
            args.name,
            pool=args.pool,
            cwd=os.path.abspath(args.cwd) if args.cwd else None,
            env=env or None,
            idle_timeout=args.idle_timeout,
            lifetime=args.lifetime,
        )
        if args.json:
            _print_json(info.to_dict())
        else:
            print(f"opened session {info.name} (kernel {info.kernel_id}, cwd {info.cwd})")
        return Exit.OK

    return _run(args, body)


def cmd_sessions_close(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        closed = client.close_session(args.name)
        if args.json:
            _print_json({"session": args.name, "closed": closed})
        if not closed:
            return fail(Rejected(f"no open session named {args.name!r}", code="unknown_session"))
        if not args.json:
            print(f"closed session {args.name}", flush=True)
        return Exit.OK

    return _run(args, body)


# --------------------------------------------------------------------------- jobs
def _job_line(job: JobInfo) -> str:
    where = f" in session {job.session}" if job.session else ""
    return f"{job.id} {job.status}{where} ({job.output_bytes} bytes of output)"


def cmd_submit(args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code

    def body(client: SyncClient) -> int:
        job = client.submit(code, session=args.session, pool=args.pool, timeout=args.timeout)
        if args.json:
            _print_json(job.to_dict())
        else:
            print(job.id, flush=True)
        return Exit.OK

    return _run(args, body)


def cmd_job_status(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        job = client.job(args.job_id)
        if args.json:
            _print_json(job.to_dict())
        else:
            print(_job_line(job), flush=True)
            err = result_error(job.result) if job.result is not None else None
            if err is not None:
                print(err.describe(), flush=True)
        return Exit.OK

    return _run(args, body)


def cmd_job_wait(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        try:
            result = client.wait(args.job_id, timeout=args.timeout)
        except KeyboardInterrupt:
            print("stopped waiting; the job runs on", file=sys.stderr, flush=True)
            return Exit.INTERRUPTED
        if result is None:
            if args.json:
                _print_json({"job": args.job_id, "result": None})
            print(f"job {args.job_id} is still running", file=sys.stderr, flush=True)
            return Exit.TIMEOUT
        if args.json:
            _print_json(result.to_dict())
        else:
            err = result_error(result)
            print(f"job {args.job_id}: {result.status}", flush=True)
            if err is not None:
                print(err.describe(), file=sys.stderr, flush=True)
        return exec_exit(result)

    return _run(args, body)


def cmd_job_output(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        offset = args.offset
        try:
            while True:  # every page there is; with --follow, until the job ends
                page = client.job_output(args.job_id, offset, PAGE_BYTES)
                if args.json:
                    _print_json(page.to_dict())
                else:
                    sys.stdout.write(page.text)
                    sys.stdout.flush()
                if page.done:
                    return Exit.OK
                if page.next_offset == offset:  # nothing new yet
                    if not args.follow:
                        return Exit.OK
                    client.wait(args.job_id, timeout=FOLLOW_WAIT_S)  # returns at its end
                offset = page.next_offset
        except KeyboardInterrupt:
            return Exit.INTERRUPTED

    return _run(args, body)


def cmd_job_cancel(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        cancelled = client.cancel(args.job_id)
        if args.json:
            _print_json({"job": args.job_id, "cancelled": cancelled})
        elif cancelled:
            print(f"cancelled {args.job_id}", flush=True)
        else:
            print(f"job {args.job_id} had already ended", flush=True)
        return Exit.OK

    return _run(args, body)


def cmd_jobs(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        jobs = client.jobs()
        if args.json:
            _print_json([j.to_dict() for j in jobs])
            return Exit.OK
        if not jobs:
            print("no jobs", flush=True)
            return Exit.OK
        rows = [["JOB", "STATUS", "SESSION", "OUTPUT", "SUBMITTED", "ENDED"]]
        for j in jobs:
            rows.append(
                [
                    j.id,
                    j.status,
                    j.session or "-",
                    f"{j.output_bytes} B",
                    _when(j.submitted),
                    _when(j.ended),
                ]
            )
        print(_table(rows), flush=True)
        return Exit.OK

    return _run(args, body)


# --------------------------------------------------------------------------- files
def cmd_put(args: argparse.Namespace) -> int:
    if args.local == "-":
        if not args.remote:
            return fail(Rejected("put - needs the remote path", code="bad_request"))
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(args.local, "rb") as f:
                data = f.read()
        except OSError as exc:
            return fail(Rejected(f"cannot read {args.local!r}: {exc.strerror}", code="bad_request"))
    remote = args.remote or os.path.basename(args.local)

    def body(client: SyncClient) -> int:
        client.put_file(args.session, remote, data)
        if args.json:
            _print_json({"session": args.session, "path": remote, "size": len(data)})
        else:
            print(f"put {remote} ({len(data)} bytes) in session {args.session}", flush=True)
        return Exit.OK

    return _run(args, body)


def cmd_get(args: argparse.Namespace) -> int:
    def body(client: SyncClient) -> int:
        data = client.get_file(args.session, args.remote)
        if args.local == "-":
            if args.json:
                _print_json({"path": args.remote, "base64": base64.b64encode(data).decode()})
            else:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            return Exit.OK
        try:
            with open(args.local, "wb") as f:
                f.write(data)
        except OSError as exc:
            return fail(
                Rejected(f"cannot write {args.local!r}: {exc.strerror}", code="bad_request")
            )
        if args.json:
            _print_json({"path": args.remote, "local": args.local, "size": len(data)})
        else:
            print(f"got {args.remote} ({len(data)} bytes) into {args.local}", flush=True)
        return Exit.OK

    return _run(args, body)


__all__ = ["register"]
