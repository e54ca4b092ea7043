"""Config loading: defaults, every class of error, inheritance, round trips."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from kernelsup.api import open_supervisor
from kernelsup.core.config import (
    Config,
    HeartbeatConfig,
    McpConfig,
    MetricsConfig,
    PoolConfig,
    RayConfig,
    RestartConfig,
    ServerConfig,
    ShutdownConfig,
    Supervision,
    SupervisorConfig,
    auto_max_sessions,
    load_config,
    parse_config,
)
from kernelsup.core.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

STRATEGIES = "one_for_one, one_for_all, rest_for_one"


def error_of(text: str, source: str = "supervisor.toml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source=source)
    return info.value


# --- defaults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[supervisor]\n",
        "[server]\n[supervisor]\n",
        "[[pool]]\n",
        '[[pool]]\nname = "default"\n',
    ],
)
def test_empty_files_give_the_default_config(text: str) -> None:
    assert parse_config(text) == Config.default()


@pytest.mark.parametrize(
    ("getter", "expected"),
    [
        (lambda c: c.supervisor.strategy, "one_for_one"),
        (lambda c: c.supervisor.intensity, 10),
        (lambda c: c.supervisor.period, 60.0),
        (lambda c: c.supervisor.runtime_dir, ""),
        (lambda c: c.supervisor.log_file, ""),
        (lambda c: c.server.endpoint, ""),
        (lambda c: c.server.allow_remote, False),
        (lambda c: c.server.max_message_bytes, 16777216),
        (lambda c: c.pool_names, ("default",)),
        (lambda c: c.pools[0].kernel, "python3"),
        (lambda c: c.pools[0].size, 2),
        (lambda c: c.pools[0].spares, 1),
        (lambda c: c.pools[0].exec_timeout, 600.0),
        (lambda c: c.pools[0].max_output_bytes, 1048576),
        (lambda c: c.pools[0].startup_code, ""),
        (
            lambda c: (c.pools[0].strategy, c.pools[0].intensity, c.pools[0].period),
            (None, None, None),
        ),
        (lambda c: c.pools[0].queue_limit, 100),
        (lambda c: c.pools[0].queue_timeout, 300.0),
        (lambda c: c.pools[0].session_idle_timeout, 3600.0),
        (lambda c: c.pools[0].max_sessions, 0),
        (lambda c: c.pools[0].start_timeout, 60.0),
        (lambda c: c.pools[0].interrupt_grace, 5.0),
        (lambda c: c.pools[0].interrupt_mode, ""),
        (lambda c: c.pools[0].transport, "ipc"),
        (lambda c: c.pools[0].memory_limit_mb, 0),
        (lambda c: c.pools[0].pids_limit, 0),
        (lambda c: c.pools[0].cpu_limit, 0.0),
        (lambda c: c.pools[0].containment, "auto"),
        (lambda c: dict(c.pools[0].env), {}),
        (
            lambda c: c.pools[0].restart,
            RestartConfig(
                type="permanent",
                min_delay=0.5,  # real backoff by default: a kernel that cannot start ends
                max_delay=30.0,
                multiplier=2.0,
                jitter="full",
                reset_after=60.0,
                max_retries=10,
            ),
        ),
        (lambda c: c.pools[0].heartbeat, HeartbeatConfig(interval=1.0, misses=3)),
        (lambda c: c.pools[0].shutdown, ShutdownConfig(grace=2.0, term_timeout=2.0)),
        (lambda c: c.source, None),
    ],
)
def test_default_values(getter: Any, expected: Any) -> None:
    assert getter(Config.default()) == expected


def test_config_is_frozen_and_hashable() -> None:
    cfg = Config.default()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.supervisor.intensity = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.pools[0].env["X"] = "1"  # type: ignore[index]
    assert hash(cfg) == hash(Config.default())


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # unknown keys, at every depth
        ("bogus = 1\n", "$.bogus: unknown key"),
        ("source = 'x'\n", "$.source: unknown key"),
        ("[pools]\n", "$.pools: unknown key"),
        ("[supervisor]\nstrategyy = 'one_for_one'\n", "$.supervisor.strategyy: unknown key"),
        ("[server]\nport = 1\n", "$.server.port: unknown key"),
        ("[[pool]]\nsise = 2\n", "$.pool[0].sise: unknown key"),
        ("[[pool]]\nname = 'a'\n[[pool]]\nname = 'b'\nsise = 2\n", "$.pool[1].sise: unknown key"),
        ("[[pool]]\n[pool.restart]\nmax_dealy = 1.0\n", "$.pool[0].restart.max_dealy: unknown key"),
        ("[[pool]]\n[pool.heartbeat]\nmiss = 1\n", "$.pool[0].heartbeat.miss: unknown key"),
        ("[[pool]]\n[pool.shutdown]\nkill = 1\n", "$.pool[0].shutdown.kill: unknown key"),
        ("[[pool]]\n[pool.restart.deep]\nx = 1\n", "$.pool[0].restart.deep: unknown key"),
        (
            "[[pool]]\n[pool.restart]\nb = 1\na = 2\n",
            "$.pool[0].restart.a: unknown key; $.pool[0].restart.b: unknown key",
        ),
        # wrong types
        ("[[pool]]\nsize = 'two'\n", "$.pool[0].size: expected int, got 'two'"),
        ("[[pool]]\nsize = true\n", "$.pool[0].size: expected int, got True"),
        ("[[pool]]\nsize = 2.0\n", "$.pool[0].size: expected int, got 2.0"),
        ("[[pool]]\nintensity = false\n", "$.pool[0].intensity: expected int, got False"),
        ("[[pool]]\nperiod = '60'\n", "$.pool[0].period: expected float, got '60'"),
        ("[[pool]]\nexec_timeout = true\n", "$.pool[0].exec_timeout: expected float, got True"),
        (
            "[[pool]]\nexec_timeout = inf\n",
            "$.pool[0].exec_timeout: expected a finite number, got inf",
        ),
        ("[supervisor]\nperiod = nan\n", "$.supervisor.period: expected a finite number, got nan"),
        ("[supervisor]\nlog_file = 3\n", "$.supervisor.log_file: expected str, got 3"),
        ("[server]\nallow_remote = 1\n", "$.server.allow_remote: expected bool, got 1"),
        ("[server]\nallow_remote = 'yes'\n", "$.server.allow_remote: expected bool, got 'yes'"),
        ("[[pool]]\nkernel = ['python3']\n", "$.pool[0].kernel: expected str, got an array"),
        ("[[pool]]\nenv = {A = 'x', B = 1}\n", "$.pool[0].env.B: expected str, got 1"),
        ("[[pool]]\nenv = {'a b' = true}\n", "$.pool[0].env['a b']: expected str, got True"),
        ("[[pool]]\nenv = 'A=x'\n", "$.pool[0].env: expected a table of strings, got 'A=x'"),
        ("[[pool]]\nrestart = 5\n", "$.pool[0].restart: expected a table, got 5"),
        ("supervisor = 'x'\n", "$.supervisor: expected a table, got 'x'"),
        ("pool = 5\n", "$.pool: expected an array of tables ([[pool]]), got 5"),
        ("[pool]\nname = 'x'\n", "$.pool: expected an array of tables ([[pool]]), got a table"),
        ("pool = [1]\n", "$.pool[0]: expected a table, got 1"),
        # bad enums
        (
            "[supervisor]\nstrategy = 'one_for_some'\n",
            f"$.supervisor.strategy: must be one of {STRATEGIES} (got 'one_for_some')",
        ),
        (
            "[[pool]]\nstrategy = 'all'\n",
            f"$.pool[0].strategy: must be one of {STRATEGIES} (got 'all')",
        ),
        (
            "[supervisor]\nstrategy = 1\n",
            f"$.supervisor.strategy: must be one of {STRATEGIES} (got 1)",
        ),
        (
            "[[pool]]\n[pool.restart]\ntype = 'forever'\n",
            "$.pool[0].restart.type: must be one of permanent, transient, temporary "
            "(got 'forever')",
        ),
        (
            "[[pool]]\n[pool.restart]\njitter = 'half'\n",
            "$.pool[0].restart.jitter: must be one of full, equal, none (got 'half')",
        ),
        (
            "[[pool]]\ntransport = 'udp'\n",
            "$.pool[0].transport: must be one of ipc, tcp (got 'udp')",
        ),
        (
            "[[pool]]\ninterrupt_mode = 'kill'\n",
            "$.pool[0].interrupt_mode: must be one of \"\", signal, message (got 'kill')",
        ),
        # bounds
        (
            "[supervisor]\nintensity = -1\n",
            "$.supervisor.intensity: must be >= 0 and <= 1000000 (got -1)",
        ),
        ("[supervisor]\nperiod = 0\n", "$.supervisor.period: must be > 0 and <= 86400 (got 0.0)"),
        (
            "[server]\nmax_message_bytes = 0\n",
            "$.server.max_message_bytes: must be >= 1024 and <= 1073741824 (got 0)",
        ),
        ("[[pool]]\nsize = 0\n", "$.pool[0].size: must be >= 1 and <= 1024 (got 0)"),
        ("[[pool]]\nspares = -1\n", "$.pool[0].spares: must be >= 0 and <= 1024 (got -1)"),
        (
            "[[pool]]\nexec_timeout = 0\n",
            "$.pool[0].exec_timeout: must be > 0 and <= 2592000 (got 0.0)",
        ),
        (
            "[[pool]]\nmax_output_bytes = 1023\n",
            "$.pool[0].max_output_bytes: must be >= 1024 and <= 1073741824 (got 1023)",
        ),
        ("[[pool]]\nintensity = -1\n", "$.pool[0].intensity: must be >= 0 and <= 1000000 (got -1)"),
        ("[[pool]]\nperiod = -5\n", "$.pool[0].period: must be > 0 and <= 86400 (got -5.0)"),
        (
            "[[pool]]\nqueue_limit = -1\n",
            "$.pool[0].queue_limit: must be >= 0 and <= 1000000 (got -1)",
        ),
        (
            "[[pool]]\nqueue_timeout = -0.5\n",
            "$.pool[0].queue_timeout: must be >= 0 and <= 2592000 (got -0.5)",
        ),
        (
            "[[pool]]\nsession_idle_timeout = -1\n",
            "$.pool[0].session_idle_timeout: must be >= 0 and <= 2592000 (got -1.0)",
        ),
        (
            "[[pool]]\nstart_timeout = 0\n",
            "$.pool[0].start_timeout: must be > 0 and <= 3600 (got 0.0)",
        ),
        (
            "[[pool]]\ninterrupt_grace = -1\n",
            "$.pool[0].interrupt_grace: must be >= 0 and <= 3600 (got -1.0)",
        ),
        (
            "[[pool]]\nmemory_limit_mb = -1\n",
            "$.pool[0].memory_limit_mb: must be >= 0 and <= 1048576 (got -1)",
        ),
        (
            "[[pool]]\n[pool.restart]\nmin_delay = -1\n",
            "$.pool[0].restart.min_delay: must be >= 0 and <= 86400 (got -1.0)",
        ),
        (
            "[[pool]]\n[pool.restart]\nmultiplier = 0.5\n",
            "$.pool[0].restart.multiplier: must be >= 1 and <= 1000 (got 0.5)",
        ),
        (
            "[[pool]]\n[pool.restart]\nreset_after = -1\n",
            "$.pool[0].restart.reset_after: must be >= 0 and <= 86400 (got -1.0)",
        ),
        (
            "[[pool]]\n[pool.restart]\nmax_retries = -2\n",
            "$.pool[0].restart.max_retries: must be >= -1 and <= 1000000 (got -2)",
        ),
        (
            "[[pool]]\n[pool.heartbeat]\ninterval = 0\n",
            "$.pool[0].heartbeat.interval: must be > 0 and <= 3600 (got 0.0)",
        ),
        (
            "[[pool]]\n[pool.heartbeat]\nmisses = 0\n",
            "$.pool[0].heartbeat.misses: must be >= 1 and <= 1000 (got 0)",
        ),
        (
            "[[pool]]\n[pool.shutdown]\ngrace = -1\n",
            "$.pool[0].shutdown.grace: must be >= 0 and <= 3600 (got -1.0)",
        ),
        (
            "[[pool]]\n[pool.shutdown]\nterm_timeout = -1\n",
            "$.pool[0].shutdown.term_timeout: must be >= 0 and <= 3600 (got -1.0)",
        ),
        # other values and cross-field checks
        (
            "[[pool]]\n[pool.restart]\nmin_delay = 2.0\nmax_delay = 1.0\n",
            "$.pool[0].restart.max_delay: must be >= min_delay (1.0 < 2.0)",
        ),
        (
            "[[pool]]\nname = 'a'\n[[pool]]\nname = 'b'\n[pool.restart]\nmin_delay = 45\n",
            "$.pool[1].restart.max_delay: must be >= min_delay (30.0 < 45.0)",
        ),
        ("[[pool]]\nname = 'a b'\n", "$.pool[0].name: must match [A-Za-z0-9_.-]+ (got 'a b')"),
        ("[[pool]]\nname = ''\n", "$.pool[0].name: must match [A-Za-z0-9_.-]+ (got '')"),
        ("[[pool]]\nkernel = ''\n", "$.pool[0].kernel: must not be empty"),
        (
            "[[pool]]\nkernel = 'python 3'\n",
            "$.pool[0].kernel: must be a kernelspec name, [A-Za-z0-9_.-]+ (got 'python 3')",
        ),
        (
            f"[[pool]]\nname = '{'p' * 65}'\n",
            "$.pool[0].name: must be at most 64 characters (got 65)",
        ),
        (
            "[[pool]]\nname = 'a'\n[[pool]]\nname = 'b'\n[[pool]]\nname = 'a'\n",
            "$.pool[2].name: duplicate pool name 'a' (also $.pool[0].name)",
        ),
        (
            "[[pool]]\n[[pool]]\n",
            "$.pool[1].name: duplicate pool name 'default' (also $.pool[0].name)",
        ),
        ("pool = []\n", "$.pool: at least one [[pool]] is required"),
        (
            "[server]\nendpoint = 'http://127.0.0.1:80'\n",
            '$.server.endpoint: must be "", tcp://HOST:PORT or ipc://PATH '
            "(got 'http://127.0.0.1:80')",
        ),
        (
            "[server]\nendpoint = '127.0.0.1:5599'\n",
            "$.server.endpoint: must be \"\", tcp://HOST:PORT or ipc://PATH (got '127.0.0.1:5599')",
        ),
        (
            "[server]\nendpoint = 'tcp://127.0.0.1'\n",
            "$.server.endpoint: expected tcp://HOST:PORT (got 'tcp://127.0.0.1')",
        ),
        (
            "[server]\nendpoint = 'tcp://127.0.0.1:0'\n",
            "$.server.endpoint: port must be 1-65535 or * (got '0')",
        ),
        (
            "[server]\nendpoint = 'tcp://127.0.0.1:65536'\n",
            "$.server.endpoint: port must be 1-65535 or * (got '65536')",
        ),
        (
            "[server]\nendpoint = 'ipc://'\n",
            "$.server.endpoint: ipc:// needs a path (got 'ipc://')",
        ),
        (
            "[server]\nendpoint = 'tcp://0.0.0.0:5599'\n",
            "$.server.endpoint: host '0.0.0.0' is not loopback "
            "(set allow_remote = true to listen on it)",
        ),
        # several problems: all of them, on one line, in file order
        (
            "[supervisor]\nintensity = 'x'\n[server]\nbogus = 1\n",
            "$.supervisor.intensity: expected int, got 'x'; $.server.bogus: unknown key",
        ),
    ],
)
def test_errors_name_the_file_and_key_path(text: str, message: str) -> None:
    err = error_of(text)
    assert str(err) == f"supervisor.toml: {message}"
    assert "\n" not in str(err)
    assert err.code == "config_invalid"
    assert err.data["file"] == "supervisor.toml"
    assert err.data["path"] == message.split(":")[0]
    assert err.data["errors"] == message.split("; ")
    assert err.describe().startswith("config_invalid ConfigError: supervisor.toml: $.")


# --- ranges: whatever `check` accepts, `run` can build ----------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # the three reproducers of issue 14: `check` said valid, `run` crashed
        (
            "[[pool]]\nsize = 99999999999999999\n",
            "$.pool[0].size: must be >= 1 and <= 1024 (got 99999999999999999)",
        ),
        (
            "[server]\nmax_message_bytes = 99999999999999999999\n",
            "$.server.max_message_bytes: must be >= 1024 and <= 1073741824 "
            "(got 99999999999999999999)",
        ),
        (
            '[supervisor]\nruntime_dir = "/tmp/a\\u0000b"\n',
            "$.supervisor.runtime_dir: must not contain a NUL character (got '/tmp/a\\x00b')",
        ),
        # every other number has its range too
        (
            "[supervisor]\nintensity = 1000001\n",
            "$.supervisor.intensity: must be >= 0 and <= 1000000 (got 1000001)",
        ),
        (
            "[supervisor]\nperiod = 1e300\n",
            "$.supervisor.period: must be > 0 and <= 86400 (got 1e+300)",
        ),
        ("[supervisor]\nperiod = 0\n", "$.supervisor.period: must be > 0 and <= 86400 (got 0.0)"),
        ("[[pool]]\nspares = 1025\n", "$.pool[0].spares: must be >= 0 and <= 1024 (got 1025)"),
        (
            "[[pool]]\nexec_timeout = 2592001\n",
            "$.pool[0].exec_timeout: must be > 0 and <= 2592000 (got 2592001.0)",
        ),
        (
            "[[pool]]\nmax_output_bytes = 1073741825\n",
            "$.pool[0].max_output_bytes: must be >= 1024 and <= 1073741824 (got 1073741825)",
        ),
        ("[[pool]]\nintensity = -1\n", "$.pool[0].intensity: must be >= 0 and <= 1000000 (got -1)"),
        ("[[pool]]\nperiod = 86401\n", "$.pool[0].period: must be > 0 and <= 86400 (got 86401.0)"),
        (
            "[[pool]]\nqueue_limit = 1000001\n",
            "$.pool[0].queue_limit: must be >= 0 and <= 1000000 (got 1000001)",
        ),
        (
            "[[pool]]\nqueue_timeout = -1\n",
            "$.pool[0].queue_timeout: must be >= 0 and <= 2592000 (got -1.0)",
        ),
        (
            "[[pool]]\nsession_idle_timeout = 1e10\n",
            "$.pool[0].session_idle_timeout: must be >= 0 and <= 2592000 (got 10000000000.0)",
        ),
        (
            "[[pool]]\nmax_sessions = -1\n",
            "$.pool[0].max_sessions: must be >= 0 and <= 10000 (got -1)",
        ),
        (
            "[[pool]]\nstart_timeout = 3601\n",
            "$.pool[0].start_timeout: must be > 0 and <= 3600 (got 3601.0)",
        ),
        (
            "[[pool]]\ninterrupt_grace = 3601\n",
            "$.pool[0].interrupt_grace: must be >= 0 and <= 3600 (got 3601.0)",
        ),
        (
            "[[pool]]\nmemory_limit_mb = 1048577\n",
            "$.pool[0].memory_limit_mb: must be >= 0 and <= 1048576 (got 1048577)",
        ),
        (
            "[[pool]]\n[pool.restart]\nmin_delay = 86401\nmax_delay = 86401\n",
            "$.pool[0].restart.min_delay: must be >= 0 and <= 86400 (got 86401.0)",
        ),
        (
            "[[pool]]\n[pool.restart]\nmultiplier = 0.5\n",
            "$.pool[0].restart.multiplier: must be >= 1 and <= 1000 (got 0.5)",
        ),
        (
            "[[pool]]\n[pool.restart]\nreset_after = 86401\n",
            "$.pool[0].restart.reset_after: must be >= 0 and <= 86400 (got 86401.0)",
        ),
        (
            "[[pool]]\n[pool.restart]\nmax_retries = -2\n",
            "$.pool[0].restart.max_retries: must be >= -1 and <= 1000000 (got -2)",
        ),
        (
            "[[pool]]\n[pool.heartbeat]\ninterval = 3601\n",
            "$.pool[0].heartbeat.interval: must be > 0 and <= 3600 (got 3601.0)",
        ),
        (
            "[[pool]]\n[pool.heartbeat]\nmisses = 1001\n",
            "$.pool[0].heartbeat.misses: must be >= 1 and <= 1000 (got 1001)",
        ),
        # strings that become paths, or the kernel's environment
        (
            f"[supervisor]\nlog_file = '/tmp/{'x' * 4100}'\n",
            "$.supervisor.log_file: must be at most 4095 bytes long (got 4105 bytes)",
        ),
        (
            f'[supervisor]\nruntime_dir = "/tmp/\\u0000{"x" * 100}"\n',
            "$.supervisor.runtime_dir: must not contain a NUL character "
            f"(got '/tmp/\\x00{'x' * 54}'... (106 characters))",
        ),
        (
            '[[pool]]\nenv = {A = "1\\u0000"}\n',
            "$.pool[0].env['A']: must not contain a NUL character",
        ),
        (
            '[[pool]]\nenv = {"A=B" = "1"}\n',
            "$.pool[0].env['A=B']: a variable name must be non-empty, without '=' or NUL",
        ),
    ],
)
def test_numbers_and_paths_outside_their_range(text: str, message: str) -> None:
    err = error_of(text)
    assert str(err) == f"supervisor.toml: {message}"
    assert err.data["path"] == message.split(":")[0]


@pytest.mark.parametrize(
    "text",
    [
        "[[pool]]\nsize = 1024\nspares = 1024\n",
        "[server]\nmax_message_bytes = 1024\n",
        "[server]\nmax_message_bytes = 1073741824\n",
        "[supervisor]\nintensity = 1000000\nperiod = 86400\n",
        "[[pool]]\nexec_timeout = 2592000\nsession_idle_timeout = 0\nmax_sessions = 10000\n",
        "[[pool]]\n[pool.restart]\nmax_retries = -1\nmultiplier = 1000\nmax_delay = 86400\n",
        f"[supervisor]\nruntime_dir = '/tmp/{'x' * 4090}'\n",
    ],
)
def test_the_ends_of_each_range_are_valid(text: str) -> None:
    parse_config(text)


@pytest.mark.parametrize(
    ("memory_gib", "expected"),
    [
        (0, 4),  # unknown memory: the floor
        (1, 4),  # 512 MiB / 128 = 4
        (4, 16),
        (24, 96),
        (256, 1024),
        (4096, 1024),  # the cap
    ],
)
def test_auto_max_sessions(memory_gib: int, expected: int) -> None:
    total = memory_gib * 1024**3
    assert auto_max_sessions(total) == expected
    assert PoolConfig().effective_max_sessions(total) == expected
    assert PoolConfig(max_sessions=7).effective_max_sessions(total) == 7


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("[supervisor\n", 1, 12),
        ("[supervisor]\nintensity = \n", 2, 13),
        ("[supervisor]\nintensity = 1\nintensity = 2\n", 3, 14),
        ("[[pool]]\nname = 'a'\n\nsize = 2 3\n", 4, 10),
        ("[supervisor", 1, 12),  # tomllib: "at end of document"
        ('[server]\nendpoint = "x', 2, 14),
    ],
)
def test_broken_toml_names_line_and_column(text: str, line: int, column: int) -> None:
    err = error_of(text)
    assert str(err).startswith(f"supervisor.toml: invalid TOML: line {line}, column {column}: ")
    assert "\n" not in str(err)
    assert err.data == {"path": "$", "file": "supervisor.toml", "line": line, "column": column}


@pytest.mark.parametrize(
    "text",
    [
        "[server]\nendpoint = 'tcp://127.0.0.1:5599'\n",
        "[server]\nendpoint = 'tcp://localhost:5599'\n",
        "[server]\nendpoint = 'tcp://[::1]:5599'\n",
        "[server]\nendpoint = 'tcp://127.0.0.1:*'\n",
        "[server]\nendpoint = 'ipc:///tmp/kernelsup.sock'\n",
        "[server]\nendpoint = 'tcp://0.0.0.0:5599'\nallow_remote = true\n",
        "[server]\nendpoint = 'tcp://*:5599'\nallow_remote = true\n",
    ],
)
def test_valid_endpoints(text: str) -> None:
    parse_config(text)


def test_ints_are_accepted_for_floats() -> None:
    cfg = parse_config("[supervisor]\nperiod = 30\n[[pool]]\nexec_timeout = 5\n")
    assert cfg.supervisor.period == 30.0 and type(cfg.supervisor.period) is float
    assert type(cfg.pools[0].exec_timeout) is float


def test_source_names_the_string_in_errors() -> None:
    assert str(error_of("x = 1\n", source="<test>")) == "<test>: $.x: unknown key"
    with pytest.raises(ConfigError, match=r"^<string>: \$\.x: unknown key$"):
        parse_config("x = 1\n")


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"^size: must be >= 1 and <= 1024 \(got 0\)$"):
        PoolConfig(size=0)
    with pytest.raises(ConfigError, match=r"^max_delay: must be >= min_delay"):
        RestartConfig(min_delay=3.0, max_delay=1.0)
    with pytest.raises(ConfigError, match="duplicate pool name"):
        Config(pools=(PoolConfig(), PoolConfig()))


# --- files -----------------------------------------------------------------------------


def test_load_config_sets_source_and_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[[pool]]\nsize = 3\n")
    cfg = load_config(good)
    assert cfg.source == str(good) and os.path.isabs(cfg.source)
    assert cfg.pools[0].size == 3

    bad = tmp_path / "bad.toml"
    bad.write_text("[[pool]]\nsize = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    assert str(info.value) == f"{bad}: $.pool[0].size: must be >= 1 and <= 1024 (got 0)"
    assert info.value.data["file"] == str(bad)


def test_load_config_relative_path_becomes_absolute_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "s.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    assert load_config("s.toml").source == str(tmp_path / "s.toml")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, r"missing\.toml: cannot read config file: No such file or directory$"),
        (b"x = '\xff'\n", r"missing\.toml: not valid UTF-8 \(byte 5\)$"),
        (b"[[pool]\n", r"missing\.toml: invalid TOML: line 1, column 7: "),
    ],
)
def test_load_config_io_problems_are_config_errors(
    tmp_path: Path, content: bytes | None, pattern: str
) -> None:
    path = tmp_path / "missing.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path)
    assert info.value.data["file"] == str(path)
    assert info.value.data["path"] == "$"


def test_example_supervisor_toml_is_the_default_config() -> None:
    cfg = load_config(REPO / "supervisor.toml")
    assert cfg.source == str(REPO / "supervisor.toml")
    assert attrs.evolve(cfg, source=None) == Config.default()


def test_example_supervisor_toml_documents_every_key() -> None:
    """Every key of every class appears in the example under a comment line of its own
    (keys without a TOML default, the pool overrides, appear commented out)."""
    key_line = re.compile(r"^(?:# )?([a-z_]+) = ")
    lines = (REPO / "supervisor.toml").read_text().splitlines()
    documented: set[str] = set()
    for i, line in enumerate(lines):
        m = key_line.match(line)
        if m:
            above = lines[i - 1]
            assert above.startswith("# ") and not key_line.match(above), line
            documented.add(m[1])
    expected = {
        f.name
        for cls in (
            SupervisorConfig,
            ServerConfig,
            McpConfig,
            PoolConfig,
            RestartConfig,
            HeartbeatConfig,
            ShutdownConfig,
            RayConfig,
            MetricsConfig,
        )
        for f in attrs.fields(cls)
    }
    assert documented == expected - {"restart", "heartbeat", "shutdown"}


# --- inheritance -----------------------------------------------------------------------

INHERIT = """
[supervisor]
strategy = "rest_for_one"
intensity = 4
period = 20.0

