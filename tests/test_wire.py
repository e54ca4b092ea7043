"""Wire: build/parse round trips, signatures, and garbage that must only ever be WireError.

Pure module, plain synchronous tests. Frames that must get past the signature check (to
reach the JSON decoding) are signed with jupyter_client's own ``Session.sign``.
"""

from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jupyter_client.session import Session

from kernelsup.core.wire import (
    ENVELOPE_PART_LIMIT,
    Message,
    Wire,
    WireError,
    peek,
    stream_fragments,
    text_bytes,
)

KEY = b"0123456789abcdef-test-key"
DELIM = b"<IDS|MSG>"
GOOD_HEADER = {
    "msg_id": "m-1",
    "msg_type": "stream",
    "session": "s",
    "username": "u",
    "version": "5.3",
}


def signed(
    header: Any,
    parent: Any = None,
    metadata: Any = None,
    content: Any = None,
    *,
    raw: tuple[bytes | None, ...] = (None, None, None, None),
    idents: tuple[bytes, ...] = (),
    buffers: tuple[bytes, ...] = (),
    key: bytes = KEY,
) -> list[bytes]:
    """Frames for the given parts (JSON-encoded unless a raw frame is given), validly signed."""
    parts = [
        header,
        {} if parent is None else parent,
        {} if metadata is None else metadata,
        {} if content is None else content,
    ]
    body = [r if r is not None else json.dumps(p).encode() for p, r in zip(parts, raw, strict=True)]
    sig = Session(key=key).sign(body)
    return [*idents, DELIM, sig, *body, *buffers]


# --- round trips ---------------------------------------------------------------------------

