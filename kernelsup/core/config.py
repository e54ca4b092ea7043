"""The configuration: frozen attrs classes, structured from TOML by cattrs.

One source of truth: every default lives in the classes below, and the example
``supervisor.toml`` at the repository root documents every key with that default.

Entry points:

- :func:`load_config` reads a TOML file, :func:`parse_config` a TOML string,
  :meth:`Config.from_dict` already-parsed data (``Config.to_dict()`` is its inverse), and
  :meth:`Config.default` gives the configuration of an empty file.
- Every problem is a :class:`kernelsup.core.errors.ConfigError` with a one-line message that
  names the file and the key path, e.g.
  ``supervisor.toml: $.pool[0].restart.max_delay: must be >= min_delay (1.0 < 2.0)``,
  and ``data`` holding ``file``, ``path`` (of the first problem) and ``errors`` (all of
  them, as ``path: reason`` strings).

Rules the converter enforces: unknown keys are errors; booleans are not integers;
integers are accepted where a float is expected; floats must be finite. Every number lies
in a range (its ``_within`` validator here, its comment in supervisor.toml), chosen so that
whatever ``check`` accepts, ``run`` can build and run; strings that become paths hold no
NUL and fit ``PATH_MAX``. A value outside is one error line naming the key, e.g.
``$.pool[0].size: must be >= 1 and <= 1024 (got 99999999999999999)``.

A pool's ``strategy``, ``intensity`` and ``period`` are ``None`` when the file does not
set them, meaning "inherit from ``[supervisor]``". Callers must not read them raw: use
``config.supervision(pool)`` (or ``pool.supervision(config.supervisor)``), which gives the
effective values as a :class:`Supervision`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pwd
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from kernelsup.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "Config",
    "HeartbeatConfig",
    "InterruptMode",
    "Jitter",
    "McpConfig",
    "MetricsConfig",
    "Placement",
    "PoolConfig",
    "RayConfig",
    "RestartConfig",
    "RestartType",
    "ServerConfig",
    "ShutdownConfig",
    "Strategy",
    "Supervision",
    "SupervisorConfig",
    "Transport",
    "auto_max_sessions",
    "load_config",
    "parse_config",
]

Strategy: TypeAlias = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType: TypeAlias = Literal["permanent", "transient", "temporary"]
Jitter: TypeAlias = Literal["full", "equal", "none"]
Transport: TypeAlias = Literal["ipc", "tcp"]
InterruptMode: TypeAlias = Literal["", "signal", "message"]
Containment: TypeAlias = Literal["auto", "cgroup", "subreaper"]
Placement: TypeAlias = Literal["local", "ray"]
Launch: TypeAlias = Literal["fork", "exec"]
Checkpoint: TypeAlias = Literal["off", "after_execute"]

_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# The longest pool name: it is part of every kernel id, file and IPC socket name.
POOL_NAME_MAX = 64
# The longest kernelspec name (jupyter_client allows [a-z0-9._-], case-insensitive).
KERNEL_NAME_MAX = 128
# The longest path a key may name, in bytes (PATH_MAX, less its NUL).
PATH_MAX_BYTES = 4095

# Ranges shared by several keys (each key's comment in supervisor.toml states its own).
DAY_S = 86_400  # backoff delays, restart windows
MONTH_S = 30 * DAY_S  # per-request and idle timeouts
HOUR_S = 3_600  # start, heartbeat, interrupt and shutdown waits
MAX_KERNELS = 1_024  # size, spares
MAX_COUNT = 1_000_000  # intensity, queue_limit, max_retries
GIB = 1024 * 1024 * 1024
# ray_resources: a resource name's length, and the largest amount (Ray's memory is bytes).
RESOURCE_NAME_MAX = 128
MAX_RESOURCE = 2.0**50

# max_sessions = 0 ("auto") is sized from the machine's memory (see auto_max_sessions).
SESSION_FOOTPRINT_MIB = 128  # a fresh python3 kernel is ~75 MiB resident; room to work
SESSION_MEMORY_SHARE = 0.5  # the rest: the pool's own kernels, the OS, kernels that grow
MAX_SESSIONS_FLOOR = 4
MAX_SESSIONS_CAP = 1_024


# --- validators ------------------------------------------------------------------------
#
# They raise ConfigError carrying ``rel`` (the key path relative to the class being
# built, e.g. "max_delay" or "pool[1].name") and ``reason``; the structuring code below
# prefixes the path of the class. Built directly (no TOML), the classes raise the same
# errors with the relative path only.


def _invalid(rel: str, reason: str) -> ConfigError:
    return ConfigError(f"{rel}: {reason}", path=rel, rel=rel, reason=reason)


def _within(
    low: float, high: float, *, above: bool = False
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """``low <= value <= high`` (``low < value`` when ``above``); None passes (unset)."""
    first = f"> {low}" if above else f">= {low}"

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if (value <= low if above else value < low) or value > high:
            raise _invalid(attribute.name, f"must be {first} and <= {high} (got {value!r})")

    return check


def _within_length(low: int, high: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """A string of ``low`` to ``high`` characters."""

    def check(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if not low <= len(value) <= high:
            raise _invalid(
                attribute.name, f"must be {low}-{high} characters long (got {len(value)})"
            )

    return check


def _shown(value: str, limit: int = 60) -> str:
    """``value``'s repr, cut to ``limit`` characters (an error line stays one short line)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def _path(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """A string that becomes a path: no NUL, at most PATH_MAX_BYTES."""
    if "\0" in value:
        raise _invalid(attribute.name, f"must not contain a NUL character (got {_shown(value)})")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > PATH_MAX_BYTES:
        raise _invalid(
            attribute.name, f"must be at most {PATH_MAX_BYTES} bytes long (got {size} bytes)"
        )


