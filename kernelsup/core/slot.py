"""The life of a kernel slot: one enum of states, one of events, one transition function.

Pure: no trio, no I/O. Everything that can happen to a slot is in this file; the pool
supervisor (``tree/pool_supervisor.py``) feeds it events and does the waiting, and
nothing else changes a slot's state.

Theory of operation
-------------------
A *slot* is one child of a pool supervisor: a kernel id that outlives the kernel
processes run under it. Each process, from launch to exit, is one *incarnation*, run by
one task of the supervisor. A slot is always in exactly one of these states:

    NEW        created; the supervisor starts it when it runs
    STARTING   an incarnation is launching its kernel
    RUNNING    the kernel is up. Whether it is idle, busy or stopping is the kernel
               actor's own state (:data:`KernelState`), not the slot's
    EXITING    the kernel reported its exit (it died, froze, was killed) before its
               clean-up ran; the clean-up is under way and it takes no more requests
    EXITED     the incarnation is over and nothing is decided yet. The supervisor
               decides in the same step (below), so a slot stays EXITED only while the
               pool is coming down
    BACKOFF    a restart is due after a delay, which the slot's own task waits out
    HELD       stopped with its group (``one_for_all``, ``rest_for_one``): the group's
               task restarts it after the group's delay
    DEAD       the restart policy gave up; only an operator's restart revives it
    STOPPING   we are stopping its incarnation (pool shutdown, a group restart, an
               operator's restart) and wait for it to end
    STOPPED    stopped by us: nothing runs, nothing is due
    REMOVING   STOPPING for good: the slot is forgotten once its incarnation ends
    REMOVED    forgotten (no longer among the supervisor's children); final

The events, each a fact the supervisor saw or a decision it made:

    START      launch an incarnation now (the first start, a restart, a delay's end)
    BACK_OFF   restart after a delay (one_for_one)
    HOLD       restart with the group, after the group's delay
    READY      the kernel is up (its actor handed over its handle)
    EXIT_SEEN  the kernel reported its exit, before its clean-up
    ENDED      the incarnation's task is over (the kernel exited, failed to start,
               or was stopped)
    GIVE_UP    the restart policy gave up (or the restart type says the exit is final)
    DISCARD    the slot is temporary (a session's kernel): its exit is its end
    STOP       make sure nothing runs here; the slot may be started again later
    REMOVE     make sure nothing runs here, and forget the slot

A life, and what the supervisor decides when a kernel exits by itself::

    NEW -START-> STARTING -READY-> RUNNING -EXIT_SEEN-> EXITING -ENDED-> EXITED

    EXITED -START->    STARTING      restart now
    EXITED -BACK_OFF-> BACKOFF       restart after a delay; BACKOFF -START-> STARTING
    EXITED -HOLD->     HELD          a group restart;       HELD -START-> STARTING
    EXITED -GIVE_UP->  DEAD          (an operator's restart: DEAD -START-> STARTING)
    EXITED -DISCARD->  REMOVED       a temporary slot

A failed start is ``STARTING -ENDED-> EXITED`` and is decided like any exit; so is a
kernel that ends without reporting its exit first (``RUNNING -ENDED-> EXITED``). A
BACKOFF whose restart is called off (the pool escalated) ends ``BACKOFF -ENDED-> EXITED``.

Stopping. STOP on a state whose task is alive (STARTING, RUNNING, EXITING, BACKOFF; with
STOPPING and REMOVING these make :data:`ACTIVE`) gives STOPPING; the supervisor then asks
the kernel to shut down (or cancels the task when there is no kernel yet) and the task's
ENDED gives STOPPED. On a state with no task (NEW, EXITED, HELD) STOP gives STOPPED at
once; a DEAD slot stays DEAD, a STOPPED one STOPPED. REMOVE is the same with REMOVING and
REMOVED (and makes a STOPPING slot REMOVING; STOP never undoes a REMOVE). Both are
idempotent, so two callers may stop the same slot and both wait for the one incarnation
to end. While STOPPING or REMOVING, READY and EXIT_SEEN may still arrive (the kernel got
ready, or died, as we stopped it) and change nothing.

Any other (state, event) pair is a bug in the supervisor: :func:`transition` raises
:class:`IllegalTransition` naming both. tests/test_slot.py writes the whole table out.

What ``status`` shows for a kernel (:data:`KernelStatus`) is :func:`status_of` the slot's
state and, while RUNNING, the kernel actor's state.
"""

from __future__ import annotations

import enum
from typing import Literal

KernelState = Literal["starting", "idle", "busy", "stopping", "exited"]
"""The kernel actor's own state (``KernelHandle.state``)."""

KernelStatus = Literal["starting", "idle", "busy", "backoff", "dead", "stopping"]
"""A kernel's ``state`` in a status report."""


