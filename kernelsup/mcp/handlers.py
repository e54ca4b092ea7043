"""The tools' handlers, and what one MCP connection holds.

Theory of operation
-------------------
**The state model.** One ``kernelsup mcp`` process serves one MCP connection (stdio), and
:class:`Connection` is its state. An ``execute`` (or a file or kernel call) without
``session`` runs in the connection's *own* session, ``mcp-<8 hex digits>``, opened at its
first use and closed when the connection ends. Why not the pool's shared kernels: an agent
writes code that builds on its previous calls (``df`` loaded in one call, plotted in the
next, ``os.chdir`` once), as in a notebook; on shared kernels those names may be missing
at the next call (another kernel took it) or overwritten by another client, and each
failure costs the model a round of confusion. A kernel of its own per connection makes the
model's expectation true, keeps clients' data apart, and costs one kernel per connected
agent, which ``max_sessions`` bounds (beyond it the call says ``pool_exhausted``) and
``session_idle_timeout`` reclaims if a connection dies without closing. A named ``session``
is the way to share state between connections or keep it after one ends.

**Long runs.** ``execute`` submits the code as a job and waits up to ``block_for`` seconds
for its result. Finished in time, the result comes inline; still running, the model gets
the job's id and its output so far, and the code goes on: ``job_output`` pages through its
whole output (spooled by the supervisor, by byte offset), ``job_status`` tells how it
ended, ``cancel_job`` stops it. A job whose id was handed out is the model's: nothing here
cancels it. An ``execute`` call cancelled while still waiting (the client gave up on it)
cancels its job, since nobody has its id.

**The budget.** Every text a tool gives the model is plain (no escape sequences, see
``text.py``) and at most ``max_output_chars`` characters (``[mcp]`` in the config, or the
call's own ``max_output_chars``): past it the middle is cut, and the marker says how to
read the rest with ``job_output``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
import mcp_types as types
import trio
from mcp.server.context import ServerRequestContext

from kernelsup.core.config import HOUR_S, MCP_OUTPUT_CHARS_MAX, MCP_OUTPUT_CHARS_MIN, McpConfig
from kernelsup.core.errors import KernelsupError, Rejected
from kernelsup.core.records import JobInfo, SessionInfo
from kernelsup.core.results import ExecuteResult, format_status
from kernelsup.mcp.backend import Backend
from kernelsup.mcp.render import IMAGE_TYPES, MAX_IMAGE_BYTES, render_result
from kernelsup.mcp.text import clip, plain

# Progress notifications while execute waits: never more often than this (the job's
# output is polled at this rate) ...
PROGRESS_MIN_INTERVAL_S = 0.5
# ... and at least this often while the code is silent (clients that reset their request
# timeout on progress keep waiting; a person sees it is still running).
PROGRESS_TICK_S = 5.0
# Bytes of a job's output read per progress poll (its last line is the message).
PROGRESS_PAGE_BYTES = 16 * 1024
# How list_sessions marks the connection's own session.
OWN_MARK = " (this connection's own)"
# Characters kept back from the budget for the lines a tool adds around a page of output.
FRAME_CHARS = 400
# How long closing the connection's own sessions may take when it ends.
CLOSE_TIMEOUT_S = 15.0

# Machine-readable results ride in ``_meta``, not ``structuredContent``: some clients (Claude
# Code among them) hand the model only ``structuredContent`` when it is present, which would
# hide the output and the images. ``_meta`` never reaches the model; programs read it.
META_RESULT = "kernelsup/result"  # execute, job_status: the ExecuteResult without the output
META_STATUS = "kernelsup/status"  # status: the status JSON (ARCHITECTURE.md, "Contracts")
META_JOB = "kernelsup/job"  # execute, job_status, job_output, cancel_job: the JobInfo
META_JOBS = "kernelsup/jobs"  # list_jobs
META_SESSION = "kernelsup/session"  # open_session: the SessionInfo
META_SESSIONS = "kernelsup/sessions"  # list_sessions
META_OUTPUT = "kernelsup/output"  # job_output: offset, next_offset, done

Context = ServerRequestContext[Any, Any]
T = TypeVar("T")


class Connection:
    """One MCP connection's state: the backend, the budget, and its own sessions (one
    per pool it ran code in without naming a session), closed by :meth:`aclose`."""

    def __init__(self, backend: Backend, config: McpConfig | None = None) -> None:
        self.backend = backend
        self.config = config or McpConfig()
        self._token = secrets.token_hex(4)
        self._own: dict[str | None, str] = {}  # the pool argument -> its session's name
        self._lock = trio.Lock()

    def own_name(self, pool: str | None) -> str:
        return f"mcp-{self._token}" if pool is None else f"mcp-{self._token}-{pool}"

    def own(self, pool: str | None = None) -> str | None:
        """This connection's own session in ``pool``, if it has opened one."""
        return self._own.get(pool)

    def is_own(self, name: str) -> bool:
        return name in self._own.values()

    async def session(self, session: str | None, pool: str | None = None) -> str:
        """The session a call runs in: ``session``, else this connection's own in ``pool``
        (opened now if it is not yet)."""
        if session is not None:
            return session
        async with self._lock:
            name = self._own.get(pool)
            if name is None:
                name = self.own_name(pool)
                await self.backend.open_session(name, pool=pool)
                self._own[pool] = name
            return name

    async def in_session(
        self, session: str | None, pool: str | None, call: Callable[[str], Awaitable[T]]
    ) -> T:
        """``call(name)`` in the call's session; the connection's own is opened again once
        if it went away meanwhile (idle timeout, closed by name)."""
        name = await self.session(session, pool)
        try:
            return await call(name)
        except KernelsupError as err:
            if session is not None or err.code != "unknown_session":
                raise
        self.forget(name)
        return await call(await self.session(None, pool))

    def forget(self, name: str) -> None:
        """``name`` is closed: the next call without a session opens a new one."""
        self._own = {pool: own for pool, own in self._own.items() if own != name}

    async def aclose(self) -> None:
        """Cancel the jobs still running in this connection's own sessions and close
        those sessions (their kernels shut down). Bounded by
        ``CLOSE_TIMEOUT_S`` and shielded; an unreachable supervisor is not an error (its
        idle timeout reclaims them)."""
        names, self._own = list(self._own.values()), {}
        if not names:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                for job in await self.backend.jobs():
                    if job.session in names and not job.done:
                        await self.backend.cancel(job.id)  # said as cancelled, not died
                for name in names:
                    await self.backend.close_session(name)
            except KernelsupError:
                pass

    def max_chars(self, args: Mapping[str, Any]) -> int:
        value = args.get("max_output_chars")
        if value is None:
            return self.config.max_output_chars
        return _int_in(value, "max_output_chars", MCP_OUTPUT_CHARS_MIN, MCP_OUTPUT_CHARS_MAX)