[[pool]]
name = "plain"

[[pool]]
name = "own"
strategy = "one_for_all"
intensity = 0
period = 5

[[pool]]
name = "partial"
period = 7.5
"""


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        ("plain", Supervision("rest_for_one", 4, 20.0)),
        ("own", Supervision("one_for_all", 0, 5.0)),
        ("partial", Supervision("rest_for_one", 4, 7.5)),
    ],
)
def test_pools_inherit_strategy_intensity_period(pool: str, expected: Supervision) -> None:
    cfg = parse_config(INHERIT)
    assert cfg.supervision(pool) == expected
    assert cfg.supervision(cfg.pool(pool)) == expected
    assert cfg.pool(pool).supervision(cfg.supervisor) == expected


def test_root_supervision_and_pool_lookup() -> None:
    cfg = parse_config(INHERIT)
    assert cfg.supervisor.supervision() == Supervision("rest_for_one", 4, 20.0)
    assert cfg.pool_names == ("plain", "own", "partial")
    with pytest.raises(KeyError):
        cfg.pool("nope")


# --- round trip ------------------------------------------------------------------------

FULL = """
[supervisor]
strategy = "one_for_all"
intensity = 3
period = 10.0
runtime_dir = "/run/ks"
log_file = "events.jsonl"

[server]
endpoint = "tcp://0.0.0.0:5599"
allow_remote = true
max_message_bytes = 4096

