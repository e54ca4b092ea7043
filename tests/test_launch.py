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
from kernelsup.adapters.runtime import ipc_dir_for, private_dir
from kernelsup.adapters.tether import remove_ipc_dir
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


@pytest.mark.parametrize("length", [16, 40, 100, 200])
def test_ipc_plan_is_private_and_every_endpoint_fits_31_bytes(
    runtime_dir: Path, ok_kernel: str, length: int
) -> None:
    """Connection file in the runtime dir; sockets there when its endpoints fit in 31
    bytes (jupyter_client's own default is 18), else in a short private dir of its own."""
    rd = runtime_dir / "run" if length == 16 else dir_of_length(runtime_dir, length)
    rd = Path(str(rd)[:length]) if length == 16 else rd
    plan = plan_launch("k7", ok_kernel, rd)
    conn = plan.connection
    assert conn.transport == "ipc"
    assert mode_of(rd) == 0o700
    assert plan.connection_file.parent == rd
    assert mode_of(plan.connection_file) == 0o600
    sockets = Path(conn.ip).parent
    assert sockets == ipc_dir_for(rd)
    assert (sockets == rd) is (len(str(rd)) + len("/xxxxxx-9") + len("ipc://") <= 31)
    assert mode_of(sockets) == 0o700 and sockets.stat().st_uid == os.getuid()
    files = conn.socket_files()
    assert len(files) == len(set(files)) == len(CHANNELS)
    for path, channel in zip(files, CHANNELS, strict=True):
        assert path.parent == sockets
        assert conn.endpoint(channel) == f"ipc://{path}"
        assert len(conn.endpoint(channel).encode()) <= 31
    remove_ipc_dir(rd)  # what the tether does when the supervisor ends


def test_a_short_ipc_dir_planted_by_someone_else_is_refused(
    runtime_dir: Path, ok_kernel: str, tmp_path: Path
) -> None:
    rd = dir_of_length(runtime_dir, 60)
    planted = ipc_dir_for(rd)
    assert planted != rd
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted.symlink_to(elsewhere)  # a symlink in /tmp pointing somewhere else
    try:
        with pytest.raises(KernelStartError) as info:
            plan_launch("k0", ok_kernel, rd)
        assert str(planted) in info.value.message
        assert 'transport = "tcp"' in info.value.message  # says what to do
        assert list(elsewhere.iterdir()) == []
    finally:
        planted.unlink()


def test_the_short_ipc_dir_goes_with_the_supervisor(runtime_dir: Path, ok_kernel: str) -> None:
    rd = dir_of_length(runtime_dir, 60)
    plan = plan_launch("k0", ok_kernel, rd)
    sockets = Path(plan.connection.ip).parent
    assert sockets.is_dir()
    remove_ipc_dir(rd)  # what the tether does when the supervisor ends
    assert not sockets.exists()
    remove_ipc_dir(runtime_dir)  # a runtime dir that holds its own sockets: nothing to do
    assert runtime_dir.is_dir()


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
    bindir = os.path.dirname(sys.executable)  # a Python kernel's own interpreter comes first
    assert plan.env["PATH"].split(os.pathsep)[0] == bindir
    assert plan.env["PATH"].endswith(os.environ["PATH"])
    assert os.environ.get("KS_NEW") is None  # the supervisor's own env is not touched


def test_kernelspec_env_fills_vars_from_ours_as_jupyter_client_does(
    runtime_dir: Path, fake_kernels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KS_BASE", "/opt/x")
    monkeypatch.delenv("KS_NOPE", raising=False)
    name = install_kernelspec(fake_kernels, "ok")
    spec_env = {
        "KS_LIB": "$KS_BASE/lib",
        "KS_BRACED": "${KS_BASE}:more",
        "KS_UNKNOWN": "$KS_NOPE",
        "KS_JSON": '{"a": 1}',
        "KS_CONN": "{connection_file}",  # no {field}s in env values, as in jupyter_client
    }
    edit_spec(fake_kernels, name, env=spec_env)
    env = plan_launch("k0", name, runtime_dir).env
    assert env["KS_LIB"] == "/opt/x/lib"
    assert env["KS_BRACED"] == "/opt/x:more"
    assert env["KS_UNKNOWN"] == "$KS_NOPE"
    assert env["KS_JSON"] == '{"a": 1}'
    assert env["KS_CONN"] == "{connection_file}"


PY_MAJOR = f"python{sys.version_info[0]}"
PY_MINOR = f"python{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.mark.parametrize(
    ("argv0", "ours"),
    [("python", True), (PY_MAJOR, True), (PY_MINOR, True), ("python2", False), ("bash", False)],
)
def test_python_names_in_argv_mean_our_interpreter(
    runtime_dir: Path, fake_kernels: Path, argv0: str, ours: bool
) -> None:
    """jupyter_client's rule, for any kernel name (a spec installed as `python3.11`
    must not run on whatever python3.11 PATH finds)."""
    name = install_kernelspec(fake_kernels, "ok", name="my-env")
    edit_spec(fake_kernels, name, argv=[argv0, "-f", "{connection_file}"])
    plan = plan_launch("k0", name, runtime_dir)
    assert plan.argv[0] == (sys.executable if ours else argv0)
    assert plan.argv[1:] == ("-f", str(plan.connection_file))


@pytest.mark.parametrize(("language", "kept"), [("python", False), ("bash", True)])
def test_pythonexecutable_is_dropped_for_python_kernels_only(
    runtime_dir: Path,
    fake_kernels: Path,
    monkeypatch: pytest.MonkeyPatch,
    language: str,
    kept: bool,
) -> None:
    monkeypatch.setenv("PYTHONEXECUTABLE", "/somewhere/python")
    name = install_kernelspec(fake_kernels, "ok")
    edit_spec(fake_kernels, name, language=language)
    env = plan_launch("k0", name, runtime_dir).env
    assert ("PYTHONEXECUTABLE" in env) is kept
    assert env["JPY_PARENT_PID"] == str(os.getpid())


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
