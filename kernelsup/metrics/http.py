"""``/metrics`` over HTTP, served on trio in the supervisor's own loop.

prometheus_client's ``start_http_server`` runs a server thread that outlives the caller's
nursery and reads the registry from another thread while the supervisor changes it; a
scrape is one GET answered with one body, so it is served here instead, by a few lines on
trio's TCP listeners: it stops when its task is cancelled and binds only where configured.

Bounded: at most ``MAX_SCRAPES`` connections are served at once (the others wait in the
listen backlog), a request head over ``MAX_HEAD_BYTES`` or slower than
``REQUEST_TIMEOUT_S`` is dropped, and every connection closes after one answer.
"""

from __future__ import annotations

import errno

import trio
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kernelsup.api import Supervisor
from kernelsup.core.config import MetricsConfig
from kernelsup.core.errors import ConfigError
from kernelsup.metrics.collect import Metrics

# Connections served at once: a Prometheus server or two, and a person with curl.
MAX_SCRAPES = 8
# A GET's request line and headers; Prometheus sends a few hundred bytes.
MAX_HEAD_BYTES = 8192
# How long a client may take to send its request and read the answer.
REQUEST_TIMEOUT_S = 10.0
# After accept() fails for want of a descriptor, wait this long before trying again.
ACCEPT_RETRY_S = 0.1


async def serve(
    sup: Supervisor,
    config: MetricsConfig,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Count ``sup``'s events and outcomes and serve them at ``http://LISTEN/metrics``
    until cancelled.

    Signals ``task_status.started(url)`` with the bound address (port 0 shows the port
    chosen) once a scrape can be served. Raises :class:`ConfigError` naming
    ``$.metrics.listen`` when it is empty or cannot be bound.
    """
    if not config.listen:
        raise ConfigError("metrics.listen: empty, nothing to serve", path="$.metrics.listen")
    host, _, port = config.listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        listeners = await trio.open_tcp_listeners(int(port), host=host)
    except OSError as exc:
        raise ConfigError(
            f"metrics.listen: cannot listen on {config.listen}: {exc.strerror or exc}",
            path="$.metrics.listen",
            listen=config.listen,
        ) from None
    metrics = Metrics(sup)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(metrics.follow)
            limiter = trio.Semaphore(MAX_SCRAPES)
            for listener in listeners:
                nursery.start_soon(_accept, listener, metrics, limiter)
            bound_host, bound_port = listeners[0].socket.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            task_status.started(f"http://{shown}:{bound_port}/metrics")
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()


async def _accept(listener: trio.SocketListener, metrics: Metrics, limiter: trio.Semaphore) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            await limiter.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                limiter.release()
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            except BaseException:
                limiter.release()
                raise
            nursery.start_soon(_answer, stream, metrics, limiter)


async def _answer(stream: trio.SocketStream, metrics: Metrics, limiter: trio.Semaphore) -> None:
    try:
        with trio.move_on_after(REQUEST_TIMEOUT_S):
            head = await _read_head(stream)
            if head is not None:
                await stream.send_all(_response(head, metrics))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away
    finally:
        limiter.release()
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request line and headers, or None if they are too long or the client left."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > MAX_HEAD_BYTES:
            return None
        chunk = await stream.receive_some(MAX_HEAD_BYTES)
        if not chunk:
            return None
        head += chunk
    return head


def _response(head: bytes, metrics: Metrics) -> bytes:
    line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _plain(400, "Bad Request", "expected: GET /metrics HTTP/1.1\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _plain(405, "Method Not Allowed", "only GET and HEAD\n", allow=True)
    if target == "/":
        return _plain(200, "OK", "kernelsup: the metrics are at /metrics\n")
    if target != "/metrics":
        return _plain(404, "Not Found", f"no {target[:100]!r} here; the metrics are at /metrics\n")
    body = metrics.exposition()
    return _head(200, "OK", CONTENT_TYPE_LATEST, len(body)) + (b"" if method == "HEAD" else body)


def _plain(status: int, reason: str, text: str, *, allow: bool = False) -> bytes:
    body = text.encode()
    extra = "Allow: GET, HEAD\r\n" if allow else ""
    return _head(status, reason, "text/plain; charset=utf-8", len(body), extra) + body


def _head(status: int, reason: str, content_type: str, length: int, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{extra}\r\n"
    ).encode("latin-1")


__all__ = ["MAX_SCRAPES", "serve"]