ROUND_TRIPS: list[tuple[str, dict[str, Any] | None]] = [
    (
        "execute_request",
        {
            "code": "print('héllo 世界 🎉')",
            "silent": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
    ),
    ("kernel_info_request", None),
    ("kernel_info_request", {}),
    ("comm_msg", {"data": {"nested": [1, 2.5, None, True, {"k": "ü"}]}, "comm_id": "c"}),
    ("interrupt_request", {"\u00e9t\u00e9": "\U0001f600", "zero": "\x00"}),
]


@pytest.mark.parametrize(("msg_type", "content"), ROUND_TRIPS)
def test_build_parse_round_trip(msg_type: str, content: dict[str, Any] | None) -> None:
    client, kernel = Wire(KEY), Wire(KEY)
    msg_id, frames = client.build(msg_type, content)
    msg = kernel.parse(frames)
    assert isinstance(msg, Message)
    assert msg.msg_type == msg_type
    assert msg.msg_id == msg_id
    assert msg.parent_id is None
    assert msg.content == (content or {})
    assert msg.header["session"] == client.session_id
    assert msg.header["msg_type"] == msg_type
    assert msg.identities == ()
    assert msg.buffers == ()


def test_parent_id_links_a_reply_to_its_request() -> None:
    client, kernel = Wire(KEY), Wire(KEY)
    req_id, frames = client.build("execute_request", {"code": "1"})
    request = kernel.parse(frames)
    reply_id, reply_frames = kernel.build(
        "execute_reply", {"status": "ok", "text": "ok ✓"}, parent=request
    )
    reply = client.parse(reply_frames)
    assert reply.parent_id == req_id
    assert reply.msg_id == reply_id != req_id
    assert reply.msg_type == "execute_reply"
    assert reply.content == {"status": "ok", "text": "ok ✓"}
    # and one more hop: an iopub message parented to the reply's parent
    _, pub = kernel.build("status", {"execution_state": "idle"}, parent=request)
    assert client.parse(pub).parent_id == req_id


def test_session_ids_differ_and_msg_ids_are_unique() -> None:
    a, b = Wire(KEY), Wire(KEY)
    assert a.session_id != b.session_id
    ids = {a.build("kernel_info_request")[0] for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize(
    "identities",
    [
        (),
        (b"client-1",),
        (b"\x00\x01\xff", b"routing"),
        (b"a", b"b", b"c"),
    ],
)
def test_identities_are_preserved(identities: tuple[bytes, ...]) -> None:
    _, frames = Wire(KEY).build("kernel_info_request", identities=identities)
    assert frames[: len(identities)] == list(identities)
    assert Wire(KEY).parse(frames).identities == identities


def test_buffers_are_returned_as_bytes() -> None:
    frames = signed(GOOD_HEADER, content={"name": "stdout"}, buffers=(b"\x00buf", b""))
    assert Wire(KEY).parse(frames).buffers == (b"\x00buf", b"")


@pytest.mark.parametrize("scheme", ["hmac-sha256", "hmac-sha512", "hmac-md5"])
def test_signature_schemes_round_trip(scheme: str) -> None:
    msg_id, frames = Wire(KEY, scheme).build("kernel_info_request")
    assert Wire(KEY, scheme).parse(frames).msg_id == msg_id


# --- signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "receiver"),
    [
        (Wire(b"right-key"), Wire(b"wrong-key")),
        (Wire(KEY), Wire(KEY + b"x")),
        (Wire(KEY, "hmac-sha256"), Wire(KEY, "hmac-sha512")),
        (Wire(b""), Wire(KEY)),  # an unsigned message to a signing receiver
    ],
)
def test_wrong_key_or_scheme_is_a_wire_error(sender: Wire, receiver: Wire) -> None:
    _, frames = sender.build("execute_request", {"code": "1"})
    with pytest.raises(WireError):
        receiver.parse(frames)


def tamper(frame: bytes) -> bytes:
    return frame.replace(b"1", b"2") if b"1" in frame else frame + b" "


@pytest.mark.parametrize(
    ("part", "offset"),
    [
        ("signature", 1),
        ("header", 2),
        ("parent_header", 3),
        ("metadata", 4),
        ("content", 5),
    ],
)
def test_tampered_frame_is_a_wire_error(part: str, offset: int) -> None:
    client = Wire(KEY)
    parent = Wire(KEY).parse(client.build("execute_request", {"code": "0"})[1])
    _, frames = client.build("execute_request", {"code": "1"}, parent=parent, identities=[b"id"])
    i = frames.index(DELIM) + offset
    bad = [*frames[:i], tamper(frames[i]), *frames[i + 1 :]]
    assert bad != frames
    with pytest.raises(WireError):
        Wire(KEY).parse(bad)


def test_same_frames_parsed_twice_is_a_wire_error() -> None:
    _, frames = Wire(KEY).build("execute_request", {"code": "1"})
    receiver = Wire(KEY)
    receiver.parse(frames)
    with pytest.raises(WireError, match="duplicate signature"):
        receiver.parse(list(frames))


def test_replay_is_per_receiver_and_other_messages_still_parse() -> None:
    sender = Wire(KEY)
    _, first = sender.build("execute_request", {"code": "1"})
    _, second = sender.build("execute_request", {"code": "1"})  # same content, new msg_id
    receiver = Wire(KEY)
    receiver.parse(first)
    assert receiver.parse(second).content == {"code": "1"}
    Wire(KEY).parse(first)  # another receiver has not seen it


def test_replay_window_remembers_the_recent_past_only() -> None:
    sender = Wire(KEY)
    sent = [sender.build("execute_request", {"code": str(i)})[1] for i in range(4)]
    receiver = Wire(KEY, replay_window=2)
    for frames in sent:
        receiver.parse(frames)
    with pytest.raises(WireError, match="duplicate signature") as info:
        receiver.parse(sent[3])
    assert info.value.reason == "replayed"
    assert receiver.parse(sent[0]).content == {"code": "0"}  # out of the window


def test_replay_window_0_still_verifies_signatures() -> None:
    _, frames = Wire(KEY).build("execute_request", {"code": "1"})
    receiver = Wire(KEY, replay_window=0)
    receiver.parse(frames)
    assert receiver.parse(frames).content == {"code": "1"}  # no replay check
    with pytest.raises(WireError) as info:
        Wire(b"another key", replay_window=0).parse(frames)
    assert info.value.reason == "bad_signature"


# --- garbage -------------------------------------------------------------------------------

GARBAGE: list[tuple[str, list[bytes]]] = [
    ("empty list", []),
    ("one empty frame", [b""]),
    ("no delimiter", [b"sig", b"{}", b"{}", b"{}", b"{}"]),
    ("delimiter only", [DELIM]),
    ("delimiter and signature only", [DELIM, b"sig"]),
    (
        "too few frames, validly signed",
        [DELIM, Session(key=KEY).sign([b"{}", b"{}"]), b"{}", b"{}"],
    ),
    ("empty signature", [DELIM, b"", b"{}", b"{}", b"{}", b"{}"]),
    ("non-JSON header", signed(None, raw=(b"{not json", None, None, None))),
    ("non-UTF-8 header", signed(None, raw=(b"\xff\xfe\x00", None, None, None))),
    ("header is a JSON list", signed(["msg_id", "msg_type"])),
    ("header is a JSON string", signed("header")),
    ("header is null", signed(None, raw=(b"null", None, None, None))),
    ("header without msg_id", signed({"msg_type": "stream"})),
    ("header without msg_type", signed({"msg_id": "x"})),
    ("header version not a string", signed({**GOOD_HEADER, "version": 5})),
    ("header version not a number", signed({**GOOD_HEADER, "version": "x.y"})),
    ("content is a JSON list", signed(GOOD_HEADER, content=[1, 2])),
    ("content is a JSON string", signed(GOOD_HEADER, content="text")),
    ("content is not JSON", signed(GOOD_HEADER, raw=(None, None, None, b"\x00\x01"))),
    ("parent header not JSON", signed(GOOD_HEADER, raw=(None, b"[", None, None))),
    ("metadata not JSON", signed(GOOD_HEADER, raw=(None, None, b"}", None))),
    (
        "deeply nested JSON",
        signed(GOOD_HEADER, raw=(None, None, None, b"[" * 100_000 + b"]" * 100_000)),
    ),
]


@pytest.mark.parametrize(("case", "frames"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_a_wire_error(case: str, frames: list[bytes]) -> None:
    with pytest.raises(WireError):
        Wire(KEY).parse(frames)


def test_signed_helper_makes_valid_messages() -> None:
    """The garbage table above fails for the named reason, not because of ``signed``."""
    msg = Wire(KEY).parse(
        signed(GOOD_HEADER, parent={"msg_id": "p-1"}, content={"a": "ü"}, idents=(b"i",))
    )
    assert (msg.msg_type, msg.msg_id, msg.parent_id) == ("stream", "m-1", "p-1")
    assert msg.content == {"a": "ü"}
    assert msg.identities == (b"i",)


def with_delimiter(frames: list[bytes], where: int | None) -> list[bytes]:
    if where is None:
        return frames
    i = where % (len(frames) + 1)
    return [*frames[:i], DELIM, *frames[i:]]


@settings(max_examples=200, deadline=None, database=None)
@given(
    frames=st.lists(st.binary(max_size=64), max_size=10),
    where=st.none() | st.integers(min_value=0, max_value=20),
)
def test_random_frames_only_ever_raise_wire_error(frames: list[bytes], where: int | None) -> None:
    with pytest.raises(WireError):
        Wire(KEY).parse(with_delimiter(frames, where))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FRAME = st.binary(max_size=32) | JSONISH.map(lambda v: json.dumps(v).encode())
# Mostly well-formed parts, so that many examples get past decoding and some parse.
PART = (
    st.dictionaries(st.text(max_size=8), JSONISH, max_size=4).map(lambda v: json.dumps(v).encode())
    | FRAME
)
HEADERISH = FRAME | st.fixed_dictionaries(
    {"msg_id": st.text(max_size=8), "msg_type": st.text(max_size=8)},
    optional={"version": JSONISH, "date": st.text(max_size=30)},
).map(lambda v: json.dumps(v).encode())


@settings(max_examples=200, deadline=None, database=None)
@given(
    header=HEADERISH,
    parent=PART,
    metadata=PART,
    content=PART,
    idents=st.lists(st.binary(max_size=8).filter(lambda b: b != DELIM), max_size=3),
    buffers=st.lists(st.binary(max_size=8), max_size=2),
)
def test_validly_signed_junk_gives_a_message_or_wire_error(
    header: bytes,
    parent: bytes,
    metadata: bytes,
    content: bytes,
    idents: list[bytes],
    buffers: list[bytes],
) -> None:
    frames = signed(
        None, raw=(header, parent, metadata, content), idents=tuple(idents), buffers=tuple(buffers)
    )
    try:
        msg = Wire(KEY).parse(frames)
    except WireError:
        return
    assert isinstance(msg.content, dict)
    assert isinstance(msg.header, dict)
    assert msg.identities == tuple(idents)
    assert msg.buffers == tuple(buffers)
    assert msg.msg_id == str(json.loads(header)["msg_id"])


@pytest.mark.parametrize("metadata", [[1, 2], "text", 3])
def test_metadata_that_is_not_an_object_is_a_wire_error(metadata: Any) -> None:
    frames = signed(GOOD_HEADER, metadata=metadata, content={"name": "stdout"})
    try:
        msg = Wire(KEY).parse(frames)
    except WireError:
        return
    assert isinstance(msg.metadata, dict), msg.metadata


# --- messages over the size limit ----------------------------------------------------------


def kernel_message(msg_type: str, content: dict[str, Any], **header: Any) -> list[bytes]:
    """A message as ipykernel sends it: jupyter_client's packer (no ASCII escaping)."""
    session = Session(key=KEY)
    parent = session.msg_header("execute_request")
    msg = session.msg(msg_type, content, parent=parent)
    msg["header"].update(header)
    return list(session.serialize(msg))


def sent(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass")) - 2 * text.count("\ufffd")


@pytest.mark.parametrize(
    ("msg_type", "content", "peeked"),
    [
        (
            "execute_result",
            {"data": {"text/plain": "y" * 5000}, "execution_count": 7},
            {"execution_count": 7},
        ),
        ("display_data", {"data": {"text/plain": "d" * 5000}, "metadata": {}}, {}),
        (
            "error",
            {"traceback": ["t" * 3000], "ename": "ValueError", "evalue": "v" * 3000},
            {"ename": "ValueError"},
        ),
        (
            "execute_reply",
            {
                "status": "error",
                "traceback": ["t" * 5000],
                "ename": "KeyError",
                "evalue": "",
                "execution_count": 3,
            },
            {"status": "error", "ename": "KeyError", "execution_count": 3},
        ),
        ("execute_reply", {"status": "ok", "payload": [{"data": "p" * 5000}]}, {"status": "ok"}),
    ],
)
def test_a_message_over_the_limit_is_verified_routed_and_not_decoded(
    msg_type: str, content: dict[str, Any], peeked: dict[str, Any]
) -> None:
    frames = kernel_message(msg_type, content)
    whole = Wire(KEY, replay_window=0).parse(frames)
    msg = Wire(KEY, replay_window=0).parse(frames, max_bytes=4096, keep=100)
    assert msg.oversized == len(frames[-1])
    assert (msg.msg_type, msg.msg_id, msg.parent_id) == (
        whole.msg_type,
        whole.msg_id,
        whole.parent_id,
    )
    assert msg.content == peeked
    under = Wire(KEY, replay_window=0).parse(frames, max_bytes=10**6)
    assert under.oversized == 0 and under.content == content


def test_an_oversized_message_with_a_bad_signature_is_still_refused() -> None:
    frames = kernel_message("stream", {"name": "stdout", "text": "x" * 5000})
    frames[-1] = frames[-1].replace(b"xxx", b"yyy", 1)
    with pytest.raises(WireError) as err:
        Wire(KEY).parse(frames, max_bytes=1000)
    assert err.value.reason == "bad_signature"


def test_an_oversized_message_with_a_huge_header_is_not_routed() -> None:
    frames = kernel_message(
        "stream", {"name": "stdout", "text": "x"}, pad="h" * ENVELOPE_PART_LIMIT
    )
    msg = Wire(KEY).parse(frames, max_bytes=1000)
    assert msg.oversized and (msg.msg_type, msg.msg_id, msg.parent_id) == ("", "", None)


def test_an_oversized_stream_keeps_its_texts_head_and_tail() -> None:
    text = "<" + "é" * 3000 + "\n" * 100 + "\ufffd" * 1000 + ">"
    frames = kernel_message("stream", {"name": "stderr", "text": text})
    msg = Wire(KEY).parse(frames, max_bytes=1000, keep=300)
    head, cut, tail = msg.content["text"], msg.content["cut"], msg.content["tail"]
    assert msg.content["name"] == "stderr"
    assert text.startswith(head) and text.endswith(tail)
    assert 290 <= len(head.encode()) <= 300 and 290 <= len(tail.encode()) <= 300
    assert cut == sent(text[len(head) : len(text) - len(tail)])
    assert msg.oversized == len(frames[-1]) - 2 * 1000


@pytest.mark.parametrize(
    ("raw", "keys", "found"),
    [
        (b'{"status": "ok", "x": 1}', ("status",), {"status": "ok"}),
        (b'{"a": "status", "status":"error"}', ("status",), {"status": "error"}),
        (b'{"t": "\\"ename\\": \\"No\\"", "ename": "Yes"}', ("ename",), {"ename": "Yes"}),
        (
            b'{"execution_count": 12, "n": -3}',
            ("execution_count", "n"),
            {"execution_count": 12, "n": -3},
        ),
        (b'{"execution_count": 1.5}', ("execution_count",), {}),
        (b'{"ename": "' + b"E" * 300 + b'"}', ("ename",), {}),
        (b'{"ename": "a\\u00e9"}', ("ename",), {"ename": "a\u00e9"}),
        (b"garbage", ("status",), {}),
    ],
)
def test_peek_reads_short_top_level_values(
    raw: bytes, keys: tuple[str, ...], found: dict[str, Any]
) -> None:
    assert peek(raw, keys) == found


# Text whose JSON escapes text_bytes counts exactly: anything but a backslash followed by a
# control character (``\\\u0001``), which it counts as 4 bytes too many.
TEXT = st.text(
    alphabet=st.characters(codec="utf-8")
    | st.sampled_from(["\\", '"', "\n", "\x1b", "\ufffd", "é", "😀"]),
    min_size=0,
    max_size=400,
).filter(lambda t: not any(a == "\\" and ord(b) < 0x20 for a, b in itertools.pairwise(t)))


@given(text=TEXT, keep=st.integers(min_value=1, max_value=120))
@settings(max_examples=400, deadline=None)
def test_stream_fragments_are_exact_head_and_tail_and_count_the_middle(
    text: str, keep: int
) -> None:
    raw = json.dumps({"name": "stdout", "text": text}, ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )
    fragments = stream_fragments(raw, keep)
    if fragments is None:
        return  # too short to cut, or a cut inside a long run of backslashes
    head, cut, tail = fragments
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) + len(tail) <= len(text)
    assert cut == sent(text[len(head) : len(text) - len(tail)])


def test_stream_fragments_need_the_text_last_and_long_enough() -> None:
    assert stream_fragments(b'{"text": "' + b"x" * 100 + b'", "name": "stdout"}', 10) is None
    assert stream_fragments(b'{"name": "stdout", "text": "short"}', 10) is None
    assert stream_fragments(b'{"name": "stdout", "text": "' + b"\\\\" * 200 + b'"}', 10) is None


def test_text_bytes_counts_escapes_as_one_byte() -> None:
    raw = json.dumps('a\nb\\c"d\x01e\ufffd', ensure_ascii=False).encode()
    assert text_bytes(raw, 1, len(raw) - 1) == sent('a\nb\\c"d\x01e\ufffd')


@given(
    content=st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=4,
    )
)
@settings(max_examples=200, deadline=None)
def test_build_writes_what_jupyter_clients_session_writes(content: dict[str, Any]) -> None:
    """Wire writes its messages itself (so a client need not import jupyter_client): the
    frames are jupyter_client's, byte for byte, apart from the random ids and the date,
    and jupyter_client's Session reads them back (signature checked)."""
    wire = Wire(KEY)
    parent = wire.parse(wire.build("execute_request", {"code": "1"})[1])
    with warnings.catch_warnings():  # both warn, alike, about a NaN they had to clean
        warnings.simplefilter("ignore")
        msg_id, frames = wire.build("execute_reply", content, parent=parent, identities=[b"id"])
        session = Session(key=KEY, username="kernelsup", session=wire.session_id)
        idents, rest = session.feed_identities(frames)
        assert idents == [b"id"]
        msg = session.deserialize(rest)
        assert msg["header"]["msg_id"] == msg_id
        assert msg["parent_header"]["msg_id"] == parent.msg_id
        theirs = session.msg("execute_reply", content, parent=parent.header, header=msg["header"])
        ours_header = json.loads(rest[1])
        assert ours_header["date"].endswith("Z")
        assert session.pack(ours_header) == session.pack(theirs["header"])
        assert rest[1:5] == session.serialize(theirs)[2:6]
