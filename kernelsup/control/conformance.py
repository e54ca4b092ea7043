"""For mypy only: the in-process Supervisor and both clients offer the one interface.

Nothing imports this module. mypy checks it with the rest of the package, so a method of
``Supervisor``, ``Client`` or ``SyncClient`` whose signature drifts from
kernelsup/core/interface.py fails type checking (CI), not a user's program. It sits in the
control layer, the lowest that sees all three classes; at run time only the server imports
``kernelsup.api`` from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernelsup.api import SessionHandle, Supervisor
    from kernelsup.control.client import Client, ClientSession
    from kernelsup.control.sync_client import SyncClient, SyncSession
    from kernelsup.core.interface import (
        SessionInterface,
        SupervisorInterface,
        SyncSessionInterface,
        SyncSupervisorInterface,
    )

    _supervisor: type[SupervisorInterface] = Supervisor
    _client: type[SupervisorInterface] = Client
    _sync_client: type[SyncSupervisorInterface] = SyncClient
    _session: type[SessionInterface] = SessionHandle
    _client_session: type[SessionInterface] = ClientSession
    _sync_session: type[SyncSessionInterface] = SyncSession
