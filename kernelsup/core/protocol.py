"""The messages between clients and the control endpoint: encode, decode, sign, version.

Pure: no trio, no zmq. Signing and framing are jupyter_client's ``Session`` (through
:class:`kernelsup.core.wire.Wire`): HMAC-SHA256 with the key from the 0600 key file
beside the endpoint.

Theory of operation
-------------------
A message is a Jupyter-style multipart message. ``msg_type`` names the request or reply;
``content`` holds its fields plus ``v``, the :data:`PROTOCOL_VERSION`. A request's
``msg_id`` is its *request id*; every reply to it carries the request's header as its
parent header, so one connection can carry many requests at once.

Requests (client -> server), and what comes back::

    hello                                    -> result {protocol, server, ping_interval_s,
                                                         max_message_bytes}
    execute {code, pool?, session?, timeout?, stream?, fresh?}
                                             -> output* (stream only), result {ExecuteResult}
    status                                   -> result {StatusReport}
    interrupt {kernel_id | session} | restart {kernel_id | session} -> result {}
    close_session {session}                  -> result {closed}
    open_session {name?, pool?, cwd?, env?, idle_timeout?, lifetime?}
                                             -> result {session: SessionInfo}
    sessions                                 -> result {sessions: [SessionInfo]}
    submit {code, session?, pool?, timeout?} -> result {job: JobInfo}
    job {job_id}                             -> result {job: JobInfo}
    wait {job_id, timeout?}                  -> result {result: ExecuteResult | null}
    job_output {job_id, offset?, limit?}     -> result {JobOutput}
    cancel_job {job_id}                      -> result {cancelled}
    jobs                                     -> result {jobs: [JobInfo]}
    put_file {session, path, data (base64)}  -> result {size}
    get_file {session, path}                 -> result {data (base64)}
    list_files {session, path?}              -> result {names}
    watch                                    -> subscribed, event*, until cancelled
    cancel {request_id}                      -> result {cancelled}; the target request ends
                                                with its own final reply
    server_stats                             -> result {counters}

Every request gets exactly one *final* reply, ``result`` or ``error {code, type, message,
data}``; before it, ``output``/``event`` (droppable: a slow reader may miss some),
``lagged {dropped}`` (how many it missed) and ``subscribed``. ``ping`` (no parent) comes
from the server while a client has requests in flight and nothing else was sent to it for
a while: the client learns the server lives, the server learns the client still listens.

A message the server cannot verify (unsigned, wrongly signed, not a message at all) is
answered with an unsigned *notice*: ``[NOTICE, JSON {code, message}]``. It cannot be
signed usefully, since the sender may not hold the key. A client treats a notice as the
server's word on its connection (``auth_failed``: wrong key), never as a reply.

Versioning: a request whose ``v`` differs from this server's gets ``error`` with code
``protocol_version``. The ``error`` reply, the notice and ``hello`` keep their shape in
every version, so an old client always understands why it was refused.

Decoding never raises anything but :class:`ProtocolError` (malformed, oversized,
unknown_type, protocol_version) or :class:`AuthenticationError` (auth_failed: unsigned,
bad signature, replayed) -- together :data:`DECODE_ERRORS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

import attrs

from kernelsup.core import errors
from kernelsup.core.errors import AuthenticationError, KernelsupError, ProtocolError
from kernelsup.core.results import Output
from kernelsup.core.wire import Message, Wire, WireError, pack

PROTOCOL_VERSION = 1

# Beside the key file in the runtime directory: the endpoint the server actually bound
# (a tcp://...:* endpoint gets its port only then), for clients that start from a config.
ENDPOINT_FILE = "control.endpoint"
# The first frame of an unsigned notice; never a valid identity or Jupyter delimiter.
NOTICE = b"kernelsup-notice"
# A request is [*identities, DELIM, signature, header, parent, metadata, content]; we use
# no buffers, so more frames than this is not one of our messages.
MAX_FRAMES = 16
# Notices are short; cap the text a hostile or buggy server can make a client print.
MAX_NOTICE_BYTES = 4096

DECODE_ERRORS: tuple[type[KernelsupError], ...] = (ProtocolError, AuthenticationError)


def _malformed(message: str, **data: Any) -> ProtocolError:
    return ProtocolError(message, code="malformed", **data)


# --- requests -------------------------------------------------------------------------


@attrs.frozen
class Hello:
    TYPE: ClassVar[str] = "hello"


@attrs.frozen
class Execute:
    TYPE: ClassVar[str] = "execute"
    code: str
    pool: str | None = None
    session: str | None = None
    timeout: float | None = None
    stream: bool = False
    fresh: bool = False  # on a kernel that never ran anything, destroyed after


@attrs.frozen
class Status:
    TYPE: ClassVar[str] = "status"


@attrs.frozen
class Interrupt:
    TYPE: ClassVar[str] = "interrupt"
    kernel_id: str | None = None
    session: str | None = None


@attrs.frozen
class Restart:
    TYPE: ClassVar[str] = "restart"
    kernel_id: str | None = None
    session: str | None = None


@attrs.frozen
class CloseSession:
    TYPE: ClassVar[str] = "close_session"
    session: str


@attrs.frozen
class OpenSession:
    TYPE: ClassVar[str] = "open_session"
    name: str | None = None
    pool: str | None = None
    cwd: str | None = None
    env: dict[str, Any] | None = None
    idle_timeout: float | None = None
    lifetime: float | None = None


@attrs.frozen
class Sessions:
    TYPE: ClassVar[str] = "sessions"


@attrs.frozen
class Submit:
    TYPE: ClassVar[str] = "submit"
    code: str
    session: str | None = None
    pool: str | None = None
    timeout: float | None = None


@attrs.frozen
class JobQuery:
    TYPE: ClassVar[str] = "job"
    job_id: str


@attrs.frozen
class WaitJob:
    TYPE: ClassVar[str] = "wait"
    job_id: str
    timeout: float | None = None


@attrs.frozen
class JobOutputQuery:
    TYPE: ClassVar[str] = "job_output"
    job_id: str
    offset: int = 0
    limit: int = 65536


@attrs.frozen
class CancelJob:
    TYPE: ClassVar[str] = "cancel_job"
    job_id: str


@attrs.frozen
class Jobs:
    TYPE: ClassVar[str] = "jobs"


@attrs.frozen
class PutFile:
    TYPE: ClassVar[str] = "put_file"
    session: str
    path: str
    data: str  # base64


@attrs.frozen
class GetFile:
    TYPE: ClassVar[str] = "get_file"
    session: str
    path: str


@attrs.frozen
class ListFiles:
    TYPE: ClassVar[str] = "list_files"
    session: str
    path: str = "."


@attrs.frozen
class Snapshot:
    TYPE: ClassVar[str] = "snapshot"
    session: str


@attrs.frozen
class Restore:
    TYPE: ClassVar[str] = "restore"
    session: str
    snapshot_id: str | None = None


@attrs.frozen
class ForkSession:
    TYPE: ClassVar[str] = "fork_session"
    source: str
    name: str


@attrs.frozen
class Watch:
    TYPE: ClassVar[str] = "watch"


@attrs.frozen
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    request_id: str


@attrs.frozen
class ServerStats:
    TYPE: ClassVar[str] = "server_stats"


Request: TypeAlias = (
    Hello
    | Execute
    | Status
    | Interrupt
    | Restart
    | CloseSession
    | OpenSession
    | Sessions
    | Submit
    | JobQuery
    | WaitJob
    | JobOutputQuery
    | CancelJob
    | Jobs
    | PutFile
    | GetFile
    | ListFiles
    | Snapshot
    | Restore
    | ForkSession
    | Watch
    | Cancel
    | ServerStats
)


@attrs.frozen
class Incoming:
    """A verified, decoded request."""

    request_id: str
    request: Request


# --- replies --------------------------------------------------------------------------


@attrs.frozen
class Result:
    """Final: the request's value (an ExecuteResult's or StatusReport's ``to_dict()``...)."""

    TYPE: ClassVar[str] = "result"
    value: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Error:
    """Final: the request failed. ``type`` names the class in :mod:`kernelsup.core.errors`."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    type: str = "KernelsupError"
    data: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_exception(cls, exc: KernelsupError) -> Error:
        data = {k: _jsonable(v) for k, v in exc.data.items() if k not in ("code", "message")}
        return cls(exc.code, exc.message, _error_type_name(exc), data)

    def to_exception(self) -> KernelsupError:
        """The typed error for this reply: ``Rejected`` for ``unknown_kernel``..."""
        cls = _ERROR_CLASSES.get(self.type) or _class_for_code(self.code)
        data = {k: v for k, v in self.data.items() if k not in ("code", "message")}
        return cls(self.message, code=self.code, **data)


@attrs.frozen
class OutputMsg:
    TYPE: ClassVar[str] = "output"
    output: Output


@attrs.frozen
class EventMsg:
    """One event; ``event`` is ``Event.to_dict()`` (parsed by ``Event.from_dict``)."""

    TYPE: ClassVar[str] = "event"
    event: dict[str, Any]


@attrs.frozen
class Lagged:
    """The reader fell behind: ``dropped`` outputs or events of this request were skipped."""

    TYPE: ClassVar[str] = "lagged"
    dropped: int


@attrs.frozen
class Subscribed:
    """A watch is in place: every event published from now on is sent (or counted)."""

    TYPE: ClassVar[str] = "subscribed"


@attrs.frozen
class Ping:
    TYPE: ClassVar[str] = "ping"


@attrs.frozen
class Notice:
    """Unsigned word from the server about a message it could not verify."""

    code: str
    message: str


Reply: TypeAlias = Result | Error | OutputMsg | EventMsg | Lagged | Subscribed | Ping
FINAL_REPLIES: tuple[type, ...] = (Result, Error)


@attrs.frozen
class Received:
    """A decoded server message: a reply (to ``request_id``, None for a ping) or a notice."""

    request_id: str | None
    reply: Reply | Notice


# --- field checks ---------------------------------------------------------------------

_Check = Callable[[str, object], Any]


def _str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _malformed(f"field {name!r} must be a string, not {type(value).__name__}", field=name)
    return value


def _opt_str(name: str, value: object) -> str | None:
    return None if value is None else _str(name, value)


def _finite(name: str, value: float) -> float:
    """``value`` as a finite float. JSON integers are unbounded: one past the float range
    (``float()`` would raise OverflowError) is refused like inf, without printing it."""
    try:
        number = float(value)
    except OverflowError:
        huge = f"field {name!r} must be a finite number (got a huge integer)"
        raise _malformed(huge, field=name) from None
    if not math.isfinite(number):
        raise _malformed(f"field {name!r} must be a finite number (got {number!r})", field=name)
    return number


def _timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _malformed(f"field {name!r} must be a number or null", field=name)
    number = _finite(name, value)
    if not number > 0:
        raise _malformed(f"field {name!r} must be a finite number > 0 (got {value!r})", field=name)
    return number


def _opt_seconds(name: str, value: object) -> float | None:
    """None, or a finite number >= 0 (the supervisor checks the finer rules)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _malformed(f"field {name!r} must be a number or null", field=name)
    number = _finite(name, value)
    if not number >= 0:
        raise _malformed(f"field {name!r} must be a finite number >= 0 (got {value!r})", field=name)
    return number