# --------------------------------------------------------------------------- execute
SendProgress = Callable[[float, float | None, str | None], Awaitable[None]]


class _Progress:
    """Rate-limited progress notifications while execute waits: the seconds elapsed, and
    the last line the job printed (its output polled every PROGRESS_MIN_INTERVAL_S)."""

    def __init__(self, send: SendProgress, backend: Backend, job_id: str, total: float | None):
        self._send = send
        self._backend = backend
        self._job_id = job_id
        self._total = total
        self._started = trio.current_time()

    async def run(self) -> None:
        offset, last, sent_at = 0, 0.0, -math.inf
        while True:
            await trio.sleep(PROGRESS_MIN_INTERVAL_S)
            try:
                page = await self._backend.job_output(self._job_id, offset, PROGRESS_PAGE_BYTES)
            except KernelsupError:
                return  # the wait says what went wrong
            offset = page.next_offset
            lines = [ln.strip() for ln in plain(page.text).splitlines() if ln.strip()]
            now = trio.current_time()
            if not lines and now - sent_at < PROGRESS_TICK_S:
                continue
            elapsed = round(now - self._started, 3)
            if elapsed > last:  # progress must increase with every notification
                last, sent_at = elapsed, now
                message = lines[-1][:200] if lines else None
                try:
                    await self._send(elapsed, self._total, message)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the client is gone; the call ends on its own


