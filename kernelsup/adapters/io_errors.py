"""zmq and OS errors as kernelsup errors: the one place they are mapped.

httpx's ``map_httpcore_exceptions`` is the model: the I/O calls run inside
:func:`map_exceptions`, which turns what the OS or zmq raised into the error of
:mod:`kernelsup.core.errors` that it means, so no ``zmq.ZMQError`` or ``OSError`` leaves
the I/O edge.

What an errno means depends on what was being done, so the table is keyed by the
operation and the errno (``*``: any other)::

    operation  errno          kernelsup error        why
    bind       ENAMETOOLONG   ConfigError            the IPC path is too long for a socket
    bind       EADDRINUSE     endpoint_in_use        another process serves the address
    bind       *              endpoint_unavailable
    connect    *              Unreachable
    probe      ENOENT         Unreachable            no socket file: no supervisor
    probe      ECONNREFUSED   Unreachable            a socket file nobody listens on
    probe      *              Unreachable
    io         *              Unreachable            an open connection failed
    spawn      *              start_failure          a kernel's command could not be executed

One zmq condition is not a kernelsup error: ETERM or ENOTSOCK on a socket means the socket
or its context is gone, which :mod:`kernelsup.adapters.zmqio` reports as trio's
``ClosedResourceError`` (:func:`is_gone`).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Iterator
from typing import Literal

import zmq

from kernelsup.core.errors import ConfigError, KernelStartError, KernelsupError, Unreachable

Operation = Literal["bind", "connect", "probe", "io", "spawn"]

# zmq errnos that mean "this socket or its context is gone".
_GONE = frozenset({errno.ENOTSOCK, zmq.ETERM})


def _ipc_path_too_long(target: str, exc: BaseException) -> KernelsupError:
    return ConfigError(
        f"$.server.endpoint: the IPC path of {target} is too long for a "
        "socket (about 100 bytes); set a shorter [supervisor] runtime_dir "
        "or endpoint",
        path="$.server.endpoint",
    )


def _address_in_use(target: str, exc: BaseException) -> KernelsupError:
    return KernelsupError(
        f"cannot serve {target}: the address is in use", code="endpoint_in_use", endpoint=target
    )


def _cannot_bind(target: str, exc: BaseException) -> KernelsupError:
    return KernelsupError(
        f"cannot serve {target}: {exc}", code="endpoint_unavailable", endpoint=target
    )


def _cannot_connect(target: str, exc: BaseException) -> KernelsupError:
    return Unreachable(f"cannot connect to {target}: {exc}", endpoint=target)


def _no_socket_file(target: str, exc: BaseException) -> KernelsupError:
    return Unreachable(
        f"no supervisor at {target}: the socket file does not exist", endpoint=target
    )


def _nobody_listens(target: str, exc: BaseException) -> KernelsupError:
    return Unreachable(
        f"no supervisor at {target}: nothing listens on the socket file "
        "(left over from a supervisor that was killed)",
        endpoint=target,
    )


def _probe_failed(target: str, exc: BaseException) -> KernelsupError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return Unreachable(f"no supervisor at {target}: {reason}", endpoint=target)


def _connection_failed(target: str, exc: BaseException) -> KernelsupError:
    return Unreachable(f"the connection failed: {exc}", **({"endpoint": target} if target else {}))


def _cannot_execute(target: str, exc: BaseException) -> KernelsupError:
    return KernelStartError(f"could not execute {target!r}: {exc}", code="start_failure")


_Make = Callable[[str, BaseException], KernelsupError]
# (operation, errno or None for any other) -> the error it means
TABLE: dict[tuple[Operation, int | None], _Make] = {
    ("bind", errno.ENAMETOOLONG): _ipc_path_too_long,
    ("bind", errno.EADDRINUSE): _address_in_use,
    ("bind", None): _cannot_bind,
    ("connect", None): _cannot_connect,
    ("probe", errno.ENOENT): _no_socket_file,
    ("probe", errno.ECONNREFUSED): _nobody_listens,
    ("probe", None): _probe_failed,
    ("io", None): _connection_failed,
    ("spawn", None): _cannot_execute,
}


def map_error(exc: BaseException, op: Operation, target: str = "") -> KernelsupError:
    """The kernelsup error that ``exc``, raised while doing ``op`` on ``target`` (an
    endpoint; for ``spawn`` the program), means."""
    number = getattr(exc, "errno", None)
    if op == "bind" and "too long" in str(exc).lower():
        number = errno.ENAMETOOLONG  # some libzmq builds say so only in the text
    make = TABLE.get((op, number)) or TABLE[(op, None)]
    return make(target, exc)


@contextlib.contextmanager
def map_exceptions(op: Operation, target: str = "") -> Iterator[None]:
    """Run the block; a zmq or OS error raised in it comes out as :func:`map_error` says."""
    try:
        yield
    except (zmq.ZMQError, OSError) as exc:
        raise map_error(exc, op, target) from None


def is_gone(exc: zmq.ZMQError) -> bool:
    """Whether ``exc`` says the socket or its zmq context is gone (closed, terminated)."""
    return exc.errno in _GONE


def probe_ipc(endpoint: str, timeout: float) -> bool:
    """Whether a process listens on an ``ipc://`` endpoint's socket file: connects and hangs
    up at once. Raises :class:`Unreachable` (the ``probe`` rows) if none does; returns False
    for an endpoint a probe cannot tell about (tcp, an abstract socket). Blocks at most
    ``timeout`` seconds."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with map_exceptions("probe", endpoint):
            sock.connect(endpoint[len("ipc://") :])
    finally:
        sock.close()
    return True


__all__ = ["TABLE", "Operation", "is_gone", "map_error", "map_exceptions", "probe_ipc"]