def _offset(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _malformed(f"field {name!r} must be an integer >= 0", field=name)
    return value


def _opt_object(name: str, value: object) -> dict[str, Any] | None:
    return None if value is None else _object(name, value)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _malformed(f"field {name!r} must be true or false", field=name)
    return value


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _malformed(f"field {name!r} must be an integer >= 1", field=name)
    return value


def _object(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(f"field {name!r} must be an object", field=name)
    return value


def _output(name: str, value: object) -> Output:
    return Output.from_dict(value)


# type -> (class, {field: (check, required)})
_Spec = tuple[type, dict[str, tuple[_Check, bool]]]
_REQUESTS: dict[str, _Spec] = {
    Hello.TYPE: (Hello, {}),
    Execute.TYPE: (
        Execute,
        {
            "code": (_str, True),
            "pool": (_opt_str, False),
            "session": (_opt_str, False),
            "timeout": (_timeout, False),
            "stream": (_bool, False),
            "fresh": (_bool, False),
        },
    ),
    Status.TYPE: (Status, {}),
    Interrupt.TYPE: (Interrupt, {"kernel_id": (_opt_str, False), "session": (_opt_str, False)}),
    Restart.TYPE: (Restart, {"kernel_id": (_opt_str, False), "session": (_opt_str, False)}),
    CloseSession.TYPE: (CloseSession, {"session": (_str, True)}),
    OpenSession.TYPE: (
        OpenSession,
        {
            "name": (_opt_str, False),
            "pool": (_opt_str, False),
            "cwd": (_opt_str, False),
            "env": (_opt_object, False),
            "idle_timeout": (_opt_seconds, False),
            "lifetime": (_opt_seconds, False),
        },
    ),
    Sessions.TYPE: (Sessions, {}),
    Submit.TYPE: (
        Submit,
        {
            "code": (_str, True),
            "session": (_opt_str, False),
            "pool": (_opt_str, False),
            "timeout": (_timeout, False),
        },
    ),
    JobQuery.TYPE: (JobQuery, {"job_id": (_str, True)}),
    WaitJob.TYPE: (WaitJob, {"job_id": (_str, True), "timeout": (_opt_seconds, False)}),
    JobOutputQuery.TYPE: (
        JobOutputQuery,
        {"job_id": (_str, True), "offset": (_offset, False), "limit": (_count, False)},
    ),
    CancelJob.TYPE: (CancelJob, {"job_id": (_str, True)}),
    Jobs.TYPE: (Jobs, {}),
    PutFile.TYPE: (PutFile, {"session": (_str, True), "path": (_str, True), "data": (_str, True)}),
    GetFile.TYPE: (GetFile, {"session": (_str, True), "path": (_str, True)}),
    ListFiles.TYPE: (ListFiles, {"session": (_str, True), "path": (_str, False)}),
    Snapshot.TYPE: (Snapshot, {"session": (_str, True)}),
    Restore.TYPE: (Restore, {"session": (_str, True), "snapshot_id": (_opt_str, False)}),
    ForkSession.TYPE: (ForkSession, {"source": (_str, True), "name": (_str, True)}),
    Watch.TYPE: (Watch, {}),
    Cancel.TYPE: (Cancel, {"request_id": (_str, True)}),
    ServerStats.TYPE: (ServerStats, {}),
}
_REPLIES: dict[str, _Spec] = {
    Result.TYPE: (Result, {"value": (_object, True)}),
    Error.TYPE: (
        Error,
        {
            "code": (_str, True),
            "message": (_str, True),
            "type": (_str, False),
            "data": (_object, False),
        },
    ),
    OutputMsg.TYPE: (OutputMsg, {"output": (_output, True)}),
    EventMsg.TYPE: (EventMsg, {"event": (_object, True)}),
    Lagged.TYPE: (Lagged, {"dropped": (_count, True)}),
    Subscribed.TYPE: (Subscribed, {}),
    Ping.TYPE: (Ping, {}),
}
REQUEST_TYPES: frozenset[str] = frozenset(_REQUESTS)
REPLY_TYPES: frozenset[str] = frozenset(_REPLIES)


def _build(spec: _Spec, content: Mapping[str, Any], what: str) -> Any:
    cls, fields = spec
    unknown = sorted(set(content) - set(fields) - {"v"})
    if unknown:
        raise _malformed(f"{what}: unknown field {unknown[0]!r}", field=unknown[0])
    kwargs = {}
    for name, (check, required) in fields.items():
        if name in content:
            kwargs[name] = check(name, content[name])
        elif required:
            raise _malformed(f"{what}: field {name!r} is missing", field=name)
    return cls(**kwargs)


def _content(obj: Any) -> dict[str, Any]:
    """The content dict of a request or reply (its attrs fields, ``v`` first)."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION}
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        body[field.name] = value.to_dict() if isinstance(value, Output) else value
    return body


# --- the codec ------------------------------------------------------------------------


class Codec:
    """Signs and verifies with one key; encodes and decodes both directions.

    One per socket: jupyter_client's Session remembers recent signatures to refuse
    replays, so a server's codec refuses a request it has already seen.
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the key must not be empty: unsigned messages are refused")
        self._wire = Wire(key, username="kernelsup")

    # -- client side --

    def encode_request(self, request: Request) -> tuple[str, list[bytes]]:
        """``(request_id, frames)`` for a new, signed request. Raises ProtocolError
        (``malformed``, naming the field) for a value JSON cannot carry: text with a lone
        surrogate, an object that is not JSON."""
        content = _content(request)
        try:
            return self._wire.build(request.TYPE, content)
        except (TypeError, ValueError) as exc:
            bad = [name for name, value in content.items() if not _packable(value)]
            field = bad[0] if bad else "?"
            raise _malformed(
                f"{request.TYPE} request: field {field!r} cannot be sent as JSON "
                f"({type(exc).__name__}: {str(exc)[:200]})",
                field=field,
            ) from None

    def decode_reply(self, frames: Sequence[bytes]) -> Received:
        """Verify and decode what the server sent; raises one of :data:`DECODE_ERRORS`."""
        if frames and frames[0] == NOTICE:
            return Received(None, decode_notice(frames))
        message = self._parse(frames)
        spec = _REPLIES.get(message.msg_type)
        if spec is None:
            raise ProtocolError(
                f"unknown reply type {message.msg_type!r}",
                code="unknown_type",
                msg_type=message.msg_type,
            )
        reply = _build(spec, message.content, f"{message.msg_type} reply")
        return Received(message.parent_id, reply)

    # -- server side --

    def decode_request(self, frames: Sequence[bytes], *, max_bytes: int) -> Incoming:
        """Verify and decode a request (the frames after the ROUTER's identity frame).

        Raises one of :data:`DECODE_ERRORS`; once the signature is good, the error's
        ``data["request_id"]`` names the request, so the reply can say which one failed.
        """
        size = sum(len(f) for f in frames)
        if size > max_bytes:
            raise ProtocolError(
                f"message of {size} bytes exceeds max_message_bytes ({max_bytes})",
                code="oversized",
                size=size,
            )
        message = self._parse(frames)
        rid = message.msg_id
        version = message.content.get("v")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                _version_mismatch(version),
                code="protocol_version",
                request_id=rid,
                client_version=_jsonable(version),
                server_version=PROTOCOL_VERSION,
            )
        spec = _REQUESTS.get(message.msg_type)
        if spec is None:
            raise ProtocolError(
                f"unknown request type {message.msg_type!r} (known: "
                f"{', '.join(sorted(_REQUESTS))})",
                code="unknown_type",
                request_id=rid,
                msg_type=message.msg_type,
            )
        try:
            request = _build(spec, message.content, f"{message.msg_type} request")
        except ProtocolError as exc:
            exc.data["request_id"] = rid
            raise
        return Incoming(rid, request)

    def encode_reply(
        self, reply: Reply, *, request_id: str | None, identity: bytes | None = None
    ) -> list[bytes]:
        """Signed frames for ``reply`` to ``request_id`` (None: not a reply, a ping),
        prefixed with the ROUTER ``identity`` when given."""
        parent = (
            None
            if request_id is None
            else Message(
                msg_type="request",
                msg_id=request_id,
                parent_id=None,
                content={},
                header={"msg_id": request_id},
            )
        )
        idents = [identity] if identity is not None else []
        _, frames = self._wire.build(reply.TYPE, _content(reply), parent=parent, identities=idents)
        return frames

    # -- both --

    def _parse(self, frames: Sequence[bytes]) -> Message:
        if len(frames) > MAX_FRAMES:
            raise _malformed(
                f"{len(frames)} frames is not a kernelsup message (at most {MAX_FRAMES})"
            )
        try:
            message = self._wire.parse(frames)
        except WireError as exc:
            raise _classify(exc) from None
        if message.buffers:
            raise _malformed("kernelsup messages carry no buffers", request_id=message.msg_id)
        return message


def _packable(value: object) -> bool:
    try:
        pack(value)
    except (TypeError, ValueError):
        return False
    return True


def _classify(error: WireError) -> KernelsupError:
    """A WireError, as our typed error."""
    reason, text = error.reason, str(error)
    if reason == "unsigned":
        return AuthenticationError(
            "the message is not signed; the key is in the key file beside the endpoint",
            reason="unsigned",
        )
    if reason == "bad_signature":
        return AuthenticationError(
            "the signature does not match: the client's key is not "
            "this server's (it makes a fresh key at each start; "
            "read it from the key file again)",
            reason="bad_signature",
        )
    if reason == "replayed":
        return AuthenticationError(
            "a message with this signature was already received (a replay)", reason="replayed"
        )
    return _malformed(f"not a kernelsup message ({text[:200]})")


def _version_mismatch(version: object) -> str:
    if version is None:
        return (
            f"the request has no protocol version; this server speaks kernelsup "
            f"protocol {PROTOCOL_VERSION}"
        )
    older = (
        isinstance(version, int) and not isinstance(version, bool) and version < PROTOCOL_VERSION
    )
    side = "client" if older else "server"
    return (
        f"the client speaks kernelsup protocol {version!r}, this server speaks "
        f"{PROTOCOL_VERSION}: upgrade kernelsup on the {side}"
    )


# --- notices --------------------------------------------------------------------------


def encode_notice(code: str, message: str, *, identity: bytes | None = None) -> list[bytes]:
    """Unsigned frames telling a peer why its message was refused (see the top)."""
    body = json.dumps({"v": PROTOCOL_VERSION, "code": code, "message": message})
    return [*([identity] if identity is not None else []), NOTICE, body.encode()[:MAX_NOTICE_BYTES]]


def decode_notice(frames: Sequence[bytes]) -> Notice:
    """Raises ProtocolError if ``frames`` is not a well-formed notice."""
    if len(frames) != 2 or frames[0] != NOTICE or len(frames[1]) > MAX_NOTICE_BYTES:
        raise _malformed("malformed notice")
    try:
        body = json.loads(frames[1])
    except (ValueError, RecursionError):
        raise _malformed("malformed notice: not JSON") from None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("code"), str)
        or not isinstance(body.get("message"), str)
    ):
        raise _malformed("malformed notice: expected {code, message}")
    return Notice(body["code"], body["message"])