async def execute(conn: Connection, ctx: Context, args: Mapping[str, Any]) -> types.CallToolResult:
    code = _arg(args, "code", required=True, allow_empty=True)
    timeout = _positive(args, "timeout")
    pool, session = _arg(args, "pool"), _arg(args, "session")
    block_for = args.get("block_for")
    block_for = (
        conn.config.block_for if block_for is None else _float_in(block_for, "block_for", 0, HOUR_S)
    )
    max_chars = conn.max_chars(args)
    backend = conn.backend
    fresh = args.get("fresh", False)
    if not isinstance(fresh, bool):
        raise Rejected(f"fresh must be true or false (got {fresh!r})", code="bad_request")
    if fresh:
        if session is not None:
            raise Rejected(
                "fresh and session exclude each other: a fresh execute runs on a kernel of "
                "its own that is destroyed after",
                code="bad_request",
            )
        result = await backend.execute(code, pool=pool, timeout=timeout, fresh=True)
        return _result(result, None, max_chars)
    job = await conn.in_session(
        session, pool, lambda name: backend.submit(code, session=name, pool=pool, timeout=timeout)
    )
    progress = _Progress(ctx.session.report_progress, backend, job.id, timeout)
    outcome: ExecuteResult | KernelsupError | None
    async with trio.open_nursery() as nursery:
        if ctx.meta is not None and ctx.meta.get("progress_token") is not None:
            nursery.start_soon(progress.run)  # the client asked for progress: poll for it
        try:
            outcome = await backend.wait(job.id, timeout=block_for)
        except KernelsupError as err:  # raised outside the nursery: not in a group
            outcome = err
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                with contextlib.suppress(KernelsupError):
                    await backend.cancel(job.id)  # nobody has its id: it must not run on
            raise
        nursery.cancel_scope.cancel()
    if isinstance(outcome, KernelsupError):
        raise outcome
    if outcome is None:
        return await _still_running(conn, job, block_for, max_chars)
    return _result(outcome, job.id, max_chars)


def _result(result: ExecuteResult, job_id: str | None, max_chars: int) -> types.CallToolResult:
    """A finished execute's result; ``job_id`` None for a fresh one (no job to read)."""
    rendered = render_result(
        result,
        max_chars=max_chars,
        hint=f'the whole output: job_output(job_id="{job_id}", offset=0)' if job_id else "",
    )
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=rendered.text)]
    content.extend(
        types.ImageContent(type="image", data=image.data, mime_type=image.mime_type)
        for image in rendered.images
    )
    summary = {**rendered.summary, "job_id": job_id} if job_id else dict(rendered.summary)
    return types.CallToolResult(
        content=content, _meta={META_RESULT: summary}, is_error=rendered.is_error
    )


async def _still_running(
    conn: Connection, job: JobInfo, waited: float, max_chars: int
) -> types.CallToolResult:
    page = await conn.backend.job_output(job.id, 0, max_chars - FRAME_CHARS)
    info = await conn.backend.job(job.id)
    if info.done:  # it ended between the wait and now
        assert info.result is not None
        return _result(info.result, job.id, max_chars)
    where = f" in session {info.session}" if info.session else ""
    head = (
        f"[kernelsup: still {info.status} after {waited:g} s, as job {job.id}{where}; it goes "
        f'on. Follow it with job_output(job_id="{job.id}", offset={page.next_offset}), see '
        f"how it ended with job_status, stop it with cancel_job.]\n"
    )
    text = plain(page.text)
    if text:
        shown = f"{page.next_offset:,} of {info.output_bytes:,} bytes"
        head += f"[kernelsup: its output so far ({shown}):]\n" + text
        if not text.endswith("\n"):
            head += "\n"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=head)], _meta={META_JOB: info.to_dict()}
    )


