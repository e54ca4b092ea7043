"""Build, sign, verify and parse Jupyter messages.

Pure: no trio, no sockets. Signing and the wire format are jupyter_client's ``Session``;
this module only gives it a small, typed face and turns its assorted exceptions (ValueError,
TypeError, KeyError, JSON errors) into one :class:`WireError` that the caller counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from jupyter_client.session import Session

PROTOCOL_VERSION = "5.3"


class WireError(Exception):
    """A frame list that is not a valid, correctly signed Jupyter message (the peer's fault)."""


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

    def __init__(self, key: bytes, signature_scheme: str = "hmac-sha256",
                 username: str = "kernelsup") -> None:
        # check_pid=False: the supervisor never forks after creating its sessions.
        self._session = Session(key=key, signature_scheme=signature_scheme,
                                username=username, check_pid=False)

    @property
    def session_id(self) -> str:
        return str(self._session.session)

    def build(self, msg_type: str, content: dict[str, Any] | None = None, *,
              parent: Message | None = None,
              identities: Sequence[bytes] = ()) -> tuple[str, list[bytes]]:
        """Return ``(msg_id, frames)`` for a new, signed message."""
        parent_header = parent.header if parent is not None else None
        msg = self._session.msg(msg_type, content or {}, parent=parent_header)
        frames = self._session.serialize(msg, ident=list(identities) or None)
        return str(msg["header"]["msg_id"]), frames

    def parse(self, frames: Sequence[bytes]) -> Message:
        """Verify and decode one received message; raises :class:`WireError`."""
        try:
            idents, rest = self._session.feed_identities(list(frames))
            msg = self._session.deserialize(rest, content=True)
            header = msg["header"]
            parent = msg.get("parent_header") or {}
            content = msg["content"]
            metadata = msg.get("metadata") or {}
            if not all(isinstance(part, dict) for part in (header, content, metadata)):
                raise WireError("message header, metadata or content is not an object")
            return Message(
                msg_type=str(header["msg_type"]),
                msg_id=str(header["msg_id"]),
                parent_id=str(parent["msg_id"]) if isinstance(parent, dict)
                and parent.get("msg_id") else None,
                content=content,
                header=header,
                metadata=metadata,
                buffers=tuple(bytes(b) for b in msg.get("buffers", ())),
                identities=tuple(idents),
            )
        except WireError:
            raise
        except Exception as exc:  # anything a hostile peer can provoke inside jupyter_client
            raise WireError(f"{type(exc).__name__}: {exc}") from None
