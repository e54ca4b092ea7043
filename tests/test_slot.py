"""The kernel slot's state machine (core/slot.py), as plain tables.

The expected transitions are written out here cell by cell, independently of the
module's own table: any change to the machine changes a cell and fails a test.
"""

from __future__ import annotations

import itertools
import typing

import pytest

from kernelsup.core.slot import (
    ACTIVE,
    IllegalTransition,
    KernelState,
    SlotEvent,
    SlotState,
    status_of,
    transition,
)

# Rows: the state before; columns: the event; a cell: the state after, or "-" (illegal).
TABLE = """
            START     BACK_OFF  HOLD      READY     EXIT_SEEN ENDED     GIVE_UP   DISCARD   STOP      REMOVE
NEW         STARTING  -         -         -         -         -         -         -         STOPPED   REMOVED
STARTING    -         -         -         RUNNING   -         EXITED    -         -         STOPPING  REMOVING
RUNNING     -         -         -         -         EXITING   EXITED    -         -         STOPPING  REMOVING
EXITING     -         -         -         -         -         EXITED    -         -         STOPPING  REMOVING
EXITED      STARTING  BACKOFF   HELD      -         -         -         DEAD      REMOVED   STOPPED   REMOVED
BACKOFF     STARTING  -         -         -         -         EXITED    -         -         STOPPING  REMOVING
HELD        STARTING  -         -         -         -         -         -         -         STOPPED   REMOVED
DEAD        STARTING  -         HELD      -         -         -         -         -         DEAD      REMOVED
STOPPING    -         -         -         STOPPING  STOPPING  STOPPED   -         -         STOPPING  REMOVING
STOPPED     STARTING  -         HELD      -         -         -         -         -         STOPPED   REMOVED
REMOVING    -         -         -         REMOVING  REMOVING  REMOVED   -         -         REMOVING  REMOVING
REMOVED     -         -         -         -         -         -         -         -         REMOVED   REMOVED
"""  # noqa: E501 (a table reads best on one line per state)


def _parse(table: str) -> dict[tuple[SlotState, SlotEvent], SlotState | None]:
    header, *rows = [line.split() for line in table.strip().splitlines()]
    events = [SlotEvent[name] for name in header]
    cells: dict[tuple[SlotState, SlotEvent], SlotState | None] = {}
    for state_name, *results in rows:
        for event, result in zip(events, results, strict=True):
            cells[SlotState[state_name], event] = None if result == "-" else SlotState[result]
    return cells


EXPECTED = _parse(TABLE)
PAIRS = list(itertools.product(SlotState, SlotEvent))


def test_the_table_covers_every_state_and_event() -> None:
    assert set(EXPECTED) == set(PAIRS)


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s.name}-{e.name}" for s, e in PAIRS])
def test_transition(state: SlotState, event: SlotEvent) -> None:
    expected = EXPECTED[state, event]
    if expected is None:
        with pytest.raises(IllegalTransition) as info:
            transition(state, event)
        assert (info.value.state, info.value.event) == (state, event)
        assert state.name in str(info.value) and event.name in str(info.value)
    else:
        assert transition(state, event) is expected


def test_active_states_are_those_with_a_task() -> None:
    assert {
        SlotState.STARTING,
        SlotState.RUNNING,
        SlotState.EXITING,
        SlotState.BACKOFF,
        SlotState.STOPPING,
        SlotState.REMOVING,
    } == ACTIVE
    # ENDED (the task's end) is legal exactly where a task is alive.
    assert {s for s in SlotState if EXPECTED[s, SlotEvent.ENDED] is not None} == ACTIVE


def _settle(state: SlotState) -> SlotState:
    """What a stopper waits for: the task's ENDED, if the slot still has one."""
    return transition(state, SlotEvent.ENDED) if state in ACTIVE else state