# --------------------------------------------------------------------------- jobs
async def job_status(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    job_id = _arg(args, "job_id", required=True)
    max_chars = conn.max_chars(args)
    info = await conn.backend.job(job_id)
    line = _job_line(info)
    if info.result is None:
        more = f'; its output so far: job_output(job_id="{info.id}", offset=0)'
        return text_result(f"[kernelsup: {line}{more}]\n", meta={META_JOB: info.to_dict()})
    result = _result(info.result, info.id, max_chars - FRAME_CHARS)
    result.content.insert(0, types.TextContent(type="text", text=f"[kernelsup: {line}]\n"))
    assert result.meta is not None
    result.meta[META_JOB] = {**info.to_dict(), "result": None}
    result.is_error = False  # the status was read; how the job ended is in the text
    return result


async def job_output(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    job_id = _arg(args, "job_id", required=True)
    offset = args.get("offset", 0)
    offset = _int_in(offset, "offset", 0, 2**62)
    max_chars = conn.max_chars(args)
    page = await conn.backend.job_output(job_id, offset, max_chars - FRAME_CHARS)
    info = await conn.backend.job(job_id)
    raw, next_offset = _whole_lines(page.text, offset, page.next_offset, page.done)
    text = plain(raw)
    if text and not text.endswith("\n"):
        text += "\n"  # the page ended mid-line; the next one goes on with that line
    span = f"bytes {offset:,}-{next_offset:,} of {info.output_bytes:,}"
    if info.dropped_bytes:
        span += f" (a further {info.dropped_bytes:,} bytes did not fit in the spool)"
    if page.done:
        tail = f"end of job {job_id}'s output ({span}); the job ended: {info.status}"
    elif next_offset == offset and not info.done:
        tail = (
            f"no new output yet: job {job_id} is {info.status}; call again with "
            f"offset={next_offset}"
        )
    else:
        tail = (
            f"job {job_id}'s output, {span}; job {info.status}; more: "
            f'job_output(job_id="{job_id}", offset={next_offset})'
        )
    meta = {
        META_OUTPUT: {"offset": offset, "next_offset": next_offset, "done": page.done},
        META_JOB: {**info.to_dict(), "result": None},
    }
    return text_result(f"{text}[kernelsup: {tail}]\n", meta=meta)


def _whole_lines(text: str, offset: int, next_offset: int, done: bool) -> tuple[str, int]:
    """A page cut back to its last newline (and the offset after it), so that pages are
    whole lines; the page as it is when it has no newline, is the last, or its bytes are
    not exactly its text (an offset the caller chose inside a character)."""
    end = text.rfind("\n") + 1
    if done or end in (0, len(text)) or len(text.encode()) != next_offset - offset:
        return text, next_offset
    kept = text[:end]
    return kept, offset + len(kept.encode())


async def cancel_job(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    job_id = _arg(args, "job_id", required=True)
    if await conn.backend.cancel(job_id):
        return text_result(
            f"job {job_id} cancelled; its output so far stays readable with "
            f'job_output(job_id="{job_id}")'
        )
    info = await conn.backend.job(job_id)
    return text_result(f"job {job_id} had already ended: {info.status}")


async def list_jobs(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    jobs = await conn.backend.jobs()
    lines = [_job_line(info) for info in jobs] or ["no jobs"]
    text = clip("\n".join(lines) + "\n", conn.config.max_output_chars).text
    return text_result(text, meta={META_JOBS: [{**j.to_dict(), "result": None} for j in jobs]})


def _job_line(info: JobInfo) -> str:
    bits = [f"job {info.id}: {info.status}"]
    if info.session:
        bits.append(f"session {info.session}")
    now = time.time()
    if info.started is not None:
        ran = (info.ended if info.ended is not None else now) - info.started
        bits.append(f"{'ran' if info.ended is not None else 'running for'} {ran:.1f} s")
    else:
        bits.append(f"submitted {now - info.submitted:.0f} s ago")
    bits.append(f"{info.output_bytes:,} bytes of output")
    return ", ".join(bits)


# --------------------------------------------------------------------------- sessions
async def open_session(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    name, cwd, pool = _arg(args, "name"), _arg(args, "cwd"), _arg(args, "pool")
    env = _env(args.get("env"))
    info = await conn.backend.open_session(name, pool=pool, cwd=cwd, env=env)
    return text_result(
        f"session {info.name!r} open: {_session_text(info)}. Run code in it with "
        f'execute(session="{info.name}", ...); files go to its working directory.',
        meta={META_SESSION: info.to_dict()},
    )


async def list_sessions(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    sessions = await conn.backend.sessions()
    lines = [
        f"{info.name}{OWN_MARK if conn.is_own(info.name) else ''}: " + _session_text(info)
        for info in sessions
    ] or ["no sessions open"]
    text = clip("\n".join(lines) + "\n", conn.config.max_output_chars).text
    return text_result(text, meta={META_SESSIONS: [info.to_dict() for info in sessions]})


def _session_text(info: SessionInfo) -> str:
    env = ", ".join(info.env) if info.env else "none"
    kernel = info.kernel_id or "none yet"
    idle = max(0.0, time.time() - info.last_used)
    return (
        f"pool {info.pool}, cwd {info.cwd}, env {env}, kernel {kernel}, {info.state}, "
        f"{info.executions} executions, last used {idle:.0f} s ago"
    )


async def close_session(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    name = _arg(args, "session")
    if name is None:
        name = conn.own()
        if name is None:
            return text_result("this connection has no session of its own open: nothing to close")
    closed = await conn.backend.close_session(name)
    conn.forget(name)
    if closed:
        return text_result(
            f"session {name!r} closed: its kernel was shut down; the next execute with "
            "this name starts a fresh session"
        )
    return text_result(f"no session named {name!r}: nothing to close")


# --------------------------------------------------------------------------- files
async def put_file(conn: Connection, ctx: Context, args: Mapping[str, Any]) -> types.CallToolResult:
    path, session = _arg(args, "path", required=True), _arg(args, "session")
    text, b64 = args.get("text"), args.get("base64")
    if (text is None) == (b64 is None):
        raise Rejected("give the content as exactly one of text or base64", code="bad_request")
    if text is not None:
        if not isinstance(text, str):
            raise Rejected(f"text must be a string (got {type(text).__name__})", code="bad_request")
        data = text.encode("utf-8", "surrogatepass")
    else:
        data = _b64decode(b64)

    async def write(name: str) -> str:
        await conn.backend.put_file(name, path, data)
        return name

    name = await conn.in_session(session, None, write)
    return text_result(f"wrote {len(data):,} bytes to {path} in session {name}")


async def get_file(conn: Connection, ctx: Context, args: Mapping[str, Any]) -> types.CallToolResult:
    path, session = _arg(args, "path", required=True), _arg(args, "session")
    max_chars = conn.max_chars(args)

    async def read(name: str) -> tuple[str, bytes]:
        return name, await conn.backend.get_file(name, path)

    name, data = await conn.in_session(session, None, read)
    meta = {"kernelsup/file": {"session": name, "path": path, "bytes": len(data)}}
    mime = _image_type(path, data)
    if mime is not None and len(data) * 4 // 3 <= MAX_IMAGE_BYTES:
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text=f"{path}: {mime}, {len(data):,} bytes"),
                types.ImageContent(
                    type="image", data=base64.b64encode(data).decode(), mime_type=mime
                ),
            ],
            _meta=meta,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\0" not in text:
        hint = "read a part in the kernel, e.g. open(path).read()[start:end]"
        return text_result(clip(text, max_chars, hint=hint).text, meta=meta)
    encoded = base64.b64encode(data).decode()
    if len(encoded) > max_chars:
        raise Rejected(
            f"{path} is {len(data):,} bytes of binary data: {len(encoded):,} characters of "
            f"base64, over this call's max_output_chars ({max_chars:,}); ask for more (at "
            f"most {MCP_OUTPUT_CHARS_MAX:,}) or work on it in the kernel",
            code="file_too_large",
        )
    return text_result(encoded, meta={"kernelsup/file": {**meta["kernelsup/file"], "base64": True}})


async def list_files(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    path, session = _arg(args, "path") or ".", _arg(args, "session")
    names = await conn.in_session(session, None, lambda name: conn.backend.list_files(name, path))
    text = "\n".join(names) + "\n" if names else f"{path} is empty\n"
    return text_result(clip(text, conn.config.max_output_chars).text)


def _image_type(path: str, data: bytes) -> str | None:
    """The image MIME type of ``data`` by its signature (the path's suffix is a hint a
    file may lie about)."""
    signatures = {
        b"\x89PNG\r\n\x1a\n": "image/png",
        b"\xff\xd8\xff": "image/jpeg",
        b"GIF87a": "image/gif",
        b"GIF89a": "image/gif",
    }
    for magic, mime in signatures.items():
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    assert all(m in IMAGE_TYPES for m in signatures.values())
    return None


def _b64decode(value: object) -> bytes:
    if not isinstance(value, str):
        raise Rejected(f"base64 must be a string (got {type(value).__name__})", code="bad_request")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise Rejected(f"base64 is not valid base64: {err}", code="bad_request") from None


# --------------------------------------------------------------------------- kernels
async def status(conn: Connection, ctx: Context, args: Mapping[str, Any]) -> types.CallToolResult:
    report = await conn.backend.status()
    text = clip(format_status(report), conn.config.max_output_chars).text
    return text_result(text, meta={META_STATUS: report.to_dict()})


async def interrupt(
    conn: Connection, ctx: Context, args: Mapping[str, Any]
) -> types.CallToolResult:
    kernel_id, session = await _kernel_target(conn, args)
    await conn.backend.interrupt(kernel_id, session=session)
    return text_result(f"interrupted {_target_name(kernel_id, session)}; its state is kept")


async def restart(conn: Connection, ctx: Context, args: Mapping[str, Any]) -> types.CallToolResult:
    kernel_id, session = await _kernel_target(conn, args)
    await conn.backend.restart(kernel_id, session=session)
    return text_result(
        f"restarting {_target_name(kernel_id, session)}: a new process, its variables are gone"
    )


async def _kernel_target(
    conn: Connection, args: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    kernel_id, session = _arg(args, "kernel_id"), _arg(args, "session")
    if kernel_id is not None and session is not None:
        raise Rejected("give kernel_id or session, not both", code="bad_request")
    if kernel_id is None and session is None:
        session = conn.own()
        if session is None:
            raise Rejected(
                "this connection has no session of its own yet: name a session or a kernel_id",
                code="bad_request",
            )
    return kernel_id, session


def _target_name(kernel_id: str | None, session: str | None) -> str:
    return f"kernel {kernel_id}" if kernel_id is not None else f"session {session}'s kernel"


# --------------------------------------------------------------------------- arguments
Handler = Callable[[Connection, Context, Mapping[str, Any]], Awaitable[types.CallToolResult]]
HANDLERS: dict[str, Handler] = {
    "execute": execute,
    "job_status": job_status,
    "job_output": job_output,
    "cancel_job": cancel_job,
    "list_jobs": list_jobs,
    "open_session": open_session,
    "list_sessions": list_sessions,
    "close_session": close_session,
    "put_file": put_file,
    "get_file": get_file,
    "list_files": list_files,
    "status": status,
    "interrupt": interrupt,
    "restart": restart,
}


def _arg(
    args: Mapping[str, Any], name: str, *, required: bool = False, allow_empty: bool = False
) -> Any:
    """The string ``args[name]`` checked against the tool's schema (clients do not all
    validate), or None when absent."""
    value = args.get(name)
    if value is None:
        if required:
            raise Rejected(f"the argument {name!r} is required", code="bad_request")
        return None
    if not isinstance(value, str) or not (value or allow_empty):
        raise Rejected(f"{name} must be a non-empty string (got {value!r})", code="bad_request")
    return value


def _positive(args: Mapping[str, Any], name: str) -> float | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise Rejected(f"{name} must be a number > 0 (got {value!r})", code="bad_request")
    return float(value)


def _float_in(value: object, name: str, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not low <= value <= high  # NaN fails this too
    ):
        raise Rejected(
            f"{name} must be a number >= {low} and <= {high} (got {value!r})", code="bad_request"
        )
    return float(value)


def _int_in(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Rejected(
            f"{name} must be an integer >= {low} and <= {high} (got {value!r})",
            code="bad_request",
        )
    return value


def _env(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise Rejected("env must be an object of string values", code="bad_request")
    return dict(value)


def text_result(
    text: str, *, meta: dict[str, Any] | None = None, is_error: bool = False
) -> types.CallToolResult:
    """A tool result of one text block (``meta`` for programs, never read by the model)."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], _meta=meta, is_error=is_error
    )


__all__ = [
    "HANDLERS",
    "META_JOB",
    "META_RESULT",
    "META_STATUS",
    "PROGRESS_MIN_INTERVAL_S",
    "PROGRESS_TICK_S",
    "Connection",
    "text_result",
]