def notice_error(notice: Notice) -> KernelsupError:
    """The client-side exception for a notice from the server."""
    cls: type[KernelsupError] = (
        AuthenticationError if notice.code == "auth_failed" else ProtocolError
    )
    return cls(f"the server refused our message: {notice.message}", code=notice.code)


# --- errors across the wire -----------------------------------------------------------

_ERROR_CLASSES: dict[str, type[KernelsupError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, KernelsupError)
}
_PROTOCOL_CODES = frozenset(
    {"malformed", "oversized", "unknown_type", "protocol_version", "protocol_error"}
)


def _error_type_name(exc: KernelsupError) -> str:
    """The nearest class of :mod:`kernelsup.core.errors` (a private subclass maps to its base)."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _ERROR_CLASSES and _ERROR_CLASSES[cls.__name__] is cls:
            return cls.__name__
    return KernelsupError.__name__


def _class_for_code(code: str) -> type[KernelsupError]:
    if code == "auth_failed":
        return AuthenticationError
    if code in _PROTOCOL_CODES:
        return ProtocolError
    return KernelsupError


def _jsonable(value: object) -> Any:
    """``value`` if it is JSON-ready, its ``to_dict()`` if it has one, else its str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _jsonable(to_dict())
    return str(value)


__all__ = [
    "DECODE_ERRORS",
    "ENDPOINT_FILE",
    "FINAL_REPLIES",
    "MAX_FRAMES",
    "NOTICE",
    "PROTOCOL_VERSION",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "Cancel",
    "CancelJob",
    "CloseSession",
    "Codec",
    "Error",
    "EventMsg",
    "Execute",
    "GetFile",
    "Hello",
    "Incoming",
    "Interrupt",
    "JobOutputQuery",
    "JobQuery",
    "Jobs",
    "Lagged",
    "ListFiles",
    "Notice",
    "OpenSession",
    "OutputMsg",
    "Ping",
    "PutFile",
    "Received",
    "Reply",
    "Request",
    "Restart",
    "Result",
    "ServerStats",
    "Sessions",
    "Status",
    "Submit",
    "Subscribed",
    "WaitJob",
    "Watch",
    "decode_notice",
    "encode_notice",
    "notice_error",
]
