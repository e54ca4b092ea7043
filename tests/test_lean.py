"""A client imports only what a client needs: ``import kernelsup``, the sync client and
``kernelsup exec`` import no event loop library, no kernel actors and no jupyter_client
(whose package imports its kernel launch code, traitlets and asyncio). Each check runs a
fresh interpreter and looks at what it imported; how long that takes is measured in
bench/cli.py, never here.

The whole ``kernelsup exec "1"`` against a running supervisor is checked the same way in
tests/test_cli.py (test_exec_imports_no_supervisor_code).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import kernelsup

# What no client process may import: the supervisor's code, its event loop, the kernel
# launch code and what only they pull in.
SUPERVISOR_ONLY = (
    "trio",
    "asyncio",
    "jupyter_client",
    "traitlets",
    "psutil",
    "kernelsup.api",
    "kernelsup.tree",
    "kernelsup.adapters.launch",
    "kernelsup.adapters.zmqio",
    "kernelsup.control.server",
    "kernelsup.control.client",
    "kernelsup.mcp",
)

REPORT = "import json, sys; print(json.dumps(sorted(sys.modules)))"


def imported_by(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\n{REPORT}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(proc.stdout.splitlines()[-1]))


def supervisor_modules(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == bad or m.startswith(bad + ".") for bad in SUPERVISOR_ONLY)
    )


def imported_by_command(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m kernelsup ARGS``; its result and the modules it
    imported (importtime's lines on stderr name each one)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kernelsup", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "kernelsup.cli.main" in modules, proc.stderr[-2000:]
    return proc, modules


@pytest.mark.parametrize(
    "code",
    [
        "import kernelsup",
        "from kernelsup import SyncClient, SyncSession, ExecuteResult, Unreachable",
        "import kernelsup.control.sync_client",
        "from kernelsup import Config, load_config, KernelsupError",
    ],
)
def test_a_client_import_imports_no_supervisor_code(code: str) -> None:
    modules = imported_by(code)
    assert supervisor_modules(modules) == []


def test_importing_the_package_imports_none_of_its_public_modules() -> None:
    modules = imported_by("import kernelsup")
    assert not [m for m in modules if m.startswith("kernelsup.")]


def test_every_public_name_is_there_when_used() -> None:
    """The names are lazy, not gone: each of ``__all__`` resolves to its class or function,
    ``dir`` lists it, and the async side comes in when asked for."""
    code = (
        "import kernelsup\n"
        "missing = [n for n in kernelsup.__all__ if getattr(kernelsup, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(kernelsup.__all__) <= set(dir(kernelsup))\n"
        "assert kernelsup.Supervisor.__module__ == 'kernelsup.api'\n"
    )
    modules = imported_by(code)
    assert {"kernelsup.api", "trio", "kernelsup.control.client"} <= modules
    from kernelsup.control.sync_client import SyncClient

    assert kernelsup.SyncClient is SyncClient


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Superviser'"):
        kernelsup.Superviser  # noqa: B018
    with pytest.raises(ImportError):
        exec("from kernelsup import Superviser")


def test_the_cli_parses_and_connects_without_supervisor_code(tmp_path: Path) -> None:
    """``kernelsup exec`` with nobody listening: the whole client path up to the connection
    (config, key, probe) runs, and ends Unreachable, without supervisor code."""
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    (tmp_path / "supervisor.toml").write_text(
        f'[supervisor]\nruntime_dir = "{runtime}"\n\n[[pool]]\nname = "default"\n'
    )
    proc, modules = imported_by_command("exec", "1", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "unreachable" in proc.stderr
    assert "kernelsup.control.sync_client" in modules
    assert supervisor_modules(modules) == []


@pytest.mark.parametrize("command", ["check", "status", "watch", "interrupt", "close-session"])
def test_no_command_but_run_and_mcp_imports_trio_to_start(command: str, tmp_path: Path) -> None:
    proc, modules = imported_by_command(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert supervisor_modules(modules) == []
