"""Public value types: what a request, a kernel exit and a status query give back.

All are frozen attrs classes with ``to_dict()`` giving plain JSON-ready data and
``from_dict()`` reading it back (a remote client's view); ``from_dict`` raises
:class:`~kernelsup.core.errors.ProtocolError` for data that is not of that shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import attrs

from kernelsup.core.errors import ProtocolError

Status = Literal["ok", "error", "timeout", "died", "rejected", "cancelled"]
# node_lost / host_lost: a kernel on a Ray node (adapters/ray_host.py) whose node, or host
# actor, died; no_capacity: no node took its host within placement_timeout.
ExitKind = Literal[
    "normal",
    "failure",
    "heartbeat",
    "start_timeout",
    "start_failure",
    "limit",
    "node_lost",
    "host_lost",
    "no_capacity",
]

_STATUSES: frozenset[str] = frozenset(get_args(Status))


# --- reading to_dict() forms back -------------------------------------------------------

_MISSING: Any = object()


def _obj(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolError(
            f"malformed {what}: expected an object, got {type(value).__name__}", code="malformed"
        )
    return value


def _field(
    d: Mapping[str, Any],
    key: str,
    kinds: tuple[type, ...],
    what: str,
    *,
    default: Any = _MISSING,
    nullable: bool = False,
) -> Any:
    """``d[key]`` if it is one of ``kinds`` (bool is never an int or float here)."""
    if key not in d:
        if default is _MISSING:
            raise ProtocolError(f"malformed {what}: {key!r} is missing", code="malformed")
        return default
    value: Any = d[key]
    if value is None and nullable:
        return None
    fits = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
    if not fits:
        raise ProtocolError(
            f"malformed {what}: {key!r} has the wrong type ({type(value).__name__})",
            code="malformed",
        )
    return float(value) if float in kinds else value


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"malformed {what}: expected a list of strings", code="malformed")
    return tuple(value)


def _str_dict(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    return dict(_obj(value, what))


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
    def from_returncode(
        cls, returncode: int, *, requested: bool = False, detail: str = ""
    ) -> ExitCause:
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
        return {
            "kind": self.kind,
            "code": self.code,
            "signal": self.signal,
            "detail": self.detail,
            "text": self.describe(),
        }

    @classmethod
    def from_dict(cls, data: object) -> ExitCause:
        """Read ``to_dict()`` back (``text`` is derived, so ignored). Unknown kinds from a
        newer server are kept as they are."""
        d = _obj(data, "exit cause")
        return cls(
            _field(d, "kind", (str,), "exit cause"),
            code=_field(d, "code", (int,), "exit cause", default=None, nullable=True),
            signal=_field(d, "signal", (int,), "exit cause", default=None, nullable=True),
            detail=_field(d, "detail", (str,), "exit cause", default=""),
        )


@attrs.frozen
class ErrorInfo:
    """An exception raised by the code: traceback lines are plain text, no ANSI colour."""

    ename: str
    evalue: str
    traceback: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ename": self.ename, "evalue": self.evalue, "traceback": list(self.traceback)}

    @classmethod
    def from_dict(cls, data: object) -> ErrorInfo:
        d = _obj(data, "error")
        return cls(
            _field(d, "ename", (str,), "error"),
            _field(d, "evalue", (str,), "error"),
            _str_list(d.get("traceback", []), "error.traceback"),
        )


@attrs.frozen
class Output:
    """One output of a request, in order.

    ``type`` is ``stream`` (``name`` stdout/stderr, ``text``), ``execute_result`` or
    ``display_data`` (``data``: MIME type -> value, ``metadata``), ``error`` (``text`` is the
    plain traceback), or ``notice`` (a kernelsup marker: truncation, state lost, ...).
    A display the kernel gave an id (``display(..., display_id=...)``) carries it in
    ``display_id``; an update of that display (``update_display_data``) is a
    ``display_data`` named ``update``: what a notebook stores is the displays with that id,
    changed in place.
    """

    type: str
    name: str | None = None
    text: str | None = None
    data: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    display_id: str | None = None

    def size(self) -> int:
        n = len(self.text.encode("utf-8", "surrogatepass")) if self.text else 0
        if self.data:
            n += sum(
                len(k) + len(v) if isinstance(v, str) else len(k) + len(repr(v))
                for k, v in self.data.items()
            )
        return n

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        for key in ("name", "text", "data", "metadata", "display_id"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d

    @classmethod
    def from_dict(cls, data: object) -> Output:
        d = _obj(data, "output")
        return cls(
            _field(d, "type", (str,), "output"),
            name=_field(d, "name", (str,), "output", default=None, nullable=True),
            text=_field(d, "text", (str,), "output", default=None, nullable=True),
            data=_str_dict(d.get("data"), "output.data"),
            metadata=_str_dict(d.get("metadata"), "output.metadata"),
            display_id=_field(d, "display_id", (str,), "output", default=None, nullable=True),
        )


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
    # checkpoint = "after_execute": the session's new kernel was given its latest snapshot
    # before this request; ``restored`` names what came back, ``not_restored`` what did not.
    state_restored: bool = False
    restored: tuple[str, ...] = ()
    not_restored: dict[str, str] = attrs.field(factory=dict)
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
            "state_restored": self.state_restored,
            "restored": list(self.restored),
            "not_restored": dict(self.not_restored),
            "truncated_bytes": self.truncated_bytes,
            "code": self.code,
            "message": self.message,
            "cause": self.cause.to_dict() if self.cause else None,
        }

    @classmethod
    def from_dict(cls, data: object) -> ExecuteResult:
        """Read ``to_dict()`` back; raises ProtocolError if it is not of that shape."""
        d = _obj(data, "result")
        w = "result"
        status = _field(d, "status", (str,), w)
        if status not in _STATUSES:
            raise ProtocolError(f"malformed result: unknown status {status!r}", code="malformed")
        outputs = d.get("outputs", [])
        if not isinstance(outputs, list):
            raise ProtocolError("malformed result: 'outputs' is not a list", code="malformed")
        error = d.get("error")
        cause = d.get("cause")
        return cls(
            status=status,
            stdout=_field(d, "stdout", (str,), w, default=""),
            stderr=_field(d, "stderr", (str,), w, default=""),
            result=_field(d, "result", (str,), w, default=None, nullable=True),
            outputs=tuple(Output.from_dict(o) for o in outputs),
            error=ErrorInfo.from_dict(error) if error is not None else None,
            execution_count=_field(d, "execution_count", (int,), w, default=None, nullable=True),
            kernel_id=_field(d, "kernel_id", (str,), w, default=None, nullable=True),
            session=_field(d, "session", (str,), w, default=None, nullable=True),
            queued_s=_field(d, "queued_s", (int, float), w, default=0.0),
            run_s=_field(d, "run_s", (int, float), w, default=0.0),
            interrupted=_field(d, "interrupted", (bool,), w, default=False),
            kernel_restarted=_field(d, "kernel_restarted", (bool,), w, default=False),
            state_lost=_field(d, "state_lost", (bool,), w, default=False),
            state_restored=_field(d, "state_restored", (bool,), w, default=False),
            restored=_str_list(d.get("restored", []), "result.restored"),
            not_restored={
                k: str(v)
                for k, v in (_str_dict(d.get("not_restored"), "result.not_restored") or {}).items()
            },
            truncated_bytes=_field(d, "truncated_bytes", (int,), w, default=0),
            code=_field(d, "code", (str,), w, default=None, nullable=True),
            message=_field(d, "message", (str,), w, default=""),
            cause=ExitCause.from_dict(cause) if cause is not None else None,
        )


@attrs.frozen
class StatusReport:
    """What ``status()`` returns; ``to_dict()`` is the status JSON (ARCHITECTURE.md,
    "Contracts")."""

    kernels: tuple[dict[str, Any], ...] = ()
    pools: tuple[dict[str, Any], ...] = ()

    @property
    def all_running(self) -> bool:
        return all(k["state"] in ("idle", "busy") for k in self.kernels)

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": [dict(k) for k in self.kernels], "pools": [dict(p) for p in self.pools]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatusReport:
        """Read ``to_dict()`` back; raises ProtocolError unless kernels and pools are lists
        of objects."""
        d = _obj(data, "status")
        parts = []
        for key in ("kernels", "pools"):
            items = d.get(key, [])
            if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
                raise ProtocolError(
                    f"malformed status: {key!r} is not a list of objects", code="malformed"
                )
            if key == "kernels" and not all(isinstance(i.get("state"), str) for i in items):
                raise ProtocolError("malformed status: a kernel has no 'state'", code="malformed")
            parts.append(tuple(dict(i) for i in items))
        return cls(kernels=parts[0], pools=parts[1])


# --- status as a table (the CLI's `status` and the MCP `status` tool) ----------------

COLUMNS = (
    "ID",
    "POOL",
    "ROLE",
    "STATE",
    "PID",
    "RESTARTS",
    "SESSION",
    "UPTIME",
    "CPU",
    "MEM",
    "UNIT",
    "LAST EXIT",
)


def format_status(report: StatusReport) -> str:
    """A plain table: one line per kernel, then one per pool."""
    rows = [COLUMNS]
    for k in report.kernels:
        state = str(k.get("state"))
        if state == "backoff" and isinstance(k.get("next_try_s"), (int, float)):
            state += f" ({k['next_try_s']:.1f}s)"
        last = k.get("last_exit")
        rows.append(
            (
                str(k.get("id")),
                str(k.get("pool")),
                str(k.get("role")),
                state,
                _dash(k.get("pid")),
                str(k.get("restarts", 0)),
                _dash(k.get("session")),
                _duration(k.get("uptime_s")),
                _number(k.get("cpu_percent"), "{:.0f}%"),
                _bytes(k.get("memory_bytes")),
                _dash(k.get("containment")),
                str(last.get("text", "")) if isinstance(last, dict) else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    for p in report.pools:
        sessions = p.get("sessions") or []
        parts = [
            f"size {p.get('size')} + {p.get('spares')} spare",
            f"{p.get('ready')} kernels ready",
            f"{p.get('queued', 0)} queued",
            f"sessions: {', '.join(map(str, sessions))}" if sessions else "no sessions",
        ]
        if p.get("dead"):
            parts.append("DEAD (every kernel gave up restarting)")
        launch = p.get("launch")
        if isinstance(launch, dict) and launch.get("mode") == "fork":
            # said only when kernels are not being forked as configured
            if launch.get("zygote") != "ready":
                parts.append(f"zygote {launch.get('zygote')}: kernels are exec'ed meanwhile")
            if launch.get("last_error"):
                parts.append(f"zygote: {launch.get('last_error')}")
        lines.append(f"pool {p.get('name')}: " + "; ".join(parts))
    return "\n".join(lines)


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _number(value: object, fmt: str) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return fmt.format(value)


def _bytes(value: object) -> str:
    """Memory as a person reads it: ``512K``, ``87M``, ``1.2G``."""
    if not isinstance(value, int) or isinstance(value, bool):
        return "-"
    if value < 2**20:
        return f"{value // 2**10}K"
    if value < 2**30:
        return f"{value // 2**20}M"
    return f"{value / 2**30:.1f}G"


def _duration(value: object) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    seconds = int(value)
    if seconds < 60:
        return f"{value:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
