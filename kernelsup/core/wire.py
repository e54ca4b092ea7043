"""Build, sign, verify and parse Jupyter messages.

Pure: no trio, no sockets. Signing and the wire format are jupyter_client's ``Session``'s,
written out here (:class:`_Session`: its header, ids, JSON packing and HMAC, the parts we
use) so that a client need not import jupyter_client, whose package imports its kernel
launch code, traitlets and asyncio (about 0.1 s; tests/test_wire.py checks both sign and
pack alike). This module gives it a small, typed face and turns the assorted exceptions
of decoding (ValueError, TypeError, KeyError, JSON errors) into one :class:`WireError`
that the caller counts.

A message bigger than the caller's ``max_bytes`` is verified but never decoded: decoding
makes a second and third copy of it (the JSON text, then the objects), and what is in it
could not be kept anyway. Such a message comes back with ``oversized`` set to the size of
its payload, its header and parent decoded when they are small (so it can still be
routed and counted), and in ``content`` only the few top-level fields that say what
happened (``status``, ``ename``, a stream's ``name``, ``execution_count``), read from the
raw JSON by finding their key. A stream's text is the exception, so that a flood (which
ipykernel batches into messages of many megabytes) still shows its beginning and its
end: its first and last ``keep`` bytes are decoded from the raw JSON string, and the
bytes between are counted without decoding them (:func:`stream_fragments`).

The frames themselves are the caller's: received whole, they are freed as soon as the
caller lets go of them. libzmq's MAXMSGSIZE would bound them before they are received,
but on a connecting socket (our SUB and DEALERs) a message over it drops the connection
for good: libzmq 4.3.5 never reconnects after that protocol error, and a DEALER with no
connection then blocks every send (measured; the libzmq documentation says only that the
peer is disconnected). So a size limit there would cost the kernel its channels.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import attrs

PROTOCOL_VERSION = "5.3"
DELIMITER = b"<IDS|MSG>"
# Signatures remembered to refuse replayed messages (about 550 KB when full): the recent
# past is where a replay would come from, and a bound keeps a long-lived peer's memory flat.
REPLAY_WINDOW = 4096


# A message over the size limit has its header and parent header decoded only when each
# is at most this big (ipykernel's are about 300 bytes), so it can be routed and counted.
ENVELOPE_PART_LIMIT = 64 * 1024
# The top-level fields read from a message too big to decode, by message type.
PEEKED_FIELDS: dict[str, tuple[str, ...]] = {
    "stream": ("name",),
    "error": ("ename",),
    "execute_result": ("execution_count",),
    "execute_reply": ("status", "ename", "execution_count"),
}
# A JSON string's escape: a backslash and one character, or \uXXXX.
_ESCAPE_LENGTH = {ord("u"): 6}
# How far back a cut point looks for the backslashes that decide whether it is inside an
# escape; a longer run of backslashes than this, and the text is not cut there.
_BACKSLASH_RUN_LIMIT = 64
# After a key: a short JSON string or an integer (a longer value is not read).
_PEEKED_VALUE = re.compile(rb'\s*:\s*("(?:[^"\\\x00-\x1f]|\\.){0,256}"|-?[0-9]{1,18}(?![0-9.eE]))')
_REPLACEMENT_UTF8 = "\ufffd".encode()


class WireError(Exception):
    """A frame list that is not a valid, correctly signed Jupyter message (the peer's fault).

    ``reason`` is ``unsigned``, ``bad_signature``, ``replayed`` or ``malformed``."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen
class Message:
    msg_type: str
    msg_id: str
    parent_id: str | None
    content: dict[str, Any]
    header: dict[str, Any] = attrs.field(factory=dict, repr=False)
    metadata: dict[str, Any] = attrs.field(factory=dict, repr=False)
    buffers: tuple[bytes, ...] = attrs.field(default=(), repr=False)
    identities: tuple[bytes, ...] = attrs.field(default=(), repr=False)
    # > 0: the message was over the parse limit and not decoded; this is its payload's
    # size (content and buffers; a U+FFFD counts as the one byte it replaced), and
    # ``content`` holds only the fields in PEEKED_FIELDS that could be read.
    oversized: int = 0


def _new_id() -> str:
    """jupyter_client's ``new_id``: 16 random bytes as hex, ``8-24`` characters."""
    buf = os.urandom(16)
    return f"{buf[:4].hex()}-{buf[4:].hex()}"


def pack(obj: Any) -> bytes:
    """JSON as jupyter_client's ``json_packer`` writes it (UTF-8, no NaN). What it cannot
    write plainly (a NaN, a datetime, bytes) goes to jupyter_client's packer, which
    cleans it (and warns), imported only then."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False).encode(
            "utf8", errors="surrogateescape"
        )
    except (TypeError, ValueError):
        from jupyter_client.session import json_packer

        return json_packer(obj)


def unpack(data: bytes) -> Any:
    """jupyter_client's ``json_unpacker``: undecodable UTF-8 replaced, then JSON."""
    return json.loads(bytes(data).decode("utf8", "replace"))


class _Session:
    """The part of jupyter_client's ``Session`` a :class:`Wire` uses, byte for byte alike:
    headers (``<session>_<pid>_<n>`` ids, a UTC date ending in Z), packing and signing."""

    def __init__(self, key: bytes, signature_scheme: str, username: str) -> None:
        if not signature_scheme.startswith("hmac-"):
            raise ValueError(f"signature_scheme must start with 'hmac-', got {signature_scheme!r}")
        digest = getattr(hashlib, signature_scheme.split("-", 1)[1], None)
        if digest is None:
            raise ValueError(f"hashlib has no such attribute: {signature_scheme[5:]}")
        self.auth = hmac.HMAC(key, digestmod=digest) if key else None
        self.username = username
        self.session = _new_id()
        self._pid = os.getpid()
        self._count = 0

    def sign(self, parts: Sequence[bytes]) -> bytes:
        if self.auth is None:
            return b""
        h = self.auth.copy()
        for part in parts:
            h.update(part)
        return h.hexdigest().encode()

    def serialize(
        self,
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any] | None,
        identities: Sequence[bytes],
    ) -> tuple[str, list[bytes]]:
        msg_id = f"{self.session}_{self._pid}_{self._count}"
        self._count += 1
        now = datetime.datetime.now(datetime.timezone.utc)
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "username": self.username,
            "session": self.session,
            "date": now.isoformat().replace("+00:00", "Z"),
            "version": PROTOCOL_VERSION,
        }
        parts = [pack(header), pack(parent or {}), b"{}", pack(content)]
        return msg_id, [*identities, DELIMITER, self.sign(parts), *parts]


