"""kernelsup: an Erlang-style supervision tree for Jupyter kernels, on trio.

The public API lives here; everything else is an implementation module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernelsup.api import SessionHandle, Supervisor, open_supervisor
    from kernelsup.control.client import Client, ClientSession, connect
    from kernelsup.control.sync_client import SyncClient, SyncSession
    from kernelsup.core.config import Config, load_config, parse_config
    from kernelsup.core.errors import (
        AuthenticationError,
        ClientError,
        ConfigError,
        KernelDied,
        KernelError,
        KernelStartError,
        KernelsupError,
        ProtocolError,
        Rejected,
        RequestError,
        SupervisorGaveUp,
        Unreachable,
    )
    from kernelsup.core.interface import SupervisorInterface, SyncSupervisorInterface
    from kernelsup.core.records import JobInfo, JobOutput, SessionInfo
    from kernelsup.core.results import ErrorInfo, ExecuteResult, ExitCause, Output, StatusReport

# Where each public name lives. Importing ``kernelsup`` imports none of them: a name's
# module is imported on first use (PEP 562), so a client (``from kernelsup import
# SyncClient``, ``kernelsup exec``) never pays for trio, the kernel actors or
# jupyter_client's launch code (tests/test_lean.py holds that).
_WHERE: dict[str, str] = {
    "SessionHandle": "kernelsup.api",
    "Supervisor": "kernelsup.api",
    "open_supervisor": "kernelsup.api",
    "Client": "kernelsup.control.client",
    "ClientSession": "kernelsup.control.client",
    "connect": "kernelsup.control.client",
    "SyncClient": "kernelsup.control.sync_client",
    "SyncSession": "kernelsup.control.sync_client",
    "Config": "kernelsup.core.config",
    "load_config": "kernelsup.core.config",
    "parse_config": "kernelsup.core.config",
    "SupervisorInterface": "kernelsup.core.interface",
    "SyncSupervisorInterface": "kernelsup.core.interface",
    **{
        name: "kernelsup.core.errors"
        for name in (
            "AuthenticationError",
            "ClientError",
            "ConfigError",
            "KernelDied",
            "KernelError",
            "KernelStartError",
            "KernelsupError",
            "ProtocolError",
            "Rejected",
            "RequestError",
            "SupervisorGaveUp",
            "Unreachable",
        )
    },
    **{
        name: "kernelsup.core.results"
        for name in ("ErrorInfo", "ExecuteResult", "ExitCause", "Output", "StatusReport")
    },
    **{name: "kernelsup.core.records" for name in ("JobInfo", "JobOutput", "SessionInfo")},
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (and then kept here)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kernelsup' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Client",
    "ClientError",
    "ClientSession",
    "Config",
    "ConfigError",
    "ErrorInfo",
    "ExecuteResult",
    "ExitCause",
    "JobInfo",
    "JobOutput",
    "KernelDied",
    "KernelError",
    "KernelStartError",
    "KernelsupError",
    "Output",
    "ProtocolError",
    "Rejected",
    "RequestError",
    "SessionHandle",
    "SessionInfo",
    "StatusReport",
    "Supervisor",
    "SupervisorGaveUp",
    "SupervisorInterface",
    "SyncClient",
    "SyncSession",
    "SyncSupervisorInterface",
    "Unreachable",
    "connect",
    "load_config",
    "open_supervisor",
    "parse_config",
]