[[pool]]
name = "py"
kernel = "python3"
size = 4
spares = 0
exec_timeout = 30
max_output_bytes = 2048
startup_code = "import os"
strategy = "rest_for_one"
intensity = 2
period = 1.5
queue_limit = 0
queue_timeout = 0
session_idle_timeout = 900
max_sessions = 8
start_timeout = 10
interrupt_grace = 0
interrupt_mode = "message"
transport = "tcp"
memory_limit_mb = 512
env = { PYTHONHASHSEED = "0", "odd key" = "x" }

[pool.restart]
type = "transient"
min_delay = 0.5
max_delay = 0.5
multiplier = 1
jitter = "equal"
reset_after = 0
max_retries = -1

[pool.heartbeat]
interval = 0.25
misses = 1

[pool.shutdown]
grace = 0
term_timeout = 0.5

[[pool]]
name = "other.pool-2"
kernel = "ir"
"""


def test_full_file_round_trip() -> None:
    cfg = parse_config(FULL)
    expected = Config(
        supervisor=SupervisorConfig("one_for_all", 3, 10.0, "/run/ks", "events.jsonl"),
        server=ServerConfig("tcp://0.0.0.0:5599", True, 4096),
        pools=(
            PoolConfig(
                name="py",
                kernel="python3",
                size=4,
                spares=0,
                exec_timeout=30.0,
                max_output_bytes=2048,
                startup_code="import os",
                strategy="rest_for_one",
                intensity=2,
                period=1.5,
                queue_limit=0,
                queue_timeout=0.0,
                session_idle_timeout=900.0,
                max_sessions=8,
                start_timeout=10.0,
                interrupt_grace=0.0,
                interrupt_mode="message",
                transport="tcp",
                memory_limit_mb=512,
                env={"PYTHONHASHSEED": "0", "odd key": "x"},
                restart=RestartConfig("transient", 0.5, 0.5, 1.0, "equal", 0.0, -1),
                heartbeat=HeartbeatConfig(0.25, 1),
                shutdown=ShutdownConfig(0.0, 0.5),
            ),
            PoolConfig(name="other.pool-2", kernel="ir"),
        ),
    )
    assert cfg == expected
    data = cfg.to_dict()
    assert "source" not in data and "pools" not in data
    assert "strategy" not in data["pool"][1]  # unset overrides stay unset
    assert data["pool"][0]["env"] == {"PYTHONHASHSEED": "0", "odd key": "x"}
    assert Config.from_dict(data) == cfg
    assert Config.from_dict(Config.default().to_dict()) == Config.default()


def test_to_dict_is_plain_data() -> None:
    def check(value: Any) -> None:
        if isinstance(value, dict):
            assert type(value) is dict
            for k, v in value.items():
                assert isinstance(k, str)
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        else:
            assert isinstance(value, (str, int, float, bool)), value

    check(parse_config(FULL).to_dict())


def test_from_dict_errors_name_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^<dict>: \$\.pool\[0\]\.size: expected int"):
        Config.from_dict({"pool": [{"size": "2"}]})


# --- what `check` cannot know: `run` refuses it with a clear error ----------------------


def test_run_refuses_a_runtime_dir_it_cannot_create(tmp_path: Path) -> None:
    """`check` cannot know whether the directory can be made; `run` says so in one line
    naming the key (it used to end in a FileNotFoundError traceback)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = Config.from_dict({"supervisor": {"runtime_dir": str(blocker / "rt")}})

    async def run() -> None:
        async with open_supervisor(cfg):
            raise AssertionError("started")

    with pytest.raises(ConfigError) as info:
        trio.run(run)
    assert str(info.value) == (
        f"supervisor.runtime_dir: cannot create the runtime directory: File exists: '{blocker}'"
    )
    assert info.value.data["path"] == "$.supervisor.runtime_dir"


