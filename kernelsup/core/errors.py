"""The kernelsup error tree.

Every error kernelsup raises or reports derives from :class:`KernelsupError` and carries a
stable ``code`` (used in logs, JSON and CLI output) plus structured data. Third-party
exceptions (zmq, OS, jupyter_client) are mapped to these at the I/O edge
(:mod:`kernelsup.adapters.io_errors`) and never leak out of the public API.

Each class with the code it carries by default. Many errors carry a more specific code
than their class's (a :class:`Rejected` says ``queue_full``, ``unknown_kernel``...): every
code, with its class, its CLI exit code and its meaning, is a row of the table in
:mod:`kernelsup.core.codes`. tests/test_errors.py checks this drawing against the classes.

::

    KernelsupError                      error
    ├── ConfigError                     config_invalid
    ├── RuntimeDirBusy                  runtime_dir_busy
    ├── PoolEscalated                   pool_escalated
    ├── KernelError                     kernel_error
    │   ├── KernelStartError            start_failure, start_timeout
    │   └── KernelDied                  kernel_died
    ├── RequestError                    request_error
    │   ├── Rejected                    rejected
    │   │   └── SupervisorGaveUp        supervisor_gave_up
    │   └── ExecTimeout                 timeout
    └── ClientError                     client_error
        ├── Unreachable                 unreachable
        ├── AuthenticationError         auth_failed
        └── ProtocolError               protocol_error
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


class KernelsupError(Exception):
    """Root of every kernelsup error. ``code`` is stable; ``data`` is JSON-ready."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, code: str | None = None, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default
        self.data = data

    def __str__(self) -> str:
        return self.message

    def describe(self) -> str:
        """The one-line form the CLI prints: ``<CODE> <ErrorClass>: <message>``."""
        return f"{self.code} {type(self).__name__}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "type": type(self).__name__,
            "message": self.message,
            **self.data,
        }


class ConfigError(KernelsupError):
    """The configuration is invalid. ``path`` names the key (``$.pool[0].size``)."""

    code = "config_invalid"


class RuntimeDirBusy(KernelsupError):
    """Another live supervisor owns this runtime directory (the same config file)."""

    code = "runtime_dir_busy"


class PoolEscalated(KernelsupError):
    """A pool's restart intensity was exceeded; its parent decides what happens next."""

    code = "pool_escalated"


class KernelError(KernelsupError):
    """Something happened to a kernel process."""

    code = "kernel_error"


class KernelStartError(KernelError):
    """A kernel failed to become ready: ``cause`` is ``start_failure`` or ``start_timeout``."""

    code = "start_failure"


class KernelDied(KernelError):
    """A kernel exited or froze; ``cause`` says how."""

    code = "kernel_died"


class RequestError(KernelsupError):
    """A request could not be carried out."""

    code = "request_error"


class Rejected(RequestError):
    """A request was refused before it ran; the subcode says why."""

    code = "rejected"


class SupervisorGaveUp(Rejected):
    """The root's restart intensity was exceeded: the whole supervisor stops."""

    code = "supervisor_gave_up"


class ExecTimeout(RequestError):
    """A request ran past its timeout and was interrupted."""

    code = "timeout"


class ClientError(KernelsupError):
    """The client side of the control endpoint failed."""

    code = "client_error"


class Unreachable(ClientError):
    """No supervisor answered at the endpoint."""

    code = "unreachable"


class AuthenticationError(ClientError):
    """A message was not signed with the endpoint's key (or was a replay)."""

    code = "auth_failed"


class ProtocolError(ClientError):
    """A message was not one of kernelsup's (malformed, oversized, unknown type, version)."""

    code = "protocol_error"


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups; ``[exc]`` for a plain one."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    out: list[BaseException] = []
    for inner in exc.exceptions:
        out.extend(leaves(inner))
    return out


def raise_lone(group: BaseExceptionGroup[BaseException]) -> None:
    """For context managers that own a nursery: the nursery is ours, not the caller's, so
    a lone exception (the caller's own, or ours) is raised as itself, not in a group."""
    found = leaves(group)
    if len(found) == 1:
        raise found[0] from None