def auto_max_sessions(total_memory_bytes: int) -> int:
    """``max_sessions = 0``: how many session kernels a machine of this much memory takes.

    ``SESSION_MEMORY_SHARE`` of the memory, ``SESSION_FOOTPRINT_MIB`` per kernel, at least
    ``MAX_SESSIONS_FLOOR``, at most ``MAX_SESSIONS_CAP`` (supervisor.toml states it)."""
    mib = max(0, total_memory_bytes) // (1024 * 1024)
    fits = int(mib * SESSION_MEMORY_SHARE) // SESSION_FOOTPRINT_MIB
    return min(MAX_SESSIONS_CAP, max(MAX_SESSIONS_FLOOR, fits))


def _check_endpoint(endpoint: str, allow_remote: bool) -> str | None:
    """The reason ``endpoint`` is unusable, or None if it is fine."""
    if endpoint == "":
        return None
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc"):
        return f'must be "", tcp://HOST:PORT or ipc://PATH (got {endpoint!r})'
    if scheme == "ipc":
        return None if rest else f"ipc:// needs a path (got {endpoint!r})"
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        return f"expected tcp://HOST:PORT (got {endpoint!r})"
    if not (port == "*" or (port.isdigit() and 1 <= int(port) <= 65535)):
        return f"port must be 1-65535 or * (got {port!r})"
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    loopback = bare in ("localhost", "::1") or bare.startswith("127.")
    if not loopback and not allow_remote:
        return f"host {host!r} is not loopback (set allow_remote = true to listen on it)"
    return None


# --- the classes -----------------------------------------------------------------------


@attrs.frozen
class Supervision:
    """The effective supervision settings of one supervisor (a pool's or the root's)."""

    strategy: Strategy
    intensity: int
    period: float


@attrs.frozen
class SupervisorConfig:
    """``[supervisor]``: defaults for every pool, and the root supervisor's window."""

    strategy: Strategy = "one_for_one"
    intensity: int = attrs.field(default=10, validator=_within(0, MAX_COUNT))
    period: float = attrs.field(default=60.0, validator=_within(0, DAY_S, above=True))
    runtime_dir: str = attrs.field(default="", validator=_path)
    log_file: str = attrs.field(default="", validator=_path)
    # Jobs (submit): each job's whole output is spooled to disk in the runtime directory,
    # up to max_job_output_bytes per job and max_job_spool_bytes for all jobs together;
    # a finished job is kept job_retention seconds.
    max_job_output_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_within(1024, GIB))
    max_job_spool_bytes: int = attrs.field(
        default=1024 * 1024 * 1024, validator=_within(1024, 1024 * GIB)
    )
    job_retention: float = attrs.field(default=3600.0, validator=_within(0, MONTH_S))
    # put_file / get_file: the largest file moved in one call (bytes).
    max_file_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_within(1, GIB))

    def supervision(self) -> Supervision:
        """The root supervisor's settings (also the pools' defaults)."""
        return Supervision(self.strategy, self.intensity, self.period)


