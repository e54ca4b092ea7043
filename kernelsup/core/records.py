"""What the session, job and file calls give back: SessionInfo, JobInfo, JobOutput.

Pure values, like results.py: frozen attrs classes with ``to_dict()`` (plain JSON-ready
data) and ``from_dict()`` (a remote client's view; raises ProtocolError for data of
another shape). Times are wall-clock seconds since the epoch. Also the pure rules the
job spool and the file calls share: how an output becomes spool text
(:func:`spool_text`), where a page of UTF-8 may end (:func:`page_end`), and the checks
on a session's ``env`` (:func:`env_problem`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from kernelsup.core.results import ExecuteResult, Output, _field, _obj, _str_list

JobStatus = Literal["queued", "running", "ok", "error", "timeout", "died", "rejected", "cancelled"]
JOB_LIVE: frozenset[str] = frozenset({"queued", "running"})

# A session's own environment: at most this many variables and this many bytes in all
# (it is kept for the session's life and given to each of its kernels).
MAX_SESSION_ENV_VARS = 256
MAX_SESSION_ENV_BYTES = 64 * 1024


@attrs.frozen
class SessionInfo:
    """One open session. ``state``: ``busy`` (running a request), ``idle`` (its kernel is
    ready), ``starting`` (a kernel is being bound) or ``unbound`` (none yet: the next
    request binds one). ``env`` holds the names of the session's own variables only."""

    name: str
    pool: str
    kernel_id: str | None
    cwd: str
    env: tuple[str, ...]
    created: float
    last_used: float
    state: str
    executions: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pool": self.pool,
            "kernel_id": self.kernel_id,
            "cwd": self.cwd,
            "env": list(self.env),
            "created": self.created,
            "last_used": self.last_used,
            "state": self.state,
            "executions": self.executions,
        }

    @classmethod
    def from_dict(cls, data: object) -> SessionInfo:
        d = _obj(data, "session")
        w = "session"
        return cls(
            name=_field(d, "name", (str,), w),
            pool=_field(d, "pool", (str,), w),
            kernel_id=_field(d, "kernel_id", (str,), w, default=None, nullable=True),
            cwd=_field(d, "cwd", (str,), w),
            env=_str_list(d.get("env", []), "session.env"),
            created=_field(d, "created", (int, float), w),
            last_used=_field(d, "last_used", (int, float), w),
            state=_field(d, "state", (str,), w),
            executions=_field(d, "executions", (int,), w),
        )


@attrs.frozen
class JobInfo:
    """One job. ``status`` is ``queued``, ``running``, or (done) its result's status;
    ``result`` is the :class:`ExecuteResult` once done (its outputs bounded by
    ``max_output_bytes``; the whole output is in the spool, read with ``job_output``).
    ``output_bytes`` counts the spool's bytes so far, ``dropped_bytes`` what did not fit
    in it (``max_job_output_bytes``, or the total bound)."""

    id: str
    session: str | None
    pool: str | None
    status: str
    output_bytes: int
    submitted: float
    started: float | None = None
    ended: float | None = None
    result: ExecuteResult | None = None
    dropped_bytes: int = 0

    @property
    def done(self) -> bool:
        return self.status not in JOB_LIVE

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session": self.session,
            "pool": self.pool,
            "status": self.status,
            "output_bytes": self.output_bytes,
            "dropped_bytes": self.dropped_bytes,
            "submitted": self.submitted,
            "started": self.started,
            "ended": self.ended,
            "result": self.result.to_dict() if self.result is not None else None,
        }

    @classmethod
    def from_dict(cls, data: object) -> JobInfo:
        d = _obj(data, "job")
        w = "job"
        status = _field(d, "status", (str,), w)  # a newer server's is kept as it is
        result = d.get("result")
        return cls(
            id=_field(d, "id", (str,), w),
            session=_field(d, "session", (str,), w, default=None, nullable=True),
            pool=_field(d, "pool", (str,), w, default=None, nullable=True),
            status=status,
            output_bytes=_field(d, "output_bytes", (int,), w),
            dropped_bytes=_field(d, "dropped_bytes", (int,), w, default=0),
            submitted=_field(d, "submitted", (int, float), w),
            started=_field(d, "started", (int, float), w, default=None, nullable=True),
            ended=_field(d, "ended", (int, float), w, default=None, nullable=True),
            result=ExecuteResult.from_dict(result) if result is not None else None,
        )