class SlotState(enum.Enum):
    """Where a slot is in its life (see the module docstring)."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    EXITING = "exiting"
    EXITED = "exited"
    BACKOFF = "backoff"
    HELD = "held"
    DEAD = "dead"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REMOVING = "removing"
    REMOVED = "removed"


class SlotEvent(enum.Enum):
    """What can happen to a slot (see the module docstring)."""

    START = "start"
    BACK_OFF = "back_off"
    HOLD = "hold"
    READY = "ready"
    EXIT_SEEN = "exit_seen"
    ENDED = "ended"
    GIVE_UP = "give_up"
    DISCARD = "discard"
    STOP = "stop"
    REMOVE = "remove"


class IllegalTransition(RuntimeError):
    """An event that cannot happen to a slot in its state: a bug in the supervisor."""

    def __init__(self, state: SlotState, event: SlotEvent) -> None:
        super().__init__(f"slot event {event.name} is illegal in state {state.name}")
        self.state = state
        self.event = event


S, E = SlotState, SlotEvent  # short names for the tables below

ACTIVE = frozenset({S.STARTING, S.RUNNING, S.EXITING, S.BACKOFF, S.STOPPING, S.REMOVING})
"""The states in which the slot's incarnation task is alive."""

# state -> {event: next state}; an event missing from its state's row is illegal there.
_TRANSITIONS: dict[SlotState, dict[SlotEvent, SlotState]] = {
    S.NEW: {E.START: S.STARTING, E.STOP: S.STOPPED, E.REMOVE: S.REMOVED},
    S.STARTING: {
        E.READY: S.RUNNING,
        E.ENDED: S.EXITED,
        E.STOP: S.STOPPING,
        E.REMOVE: S.REMOVING,
    },
    S.RUNNING: {
        E.EXIT_SEEN: S.EXITING,
        E.ENDED: S.EXITED,
        E.STOP: S.STOPPING,
        E.REMOVE: S.REMOVING,
    },
    S.EXITING: {E.ENDED: S.EXITED, E.STOP: S.STOPPING, E.REMOVE: S.REMOVING},
    S.EXITED: {
        E.START: S.STARTING,
        E.BACK_OFF: S.BACKOFF,
        E.HOLD: S.HELD,
        E.GIVE_UP: S.DEAD,
        E.DISCARD: S.REMOVED,
        E.STOP: S.STOPPED,
        E.REMOVE: S.REMOVED,
    },
    S.BACKOFF: {
        E.START: S.STARTING,
        E.ENDED: S.EXITED,
        E.STOP: S.STOPPING,
        E.REMOVE: S.REMOVING,
    },
    S.HELD: {E.START: S.STARTING, E.STOP: S.STOPPED, E.REMOVE: S.REMOVED},
    S.DEAD: {E.START: S.STARTING, E.HOLD: S.HELD, E.STOP: S.DEAD, E.REMOVE: S.REMOVED},
    S.STOPPING: {
        E.READY: S.STOPPING,
        E.EXIT_SEEN: S.STOPPING,
        E.ENDED: S.STOPPED,
        E.STOP: S.STOPPING,
        E.REMOVE: S.REMOVING,
    },
    S.STOPPED: {E.START: S.STARTING, E.HOLD: S.HELD, E.STOP: S.STOPPED, E.REMOVE: S.REMOVED},
    S.REMOVING: {
        E.READY: S.REMOVING,
        E.EXIT_SEEN: S.REMOVING,
        E.ENDED: S.REMOVED,
        E.STOP: S.REMOVING,
        E.REMOVE: S.REMOVING,
    },
    S.REMOVED: {E.STOP: S.REMOVED, E.REMOVE: S.REMOVED},
}


def transition(state: SlotState, event: SlotEvent) -> SlotState:
    """The slot's state after ``event``; raises :class:`IllegalTransition` if ``event``
    cannot happen in ``state``."""
    try:
        return _TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


_STATUS: dict[SlotState, KernelStatus] = {
    S.NEW: "starting",
    S.STARTING: "starting",
    S.EXITING: "stopping",
    S.EXITED: "dead",
    S.BACKOFF: "backoff",
    S.HELD: "backoff",
    S.DEAD: "dead",
    S.STOPPING: "stopping",
    S.STOPPED: "dead",
    S.REMOVING: "stopping",
    S.REMOVED: "dead",
}

_RUNNING_STATUS: dict[KernelState | None, KernelStatus] = {
    "starting": "starting",
    "idle": "idle",
    "busy": "busy",
    "stopping": "stopping",
    "exited": "stopping",
    None: "starting",
}


def status_of(state: SlotState, kernel: KernelState | None) -> KernelStatus:
    """What ``status`` reports for a slot in ``state`` whose kernel actor (if it has one
    running) is in ``kernel``: the actor's own idle/busy/stopping while RUNNING; no
    kernel, or one exited but not yet restarted (stopped, given up, removed), is
    ``dead``; a pending restart is ``backoff``."""
    if state is S.RUNNING:
        return _RUNNING_STATUS[kernel]
    return _STATUS[state]


__all__ = [
    "ACTIVE",
    "IllegalTransition",
    "KernelState",
    "KernelStatus",
    "SlotEvent",
    "SlotState",
    "status_of",
    "transition",
]