# --- placement on a Ray cluster --------------------------------------------------------

RAY_POOL = """
[ray]
address = "127.0.0.1:6379"
[[pool]]
placement = "ray"
ray_resources = { kernel_slot = 1, num_cpus = 0.5 }
"""


def test_a_ray_pool_reads_its_resources_and_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kernelsup.core.config.ray_installed", lambda: True)
    cfg = parse_config(RAY_POOL)
    assert cfg.ray.address == "127.0.0.1:6379"
    assert cfg.pools[0].placement == "ray"
    assert dict(cfg.pools[0].ray_resources) == {"kernel_slot": 1.0, "num_cpus": 0.5}
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[pool]]\nplacement = "ray"\n',
            '$.pool[0].placement: "ray" needs the cluster\'s address in [ray] address',
        ),
        ('[[pool]]\nplacement = "moon"\n', "$.pool[0].placement: must be one of local, ray"),
        (
            "[[pool]]\nray_resources = { kernel_slot = -1 }\n",
            "$.pool[0].ray_resources['kernel_slot']: must be >= 0",
        ),
        (
            '[[pool]]\nray_resources = { kernel_slot = "one" }\n',
            "$.pool[0].ray_resources.kernel_slot: expected float, got 'one'",
        ),
        (
            "[ray]\nlease_interval = 5.0\nlease_timeout = 5.0\n",
            "$.ray.lease_timeout: must be > lease_interval (5.0 <= 5.0)",
        ),
        ('[ray]\nnamespace = ""\n', "$.ray.namespace: must be 1-128 characters long (got 0)"),
        ("[ray]\nport = 1\n", "$.ray.port: unknown key"),
    ],
)
def test_ray_settings_that_cannot_work_are_errors(text: str, message: str) -> None:
    assert message in str(error_of(text))