@attrs.frozen
class JobOutput:
    """A page of a job's spooled output: ``text`` from byte ``offset`` of the spool up to
    ``next_offset`` (pass it back for the next page); ``done`` once the job has ended and
    this page reaches the end of its spool."""

    text: str
    next_offset: int
    done: bool

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "next_offset": self.next_offset, "done": self.done}

    @classmethod
    def from_dict(cls, data: object) -> JobOutput:
        d = _obj(data, "job output")
        w = "job output"
        return cls(
            text=_field(d, "text", (str,), w),
            next_offset=_field(d, "next_offset", (int,), w),
            done=_field(d, "done", (bool,), w),
        )


def spool_text(out: Output) -> str:
    """How one output is written to a job's spool, in order with the others: stream text
    as it came; a traceback as text; rich data as its ``text/plain`` followed by one line
    naming its other MIME types and their sizes (the full data is in the result's
    ``outputs``); a kernelsup notice as a bracketed line."""
    if out.type == "stream":
        return out.text or ""
    if out.type == "error":
        text = out.text or ""
        return text if text.endswith("\n") else text + "\n"
    if out.type == "notice":
        return f"[kernelsup: {out.text or out.name or 'notice'}]\n"
    data = out.data or {}
    plain = data.get("text/plain")
    parts = []
    if isinstance(plain, str) and plain:
        parts.append(plain if plain.endswith("\n") else plain + "\n")
    others = [
        f"{mime} ({len(v) if isinstance(v, str) else len(repr(v))} bytes)"
        for mime, v in data.items()
        if mime != "text/plain"
    ]
    if others:
        parts.append(f"[{out.type}: {', '.join(others)}]\n")
    return "".join(parts)


def page_end(chunk: bytes) -> int:
    """Where a page of UTF-8 bytes may end without splitting a character: ``len(chunk)``,
    or earlier by at most 3 bytes (an incomplete character at the end waits for the next
    page). 0 only for an empty chunk or one made of a lone partial character."""
    end = len(chunk)
    # Step back over continuation bytes (10xxxxxx) to the lead byte of the last character.
    i = end - 1
    while i >= 0 and end - i <= 4 and chunk[i] & 0xC0 == 0x80:
        i -= 1
    if i < 0 or end - i > 4:
        return end
    lead = chunk[i]
    need = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
    return end if end - i >= need else i


def env_problem(env: object) -> str | None:
    """Why ``env`` cannot be a session's environment (one line), or None."""
    if not isinstance(env, Mapping):
        return f"env must be a mapping of names to strings, not {type(env).__name__}"
    if len(env) > MAX_SESSION_ENV_VARS:
        return f"env holds {len(env)} variables; at most {MAX_SESSION_ENV_VARS}"
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"env names and values must be strings (got {key!r}: {type(value).__name__})"
        if not key or "=" in key or "\0" in key:
            return f"env name {key[:40]!r} is invalid: non-empty, without '=' or NUL"
        if "\0" in value:
            return f"env value of {key[:40]!r} contains a NUL character"
        total += len(key.encode()) + len(value.encode())
    if total > MAX_SESSION_ENV_BYTES:
        return f"env holds {total} bytes; at most {MAX_SESSION_ENV_BYTES}"
    return None


__all__ = [
    "JOB_LIVE",
    "MAX_SESSION_ENV_BYTES",
    "MAX_SESSION_ENV_VARS",
    "JobInfo",
    "JobOutput",
    "JobStatus",
    "SessionInfo",
    "env_problem",
    "page_end",
    "spool_text",
]