class Wire:
    """One signing identity: builds requests and parses what comes back."""

    def __init__(
        self,
        key: bytes,
        signature_scheme: str = "hmac-sha256",
        username: str = "kernelsup",
        *,
        replay_window: int = REPLAY_WINDOW,
    ) -> None:
        """``replay_window`` signatures are remembered to refuse a replayed message; 0
        turns the check off (signatures are still verified)."""
        self._session = _Session(key, signature_scheme, username)
        self._recent: collections.deque[bytes] = collections.deque(maxlen=replay_window)
        self._seen: set[bytes] = set()

    @property
    def session_id(self) -> str:
        return str(self._session.session)

    def build(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        *,
        parent: Message | None = None,
        identities: Sequence[bytes] = (),
    ) -> tuple[str, list[bytes]]:
        """Return ``(msg_id, frames)`` for a new, signed message."""
        parent_header = parent.header if parent is not None else None
        return self._session.serialize(msg_type, content or {}, parent_header, identities)

    def _verify(self, rest: Sequence[bytes]) -> None:
        """Signature and replay checks, as ``Session.deserialize`` does them, but verifying
        before remembering (a forged frame cannot poison the replay history) and without
        its date parsing, which was 14 % of an execute round trip (bench/execute)."""
        if self._session.auth is None:
            return
        signature = bytes(rest[0])
        if not signature:
            raise WireError("unsigned message", "unsigned")
        if not hmac.compare_digest(signature, self._session.sign(list(rest[1:5]))):
            raise WireError("invalid signature", "bad_signature")
        if not self._recent.maxlen:
            return
        if signature in self._seen:
            raise WireError("duplicate signature (replayed message)", "replayed")
        if len(self._recent) == self._recent.maxlen:
            self._seen.discard(self._recent[0])
        self._recent.append(signature)
        self._seen.add(signature)

    def parse(
        self, frames: Sequence[bytes], *, max_bytes: int | None = None, keep: int = 0
    ) -> Message:
        """Verify and decode one received message; raises :class:`WireError`.

        A message whose frames after the delimiter total more than ``max_bytes`` is not
        decoded: see the module's docstring and ``Message.oversized``; of a stream
        message's text, the first and last ``keep`` bytes are."""
        try:
            frames = list(frames)
            at = frames.index(DELIMITER)
            idents, rest = frames[:at], frames[at + 1 :]
            self._verify(rest)
            if len(rest) < 5:
                raise WireError("malformed message: fewer than 5 frames after the delimiter")
            if max_bytes is not None and sum(len(part) for part in rest[1:]) > max_bytes:
                return self._oversized(rest, idents, keep)
            header, parent, metadata, content = (unpack(part) for part in rest[1:5])
            parent = parent or {}
            metadata = metadata or {}
            if not all(isinstance(part, dict) for part in (header, content, metadata)):
                raise WireError("message header, metadata or content is not an object")
            version = header.get("version", "5.0")
            if not isinstance(version, str) or not version.split(".")[0].isdigit():
                raise WireError(f"header version {version!r} is not a protocol version")
            return Message(
                msg_type=str(header["msg_type"]),
                msg_id=str(header["msg_id"]),
                parent_id=str(parent["msg_id"])
                if isinstance(parent, dict) and parent.get("msg_id")
                else None,
                content=content,
                header=header,
                metadata=metadata,
                buffers=tuple(bytes(b) for b in rest[5:]),
                identities=tuple(idents),
            )
        except WireError:
            raise
        except Exception as exc:  # anything a hostile peer can provoke inside jupyter_client
            raise WireError(f"{type(exc).__name__}: {exc}") from None

    def _oversized(self, rest: list[bytes], idents: list[bytes], keep: int) -> Message:
        """A verified message too big to decode: routed by its header and parent header
        (when they are small), a few fields peeked, its payload measured; a stream's text
        kept in part (:func:`stream_fragments`)."""
        header: Any = {}
        parent: Any = {}
        if len(rest[1]) <= ENVELOPE_PART_LIMIT and len(rest[2]) <= ENVELOPE_PART_LIMIT:
            header, parent = (unpack(part) for part in rest[1:3])
        if not isinstance(header, dict):
            header = {}
        msg_type = str(header.get("msg_type", ""))
        raw = rest[4]
        payload = len(raw) + sum(len(b) for b in rest[5:])
        content = peek(raw, PEEKED_FIELDS.get(msg_type, ()))
        if msg_type == "stream" and keep > 0:
            fragments = stream_fragments(raw, keep)
            if fragments is not None:
                content["text"], content["cut"], content["tail"] = fragments
        return Message(
            msg_type=msg_type,
            msg_id=str(header.get("msg_id", "")),
            parent_id=str(parent["msg_id"])
            if isinstance(parent, dict) and parent.get("msg_id")
            else None,
            content=content,
            header=header,
            identities=tuple(idents),
            oversized=max(1, payload - 2 * raw.count(_REPLACEMENT_UTF8)),
        )


