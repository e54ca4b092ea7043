"""Hostile configs: whatever the file holds, the loader gives a valid Config or one clear
ConfigError, never another exception; and whatever it accepts (what ``kernelsup check``
calls valid), ``kernelsup run`` can build: the supervisor, its pools and their kernel
options, restart policies and windows, the runtime paths, the endpoint's message limit.

Bounded here; for a longer run: HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest
tests/test_config_fuzz.py (10,000 examples per test).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernelsup
from kernelsup.adapters.runtime import control_endpoint, runtime_dir_for
from kernelsup.api import Supervisor
from kernelsup.core.config import Config, parse_config
from kernelsup.core.policy import IntensityWindow, RestartPolicy, backoff_delay
from kernelsup.core.results import ExitCause
from kernelsup.tree.bus import EventBus
from kernelsup.tree.kernel_handle import KernelOptions

settings.register_profile(
    "bounded", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "bounded"))

KNOWN = {
    "supervisor": ["strategy", "intensity", "period", "runtime_dir", "log_file"],
    "server": ["endpoint", "allow_remote", "max_message_bytes"],
    "pool": [
        "name",
        "kernel",
        "size",
        "spares",
        "exec_timeout",
        "max_output_bytes",
        "startup_code",
        "strategy",
        "intensity",
        "period",
        "queue_limit",
        "queue_timeout",
        "session_idle_timeout",
        "max_sessions",
        "start_timeout",
        "interrupt_grace",
        "interrupt_mode",
        "transport",
        "memory_limit_mb",
        "env",
    ],
    "restart": [
        "type",
        "min_delay",
        "max_delay",
        "multiplier",
        "jitter",
        "reset_after",
        "max_retries",
    ],
    "heartbeat": ["interval", "misses"],
    "shutdown": ["grace", "term_timeout"],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "one_for_one",
            "rest_for_one",
            "permanent",
            "full",
            "ipc",
            "tcp",
            "tcp://127.0.0.1:5599",
            "tcp://0.0.0.0:1",
            "ipc:///tmp/x",
            "signal",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def table(section: str) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.one_of(st.sampled_from(KNOWN[section]), st.text(max_size=10))
    return st.dictionaries(keys, values, max_size=6)


pools = st.lists(
    st.builds(
        lambda base, restart, hb, sd: {
            **base,
            **({"restart": restart} if restart else {}),
            **({"heartbeat": hb} if hb else {}),
            **({"shutdown": sd} if sd else {}),
        },
        table("pool"),
        table("restart"),
        table("heartbeat"),
        table("shutdown"),
    ),
    max_size=3,
)

documents = st.fixed_dictionaries(
    {},
    optional={
        "supervisor": table("supervisor"),
        "server": table("server"),
        "pool": st.one_of(pools, values),
    },
)


@given(documents)
def test_structured_input_is_valid_or_a_config_error(doc: dict[str, Any]) -> None:
    try:
        cfg = Config.from_dict(doc, source="fuzz.toml")
    except kernelsup.ConfigError as err:
        text = err.describe()
        assert text.startswith("config_invalid ConfigError: fuzz.toml")
        assert "\n" not in text
        assert err.data.get("path", "").startswith("$")
    else:
        assert isinstance(cfg, Config) and cfg.pools


def build_what_run_builds(cfg: Config) -> None:
    """Everything ``kernelsup run`` makes of ``cfg`` before it starts a kernel or binds a
    socket. Raises whatever building raises."""
    rng = random.Random(0)
    sup = Supervisor(cfg, EventBus(), Path("/nonexistent/kernelsup-fuzz"), rng)
    for pool_cfg in cfg.pools:
        pool = sup.pools[pool_cfg.name]
        assert pool.kernel_count() == 0 and pool.max_sessions >= 1
        KernelOptions.from_pool(pool_cfg)
        policy = RestartPolicy(pool_cfg.restart, rng)
        for now in (0.0, 1.0, 2.0):
            policy.on_started(now)
            policy.on_exit(now + 0.5, ExitCause("failure", signal=9))
        for n in (0, 1, 64, max(0, pool_cfg.restart.max_retries)):
            assert backoff_delay(n, pool_cfg.restart, rng) <= pool_cfg.restart.max_delay
        supervision = cfg.supervision(pool_cfg)
        IntensityWindow(supervision.intensity, supervision.period).record(0.0)
    # The paths `run` creates and opens: the first system call on each would raise what
    # stat raises for a bad one (a NUL: ValueError), so stat them (creating nothing).
    rdir = runtime_dir_for(cfg, create=False)
    control_endpoint(cfg)
    for path in (str(rdir), cfg.supervisor.log_file):
        try:
            os.stat(path)
        except OSError:
            pass
    # The control socket takes the message limit as a 64-bit integer.
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    try:
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.server.max_message_bytes)
    finally:
        sock.close(linger=0)


# Values of each key's own type, many near or past the ends of the ranges, so that many
# documents are accepted and the rest fail on one range.
INTS = st.one_of(
    st.integers(-2, 5000),
    st.sampled_from([1023, 1024, 1025, 10_000, 10**6, 2**30, 2**30 + 1, 2**31, 2**63, 10**17]),
    st.integers(-(2**70), 2**70),
)
FLOATS = st.one_of(
    st.floats(min_value=0, max_value=1e7),
    st.sampled_from([0.0, 1e-300, 3600.0, 86_400.0, 2_592_000.0, 1e300]),
    st.floats(allow_nan=False, allow_infinity=False),
)
STRINGS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "/tmp/x", "~", "rt", "a\x00b", "x" * 5000, "python3", "p.1-_"]),
)
CHOICES = {
    "strategy": ["one_for_one", "one_for_all", "rest_for_one", "any"],
    "type": ["permanent", "transient", "temporary"],
    "jitter": ["full", "equal", "none"],
    "transport": ["ipc", "tcp"],
    "interrupt_mode": ["", "signal", "message"],
    "endpoint": ["", "tcp://127.0.0.1:5599", "ipc:///tmp/x", "tcp://0.0.0.0:1"],
}
INT_KEYS = {
    "intensity",
    "max_message_bytes",
    "size",
    "spares",
    "max_output_bytes",
    "queue_limit",
    "max_sessions",
    "memory_limit_mb",
    "max_retries",
    "misses",
}


def typed(key: str) -> st.SearchStrategy[Any]:
    if key in CHOICES:
        return st.sampled_from(CHOICES[key])
    if key in INT_KEYS:
        return INTS
    if key == "allow_remote":
        return st.booleans()
    if key == "env":
        return st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2)
    if key in ("runtime_dir", "log_file", "startup_code", "kernel", "name"):
        return STRINGS
    return FLOATS


def known_table(section: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={key: typed(key) for key in KNOWN[section]})


known_pools = st.builds(
    lambda base, restart, hb, sd: {**base, "restart": restart, "heartbeat": hb, "shutdown": sd},
    known_table("pool"),
    known_table("restart"),
    known_table("heartbeat"),
    known_table("shutdown"),
)
known_documents = st.one_of(
    # one section at a time: most are accepted, so what is accepted gets built often
    st.builds(lambda t: {"supervisor": t}, known_table("supervisor")),
    st.builds(lambda t: {"server": t}, known_table("server")),
    st.builds(lambda p: {"pool": [p]}, known_pools),
    st.fixed_dictionaries(
        {},
        optional={
            "supervisor": known_table("supervisor"),
            "server": known_table("server"),
            "pool": st.lists(known_pools, min_size=1, max_size=2),
        },
    ),
)


@given(st.one_of(documents, known_documents))
def test_what_check_accepts_run_can_build(doc: dict[str, Any]) -> None:
    try:
        cfg = Config.from_dict(doc, source="fuzz.toml")
    except kernelsup.ConfigError:
        return
    build_what_run_builds(cfg)


@given(st.text(max_size=300))
def test_any_text_is_valid_or_a_config_error(text: str) -> None:
    try:
        parse_config(text, source="fuzz.toml")
    except kernelsup.ConfigError as err:
        assert "\n" not in err.describe()
