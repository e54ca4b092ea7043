"""Build, sign, verify and parse Jupyter messages.

Pure: no trio, no sockets. Signing and the wire format are jupyter_client's ``Session``;
this module only gives it a small, typed face and turns its assorted exceptions (ValueError,
TypeError, KeyError, JSON errors) into one :class:`WireError` that the caller counts.
"""

from __future__ import annotations

import collections
import hmac
from collections.abc import Sequence
from typing import Any, cast

import attrs
from jupyter_client.session import Session

PROTOCOL_VERSION = "5.3"
# Signatures remembered to refuse replayed messages (about 550 KB when full): the recent
# past is where a replay would come from, and a bound keeps a long-lived peer's memory flat.
REPLAY_WINDOW = 4096


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
        # check_pid=False: the supervisor never forks after creating its sessions.
        self._session = Session(
            key=key, signature_scheme=signature_scheme, username=username, check_pid=False
        )
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
        msg = self._session.msg(msg_type, content or {}, parent=parent_header)
        frames = self._session.serialize(msg, ident=list(identities) or None)
        return str(msg["header"]["msg_id"]), frames

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

    def parse(self, frames: Sequence[bytes]) -> Message:
        """Verify and decode one received message; raises :class:`WireError`."""
        try:
            idents, parts = self._session.feed_identities(list(frames))
            rest = cast("list[bytes]", parts)
            self._verify(rest)
            if len(rest) < 5:
                raise WireError("malformed message: fewer than 5 frames after the delimiter")
            unpack = self._session.unpack
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