@attrs.frozen
class ServerConfig:
    """``[server]``: the control endpoint."""

    endpoint: str = ""
    allow_remote: bool = False
    max_message_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_within(1024, GIB))
    # Client connections open at once; each holds about 4 descriptors of the supervisor
    # (control/gate.py), so the open files limit may bound them further.
    max_connections: int = attrs.field(default=256, validator=_within(1, 65_536))

    def __attrs_post_init__(self) -> None:
        reason = _check_endpoint(self.endpoint, self.allow_remote)
        if reason is not None:
            raise _invalid("endpoint", reason)


@attrs.frozen
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (kernelsup/metrics/). Off unless ``listen``."""

    # "HOST:PORT" to serve /metrics on (port 0: any free port); "" = no metrics endpoint.
    listen: str = ""
    # Let ``listen`` name a host that is not loopback.
    allow_remote: bool = False

    def __attrs_post_init__(self) -> None:
        reason = _check_listen(self.listen, self.allow_remote)
        if reason is not None:
            raise _invalid("listen", reason)


def _check_listen(listen: str, allow_remote: bool) -> str | None:
    """The reason ``listen`` (``HOST:PORT``, or "") is unusable, or None if it is fine."""
    if listen == "":
        return None
    host, colon, port = listen.rpartition(":")
    if not colon or not host:
        return f'expected "HOST:PORT", e.g. "127.0.0.1:9464" (got {listen!r})'
    if not (port.isdigit() and 0 <= int(port) <= 65535):
        return f"port must be 0-65535 (got {port!r})"
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare not in ("localhost", "::1") and not bare.startswith("127.") and not allow_remote:
        return f"host {host!r} is not loopback (set [metrics] allow_remote = true to listen on it)"
    return None


def _check_resources(
    _inst: Any, attribute: attrs.Attribute[Any], resources: Mapping[str, float]
) -> None:
    for name, amount in resources.items():
        if not name or len(name) > RESOURCE_NAME_MAX or "\0" in name:
            raise _invalid(
                f"{attribute.name}[{name!r}]",
                f"a resource name must be 1-{RESOURCE_NAME_MAX} characters, without NUL",
            )
        if not 0 <= amount <= MAX_RESOURCE:
            raise _invalid(
                f"{attribute.name}[{name!r}]",
                f"must be >= 0 and <= {MAX_RESOURCE} (got {amount!r})",
            )


def _frozen_resources(resources: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(resources))


def ray_installed() -> bool:
    """Whether the optional ``ray`` package can be imported (``kernelsup[ray]``)."""
    return importlib.util.find_spec("ray") is not None


@attrs.frozen
class RayConfig:
    """``[ray]``: the Ray cluster that pools with ``placement = "ray"`` start kernels on
    (adapters/ray_host.py). Unused while no pool asks for it."""

    # "HOST:PORT" of the cluster's head (its GCS), or "auto" (RAY_ADDRESS, else a cluster
    # started on this machine); "" = none.
    address: str = ""
    namespace: str = attrs.field(default="kernelsup", validator=_within_length(1, 128))
    # The supervisor renews each host actor's lease this often; a host that hears nothing
    # for lease_timeout kills its kernel (a supervisor cut off or gone).
    lease_interval: float = attrs.field(default=1.0, validator=_within(0, HOUR_S, above=True))
    lease_timeout: float = attrs.field(default=10.0, validator=_within(0, HOUR_S, above=True))
    # A host actor not placed on a node within this long: the start fails with no_capacity.
    placement_timeout: float = attrs.field(default=30.0, validator=_within(0, HOUR_S, above=True))

    def __attrs_post_init__(self) -> None:
        if self.lease_timeout <= self.lease_interval:
            raise _invalid(
                "lease_timeout",
                f"must be > lease_interval ({self.lease_timeout!r} <= {self.lease_interval!r})",
            )


@attrs.frozen
class RestartConfig:
    """``[pool.restart]``: when a kernel that exited is started again (see core/policy.py)."""

    type: RestartType = "permanent"
    min_delay: float = attrs.field(default=0.5, validator=_within(0, DAY_S))
    max_delay: float = attrs.field(default=30.0, validator=_within(0, DAY_S))
    multiplier: float = attrs.field(default=2.0, validator=_within(1, 1000))
    jitter: Jitter = "full"
    reset_after: float = attrs.field(default=60.0, validator=_within(0, DAY_S))
    max_retries: int = attrs.field(default=10, validator=_within(-1, MAX_COUNT))

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.min_delay:
            raise _invalid(
                "max_delay", f"must be >= min_delay ({self.max_delay!r} < {self.min_delay!r})"
            )


@attrs.frozen
class HeartbeatConfig:
    """``[pool.heartbeat]``: ``misses`` missed pings in a row of ``interval`` = frozen."""

    interval: float = attrs.field(default=1.0, validator=_within(0, HOUR_S, above=True))
    misses: int = attrs.field(default=3, validator=_within(1, 1000))


@attrs.frozen
class ShutdownConfig:
    """``[pool.shutdown]``: shutdown_request, grace, SIGTERM, term_timeout, SIGKILL."""

    grace: float = attrs.field(default=2.0, validator=_within(0, HOUR_S))
    term_timeout: float = attrs.field(default=2.0, validator=_within(0, HOUR_S))


# mcp.max_output_chars: below this the cut marker alone would take much of a result; above
# that one result would be a sizeable share of any model's context.
MCP_OUTPUT_CHARS_MIN = 1_000
MCP_OUTPUT_CHARS_MAX = 1_000_000


@attrs.frozen
class McpConfig:
    """``[mcp]``: what ``kernelsup mcp`` hands the model (kernelsup/mcp/)."""

    # Characters of text one tool result gives the model; past it the middle is cut (the
    # rest pageable with job_output). A tool call may ask for another value in the range.
    max_output_chars: int = attrs.field(
        default=20_000, validator=_within(MCP_OUTPUT_CHARS_MIN, MCP_OUTPUT_CHARS_MAX)
    )
    # execute waits this long for the code to finish; then it answers with a job id.
    block_for: float = attrs.field(default=10.0, validator=_within(0, HOUR_S))


def _check_pool_name(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _POOL_NAME.fullmatch(value):
        raise _invalid(attribute.name, f"must match [A-Za-z0-9_.-]+ (got {value!r})")
    if len(value) > POOL_NAME_MAX:
        raise _invalid(
            attribute.name, f"must be at most {POOL_NAME_MAX} characters (got {len(value)})"
        )


def _check_kernel_name(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise _invalid(attribute.name, "must not be empty")
    if not _POOL_NAME.fullmatch(value):
        raise _invalid(
            attribute.name, f"must be a kernelspec name, [A-Za-z0-9_.-]+ (got {_shown(value)})"
        )
    if len(value) > KERNEL_NAME_MAX:
        raise _invalid(
            attribute.name, f"must be at most {KERNEL_NAME_MAX} characters (got {len(value)})"
        )


def _check_env(_inst: Any, attribute: attrs.Attribute[Any], env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not key or "=" in key or "\0" in key:
            raise _invalid(
                f"{attribute.name}[{key!r}]",
                "a variable name must be non-empty, without '=' or NUL",
            )
        if "\0" in value:
            raise _invalid(f"{attribute.name}[{key!r}]", "must not contain a NUL character")


# A user name as useradd accepts it (POSIX portable characters, 32 at most).
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,30}\$?")


def _check_user(_inst: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """A pool's ``user``: a user of this machine, and one this process may become (the
    only lookup the config makes: check and run must agree on it)."""
    if value == "":
        return
    if not _USER_NAME.fullmatch(value):
        raise _invalid(
            attribute.name,
            f"must be a user name, [A-Za-z0-9_][A-Za-z0-9_.-]* of at most 32 characters "
            f"(got {_shown(value)})",
        )
    try:
        uid = pwd.getpwnam(value).pw_uid
    except KeyError:
        raise _invalid(attribute.name, f"no user named {value!r} on this machine") from None
    if os.geteuid() not in (0, uid):
        raise _invalid(
            attribute.name,
            f"running kernels as user {value!r} needs kernelsup to run as root "
            f"(this process runs as uid {os.geteuid()})",
        )


def _frozen_env(env: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(env))


# preload: how many modules, and the longest dotted name.
MAX_PRELOAD = 256
MODULE_NAME_MAX = 256
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _check_preload(inst: Any, attribute: attrs.Attribute[Any], modules: tuple[str, ...]) -> None:
    if len(modules) > MAX_PRELOAD:
        raise _invalid(
            attribute.name, f"must name at most {MAX_PRELOAD} modules (got {len(modules)})"
        )
    for i, name in enumerate(modules):
        if not isinstance(name, str) or len(name) > MODULE_NAME_MAX or not _MODULE.fullmatch(name):
            raise _invalid(
                f"{attribute.name}[{i}]",
                f"must be a module name like 'numpy' or 'os.path' (got {_shown(str(name))})",
            )
    if modules and inst.launch != "fork":
        raise _invalid(
            attribute.name, 'needs launch = "fork" (modules are preloaded in the zygote)'
        )


@attrs.frozen
class PoolConfig:
    """``[[pool]]``: a group of kernels of one kernelspec, under one supervisor.

    ``strategy``/``intensity``/``period`` are None unless the file overrides
    ``[supervisor]``: read the effective values with :meth:`supervision`.
    """

    name: str = attrs.field(default="default", validator=_check_pool_name)
    kernel: str = attrs.field(default="python3", validator=_check_kernel_name)
    size: int = attrs.field(default=2, validator=_within(1, MAX_KERNELS))
    spares: int = attrs.field(default=1, validator=_within(0, MAX_KERNELS))
    exec_timeout: float = attrs.field(default=600.0, validator=_within(0, MONTH_S, above=True))
    max_output_bytes: int = attrs.field(default=1024 * 1024, validator=_within(1024, GIB))
    startup_code: str = ""
    strategy: Strategy | None = None
    intensity: int | None = attrs.field(default=None, validator=_within(0, MAX_COUNT))
    period: float | None = attrs.field(default=None, validator=_within(0, DAY_S, above=True))
    queue_limit: int = attrs.field(default=100, validator=_within(0, MAX_COUNT))
    queue_timeout: float = attrs.field(default=300.0, validator=_within(0, MONTH_S))
    # An hour: a session left by a client that went away gives its kernel back within
    # the hour, while one a person or an agent pauses over keeps its state.
    session_idle_timeout: float = attrs.field(default=3600.0, validator=_within(0, MONTH_S))
    # 0 = auto: sized from the machine's memory (auto_max_sessions).
    max_sessions: int = attrs.field(default=0, validator=_within(0, 10_000))
    start_timeout: float = attrs.field(default=60.0, validator=_within(0, HOUR_S, above=True))
    interrupt_grace: float = attrs.field(default=5.0, validator=_within(0, HOUR_S))
    interrupt_mode: InterruptMode = ""
    transport: Transport = "ipc"
    memory_limit_mb: int = attrs.field(default=0, validator=_within(0, 1024 * 1024))
    pids_limit: int = attrs.field(default=0, validator=_within(0, 4 * 1024 * 1024))
    cpu_limit: float = attrs.field(default=0.0, validator=_within(0, 4096))
    containment: Containment = "auto"
    user: str = attrs.field(default="", validator=_check_user)
    # "fork": Python kernels are forked from a warm zygote (adapters/forkserver.py); other
    # kernels, and any while the zygote is not ready, are exec'ed as with "exec".
    launch: Launch = "fork"
    preload: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_check_preload)
    # Kernels kept started and never used, for execute(fresh=True).
    fresh_spares: int = attrs.field(default=0, validator=_within(0, MAX_KERNELS))
    # Root of the sessions' private working directories (one per session that names no
    # cwd of its own, removed when it closes); "" = "sessions" in the runtime directory.
    workdir: str = attrs.field(default="", validator=_path)
    # "after_execute": after each successful request in a session, its namespace is saved
    # (tree/checkpoints.py) and a replacement kernel restores it before the next request.
    checkpoint: Checkpoint = "off"
    # A snapshot larger, or slower to save, than this is skipped (and said); the previous
    # one is kept. 1 GiB and 30 s leave room for a 100 MB frame and a fitted model.
    checkpoint_max_bytes: int = attrs.field(default=GIB, validator=_within(1024, 1024 * GIB))
    checkpoint_timeout: float = attrs.field(default=30.0, validator=_within(0, HOUR_S, above=True))
    # "ray": each kernel starts on a node of the [ray] cluster, inside a host actor that
    # asks for ray_resources (num_cpus, num_gpus, memory, or custom names like kernel_slot).
    placement: Placement = "local"
    ray_resources: Mapping[str, float] = attrs.field(
        factory=dict, converter=_frozen_resources, validator=_check_resources, hash=False
    )
    env: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_env, validator=_check_env, hash=False
    )
    restart: RestartConfig = attrs.field(factory=RestartConfig)
    heartbeat: HeartbeatConfig = attrs.field(factory=HeartbeatConfig)
    shutdown: ShutdownConfig = attrs.field(factory=ShutdownConfig)

    def supervision(self, defaults: SupervisorConfig) -> Supervision:
        """This pool's effective strategy/intensity/period: its own, else ``defaults``'."""
        return Supervision(
            strategy=self.strategy if self.strategy is not None else defaults.strategy,
            intensity=self.intensity if self.intensity is not None else defaults.intensity,
            period=self.period if self.period is not None else defaults.period,
        )

    def effective_max_sessions(self, total_memory_bytes: int) -> int:
        """The most sessions this pool holds open at once: ``max_sessions``, or when it is
        0, :func:`auto_max_sessions` of the machine's memory."""
        return self.max_sessions or auto_max_sessions(total_memory_bytes)


