"""``kernelsup mcp``: supervised kernels as MCP tools, over stdio.

Theory of operation
-------------------
One process serves one MCP client on stdin/stdout (newline-delimited JSON-RPC, see
``stdio.py``) and hands each tool call to a *backend*:

* a running ``kernelsup run`` (the default). Each call opens its own connection with
  :func:`kernelsup.connect` (a hello round trip, about a millisecond over IPC), so a
  supervisor restarted between two calls is simply found again, and one that is down is a
  tool error carrying ``unreachable``, never a crash. Sessions live in the supervisor, not
  in the connection, so they persist from call to call;
* with ``--embedded``, a tree started in this process by :func:`kernelsup.open_supervisor`.
  ``mcp`` runs on anyio and anyio runs on trio, so the whole server runs under ``trio.run``.

stdout is the protocol and nothing else may write to it. Kernels never get our fd 1:
``adapters/launch.py`` starts them with stdout and stderr to a pipe the actor drains, stdin
from ``/dev/null`` and ``close_fds``, so neither they nor anything they start (``!pip``,
``subprocess.run(["echo", ...])``) can reach it; what they write to fd 1 ends up in the
result (ipykernel captures it) or in that pipe. The tether's reaper writes to
``/dev/null``. Beyond that, the stdio transport serves from private duplicates and points
fd 0 at ``/dev/null`` and fd 1 at stderr while it serves, so even a stray ``print`` in
this process lands on stderr; the embedded tree's event log goes to stderr too.

Stopping: stdin EOF (the client closed it) ends the serve loop; calls still running are
cancelled, which interrupts their kernels; then the embedded tree stops (kernels shut down
gracefully, the tether sweeps what they started) and the process exits 0. SIGINT and
SIGTERM do the same.

Progress: ``execute`` follows the outputs as they arrive. While it runs, a client that sent
a progress token gets ``notifications/progress`` with the seconds elapsed as ``progress``,
the timeout (if given) as ``total`` and the latest output line as ``message``: at most one
every ``PROGRESS_MIN_INTERVAL_S``, and one every ``PROGRESS_TICK_S`` while the code is
silent, so a client that resets its request timeout on progress keeps waiting for a long
run.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TextIO

import anyio
import mcp_types as types
import trio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from kernelsup import __version__
from kernelsup.api import open_supervisor
from kernelsup.control.client import connect
from kernelsup.core.config import Config
from kernelsup.core.errors import KernelsupError, ProtocolError, Rejected
from kernelsup.core.results import ExecuteResult, Output, StatusReport, format_status
from kernelsup.mcp.render import progress_message, render_result
from kernelsup.mcp.stdio import stdio_transport
from kernelsup.tree.bus import EventBus, EventLog

# Progress notifications while code runs: never more often than this (a flood of prints
# is one notification per interval, not one per line) ...
PROGRESS_MIN_INTERVAL_S = 0.5
# ... and at least this often while the code is silent (clients that reset their request
# timeout on progress keep waiting; a person sees it is still running).
PROGRESS_TICK_S = 5.0

# Machine-readable results ride in ``_meta``, not ``structuredContent``: some clients (Claude
# Code among them) hand the model only ``structuredContent`` when it is present, which would
# hide the output and the images. ``_meta`` never reaches the model; programs read it.
META_RESULT = "kernelsup/result"  # execute: the ExecuteResult's fields, without the output
META_STATUS = "kernelsup/status"  # status: the status JSON of the Contract

INSTRUCTIONS = (
    "Runs Python code in Jupyter kernels kept alive by a supervisor. `execute` returns the "
    "output, the value of the last expression, the traceback of an error and images. "
    "Without `session` the code runs on one of the pool's shared kernels, where other "
    "calls without a session run too: variables may carry over from anyone's calls, and "
    "yours may not be there next time; do not rely on them. Give the same `session` name "
    "to keep variables between calls, on a kernel of its own that nobody else's code has "
    "run on. A call past its "
    "`timeout` is interrupted (the kernel is restarted if it ignores the interrupt, and "
    "the result says the state was lost). `status` lists the kernels; `interrupt` and "
    "`restart` act on one; `reset_session` starts a session over on a fresh kernel."
)

_STRING = {"type": "string", "minLength": 1}
_KERNEL_ID = {
    "kernel_id": {
        **_STRING,
        "description": "a kernel id, as shown by `status` and at the end of `execute` results",
    }
}

TOOLS = [
    types.Tool(
        name="execute",
        description=(
            "Run Python code in a supervised Jupyter kernel; returns stdout and stderr as "
            "printed, Out[n] for the value of the last expression, the traceback of an "
            "error, images as image content, and notices (output truncated, timeout, "
            "kernel restarted, state lost). Without `session`, the code runs on one of the "
            "pool's shared kernels: other calls without a session (yours and other "
            "clients') run there too, so it may see variables they left and they may see "
            "yours, and you cannot count on finding your own. With `session` (1 to 128 "
            "printable characters), every call with that name runs on a kernel of its own "
            "that never ran anyone else's code, so variables persist and stay private "
            "until the kernel dies (the result then says the state was lost, and the "
            "replacement is fresh too) or `reset_session`. Each pool holds at most "
            "max_sessions sessions (beyond it: pool_exhausted); idle ones are closed after "
            "session_idle_timeout. Past `timeout` seconds (default: the pool's "
            "exec_timeout) the kernel is interrupted, and restarted if it ignores the "
            "interrupt."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "the Python code to run"},
                "session": {
                    **_STRING,
                    "description": "a session name to keep state in, on a kernel of its own "
                    "(1 to 128 printable characters)",
                },
                "timeout": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "seconds the code may run",
                },
                "pool": {**_STRING, "description": "the pool to run in (default: the first pool)"},
            },
            "required": ["code"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="status",
        description=(
            "List the kernels (id, pool, role, state, pid, restarts, session, "
            "uptime, last exit) and the pools."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
        name="interrupt",
        description="Interrupt whatever a kernel is running, like Ctrl-C; its state is kept.",
        input_schema={
            "type": "object",
            "properties": _KERNEL_ID,
            "required": ["kernel_id"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="restart",
        description=(
            "Restart a kernel now: a new process, so its variables are gone (a "
            "session on it says so on its next execute)."
        ),
        input_schema={
            "type": "object",
            "properties": _KERNEL_ID,
            "required": ["kernel_id"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(destructive_hint=True),
    ),
    types.Tool(
        name="reset_session",
        description=(
            "Close a session: its kernel is shut down and never reused by anyone; the "
            "next execute with that name starts on a fresh kernel that never ran anyone "
            "else's code."
        ),
        input_schema={
            "type": "object",
            "properties": {"session": {**_STRING, "description": "the session"}},
            "required": ["session"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(destructive_hint=True),
    ),
]


# --------------------------------------------------------------------------- backends
class Backend(Protocol):
    """What the tools need: an in-process :class:`kernelsup.Supervisor` is one as it is;
    :class:`Remote` is one for a ``kernelsup run`` supervisor."""

    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        on_output: Callable[[Output], None] | None = None,
    ) -> ExecuteResult: ...
    async def status(self) -> StatusReport: ...
    async def interrupt(self, kernel_id: str) -> None: ...
    async def restart(self, kernel_id: str) -> None: ...
    async def close_session(self, name: str) -> bool: ...


class Remote:
    """A ``kernelsup run`` supervisor, one connection per call (see the module docstring).

    Every method raises :class:`KernelsupError` (``unreachable``, ``auth_failed``,
    ``rejected``...) like :class:`kernelsup.Client`'s."""

    def __init__(self, target: Config | str) -> None:
        self.target = target

    async def execute(
        self,
        code: str,
        *,
        pool: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        on_output: Callable[[Output], None] | None = None,
    ) -> ExecuteResult:
        async with (
            connect(self.target) as client,
            contextlib.aclosing(
                client.stream(code, pool=pool, session=session, timeout=timeout)
            ) as items,
        ):
            async for item in items:
                if isinstance(item, ExecuteResult):
                    return item
                if on_output is not None:
                    on_output(item)
        raise ProtocolError("the supervisor ended the stream without a result", code="malformed")

    async def status(self) -> StatusReport:
        async with connect(self.target) as client:
            return await client.status()

    async def interrupt(self, kernel_id: str) -> None:
        async with connect(self.target) as client:
            await client.interrupt(kernel_id)

    async def restart(self, kernel_id: str) -> None:
        async with connect(self.target) as client:
            await client.restart(kernel_id)

    async def close_session(self, name: str) -> bool:
        async with connect(self.target) as client:
            return await client.close_session(name)


