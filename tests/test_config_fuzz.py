"""Hostile configs: whatever the file holds, the loader gives a valid Config or one clear
ConfigError, never another exception.

Bounded here; for a longer run: HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest
tests/test_config_fuzz.py (10,000 examples per test).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernelsup
from kernelsup.core.config import Config, parse_config

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


@given(st.text(max_size=300))
def test_any_text_is_valid_or_a_config_error(text: str) -> None:
    try:
        parse_config(text, source="fuzz.toml")
    except kernelsup.ConfigError as err:
        assert "\n" not in err.describe()