def _check_pools(
    _inst: Any, _attribute: attrs.Attribute[Any], pools: tuple[PoolConfig, ...]
) -> None:
    if not pools:
        raise _invalid("pool", "at least one [[pool]] is required")
    seen: dict[str, int] = {}
    for i, pool in enumerate(pools):
        if pool.name in seen:
            raise _invalid(
                f"pool[{i}].name",
                f"duplicate pool name {pool.name!r} (also $.pool[{seen[pool.name]}].name)",
            )
        seen[pool.name] = i


def _to_pools(pools: Iterable[PoolConfig]) -> tuple[PoolConfig, ...]:
    return tuple(pools)


@attrs.frozen
class Config:
    """The whole configuration. ``source`` is the absolute path of the file it came from
    (None when parsed from a string or dict); the TOML key ``pool`` maps to ``pools``."""

    supervisor: SupervisorConfig = attrs.field(factory=SupervisorConfig)
    server: ServerConfig = attrs.field(factory=ServerConfig)
    mcp: McpConfig = attrs.field(factory=McpConfig)
    pools: tuple[PoolConfig, ...] = attrs.field(
        factory=lambda: (PoolConfig(),), converter=_to_pools, validator=_check_pools
    )
    ray: RayConfig = attrs.field(factory=RayConfig)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    source: str | None = None

    def __attrs_post_init__(self) -> None:
        for i, pool in enumerate(self.pools):
            if pool.placement != "ray":
                continue
            if not self.ray.address:
                raise _invalid(
                    f"pool[{i}].placement",
                    '"ray" needs the cluster\'s address in [ray] address (e.g. "127.0.0.1:6379")',
                )
            if not ray_installed():
                raise _invalid(
                    f"pool[{i}].placement",
                    '"ray" needs the ray package, which is not installed: '
                    "pip install 'kernelsup[ray]'",
                )

    @classmethod
    def default(cls) -> Config:
        """The configuration of an empty file: one pool "default" of 2 python3 kernels."""
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Config:
        """Structure parsed TOML data; ``source`` names it in error messages.

        Raises ConfigError.
        """
        return _structure(data, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the TOML layout (``pool``, no ``source``, unset overrides left
        out), accepted back by :meth:`from_dict`."""
        result: dict[str, Any] = _converter.unstructure(self, Config)
        return result

    @property
    def pool_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.pools)

    def pool(self, name: str) -> PoolConfig:
        """The pool called ``name``; raises KeyError if there is none."""
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def supervision(self, pool: PoolConfig | str) -> Supervision:
        """A pool's effective strategy/intensity/period (given the pool or its name)."""
        p = self.pool(pool) if isinstance(pool, str) else pool
        return p.supervision(self.supervisor)


# --- structuring -----------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _structure_int(value: Any, _type: Any) -> int:
    if type(value) is not int:
        raise _invalid("", f"expected int, got {_describe(value)}")
    return value


def _structure_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid("", f"expected float, got {_describe(value)}")
    if not math.isfinite(value):
        raise _invalid("", f"expected a finite number, got {value!r}")
    return float(value)


def _structure_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("", f"expected str, got {_describe(value)}")
    return value


def _structure_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid("", f"expected bool, got {_describe(value)}")
    return value


def _is_literal(type_: Any) -> bool:
    origin: Any = get_origin(type_)
    return origin is Literal


def _structure_literal(value: Any, type_: Any) -> Any:
    choices = get_args(type_)
    if value not in choices or type(value) is not str:
        shown = ", ".join(c if c else '""' for c in choices)
        raise _invalid("", f"must be one of {shown} (got {value!r})")
    return value


def _structure_env(value: Any, _type: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _invalid("", f"expected a table of strings, got {_describe(value)}")
    errors: list[Exception] = []
    for key, item in value.items():
        if not isinstance(item, str):
            exc = _invalid("", f"expected str, got {_describe(item)}")
            exc.__notes__ = [IterableValidationNote(f"env value @ key {key!r}", key, str)]  # type: ignore[attr-defined]  # 3.10 typeshed lacks __notes__; cattrs reads it
            errors.append(exc)
    if errors:
        raise IterableValidationError("While structuring env", errors, dict)
    return dict(value)


def _structure_resources(value: Any, _type: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _invalid("", f"expected a table of numbers, got {_describe(value)}")
    errors: list[Exception] = []
    result: dict[str, float] = {}
    for key, item in value.items():
        try:
            result[key] = _structure_float(item, float)
        except ConfigError as exc:
            exc.__notes__ = [IterableValidationNote(f"resource @ key {key!r}", key, float)]  # type: ignore[attr-defined]  # as in _structure_env
            errors.append(exc)
    if errors:
        raise IterableValidationError("While structuring ray_resources", errors, dict)
    return result


def _make_pools_hook(converter: cattrs.Converter) -> Callable[[Any, Any], tuple[PoolConfig, ...]]:
    def structure(value: Any, _type: Any) -> tuple[PoolConfig, ...]:
        if not isinstance(value, list):
            raise _invalid("", f"expected an array of tables ([[pool]]), got {_describe(value)}")
        pools: list[PoolConfig] = []
        errors: list[Exception] = []
        for i, item in enumerate(value):
            try:
                pools.append(converter.structure(item, PoolConfig))
            except Exception as exc:  # collected and reported together below
                exc.__notes__ = [IterableValidationNote(f"pool @ index {i}", i, PoolConfig)]  # type: ignore[attr-defined]  # as above
                errors.append(exc)
        if errors:
            raise IterableValidationError("While structuring pools", errors, tuple)
        return tuple(pools)

    return structure


def _table_hook(
    converter: cattrs.Converter, cls: type[Any], **overrides: Any
) -> Callable[[Any, Any], Any]:
    """cattrs' generated structure function for ``cls``, refusing non-tables first."""
    inner = make_dict_structure_fn(cls, converter, **overrides)

    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, dict):
            raise _invalid("", f"expected a table, got {_describe(value)}")
        return inner(value, type_)

    return structure


def _make_converter() -> cattrs.Converter:
    c = cattrs.Converter(forbid_extra_keys=True)
    c.register_structure_hook(int, _structure_int)
    c.register_structure_hook(float, _structure_float)
    c.register_structure_hook(str, _structure_str)
    c.register_structure_hook(bool, _structure_bool)
    c.register_structure_hook_func(_is_literal, _structure_literal)
    c.register_structure_hook_func(lambda t: t == Mapping[str, str], _structure_env)
    c.register_structure_hook_func(lambda t: t == Mapping[str, float], _structure_resources)
    c.register_structure_hook_func(lambda t: t == tuple[PoolConfig, ...], _make_pools_hook(c))
    for cls in (
        SupervisorConfig,
        ServerConfig,
        McpConfig,
        RestartConfig,
        HeartbeatConfig,
        ShutdownConfig,
        PoolConfig,
        RayConfig,
        MetricsConfig,
    ):
        c.register_structure_hook(cls, _table_hook(c, cls))
    c.register_structure_hook(
        Config, _table_hook(c, Config, pools=override(rename="pool"), source=override(omit=True))
    )
    unset = override(omit_if_default=True)
    # Unstructuring (Config.to_dict) is rare: its functions are generated on first use, so
    # that loading a config (every client does) does not pay for them.
    c.register_unstructure_hook_factory(
        lambda t: t is PoolConfig,
        lambda t: make_dict_unstructure_fn(
            PoolConfig, c, strategy=unset, intensity=unset, period=unset
        ),
    )
    c.register_unstructure_hook_func(lambda t: t == Mapping[str, str], dict)
    c.register_unstructure_hook_func(lambda t: t == Mapping[str, float], dict)
    c.register_unstructure_hook_factory(
        lambda t: t is Config,
        lambda t: make_dict_unstructure_fn(
            Config, c, pools=override(rename="pool"), source=override(omit=True)
        ),
    )
    return c


_converter = _make_converter()

# Attribute names whose TOML key differs (class, attribute) -> key.
_KEYS: dict[tuple[type, str], str] = {(Config, "pools"): "pool"}


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key:
        return path
    return f"{path}.{key}" if _BARE_KEY.fullmatch(key) else f"{path}[{key!r}]"


def _problems(exc: BaseException, path: str) -> list[tuple[str, str]]:
    """Walk cattrs' nested validation errors into ``(key path, reason)`` pairs."""
    if isinstance(exc, ClassValidationError):
        out: list[tuple[str, str]] = []
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            out += _problems(sub, _join(path, _KEYS.get((exc.cl, note.name), note.name)))
        for sub in without:
            out += _problems(sub, path)
        return out
    if isinstance(exc, IterableValidationError):
        out = []
        items, rest = exc.group_exceptions()
        for sub, inote in items:
            out += _problems(sub, _join(path, inote.index))
        for sub in rest:
            out += _problems(sub, path)
        return out
    if isinstance(exc, ForbiddenExtraKeysError):
        return [(_join(path, k), "unknown key") for k in sorted(exc.extra_fields)]
    if isinstance(exc, ConfigError) and "reason" in exc.data:
        rel = exc.data["rel"]
        return [(f"{path}.{rel}" if rel else path, exc.data["reason"])]
    return [(path, f"invalid value ({type(exc).__name__}: {exc})")]


def _structure(data: Mapping[str, Any], source: str) -> Config:
    try:
        config: Config = _converter.structure(data, Config)
    except Exception as exc:  # every structuring failure becomes one ConfigError
        problems = _problems(exc, "$")
        lines = [f"{p}: {reason}" for p, reason in problems]
        raise ConfigError(
            f"{source}: " + "; ".join(lines), path=problems[0][0], file=source, errors=lines
        ) from exc
    return config


_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def parse_config(text: str, *, source: str = "<string>") -> Config:
    """Parse TOML ``text``; ``source`` names it in error messages. Raises ConfigError.

    The result's ``source`` is None: only :func:`load_config` ties a config to a file.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_POSITION.search(message)
        if where and where[1]:
            line, column = int(where[1]), int(where[2])
        else:  # "(at end of document)"
            line = text.count("\n") + 1
            column = len(text) - (text.rfind("\n") + 1) + 1
        if where:
            message = message[: where.start()]
        raise ConfigError(
            f"{source}: invalid TOML: line {line}, column {column}: {message}",
            path="$",
            file=source,
            line=line,
            column=column,
        ) from exc
    return _structure(data, source)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file. Raises ConfigError (also for I/O problems).

    Error messages name the file as given; ``Config.source`` is its absolute path, from
    which the default runtime directory is derived.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(
            f"{name}: cannot read config file: {exc.strerror or exc}", path="$", file=name
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{name}: not valid UTF-8 (byte {exc.start})", path="$", file=name
        ) from exc
    config = parse_config(text, source=name)
    return attrs.evolve(config, source=os.path.abspath(name))
