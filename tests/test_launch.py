"""Launch planning: kernelspec lookup, connection files, private runtime dirs, argv and env.

``plan_launch`` only resolves and writes files, so these are plain synchronous tests; the
one test that spawns a process uses the cheap fake kernel and reaps it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from kernelsup.adapters.launch import LaunchPlan, plan_launch, spawn
from kernelsup.adapters.runtime import private_dir
from kernelsup.core.errors import KernelStartError
from tests.fakekernel import FAKE_PATH, install_kernelspec

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


def mode_of(path: Path) -> int:
    # Permission bits only: jupyter_client's write_connection_file also sets the sticky
    # bit on the connection file's directory (0o1700), which is fine.
    return stat.S_IMODE(path.stat().st_mode) & 0o777


def leftovers(path: Path) -> list[Path]:
    return sorted(path.iterdir())


def edit_spec(root: Path, name: str, **changes: Any) -> None:
    spec_file = root / "kernels" / name / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec.update(changes)
    spec_file.write_text(json.dumps(spec))


@pytest.fixture
def ok_kernel(fake_kernels: Path) -> str:
    return install_kernelspec(fake_kernels, "ok")


# --- private_dir ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "existing_mode"),
    [
        ("new", None),
        ("existing 0755", 0o755),
        ("existing 0777", 0o777),
        ("existing 0700", 0o700),
        ("existing 0500", 0o500),
    ],
)
def test_private_dir_is_mode_0700(runtime_dir: Path, case: str, existing_mode: int | None) -> None:
    path = runtime_dir / "d"
    if existing_mode is not None:
        path.mkdir()
        path.chmod(existing_mode)
    got = private_dir(str(path))
    assert got == path
    assert path.is_dir()
    assert mode_of(path) == 0o700


def test_private_dir_creates_parents(runtime_dir: Path) -> None:
    path = runtime_dir / "a" / "b" / "c"
    assert private_dir(path) == path
    assert mode_of(path) == 0o700


def test_private_dir_keeps_contents(runtime_dir: Path) -> None:
    (runtime_dir / "keep.txt").write_text("x")
    runtime_dir.chmod(0o755)
    private_dir(runtime_dir)
    assert (runtime_dir / "keep.txt").read_text() == "x"


# --- IPC and TCP plans ---------------------------------------------------------------------


def test_ipc_plan_keeps_everything_in_the_private_runtime_dir(
    runtime_dir: Path, ok_kernel: str
) -> None:
    rd = runtime_dir / "run"  # not there yet: plan_launch creates it
    plan = plan_launch("k7", ok_kernel, rd)
    conn = plan.connection
    assert conn.transport == "ipc"
    assert mode_of(rd) == 0o700
    assert plan.connection_file.parent == rd
    assert plan.connection_file.exists()
    assert mode_of(plan.connection_file) == 0o600
    assert Path(conn.ip).parent == rd
    assert Path(conn.ip).name.startswith("k7-")
    files = conn.socket_files()
    assert len(files) == len(set(files)) == len(CHANNELS)
    for path, channel in zip(files, CHANNELS, strict=True):
        assert path.parent == rd
        assert conn.endpoint(channel) == f"ipc://{path}"
        assert len(str(path).encode()) < 108  # AF_UNIX sun_path, NUL included


def test_connection_file_matches_the_plan(runtime_dir: Path, ok_kernel: str) -> None:
    plan = plan_launch("k0", ok_kernel, runtime_dir)
    info = json.loads(plan.connection_file.read_text())
    conn = plan.connection
    assert info["key"].encode() == conn.key
    assert len(conn.key) >= 32
    assert info["transport"] == conn.transport == "ipc"
    assert info["ip"] == conn.ip
    assert info["signature_scheme"] == conn.signature_scheme == "hmac-sha256"
    assert info["kernel_name"] == ok_kernel
    for channel in CHANNELS:
        assert info[f"{channel}_port"] == getattr(conn, f"{channel}_port")


def test_each_plan_has_its_own_key_and_files(runtime_dir: Path, ok_kernel: str) -> None:
    a = plan_launch("k0", ok_kernel, runtime_dir)
    b = plan_launch("k0", ok_kernel, runtime_dir)  # same kernel id, e.g. a restart
    assert a.connection.key != b.connection.key
    assert a.connection_file != b.connection_file
    assert not set(a.connection.socket_files()) & set(b.connection.socket_files())


def test_tcp_plan_uses_loopback(runtime_dir: Path, ok_kernel: str) -> None:
    plan = plan_launch("k0", ok_kernel, runtime_dir, transport="tcp")
    conn = plan.connection
    assert (conn.transport, conn.ip) == ("tcp", "127.0.0.1")
    ports = [getattr(conn, f"{c}_port") for c in CHANNELS]
    assert all(0 < p < 65536 for p in ports)
    assert len(set(ports)) == len(CHANNELS)
    assert conn.endpoint("shell") == f"tcp://127.0.0.1:{conn.shell_port}"
    assert conn.socket_files() == []
    info = json.loads(plan.connection_file.read_text())
    assert (info["transport"], info["ip"]) == ("tcp", "127.0.0.1")
    assert mode_of(plan.connection_file) == 0o600
    assert plan.connection_file.parent == runtime_dir


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["no-such-kernel", "ok", "fake-ok-2", "python4"])
def test_unknown_kernelspec_is_a_start_failure_naming_it(
    runtime_dir: Path, ok_kernel: str, name: str
) -> None:
    with pytest.raises(KernelStartError) as info:
        plan_launch("k0", name, runtime_dir)
    err = info.value
    assert err.code == "start_failure"
    assert repr(name) in err.message
    assert ok_kernel in err.message  # says what is known
    assert err.data["kernel"] == name
    assert leftovers(runtime_dir) == []  # nothing written


@pytest.mark.parametrize(
    ("transport", "interrupt_mode", "words"),
    [
        ("udp", "", "transport 'udp'"),
        ("IPC", "", "transport 'IPC'"),
        ("ipc", "sigint", "interrupt_mode 'sigint'"),
    ],
)
def test_bad_transport_or_interrupt_mode_is_a_start_failure(
    runtime_dir: Path, ok_kernel: str, transport: str, interrupt_mode: str, words: str
) -> None:
    with pytest.raises(KernelStartError) as info:
        plan_launch(
            "k0", ok_kernel, runtime_dir, transport=transport, interrupt_mode=interrupt_mode
        )
    assert info.value.code == "start_failure"
    assert words in info.value.message


def dir_of_length(base: Path, n: int, char: str = "d") -> Path:
    """``base/<char...>`` whose str() is exactly ``n`` characters long."""
    fill = n - len(str(base)) - 1
    assert fill > 0
    return base / (char * fill)


# The IPC endpoint is "<runtime_dir>/<kernel_id>-<8 hex>-<N>": for kernel id "k0" that is
# len(runtime_dir) + 15 characters, checked against 100 with room for the NUL.
LONGEST_OK = 100 - 3 - len("/k0-") - 8


@pytest.mark.parametrize(
    ("length", "too_long"),
    [
        (LONGEST_OK - 10, False),
        (LONGEST_OK, False),
        (LONGEST_OK + 1, True),
        (200, True),
    ],
)
def test_runtime_dir_too_long_for_ipc(
    runtime_dir: Path, ok_kernel: str, length: int, too_long: bool
) -> None:
    rd = dir_of_length(runtime_dir, length)
    if not too_long:
        plan = plan_launch("k0", ok_kernel, rd)
        assert all(len(str(p).encode()) < 108 for p in plan.connection.socket_files())
        return
    with pytest.raises(KernelStartError) as info:
        plan_launch("k0", ok_kernel, rd)
    err = info.value
    assert err.code == "start_failure"
    assert "too long for IPC" in err.message
    assert str(rd) in err.message
    assert "runtime_dir" in err.message  # says what to change
    assert not any(rd.glob("*.json"))  # no connection file left behind


def test_long_runtime_dir_is_fine_for_tcp(runtime_dir: Path, ok_kernel: str) -> None:
    plan = plan_launch("k0", ok_kernel, dir_of_length(runtime_dir, 200), transport="tcp")
    assert plan.connection.ip == "127.0.0.1"


def test_runtime_dir_too_long_in_bytes_for_ipc(runtime_dir: Path, ok_kernel: str) -> None:
    rd = dir_of_length(runtime_dir, LONGEST_OK, "é")  # within 100 characters, not 100 bytes
    assert len(str(rd).encode()) + len("/k0-12345678-1") >= 108
    with pytest.raises(KernelStartError, match="too long for IPC"):
        plan_launch("k0", ok_kernel, rd)


# --- argv, env, interrupt mode, cwd ------------------------------------------------------------


def test_argv_is_formatted_with_the_connection_file(runtime_dir: Path, fake_kernels: Path) -> None:
    name = install_kernelspec(
        fake_kernels,
        "ok",
        extra_args=["--res={resource_dir}", "--prefix={prefix}", "--twice={connection_file}"],
    )
    plan = plan_launch("k0", name, runtime_dir)
    conn_file = str(plan.connection_file)
    assert plan.argv == (
        sys.executable,
        str(FAKE_PATH),
        "-f",
        conn_file,
        "--mode",
        "ok",
        f"--res={fake_kernels / 'kernels' / name}",
        f"--prefix={sys.prefix}",
        f"--twice={conn_file}",
    )
    assert plan.language == "python"


@pytest.mark.parametrize("arg", ['--config={"a": 1}', "--x={unknown}", "--empty={}"])
def test_argv_with_other_braces_is_left_alone(
    runtime_dir: Path, fake_kernels: Path, arg: str
) -> None:
    name = install_kernelspec(fake_kernels, "ok", extra_args=[arg])
    plan = plan_launch("k0", name, runtime_dir)
    assert plan.argv[-1] == arg


ENV_CASES: list[tuple[str, dict[str, str], dict[str, str], dict[str, str], dict[str, str]]] = [
    # (case, process env, kernelspec env, pool env, expected subset)
    ("process env passes through", {"KS_A": "proc"}, {}, {}, {"KS_A": "proc"}),
    ("pool overrides process", {"KS_A": "proc"}, {}, {"KS_A": "pool"}, {"KS_A": "pool"}),
    ("kernelspec overrides process", {"KS_A": "proc"}, {"KS_A": "spec"}, {}, {"KS_A": "spec"}),
    (
        "pool overrides kernelspec",
        {"KS_A": "proc"},
        {"KS_A": "spec"},
        {"KS_A": "pool"},
        {"KS_A": "pool"},
    ),
    ("pool adds", {}, {}, {"KS_NEW": "v"}, {"KS_NEW": "v"}),
    ("pool empty string still overrides", {"KS_A": "proc"}, {}, {"KS_A": ""}, {"KS_A": ""}),
    (
        "independent keys merge",
        {"KS_A": "proc"},
        {"KS_B": "spec"},
        {"KS_C": "pool"},
        {"KS_A": "proc", "KS_B": "spec", "KS_C": "pool"},
    ),
]


@pytest.mark.parametrize(
    ("case", "process", "spec_env", "pool", "expected"), ENV_CASES, ids=[c[0] for c in ENV_CASES]
)
def test_env_layers(
    runtime_dir: Path,
    fake_kernels: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    process: dict[str, str],
    spec_env: dict[str, str],
    pool: dict[str, str],
    expected: dict[str, str],
) -> None:
    for key in ("KS_A", "KS_B", "KS_C", "KS_NEW"):
        monkeypatch.delenv(key, raising=False)
    for key, value in process.items():
        monkeypatch.setenv(key, value)
    name = install_kernelspec(fake_kernels, "ok")
    edit_spec(fake_kernels, name, env=spec_env)
    plan = plan_launch("k0", name, runtime_dir, extra_env=pool)
    assert {k: plan.env.get(k) for k in expected} == expected
    assert plan.env["PATH"] == os.environ["PATH"]
    assert os.environ.get("KS_NEW") is None  # the supervisor's own env is not touched


def test_kernelspec_env_is_formatted_with_the_connection_file(
    runtime_dir: Path, fake_kernels: Path
) -> None:
    name = install_kernelspec(fake_kernels, "ok")
    edit_spec(fake_kernels, name, env={"KS_CONN": "{connection_file}", "KS_PLAIN": "x"})
    plan = plan_launch("k0", name, runtime_dir)
    assert plan.env["KS_CONN"] == str(plan.connection_file)
    assert plan.env["KS_PLAIN"] == "x"


def test_kernelspec_env_with_other_braces_is_left_alone(
    runtime_dir: Path, fake_kernels: Path
) -> None:
    name = install_kernelspec(fake_kernels, "ok")
    edit_spec(fake_kernels, name, env={"KS_JSON": '{"a": 1}'})
    assert plan_launch("k0", name, runtime_dir).env["KS_JSON"] == '{"a": 1}'


@pytest.mark.parametrize(
    ("spec_mode", "given", "expected"),
    [
        ("message", "", "message"),
        ("signal", "", "signal"),
        ("message", "signal", "signal"),
        ("signal", "message", "message"),
    ],
)
def test_interrupt_mode(
    runtime_dir: Path, fake_kernels: Path, spec_mode: str, given: str, expected: str
) -> None:
    name = install_kernelspec(fake_kernels, "ok", interrupt_mode=spec_mode)
    plan = plan_launch("k0", name, runtime_dir, interrupt_mode=given)
    assert plan.interrupt_mode == expected


def test_interrupt_mode_defaults_to_signal_without_one_in_the_spec(
    runtime_dir: Path, fake_kernels: Path
) -> None:
    name = install_kernelspec(fake_kernels, "ok")
    spec_file = fake_kernels / "kernels" / name / "kernel.json"
    spec = json.loads(spec_file.read_text())
    del spec["interrupt_mode"]
    spec_file.write_text(json.dumps(spec))
    assert plan_launch("k0", name, runtime_dir).interrupt_mode == "signal"


@pytest.mark.parametrize("cwd", [None, "/"])
def test_cwd_is_passed_through(runtime_dir: Path, ok_kernel: str, cwd: str | None) -> None:
    assert plan_launch("k0", ok_kernel, runtime_dir, cwd=cwd).cwd == cwd


# --- one cheap spawn: the plan actually works ------------------------------------------------


async def test_fake_kernel_binds_its_sockets_in_the_runtime_dir(
    runtime_dir: Path, ok_kernel: str
) -> None:
    plan: LaunchPlan = plan_launch("k0", ok_kernel, runtime_dir)
    proc, output = await spawn(plan)
    try:
        with trio.fail_after(20):
            while not all(p.exists() for p in plan.connection.socket_files()):
                assert proc.popen.poll() is None, "fake kernel exited"
                await trio.sleep(0.02)
        for path in plan.connection.socket_files():
            assert stat.S_ISSOCK(path.stat().st_mode)
        assert os.getpgid(proc.pid) == proc.pid  # its own process group
    finally:
        with trio.CancelScope(shield=True):
            await proc.kill_and_reap()
            await output.aclose()
    proc.cleanup_files()
    assert leftovers(runtime_dir) == []