def peek(raw: bytes, keys: Sequence[str]) -> dict[str, Any]:
    """The values of ``keys`` in a JSON object's text, found without decoding it: each
    key's first occurrence followed by a colon and a short string or an integer. (Inside
    a JSON string every quote is escaped, so a quoted key followed by a colon is a key;
    the first may be a nested object's, which the message types peeked do not have.)"""
    found: dict[str, Any] = {}
    for key in keys:
        needle = json.dumps(key).encode()
        at = raw.find(needle)
        while at >= 0:
            m = _PEEKED_VALUE.match(raw, at + len(needle))
            if m is not None:
                try:
                    found[key] = json.loads(m.group(1))
                except ValueError:
                    pass
                break
            at = raw.find(needle, at + 1)
    return found


def stream_fragments(raw: bytes, keep: int) -> tuple[str, int, str] | None:
    """A stream message's text, from its raw JSON, without decoding it whole: its first
    and last ``keep`` bytes or so (each cut where no character or escape is split), and
    how many bytes the program wrote between them (:func:`text_bytes`). None when the
    text is not the object's last value (ipykernel's and xeus's are), a cut falls in a
    long run of backslashes, or a fragment does not decode."""
    start = _value_start(raw, b'"text"')
    end = len(raw.rstrip(b" \t\r\n")) - 1  # the object's closing brace
    if start is None or end < 1 or raw[end : end + 1] != b"}":
        return None
    end = len(raw[:end].rstrip(b" \t\r\n")) - 1  # the string's closing quote
    if raw[end : end + 1] != b'"' or end - start <= 2 * keep:
        return None
    head_end = _boundary(raw, start, start + keep, -1)
    tail_start = _boundary(raw, start, end - keep, +1)
    if head_end is None or tail_start is None or tail_start < head_end:
        return None
    try:
        head = json.loads(b'"' + raw[start:head_end] + b'"')
        tail = json.loads(b'"' + raw[tail_start:end] + b'"')
    except ValueError:
        return None
    return head, text_bytes(raw, head_end, tail_start), tail