# --------------------------------------------------------------------------- tools
Context = ServerRequestContext[Any, Any]
SendProgress = Callable[[float, float | None, str | None], Awaitable[None]]


class _Progress:
    """Turns outputs (arriving synchronously from the backend) into rate-limited progress
    notifications, sent from its own task so a slow client never holds up the kernel."""

    def __init__(self, send: SendProgress, total: float | None) -> None:
        self._send = send
        self._total = total
        self._started = trio.current_time()
        self._latest: str | None = None
        self._changed = trio.Event()

    def saw(self, out: Output) -> None:
        message = progress_message(out)
        if message is not None:
            self._latest = message
            self._changed.set()

    async def run(self) -> None:
        last = 0.0
        while True:
            with trio.move_on_after(PROGRESS_TICK_S):
                await self._changed.wait()
            self._changed = trio.Event()
            message, self._latest = self._latest, None
            elapsed = round(trio.current_time() - self._started, 3)
            if elapsed > last:  # progress must increase with every notification
                last = elapsed
                try:
                    await self._send(elapsed, self._total, message)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the client is gone; the call ends on its own
            await trio.sleep(PROGRESS_MIN_INTERVAL_S)


async def _execute(
    backend: Backend,
    ctx: Context,
    args: Mapping[str, Any],
) -> types.CallToolResult:
    code = _arg(args, "code", str, required=True, allow_empty=True)
    timeout = _arg(args, "timeout", float)
    pool, session = _arg(args, "pool", str), _arg(args, "session", str)
    progress = _Progress(ctx.session.report_progress, timeout)
    outcome: ExecuteResult | KernelsupError
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.run)
        try:
            outcome = await backend.execute(
                code, pool=pool, session=session, timeout=timeout, on_output=progress.saw
            )
        except KernelsupError as err:  # raised outside the nursery: not in a group
            outcome = err
        nursery.cancel_scope.cancel()
    if isinstance(outcome, KernelsupError):
        raise outcome
    rendered = render_result(outcome)
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=rendered.text)]
    content.extend(
        types.ImageContent(type="image", data=image.data, mime_type=image.mime_type)
        for image in rendered.images
    )
    return types.CallToolResult(
        content=content, _meta={META_RESULT: rendered.summary}, is_error=rendered.is_error
    )


