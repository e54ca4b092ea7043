"""kernelsup: an Erlang-style supervision tree for Jupyter kernels, on trio.

The public API lives here; everything else is an implementation module.
"""

from __future__ import annotations

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
from kernelsup.core.results import ErrorInfo, ExecuteResult, ExitCause, Output, StatusReport

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
    "KernelDied",
    "KernelError",
    "KernelStartError",
    "KernelsupError",
    "Output",
    "ProtocolError",
    "Rejected",
    "RequestError",
    "SessionHandle",
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