def text_bytes(raw: bytes, start: int, end: int) -> int:
    """The bytes a program wrote to make the JSON string text ``raw[start:end]`` (cut at
    escape boundaries): an escape counts as the one byte it stands for, a U+FFFD as the one
    undecodable byte it replaced. (A ``\\uXXXX`` is counted as one byte: JSON without
    ensure_ascii escapes only control characters that way.)"""
    backslashes = raw.count(b"\\", start, end)
    escaped_backslashes = raw.count(b"\\\\", start, end)
    escapes = backslashes - escaped_backslashes
    unicode_escapes = raw.count(b"\\u", start, end) - raw.count(b"\\\\u", start, end)
    replaced = raw.count(_REPLACEMENT_UTF8, start, end)
    return (end - start) - escapes - 4 * unicode_escapes - 2 * replaced


_VALUE_QUOTE = re.compile(rb'\s*:\s*"')


def _value_start(raw: bytes, key: bytes) -> int | None:
    """Where the JSON string value of the first ``key`` (quoted) starts, after its quote."""
    at = raw.find(key)
    while at >= 0:
        m = _VALUE_QUOTE.match(raw, at + len(key))
        if m is not None:
            return m.end()
        at = raw.find(key, at + 1)
    return None


def _boundary(raw: bytes, low: int, at: int, step: int) -> int | None:
    """The nearest position to ``at`` (moving by ``step``) where the JSON string text
    that starts at ``low`` can be cut: not inside a UTF-8 character or an escape."""
    for pos in range(at, at + 8 * step, step):
        if pos <= low:
            return low
        if 0x80 <= raw[pos] < 0xC0:  # a UTF-8 continuation byte
            continue
        inside = _escape_around(raw, low, pos)
        if inside is None:
            return None
        if not inside:
            return pos
    return None


def _escape_around(raw: bytes, low: int, pos: int) -> bool | None:
    """Whether ``pos`` falls inside an escape (after its backslash, before its end);
    None when a run of backslashes too long to read decides it."""
    for back in range(1, 6):
        i = pos - back
        if i < low:
            return False
        if raw[i] != 0x5C:  # not a backslash
            continue
        run = 1
        while i - run >= low and raw[i - run] == 0x5C:
            run += 1
            if run > _BACKSLASH_RUN_LIMIT:
                return None
        if run % 2 == 0:
            return False  # raw[i] is an escaped backslash: it ends an escape
        return i + _ESCAPE_LENGTH.get(raw[i + 1], 2) > pos
    return False