async def _status(
    backend: Backend,
    ctx: Context,
    args: Mapping[str, Any],
) -> types.CallToolResult:
    report = await backend.status()
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=format_status(report))],
        _meta={META_STATUS: report.to_dict()},
    )


async def _interrupt(
    backend: Backend,
    ctx: Context,
    args: Mapping[str, Any],
) -> types.CallToolResult:
    kernel_id = _arg(args, "kernel_id", str, required=True)
    await backend.interrupt(kernel_id)
    return _text(f"interrupted {kernel_id}")


async def _restart(
    backend: Backend,
    ctx: Context,
    args: Mapping[str, Any],
) -> types.CallToolResult:
    kernel_id = _arg(args, "kernel_id", str, required=True)
    await backend.restart(kernel_id)
    return _text(f"restarting {kernel_id}: a new process, its variables are gone")


async def _reset_session(
    backend: Backend,
    ctx: Context,
    args: Mapping[str, Any],
) -> types.CallToolResult:
    name = _arg(args, "session", str, required=True)
    if await backend.close_session(name):
        return _text(
            f"session {name!r} closed: its kernel was shut down; the next execute "
            "with this name starts on a fresh kernel"
        )
    return _text(
        f"no session named {name!r}: nothing to reset (the next execute with this "
        "name starts on a fresh kernel)"
    )


