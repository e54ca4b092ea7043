"""Public value types: what a request, a kernel exit and a status query give back.

All are frozen attrs classes with ``to_dict()`` giving plain JSON-ready data.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

Status = Literal["ok", "error", "timeout", "died", "rejected", "cancelled"]
ExitKind = Literal["normal", "failure", "heartbeat", "start_timeout", "start_failure", "limit"]


@attrs.frozen
class ExitCause:
    """Why a kernel stopped.

    ``kind`` is what the restart policy reads. ``code``/``signal`` keep the process's own
    exit status when there was one; ``detail`` is a human sentence (stderr tail, limit hit).
    """

    kind: ExitKind
    code: int | None = None
    signal: int | None = None
    detail: str = ""

    @classmethod
    def from_returncode(cls, returncode: int, *, requested: bool = False,
                        detail: str = "") -> ExitCause:
        """Classify a ``Popen.returncode``; ``requested`` means we asked it to stop."""
        if returncode < 0:
            kind: ExitKind = "normal" if requested else "failure"
            return cls(kind, signal=-returncode, detail=detail)
        kind = "normal" if requested or returncode == 0 else "failure"
        return cls(kind, code=returncode, detail=detail)

    def describe(self) -> str:
        """``exit(1)``, ``signal(9)``, ``heartbeat``, ... as used in tests, logs and status."""
        if self.signal is not None:
            base = f"signal({self.signal})"
        elif self.code is not None:
            base = f"exit({self.code})"
        else:
            base = self.kind
        if self.kind not in ("normal", "failure") and base != self.kind:
            base = f"{self.kind}:{base}"
        return base

    def __str__(self) -> str:
        return self.describe()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "code": self.code, "signal": self.signal,
                "detail": self.detail, "text": self.describe()}


@attrs.frozen
class ErrorInfo:
    """An exception raised by the code: traceback lines are plain text, no ANSI colour."""

    ename: str
    evalue: str
    traceback: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ename": self.ename, "evalue": self.evalue, "traceback": list(self.traceback)}


@attrs.frozen
class Output:
    """One output of a request, in order.

    ``type`` is ``stream`` (``name`` stdout/stderr, ``text``), ``execute_result`` or
    ``display_data`` (``data``: MIME type -> value, ``metadata``), ``error`` (``text`` is the
    plain traceback), or ``notice`` (a kernelsup marker: truncation, state lost, ...).
    """

    type: str
    name: str | None = None
    text: str | None = None
    data: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None

    def size(self) -> int:
        n = len(self.text.encode("utf-8", "surrogatepass")) if self.text else 0
        if self.data:
            n += sum(len(k) + len(v) if isinstance(v, str) else len(k) + len(repr(v))
                     for k, v in self.data.items())
        return n

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        for key in ("name", "text", "data", "metadata"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d


@attrs.frozen
class ExecuteResult:
    """The single terminal outcome of one execute request."""

    status: Status
    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    outputs: tuple[Output, ...] = ()
    error: ErrorInfo | None = None
    execution_count: int | None = None
    kernel_id: str | None = None
    session: str | None = None
    queued_s: float = 0.0
    run_s: float = 0.0
    interrupted: bool = False
    kernel_restarted: bool = False
    state_lost: bool = False
    truncated_bytes: int = 0
    code: str | None = None
    message: str = ""
    cause: ExitCause | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "result": self.result,
            "outputs": [o.to_dict() for o in self.outputs],
            "error": self.error.to_dict() if self.error else None,
            "execution_count": self.execution_count,
            "kernel_id": self.kernel_id,
            "session": self.session,
            "queued_s": self.queued_s,
            "run_s": self.run_s,
            "interrupted": self.interrupted,
            "kernel_restarted": self.kernel_restarted,
            "state_lost": self.state_lost,
            "truncated_bytes": self.truncated_bytes,
            "code": self.code,
            "message": self.message,
            "cause": self.cause.to_dict() if self.cause else None,
        }


@attrs.frozen
class StatusReport:
    """What ``status()`` returns; ``to_dict()`` is the status JSON of the Contract."""

    kernels: tuple[dict[str, Any], ...] = ()
    pools: tuple[dict[str, Any], ...] = ()

    @property
    def all_running(self) -> bool:
        return all(k["state"] in ("idle", "busy") for k in self.kernels)

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": [dict(k) for k in self.kernels], "pools": [dict(p) for p in self.pools]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatusReport:
        return cls(kernels=tuple(data.get("kernels", ())), pools=tuple(data.get("pools", ())))
