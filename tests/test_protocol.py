"""protocol.py: round trips, every refusal as a typed error, and hostile bytes.

Pure module, plain synchronous tests. Frames that must get past the signature check are
signed with jupyter_client's own ``Session.sign``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jupyter_client.session import Session

from kernelsup.core import protocol as proto
from kernelsup.core.errors import (
    AuthenticationError,
    KernelStartError,
    KernelsupError,
    ProtocolError,
    Rejected,
)
from kernelsup.core.results import ErrorInfo, ExecuteResult, ExitCause, Output, StatusReport

KEY = b"protocol-test-key"
DELIM = b"<IDS|MSG>"
MAX = 1 << 20


def codec() -> proto.Codec:
    return proto.Codec(KEY)


def signed(
    msg_type: str,
    content: Any,
    *,
    key: bytes = KEY,
    raw_content: bytes | None = None,
    msg_id: str = "req-1",
    extra: tuple[bytes, ...] = (),
) -> list[bytes]:
    """A request with arbitrary content, validly signed (as a client holding the key)."""
    header = {
        "msg_id": msg_id,
        "msg_type": msg_type,
        "session": "s",
        "username": "u",
        "version": "5.3",
        "date": "2026-01-01T00:00:00Z",
    }
    body = [
        json.dumps(header).encode(),
        b"{}",
        b"{}",
        raw_content if raw_content is not None else json.dumps(content).encode(),
    ]
    return [DELIM, Session(key=key).sign(body), *body, *extra]


# --- round trips ------------------------------------------------------------------------

REQUESTS: list[proto.Request] = [
    proto.Hello(),
    proto.Execute("print('héllo 世界')"),
    proto.Execute("1", pool="gpu", session="agent-1", timeout=2.5, stream=True),
    proto.Status(),
    proto.Interrupt("default-0"),
    proto.Restart("default-1"),
    proto.CloseSession("agent-1"),
    proto.Watch(),
    proto.Cancel("some-request"),
    proto.ServerStats(),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_request_round_trip(request_: proto.Request) -> None:
    rid, frames = codec().encode_request(request_)
    incoming = codec().decode_request(frames, max_bytes=MAX)
    assert incoming == proto.Incoming(rid, request_)


REPLIES: list[proto.Reply] = [
    proto.Result({"status": "ok", "nested": {"a": [1, 2.5, None, True]}}),
    proto.Result(),
    proto.Error("unknown_kernel", "no kernel 'x'", "Rejected", {"kernel_id": "x"}),
    proto.OutputMsg(Output("stream", name="stdout", text="1\n")),
    proto.OutputMsg(
        Output("display_data", data={"text/plain": "x", "image/png": "AAA"}, metadata={"w": 1})
    ),
    proto.EventMsg(
        {
            "event": "kernel_exited",
            "time": 1.0,
            "seq": 3,
            "pool": "p",
            "kernel_id": "p-0",
            "text": "signal(9)",
        }
    ),
    proto.Lagged(17),
    proto.Subscribed(),
]


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: type(r).__name__)
def test_reply_round_trip(reply: proto.Reply) -> None:
    frames = codec().encode_reply(reply, request_id="req-9", identity=b"peer")
    assert frames[0] == b"peer"
    assert codec().decode_reply(frames[1:]) == proto.Received("req-9", reply)


def test_ping_has_no_request_id() -> None:
    frames = codec().encode_reply(proto.Ping(), request_id=None)
    assert codec().decode_reply(frames) == proto.Received(None, proto.Ping())


def test_notice_round_trip_and_its_error() -> None:
    frames = proto.encode_notice("auth_failed", "bad signature", identity=b"peer")
    received = codec().decode_reply(frames[1:])
    assert received == proto.Received(None, proto.Notice("auth_failed", "bad signature"))
    assert isinstance(received.reply, proto.Notice)
    err = proto.notice_error(received.reply)
    assert isinstance(err, AuthenticationError) and err.code == "auth_failed"
    other = proto.notice_error(proto.Notice("malformed", "x"))
    assert isinstance(other, ProtocolError) and other.code == "malformed"


@pytest.mark.parametrize(
    "frames",
    [
        [proto.NOTICE],
        [proto.NOTICE, b"not json"],
        [proto.NOTICE, b"[1, 2]"],
        [proto.NOTICE, b'{"code": 1, "message": "x"}'],
        [proto.NOTICE, b"{}", b"extra"],
        [proto.NOTICE, b"x" * (proto.MAX_NOTICE_BYTES + 1)],
    ],
)
def test_malformed_notice(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError) as info:
        codec().decode_reply(frames)
    assert info.value.code == "malformed"


# --- what the server refuses ------------------------------------------------------------


def _unsigned() -> list[bytes]:
    _, frames = codec().encode_request(proto.Status())
    return [frames[0], b"", *frames[2:]]


def _other_key() -> list[bytes]:
    return proto.Codec(b"another-key").encode_request(proto.Status())[1]


REFUSALS: list[tuple[str, Any, type[KernelsupError], str, str | None]] = [
    # (id, frames or a maker, error class, code, detail that must appear)
    ("unsigned", _unsigned, AuthenticationError, "auth_failed", "not signed"),
    ("wrong key", _other_key, AuthenticationError, "auth_failed", "signature"),
    ("no delimiter", [b"hello"], ProtocolError, "malformed", None),
    ("empty", [], ProtocolError, "malformed", None),
    ("delimiter only", [DELIM], ProtocolError, "malformed", None),
    (
        "half a message",
        lambda: signed("status", {"v": 1})[:3],
        AuthenticationError,
        "auth_failed",
        None,
    ),
    ("too many frames", [DELIM] * (proto.MAX_FRAMES + 1), ProtocolError, "malformed", "frames"),
    (
        "buffers",
        lambda: signed("status", {"v": 1}, extra=(b"buf",)),
        ProtocolError,
        "malformed",
        "buffers",
    ),
    (
        "oversized",
        lambda: signed("execute", {"v": 1, "code": "x" * MAX}),
        ProtocolError,
        "oversized",
        "max_message_bytes",
    ),
    (
        "content not JSON",
        lambda: signed("status", None, raw_content=b"{nope"),
        ProtocolError,
        "malformed",
        None,
    ),
    ("content not an object", lambda: signed("status", [1]), ProtocolError, "malformed", None),
    (
        "no version",
        lambda: signed("status", {}),
        ProtocolError,
        "protocol_version",
        "no protocol version",
    ),
    (
        "older client",
        lambda: signed("status", {"v": 0}),
        ProtocolError,
        "protocol_version",
        "upgrade kernelsup on the client",
    ),
    (
        "newer client",
        lambda: signed("status", {"v": 2}),
        ProtocolError,
        "protocol_version",
        "upgrade kernelsup on the server",
    ),
    (
        "version as string",
        lambda: signed("status", {"v": "1"}),
        ProtocolError,
        "protocol_version",
        None,
    ),
    (
        "unknown type",
        lambda: signed("launch_missiles", {"v": 1}),
        ProtocolError,
        "unknown_type",
        "launch_missiles",
    ),
    (
        "reply type as request",
        lambda: signed("result", {"v": 1}),
        ProtocolError,
        "unknown_type",
        None,
    ),
    (
        "missing field",
        lambda: signed("execute", {"v": 1}),
        ProtocolError,
        "malformed",
        "'code' is missing",
    ),
    (
        "unknown field",
        lambda: signed("status", {"v": 1, "verbose": True}),
        ProtocolError,
        "malformed",
        "verbose",
    ),
    (
        "code not a string",
        lambda: signed("execute", {"v": 1, "code": 1}),
        ProtocolError,
        "malformed",
        "'code'",
    ),
    (
        "timeout zero",
        lambda: signed("execute", {"v": 1, "code": "", "timeout": 0}),
        ProtocolError,
        "malformed",
        "> 0",
    ),
    (
        "timeout negative",
        lambda: signed("execute", {"v": 1, "code": "", "timeout": -1}),
        ProtocolError,
        "malformed",
        "> 0",
    ),
    (
        "timeout NaN",
        lambda: signed("execute", None, raw_content=b'{"v": 1, "code": "", "timeout": NaN}'),
        ProtocolError,
        "malformed",
        "finite",
    ),
    (
        "timeout Infinity",
        lambda: signed("execute", None, raw_content=b'{"v": 1, "code": "", "timeout": 1e999}'),
        ProtocolError,
        "malformed",
        "finite",
    ),
    (
        "timeout bool",
        lambda: signed("execute", {"v": 1, "code": "", "timeout": True}),
        ProtocolError,
        "malformed",
        "number",
    ),
    (
        "stream not bool",
        lambda: signed("execute", {"v": 1, "code": "", "stream": 1}),
        ProtocolError,
        "malformed",
        "'stream'",
    ),
    (
        "pool not string",
        lambda: signed("execute", {"v": 1, "code": "", "pool": ["a"]}),
        ProtocolError,
        "malformed",
        "'pool'",
    ),
    (
        "kernel id not a string",
        lambda: signed("interrupt", {"v": 1, "kernel_id": 5}),
        ProtocolError,
        "malformed",
        "'kernel_id'",
    ),
]


@pytest.mark.parametrize(
    ("frames", "cls", "code", "detail"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusals_are_typed(
    frames: Any, cls: type[KernelsupError], code: str, detail: str | None
) -> None:
    frames = frames() if callable(frames) else frames
    with pytest.raises(proto.DECODE_ERRORS) as info:
        codec().decode_request(frames, max_bytes=MAX)
    assert type(info.value) is cls
    assert info.value.code == code
    if detail is not None:
        assert detail in info.value.message


def test_a_signed_refusal_names_the_request() -> None:
    """Once the signature is good the server can answer the request by id."""
    with pytest.raises(ProtocolError) as info:
        codec().decode_request(signed("execute", {"v": 1}, msg_id="abc"), max_bytes=MAX)
    assert info.value.data["request_id"] == "abc"
    with pytest.raises(ProtocolError) as info:
        codec().decode_request(signed("status", {"v": 7}, msg_id="abd"), max_bytes=MAX)
    assert info.value.data == {"request_id": "abd", "client_version": 7, "server_version": 1}


def test_a_replayed_request_is_refused() -> None:
    server = codec()
    _, frames = codec().encode_request(proto.Status())
    server.decode_request(frames, max_bytes=MAX)
    with pytest.raises(AuthenticationError) as info:
        server.decode_request(frames, max_bytes=MAX)
    assert info.value.data["reason"] == "replayed"


def test_unknown_reply_type_and_bad_reply_fields() -> None:
    server = Session(key=KEY)
    msg = server.msg("teleport", {"v": 1})
    with pytest.raises(ProtocolError) as info:
        codec().decode_reply(server.serialize(msg))
    assert info.value.code == "unknown_type"
    msg = server.msg("lagged", {"v": 1, "dropped": 0})
    with pytest.raises(ProtocolError):
        codec().decode_reply(server.serialize(msg))
    msg = server.msg("output", {"v": 1, "output": {"type": 3}})
    with pytest.raises(ProtocolError):
        codec().decode_reply(server.serialize(msg))


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        proto.Codec(b"")


# --- errors across the wire -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (Rejected("no kernel with id 'x'", code="unknown_kernel", kernel_id="x"), Rejected),
        (AuthenticationError("bad"), AuthenticationError),
        (KernelsupError("boom", code="endpoint_in_use"), KernelsupError),
        (KernelStartError("never ready", cause=ExitCause("start_timeout")), KernelStartError),
    ],
)
def test_error_reply_round_trip(exc: KernelsupError, cls: type[KernelsupError]) -> None:
    reply = proto.Error.from_exception(exc)
    frames = codec().encode_reply(reply, request_id="r")
    received = codec().decode_reply(frames).reply
    assert isinstance(received, proto.Error)
    back = received.to_exception()
    assert type(back) is cls
    assert (back.code, back.message) == (exc.code, exc.message)
    assert back.describe() == exc.describe()


def test_error_of_a_private_subclass_maps_to_its_public_base() -> None:
    class PoolGone(Rejected):
        code = "pool_gone"

    reply = proto.Error.from_exception(PoolGone("gone"))
    assert reply.type == "Rejected" and reply.code == "pool_gone"
    assert isinstance(reply.to_exception(), Rejected)


def test_error_of_an_unknown_type_maps_by_code() -> None:
    assert type(proto.Error("auth_failed", "x", "Future").to_exception()) is AuthenticationError
    assert type(proto.Error("oversized", "x", "Future").to_exception()) is ProtocolError
    assert type(proto.Error("whatever", "x", "Future").to_exception()) is KernelsupError


# --- results read back ------------------------------------------------------------------


def test_execute_result_from_dict_round_trip() -> None:
    full = ExecuteResult(
        "died",
        stdout="a\n",
        stderr="b\n",
        result="3",
        outputs=(
            Output("stream", name="stdout", text="a\n"),
            Output("display_data", data={"text/plain": "x"}, metadata={}),
            Output("notice", name="truncated", text="[cut]"),
        ),
        error=ErrorInfo("ZeroDivisionError", "division by zero", ("tb1", "tb2")),
        execution_count=4,
        kernel_id="default-0",
        session="s",
        queued_s=0.5,
        run_s=1.25,
        interrupted=True,
        kernel_restarted=True,
        state_lost=True,
        truncated_bytes=10,
        code="kernel_died",
        message="it died",
        cause=ExitCause("failure", signal=9),
    )
    assert ExecuteResult.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    minimal = ExecuteResult("ok")
    assert ExecuteResult.from_dict(minimal.to_dict()) == minimal
    assert ExecuteResult.from_dict({"status": "ok"}) == minimal


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"status": "fine"},
        {"status": 1},
        {"status": "ok", "stdout": 1},
        {"status": "ok", "outputs": {}},
        {"status": "ok", "outputs": [{"type": None}]},
        {"status": "ok", "error": {"ename": "x"}},
        {"status": "ok", "run_s": "1"},
        {"status": "ok", "interrupted": 1},
        {"status": "ok", "truncated_bytes": True},
        {"status": "ok", "cause": {"kind": "failure", "signal": "9"}},
        {"status": "ok", "error": {"ename": "E", "evalue": "v", "traceback": [1]}},
    ],
)
def test_execute_result_from_dict_refuses_malformed(data: Any) -> None:
    with pytest.raises(ProtocolError):
        ExecuteResult.from_dict(data)


def test_status_report_from_dict() -> None:
    report = StatusReport(kernels=({"id": "a", "state": "idle"},), pools=({"name": "p"},))
    assert StatusReport.from_dict(report.to_dict()) == report
    bad: Any
    for bad in ({"kernels": {}}, {"kernels": [1]}, {"kernels": [{"id": "a"}]}, []):
        with pytest.raises(ProtocolError):
            StatusReport.from_dict(bad)


# --- hostile bytes ----------------------------------------------------------------------

frames_strategy = st.lists(st.binary(max_size=200), max_size=20)


@settings(max_examples=300, deadline=None)
@given(frames_strategy)
def test_random_frames_only_give_decode_errors(frames: list[bytes]) -> None:
    with pytest.raises(proto.DECODE_ERRORS):
        codec().decode_request(frames, max_bytes=4096)
    try:
        codec().decode_reply(frames)
    except proto.DECODE_ERRORS:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(proto.REQUEST_TYPES | proto.REPLY_TYPES | {"x"})),
    st.one_of(
        st.binary(max_size=100),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "v",
                            "code",
                            "pool",
                            "timeout",
                            "stream",
                            "value",
                            "output",
                            "dropped",
                            "message",
                            "type",
                            "data",
                            "x",
                        ]
                    ),
                    inner,
                    max_size=5,
                )
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_signed_random_content_only_gives_decode_errors(
    msg_type: str,
    content: bytes,
) -> None:
    """Past the signature check, any content still gives a result or a typed error."""
    try:
        codec().decode_request(signed(msg_type, None, raw_content=content), max_bytes=MAX)
    except proto.DECODE_ERRORS:
        pass
    try:
        codec().decode_reply(signed(msg_type, None, raw_content=content))
    except proto.DECODE_ERRORS:
        pass