@pytest.mark.parametrize("state", list(SlotState), ids=lambda s: s.name)
def test_stop_and_remove_always_come_to_rest(state: SlotState) -> None:
    stopped = _settle(transition(state, SlotEvent.STOP))
    assert stopped in (SlotState.STOPPED, SlotState.DEAD, SlotState.REMOVED)
    assert stopped not in ACTIVE
    assert _settle(transition(state, SlotEvent.REMOVE)) is SlotState.REMOVED


def test_removed_is_final() -> None:
    assert {EXPECTED[SlotState.REMOVED, e] for e in SlotEvent} <= {None, SlotState.REMOVED}


def _walk(state: SlotState, *events: SlotEvent) -> list[SlotState]:
    seen = [state]
    for event in events:
        seen.append(transition(seen[-1], event))
    return seen


def test_a_life_with_a_crash_a_backoff_and_a_give_up() -> None:
    E, S = SlotEvent, SlotState
    assert _walk(
        S.NEW,
        E.START,
        E.READY,
        E.EXIT_SEEN,
        E.ENDED,
        E.BACK_OFF,
        E.START,
        E.ENDED,  # the restart failed to start
        E.GIVE_UP,
        E.START,  # an operator's restart
        E.READY,
    ) == [
        S.NEW,
        S.STARTING,
        S.RUNNING,
        S.EXITING,
        S.EXITED,
        S.BACKOFF,
        S.STARTING,
        S.EXITED,
        S.DEAD,
        S.STARTING,
        S.RUNNING,
    ]


def test_a_group_restart() -> None:
    E, S = SlotEvent, SlotState
    # the one that failed waits for its group at once
    assert _walk(S.RUNNING, E.EXIT_SEEN, E.ENDED, E.HOLD, E.START) == [
        S.RUNNING,
        S.EXITING,
        S.EXITED,
        S.HELD,
        S.STARTING,
    ]
    # a sibling is stopped (its kernel reports its exit on the way), then held
    assert _walk(S.RUNNING, E.STOP, E.EXIT_SEEN, E.ENDED, E.HOLD, E.START) == [
        S.RUNNING,
        S.STOPPING,
        S.STOPPING,
        S.STOPPED,
        S.HELD,
        S.STARTING,
    ]


def test_a_session_kernel_removed_while_its_stop_is_under_way() -> None:
    E, S = SlotEvent, SlotState
    assert _walk(S.RUNNING, E.STOP, E.REMOVE, E.STOP, E.ENDED, E.REMOVE) == [
        S.RUNNING,
        S.STOPPING,
        S.REMOVING,
        S.REMOVING,  # a STOP never undoes a REMOVE
        S.REMOVED,
        S.REMOVED,
    ]


# What status shows, for every slot state but RUNNING (where the kernel actor says).
STATUS = {
    SlotState.NEW: "starting",
    SlotState.STARTING: "starting",
    SlotState.EXITING: "stopping",
    SlotState.EXITED: "dead",
    SlotState.BACKOFF: "backoff",
    SlotState.HELD: "backoff",
    SlotState.DEAD: "dead",
    SlotState.STOPPING: "stopping",
    SlotState.STOPPED: "dead",
    SlotState.REMOVING: "stopping",
    SlotState.REMOVED: "dead",
}
RUNNING_STATUS: dict[KernelState | None, str] = {
    "starting": "starting",
    "idle": "idle",
    "busy": "busy",
    "stopping": "stopping",
    "exited": "stopping",
    None: "starting",
}
KERNEL_STATES: list[KernelState | None] = [*typing.get_args(KernelState), None]


def test_status_tables_cover_every_state() -> None:
    assert set(STATUS) | {SlotState.RUNNING} == set(SlotState)
    assert set(RUNNING_STATUS) == set(KERNEL_STATES)


@pytest.mark.parametrize(
    ("state", "kernel"), list(itertools.product(SlotState, KERNEL_STATES)), ids=str
)
def test_status_of(state: SlotState, kernel: KernelState | None) -> None:
    expected = RUNNING_STATUS[kernel] if state is SlotState.RUNNING else STATUS[state]
    assert status_of(state, kernel) == expected
