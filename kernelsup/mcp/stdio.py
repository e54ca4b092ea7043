"""The MCP stdio transport, trio-native: stdin reads that a signal can cancel.

Why not ``mcp.server.stdio.stdio_server``: it reads stdin in a worker thread that nothing
can cancel, so a server told to stop (SIGTERM, Ctrl-C) while its client keeps stdin open
would hang in that read for good. Here both pipes are :class:`trio.lowlevel.FdStream`\\ s;
the framing is the same (one JSON-RPC message per line, UTF-8), parsed and serialized by
the ``mcp`` package's own models.

Like ``stdio_server``, the transport serves from private duplicates of fds 0 and 1 and,
while it serves, points fd 0 at ``/dev/null`` and fd 1 at stderr: anything else in this
process that writes to fd 1 (a stray ``print``, a child started without its own stdout)
lands on stderr instead of corrupting the protocol. Both are restored on exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator

import anyio
import mcp_types as types
import trio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

# A line longer than this is not read into memory: it is skipped up to its newline and
# answered as a parse error (the largest control message kernelsup accepts is 16 MiB).
MAX_LINE_BYTES = 16 * 1024 * 1024
# Bytes read from stdin at a time.
READ_CHUNK = 65536

ReadStream = MemoryObjectReceiveStream[SessionMessage | Exception]
WriteStream = MemoryObjectSendStream[SessionMessage]


@contextlib.asynccontextmanager
async def stdio_transport(
    stdin_fd: int = 0,
    stdout_fd: int = 1,
) -> AsyncIterator[tuple[ReadStream, WriteStream]]:
    """Serve MCP messages on ``stdin_fd``/``stdout_fd`` for the block's duration.

    Yields ``(read_stream, write_stream)`` for ``Server.run``. The read stream ends at
    stdin EOF (or when stdout breaks: the client is gone). Leaving the block stops both
    directions at once.
    """
    in_fd = _divert(stdin_fd, os.devnull, os.O_RDONLY)
    try:
        out_fd = _divert(stdout_fd, None, os.O_WRONLY)
    except BaseException:
        _restore(stdin_fd, in_fd)
        raise
    stdin, stdout = trio.lowlevel.FdStream(in_fd), trio.lowlevel.FdStream(out_fd)
    # Unbuffered: a message is handed over only when the other side takes it, so nothing
    # queues up here when the client reads slowly.
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read, stdin, read_send)
            nursery.start_soon(_write, stdout, write_recv, nursery.cancel_scope)
            yield read_recv, write_send
            nursery.cancel_scope.cancel()
    finally:
        _restore(stdin_fd, in_fd)
        _restore(stdout_fd, out_fd)
        with trio.CancelScope(shield=True):
            await stdin.aclose()
            await stdout.aclose()


async def _read(
    stdin: trio.lowlevel.FdStream, send: MemoryObjectSendStream[SessionMessage | Exception]
) -> None:
    async with send:
        buffer = bytearray()
        skipping = False
        while True:
            try:
                chunk = await stdin.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return  # EOF: the client closed our stdin
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                if skipping:
                    skipping = False
                elif line.strip():
                    await send.send(_parse(line))
            if len(buffer) > MAX_LINE_BYTES:
                buffer.clear()
                if not skipping:
                    skipping = True
                    await send.send(
                        ValueError(f"a message longer than {MAX_LINE_BYTES} bytes was skipped")
                    )


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        message = types.jsonrpc_message_adapter.validate_json(
            line.decode("utf-8", "replace"), by_name=False
        )
    except ValueError as exc:  # pydantic's ValidationError is one
        return exc
    return SessionMessage(message)


async def _write(
    stdout: trio.lowlevel.FdStream,
    receive: MemoryObjectReceiveStream[SessionMessage],
    transport: trio.CancelScope,
) -> None:
    async with receive:
        async for message in receive:
            data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
            try:
                await stdout.send_all(data.encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                transport.cancel()  # the client is gone: stop reading too
                return


def _divert(fd: int, replacement: str | None, flags: int) -> int:
    """Move ``fd``'s file to a private close-on-exec fd (returned) and point ``fd`` at
    ``replacement`` (a path) or, for None, at stderr."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        if replacement is None:
            os.dup2(2, fd)
        else:
            other = os.open(replacement, flags | os.O_CLOEXEC)
            try:
                os.dup2(other, fd)
            finally:
                os.close(other)
    except BaseException:
        os.close(private)
        raise
    return private


def _restore(fd: int, private: int) -> None:
    with contextlib.suppress(OSError):
        os.dup2(private, fd)


__all__ = ["MAX_LINE_BYTES", "stdio_transport"]
