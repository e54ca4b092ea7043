"""``kernelsup mcp``: supervised kernels as MCP tools, over stdio.

Theory of operation
-------------------
One process serves one MCP client on stdin/stdout (newline-delimited JSON-RPC, see
``stdio.py``): one MCP connection, whose state (its own sessions, the output budget) is a
:class:`kernelsup.mcp.handlers.Connection`. Each tool call goes to a handler
(``handlers.py``, where the state model, jobs and the budget are explained; the words the
model reads are in ``tools.py``), which calls a *backend* (``backend.py``):

* a running ``kernelsup run`` (the default), one control connection per call;
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
cancelled (an ``execute`` still waiting cancels its job); the connection's own sessions
are closed; then the embedded tree stops (kernels shut down gracefully, the tether sweeps
what they started) and the process exits 0. SIGINT and SIGTERM do the same.

Progress: while ``execute`` waits, a client that sent a progress token gets
``notifications/progress`` with the seconds elapsed as ``progress``, the timeout (if
given) as ``total`` and the job's latest output line as ``message``: at most one every
``PROGRESS_MIN_INTERVAL_S``, and one every ``PROGRESS_TICK_S`` while the code is silent,
so a client that resets its request timeout on progress keeps waiting.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from collections.abc import AsyncIterator
from typing import Any, TextIO

import mcp_types as types
import trio
from mcp.server.lowlevel import Server

from kernelsup import __version__
from kernelsup.api import open_supervisor
from kernelsup.core.config import Config, McpConfig
from kernelsup.core.errors import KernelsupError
from kernelsup.mcp import notebook_tools, snapshot_tools
from kernelsup.mcp.backend import Backend, Remote
from kernelsup.mcp.handlers import (
    HANDLERS,
    META_JOB,
    META_RESULT,
    META_STATUS,
    PROGRESS_MIN_INTERVAL_S,
    PROGRESS_TICK_S,
    Connection,
    Context,
    text_result,
)
from kernelsup.mcp.stdio import stdio_transport
from kernelsup.mcp.tools import INSTRUCTIONS, TOOLS
from kernelsup.tree.bus import EventBus, EventLog


def build_server(conn: Connection) -> Server[Any]:
    """The MCP server for one connection: the tools of ``tools.py``; every kernelsup error
    becomes a tool error whose text is ``<CODE> <ErrorClass>: <message>``."""

    async def list_tools(
        ctx: Context,
        params: types.PaginatedRequestParams | None,
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[*TOOLS, *notebook_tools.TOOLS, *snapshot_tools.TOOLS])

    async def call_tool(
        ctx: Context,
        params: types.CallToolRequestParams,
    ) -> types.CallToolResult:
        handler = (
            HANDLERS.get(params.name)
            or notebook_tools.HANDLERS.get(params.name)
            or snapshot_tools.HANDLERS.get(params.name)
        )
        if handler is None:
            return text_result(
                f"unknown_tool: no tool named {params.name!r} (tools: {', '.join(HANDLERS)})",
                is_error=True,
            )
        try:
            return await handler(conn, ctx, params.arguments or {})
        except KernelsupError as err:
            return text_result(err.describe(), is_error=True)

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
                config = target.mcp if isinstance(target, Config) else McpConfig()
                conn = Connection(backend, config)
                server = build_server(conn)
                try:
                    async with notebook_tools.running(conn):  # its notebook jobs
                        await server.run(
                            read_stream, write_stream, server.create_initialization_options()
                        )
                finally:
                    await conn.aclose()
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
    "META_JOB",
    "META_RESULT",
    "META_STATUS",
    "PROGRESS_MIN_INTERVAL_S",
    "PROGRESS_TICK_S",
    "TOOLS",
    "Backend",
    "Connection",
    "Remote",
    "build_server",
    "serve_stdio",
]
