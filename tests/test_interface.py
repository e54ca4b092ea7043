"""The one interface (core/interface.py) and the classes that offer it.

mypy proves conformance (kernelsup/control/conformance.py); these tests check the same at
run time, so a drift shows in the fast test subset too: every method of the interface
exists on each class, with the same parameters (an implementation may add keyword-only
ones with defaults, like ``Supervisor.execute``'s ``on_output``), async where the interface
is async, blocking where it is blocking.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

import kernelsup
from kernelsup.api import SessionHandle, Supervisor
from kernelsup.control.client import Client, ClientSession
from kernelsup.control.sync_client import SyncClient, SyncSession
from kernelsup.core.interface import (
    SessionInterface,
    SupervisorInterface,
    SyncSessionInterface,
    SyncSupervisorInterface,
)

PAIRS = [
    (SupervisorInterface, Supervisor),
    (SupervisorInterface, Client),
    (SyncSupervisorInterface, SyncClient),
    (SessionInterface, SessionHandle),
    (SessionInterface, ClientSession),
    (SyncSessionInterface, SyncSession),
]


def methods(protocol: type) -> dict[str, Callable[..., Any]]:
    return {
        name: value
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    }


def kind(fn: Callable[..., Any]) -> str:
    fn = inspect.unwrap(fn)  # @asynccontextmanager and the like
    if inspect.iscoroutinefunction(fn):
        return "async"
    if inspect.isasyncgenfunction(fn):
        return "async generator"
    return "plain"


def test_the_interfaces_are_not_empty() -> None:
    assert (
        set(methods(SupervisorInterface))
        == set(methods(SyncSupervisorInterface))
        == {
            "execute",
            "stream",
            "session",
            "close_session",
            "status",
            "interrupt",
            "restart",
            "watch",
            "open_session",
            "sessions",
            "submit",
            "job",
            "wait",
            "job_output",
            "cancel",
            "jobs",
            "put_file",
            "get_file",
            "list_files",
            "snapshot",
            "restore",
            "fork_session",
        }
    )
    assert set(methods(SessionInterface)) == {"execute", "stream"}


@pytest.mark.parametrize(("protocol", "cls"), PAIRS, ids=lambda x: x.__name__)
def test_each_method_has_the_interfaces_parameters(protocol: type, cls: type) -> None:
    for name, wanted in methods(protocol).items():
        got = inspect.signature(getattr(cls, name)).parameters
        want = inspect.signature(wanted).parameters
        extra = [p for n, p in got.items() if n not in want]
        assert [(p.name, p.kind, p.default) for p in want.values()] == [
            (p.name, p.kind, p.default) for n, p in got.items() if n in want
        ], f"{cls.__name__}.{name}"
        assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in extra), (
            f"{cls.__name__}.{name} adds a parameter callers of the interface cannot omit"
        )


@pytest.mark.parametrize(("protocol", "cls"), PAIRS, ids=lambda x: x.__name__)
def test_async_where_the_interface_is_async(protocol: type, cls: type) -> None:
    blocking = protocol in (SyncSupervisorInterface, SyncSessionInterface)
    for name, wanted in methods(protocol).items():
        got = kind(getattr(cls, name))
        if blocking:
            assert got == "plain", f"{cls.__name__}.{name} is {got}"
        elif kind(wanted) == "async":
            assert got == "async", f"{cls.__name__}.{name} is {got}"
        else:  # stream, watch, session: called without await
            assert got in ("async generator", "plain"), f"{cls.__name__}.{name} is {got}"


def test_the_interfaces_are_public() -> None:
    assert kernelsup.SupervisorInterface is SupervisorInterface
    assert kernelsup.SyncSupervisorInterface is SyncSupervisorInterface
    assert {"SupervisorInterface", "SyncSupervisorInterface"} <= set(kernelsup.__all__)