def test_a_ray_pool_without_ray_installed_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kernelsup.core.config.ray_installed", lambda: False)
    err = error_of(RAY_POOL)
    assert err.data["path"] == "$.pool[0].placement"
    assert "pip install 'kernelsup[ray]'" in str(err)
    monkeypatch.setattr("kernelsup.core.config.ray_installed", lambda: True)
    parse_config(RAY_POOL)  # the same file is fine once it is there


# --- [metrics] -------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "localhost:0", "[::1]:9464", "127.0.0.2:1"])
def test_metrics_listen_on_loopback_is_valid(listen: str) -> None:
    assert parse_config(f'[metrics]\nlisten = "{listen}"').metrics.listen == listen


def test_metrics_are_off_unless_listen_is_set() -> None:
    assert Config.default().metrics == MetricsConfig(listen="", allow_remote=False)


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464", "example.org:80"])
def test_metrics_listen_refuses_a_host_that_is_not_loopback(listen: str) -> None:
    err = error_of(f'[metrics]\nlisten = "{listen}"')
    assert err.data["path"] == "$.metrics.listen"
    assert "is not loopback" in str(err) and "[metrics] allow_remote = true" in str(err)
    allowed = parse_config(f'[metrics]\nlisten = "{listen}"\nallow_remote = true')
    assert allowed.metrics.listen == listen


@pytest.mark.parametrize(
    ("listen", "says"),
    [
        ("9464", 'expected "HOST:PORT"'),
        (":9464", 'expected "HOST:PORT"'),
        ("127.0.0.1:http", "port must be 0-65535"),
        ("127.0.0.1:65536", "port must be 0-65535"),
    ],
)
def test_metrics_listen_that_is_not_host_port_is_an_error(listen: str, says: str) -> None:
    err = error_of(f'[metrics]\nlisten = "{listen}"')
    assert err.data["path"] == "$.metrics.listen" and says in str(err)
