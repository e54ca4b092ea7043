"""One control-server client's outgoing messages: ordered, bounded, never blocking.

Pure (no I/O): the server's writer for that client drains it onto the socket. Streamed
outputs and events beyond ``CLIENT_BUFFER`` are dropped and counted; the request they
belonged to gets one ``lagged`` reply with the count, in order, before its next item.
Final replies and control replies are never dropped: the server's per-client request
limit bounds them (see control/server.py).
"""

from __future__ import annotations

import collections

import attrs

from kernelsup.core import protocol as proto

# Streamed outputs/events queued per client before they are dropped and counted (about
# 256 KB for typical output lines); zmq holds up to the server's SEND_HWM more in the pipe.
CLIENT_BUFFER = 256


@attrs.frozen
class OutItem:
    request_id: str | None
    reply: proto.Reply | proto.Notice
    droppable: bool


class Outbox:
    """One client's outgoing messages, in order, bounded as the module docstring
    says.

    ``put`` (an output or event: droppable), ``put_final`` and ``put_control`` (never
    dropped) and ``put_notice`` (droppable, uncounted per request) never block. A request
    whose items were dropped gets one ``Lagged`` item with the count, placed where the
    first dropped item would have been followed by the next one that fits (or before its
    final reply), so each request's replies stay in order.
    """

    def __init__(self, limit: int = CLIENT_BUFFER) -> None:
        self.limit = limit
        self._queue: collections.deque[OutItem] = collections.deque()
        self._droppable = 0
        self.finals = 0  # final replies queued
        self._lag: dict[str, int] = {}  # request id -> items dropped since reported
        self.dropped = 0  # total droppable items dropped

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, request_id: str, reply: proto.Reply) -> bool:
        """Queue a streamed item; False (and counted) if the buffer is full."""
        if self._droppable >= self.limit:
            self._lag[request_id] = self._lag.get(request_id, 0) + 1
            self.dropped += 1
            return False
        self._flush_lag(request_id)
        self._append(OutItem(request_id, reply, droppable=True))
        return True

    def put_control(self, request_id: str, reply: proto.Reply) -> None:
        self._flush_lag(request_id)
        self._append(OutItem(request_id, reply, droppable=False))

    def put_final(self, request_id: str, reply: proto.Reply) -> None:
        self.put_control(request_id, reply)
        self.finals += 1

    def put_notice(self, notice: proto.Notice) -> bool:
        if self._droppable >= self.limit:
            return False
        self._append(OutItem(None, notice, droppable=True))
        return True

    def peek(self) -> OutItem | None:
        return self._queue[0] if self._queue else None

    def pop(self) -> OutItem:
        item = self._queue.popleft()
        if item.droppable:
            self._droppable -= 1
        elif isinstance(item.reply, proto.FINAL_REPLIES):
            self.finals -= 1
        if self._lag and self._droppable < self.limit:
            for request_id in list(self._lag):
                self._flush_lag(request_id)
        return item

    def _flush_lag(self, request_id: str) -> None:
        dropped = self._lag.pop(request_id, 0)
        if dropped:
            self._append(OutItem(request_id, proto.Lagged(dropped), droppable=False))

    def _append(self, item: OutItem) -> None:
        self._queue.append(item)
        if item.droppable:
            self._droppable += 1


__all__ = ["CLIENT_BUFFER", "OutItem", "Outbox"]