Handler = Callable[[Backend, Context, Mapping[str, Any]], Awaitable[types.CallToolResult]]
HANDLERS: dict[str, Handler] = {
    "execute": _execute,
    "status": _status,
    "interrupt": _interrupt,
    "restart": _restart,
    "reset_session": _reset_session,
}


def _arg(
    args: Mapping[str, Any],
    name: str,
    kind: type[str] | type[float],
    *,
    required: bool = False,
    allow_empty: bool = False,
) -> Any:
    """``args[name]`` checked against the tool's schema (clients do not all validate)."""
    value = args.get(name)
    if value is None:
        if required:
            raise Rejected(f"the argument {name!r} is required", code="bad_request")
        return None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise Rejected(f"{name} must be a number > 0 (got {value!r})", code="bad_request")
        return float(value)
    if not isinstance(value, str) or not (value or allow_empty):
        raise Rejected(f"{name} must be a non-empty string (got {value!r})", code="bad_request")
    return value


def _text(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], is_error=is_error
    )


def build_server(backend: Backend) -> Server[Any]:
    """The MCP server for ``backend``: the five tools; every kernelsup error becomes a tool
    error whose text is ``<CODE> <ErrorClass>: <message>``."""

    async def list_tools(
        ctx: Context,
        params: types.PaginatedRequestParams | None,
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(
        ctx: Context,
        params: types.CallToolRequestParams,
    ) -> types.CallToolResult:
        handler = HANDLERS.get(params.name)
        if handler is None:
            return _text(
                f"unknown_tool: no tool named {params.name!r} (tools: {', '.join(HANDLERS)})",
                is_error=True,
            )
        try:
            return await handler(backend, ctx, params.arguments or {})
        except KernelsupError as err:
            return _text(err.describe(), is_error=True)

    return Server(
        "kernelsup",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


# --------------------------------------------------------------------------- serving
async def serve_stdio(
    target: Config | str, *, embedded: bool = False, log_stream: TextIO | None = None
) -> str:
    """Serve one MCP client on stdin/stdout until stdin closes, SIGINT or SIGTERM; return
    why it stopped (``the client closed stdin``, ``received SIGTERM``).

    ``target`` is the supervisor's config (or, without ``embedded``, an endpoint).
    ``embedded`` runs the tree in this process (``target`` must be a Config), writing its
    event log to ``log_stream`` if given; it is stopped before this returns. Raises what
    ``open_supervisor`` raises (``SupervisorGaveUp``, ``RuntimeDirBusy``...); tool calls
    never raise.
    """
    stopped = ["the client closed stdin"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope, stopped)
        async with stdio_transport() as (read_stream, write_stream):
            async with _backend(target, embedded, log_stream) as backend:
                server = build_server(backend)
                await server.run(read_stream, write_stream, server.create_initialization_options())
        nursery.cancel_scope.cancel()
    return stopped[0]


async def _stop_on_signal(scope: trio.CancelScope, stopped: list[str]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            stopped[0] = f"received {signal.Signals(signum).name}"
            scope.cancel()
            return


@contextlib.asynccontextmanager
async def _backend(
    target: Config | str, embedded: bool, log_stream: TextIO | None
) -> AsyncIterator[Backend]:
    if not embedded:
        yield Remote(target)
        return
    if not isinstance(target, Config):
        raise TypeError("an embedded supervisor needs a Config, not an endpoint")
    bus = EventBus()
    try:
        async with trio.open_nursery() as nursery:
            if log_stream is not None:
                log = EventLog(target.supervisor.log_file or None)
                await nursery.start(functools.partial(log.run, bus, log_stream))
            async with open_supervisor(target, bus=bus) as sup:
                yield sup
            nursery.cancel_scope.cancel()
    finally:
        bus.close()


__all__ = [
    "HANDLERS",
    "META_RESULT",
    "META_STATUS",
    "PROGRESS_MIN_INTERVAL_S",
    "PROGRESS_TICK_S",
    "TOOLS",
    "Backend",
    "Remote",
    "build_server",
    "serve_stdio",
]
