"""A pool's ``user``: kernels run as another user of the machine, so their code cannot
signal, stop or kill the supervisor, and containment holds for them as for any kernel.

The supervisor is a real ``kernelsup run`` (as root). This machine's interpreter lives
under /root (mode 0700) and /tmp is mode 1700, so user ``nobody`` could reach neither: the
supervisor runs in a private mount namespace (``unshare --mount``) where every directory
on the way to the interpreter and this checkout that others may not enter is a 0755 tmpfs
with the real child bound back in, and /tmp a fresh 1777 tmpfs (see NAMESPACE). Nothing on
the host changes. The same machine without that namespace is what a real user meets, and
one test checks the start failure it gets: the path its user cannot reach, named.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

import kernelsup
from kernelsup.adapters import containment
from kernelsup.adapters.containment import leftover_groups
from kernelsup.adapters.launch import plan_launch
from kernelsup.core.errors import ConfigError, KernelStartError
from tests.helpers import ESCAPE, alive, assert_nothing_left, leftovers_of, wait_all_gone

USER = "nobody"


def _have_user() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="kernels run as another user only under root"),
    pytest.mark.skipif(not _have_user(), reason=f"no user {USER!r} here"),
]
in_namespace = pytest.mark.skipif(
    shutil.which("unshare") is None, reason="needs unshare (util-linux) for a mount namespace"
)
UID = pwd.getpwnam(USER).pw_uid if _have_user() else -1
KINDS = [
    pytest.param(
        "cgroup",
        marks=pytest.mark.skipif(
            containment.available() != "cgroup", reason="no writable cgroup hierarchies here"
        ),
    ),
    "subreaper",
]

# Run in the new mount namespace as root, then exec the command: each directory on the way
# to what `nobody` must reach that it may not enter (here /root, 0700; wherever this
# checkout and its venv live) is covered by a 0755 tmpfs holding only the real child on
# the way, bound back; /tmp gets a fresh 1777 tmpfs (this machine's is 1700) with the same
# children bound back if the way passes there. Nothing on the host changes.
NAMESPACE = textwrap.dedent("""
    set -e
    aside_root=$1; shift
    expose() {  # DIR MODE CHILD...: a MODE tmpfs over DIR, holding only the real CHILDren
        dir=$1; mode=$2; shift 2
        aside=$(mktemp -d "$aside_root/XXXXXX")
        mount --bind "$dir" "$aside"
        mount -t tmpfs -o "mode=$mode,size=1m" kernelsup-test "$dir"
        for child in "$@"; do
            if [ -d "$aside/$child" ]; then mkdir "$dir/$child"; else touch "$dir/$child"; fi
            mount --bind "$aside/$child" "$dir/$child"
        done
    }
""")


def _must_reach() -> list[Path]:
    """What the kernels (and `check` as nobody) run from: the venv's interpreter as
    invoked and as resolved, and this checkout (an editable install imports from it)."""
    here = Path(__file__).resolve().parent.parent
    return [Path(sys.executable), Path(os.path.realpath(sys.executable)), here]


def exposures() -> list[tuple[str, str, list[str]]]:
    """(dir, tmpfs mode, children to bind back) for every directory on the way to
    _must_reach() that others may not enter, and /tmp; outermost first."""
    needed: dict[str, set[str]] = {"/tmp": set()}
    for target in _must_reach():
        parts = target.parts
        for i in range(1, len(parts) - 1):
            directory = Path(*parts[: i + 1])
            if str(directory) == "/tmp" or not os.stat(directory).st_mode & 0o001:
                needed.setdefault(str(directory), set()).add(parts[i + 1])
    return [
        (d, "1777" if d == "/tmp" else "0755", sorted(children))
        for d, children in sorted(needed.items(), key=lambda item: len(Path(item[0]).parts))
    ]


def namespace_script() -> str:
    lines = [NAMESPACE]
    for directory, mode, children in exposures():
        quoted = [shlex.quote(directory), mode, *map(shlex.quote, children)]
        lines.append(" ".join(["expose", *quoted]))
    lines.append('exec "$@"\n')
    return "\n".join(lines)


READY_S = 90


class UserSupervisor:
    """``kernelsup run`` in the namespace, its config, and what it printed."""

    def __init__(self, base: Path, pool: str) -> None:
        self.base = base
        self.runtime_dir = base / "rt"
        self.config = base / "supervisor.toml"
        self.config.write_text(
            textwrap.dedent(f"""
                [supervisor]
                runtime_dir = "{self.runtime_dir}"
                [[pool]]
                name = "u"
                size = 1
                spares = 1
                user = "{USER}"
                start_timeout = 60
                restart = {{ min_delay = 0.0, max_delay = 0.5, max_retries = -1 }}
                """)
            + pool
        )
        (base / "aside").mkdir()
        (base / "ns.sh").write_text(namespace_script())
        self.proc = subprocess.Popen(
            [
                *("unshare", "--mount", "--propagation", "private", "sh", str(base / "ns.sh")),
                *(str(base / "aside"), sys.executable, "-m", "kernelsup", "run", str(self.config)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).parent.parent,
        )
        try:
            self.ready = self._ready_line()
        except BaseException:
            self.stop()  # a supervisor that never got ready is stopped and its pipe closed
            raise

    def _ready_line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the supervisor prints it once its kernels are up
        assert line.startswith("kernelsup ready:"), line
        return line

    def client(self) -> kernelsup.SyncClient:
        return kernelsup.SyncClient(str(self.config))

    def kernel_pids(self) -> list[int]:
        with self.client() as c:
            return [k["pid"] for k in c.status().kernels if k.get("pid")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def user_supervisor(pool: str = "") -> Iterator[UserSupervisor]:
    """A supervisor whose pool ``u`` runs as ``nobody``; stopped, and everything it or its
    kernels started killed, when the block ends (pass or fail)."""
    base = Path(tempfile.mkdtemp(prefix="ksu-", dir="/var/tmp"))
    sup: UserSupervisor | None = None
    try:
        sup = UserSupervisor(base, pool)
        yield sup
    finally:
        if sup is not None:
            sup.stop()
        for proc in psutil.process_iter(["uids", "cmdline"]):  # nothing of the test's left
            try:
                if proc.info["uids"] and proc.info["uids"].real == UID:
                    env = proc.environ()
                    if env.get("KERNELSUP_TETHER", "").startswith(str(base)):
                        proc.kill()
            except psutil.Error:
                continue
        shutil.rmtree(base, ignore_errors=True)


def run(sup: UserSupervisor, code: str, **kw: object) -> kernelsup.ExecuteResult:
    with sup.client() as c:
        return c.execute(code, pool="u", **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the user


@in_namespace
@pytest.mark.timeout(180)
def test_a_user_pools_kernel_runs_as_that_user_and_cannot_reach_the_supervisor() -> None:
    with user_supervisor() as sup:
        assert "not up" not in sup.ready, sup.ready
        who = "import os; print(os.getuid(), os.geteuid(), os.getgid(), os.environ['HOME'])"
        r = run(sup, who)
        pw = pwd.getpwnam(USER)
        assert r.status == "ok", r
        assert r.stdout.split() == [str(pw.pw_uid), str(pw.pw_uid), str(pw.pw_gid), pw.pw_dir]
        with sup.client() as c:  # status says whom the pool's kernels run as, and how
            report = c.status()
        assert {p["name"]: p["user"] for p in report.pools}["u"] == USER
        assert {k["launch"] for k in report.kernels if k["pool"] == "u"} == {"exec"}
        # Its connection file and sockets: in a directory of its own, which only it (and
        # root) may enter.
        where = textwrap.dedent("""
            import os
            from ipykernel.kernelapp import IPKernelApp
            st = os.stat(os.path.dirname(IPKernelApp.instance().connection_file))
            print(os.getppid(), st.st_uid, oct(st.st_mode & 0o777))
        """)
        r = run(sup, where)
        assert r.stdout.split() == [str(sup.proc.pid), str(pw.pw_uid), "0o700"], r
        # The parent-death signal was armed after the change of user (which clears it).
        deathsig = textwrap.dedent("""
            import ctypes
            sig = ctypes.c_int()
            ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
            print(sig.value)
        """)
        assert run(sup, deathsig).stdout.strip() == str(int(signal.SIGKILL))

        # Finding 6: the kernel's code tries to stop, then kill, its parent (the supervisor).
        for sig in ("SIGSTOP", "SIGKILL"):
            code = f"import os, signal\nos.kill(os.getppid(), signal.{sig})"
            r = run(sup, code)
            assert r.status == "error", r
            assert r.error is not None and r.error.ename == "PermissionError", r.error
        supervisor = psutil.Process(sup.proc.pid)
        assert supervisor.status() != psutil.STATUS_STOPPED
        assert run(sup, "6 * 7").result == "42"  # it serves on

        # Nor can it leave its containment unit: the cgroup files are root's.
        if containment.available() == "cgroup":
            escape = textwrap.dedent("""
                import os
                line = [l for l in open("/proc/self/cgroup") if ":freezer:" in l][0]
                unit = "/sys/fs/cgroup/freezer" + line.split(":", 2)[2].strip()
                with open(os.path.dirname(unit) + "/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
            """)
            r = run(sup, escape)
            assert r.error is not None and r.error.ename == "PermissionError", r

        sup.stop()
        assert sup.proc.returncode == 0
        assert_nothing_left(sup.base, sup.runtime_dir)  # its kernels, reaper and cgroups


@in_namespace
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", KINDS)
def test_containment_holds_for_a_user_pool(kind: str) -> None:
    """A setsid, double-forked daemon with a cleaned environment, started by the user's
    kernel, goes when its session closes, when its kernel dies, and (in a cgroup) with a
    SIGKILLed supervisor."""
    pids: list[int] = []
    with user_supervisor(f'containment = "{kind}"\n') as sup:
        try:
            # a session closed
            with sup.client() as c:
                # in its private directory: made in the user's own directory, the user's
                r = c.execute("import os; print(os.stat('.').st_uid)", session="s1", pool="u")
                assert r.stdout.strip() == str(UID), r
                r = c.execute(ESCAPE, session="s1", pool="u")
                assert r.status == "ok", r
                escaped = [int(p) for p in r.stdout.split()]
                pids += escaped
                assert all(psutil.Process(p).uids().real == UID for p in escaped)
                assert c.close_session("s1")
            assert wait_all_gone(escaped, within=10.0) == []

            # the kernel dies by itself
            with sup.client() as c:
                c.open_session("s2", pool="u", cwd="/")  # a directory of the caller's choice
                r = c.execute(ESCAPE, session="s2", pool="u")
                escaped = [int(p) for p in r.stdout.split()]
                pids += escaped
                r = c.execute("import os; os.kill(os.getpid(), 9)", session="s2", pool="u")
                assert r.status == "died", r
            assert wait_all_gone(escaped, within=10.0) == []

            if kind == "subreaper":
                return  # what the dying kernel orphans goes to init: README says so
            # the supervisor is SIGKILLed: the reaper sweeps
            r = run(sup, ESCAPE)
            escaped = [int(p) for p in r.stdout.split()]
            pids += escaped
            kernels = sup.kernel_pids()
            assert kernels and all(psutil.Process(p).uids().real == UID for p in kernels)
            os.kill(sup.proc.pid, signal.SIGKILL)
            sup.proc.wait(timeout=10)
            assert wait_all_gone(escaped + kernels, within=10.0) == []
            deadline = time.monotonic() + 10
            while leftover_groups(sup.runtime_dir) and time.monotonic() < deadline:
                time.sleep(0.05)  # the reaper removes them once their members have left
            assert leftover_groups(sup.runtime_dir) == []
        finally:
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


@in_namespace
@pytest.mark.timeout(180)
def test_a_user_pools_memory_limit_counts_its_daemon() -> None:
    hog = ESCAPE.replace(
        'os.execve("/bin/sleep", ["sleep", "4243"], {})',
        'import time; b = b"x" * (400 * 2**20); time.sleep(120); os._exit(0)',
    )
    with user_supervisor("memory_limit_mb = 250\n") as sup:
        r = run(sup, hog)
        assert r.status == "ok", r
        daemon = int(r.stdout.split()[1])
        assert wait_all_gone([daemon], within=60.0) == []  # killed at the limit


# --------------------------------------------------------------------------- what goes wrong


def test_a_user_that_does_not_exist_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        kernelsup.Config.from_dict({"pool": [{"user": "no-such-user-here"}]})
    assert info.value.data["path"] == "$.pool[0].user"
    assert "no user named 'no-such-user-here' on this machine" in str(info.value)
    with pytest.raises(ConfigError) as info:
        kernelsup.Config.from_dict({"pool": [{"user": "two words"}]})
    assert "must be a user name" in str(info.value)


def test_check_names_a_bad_user(tmp_path: Path) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text('[[pool]]\nuser = "no-such-user-here"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "kernelsup", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "$.pool[0].user: no user named 'no-such-user-here'" in proc.stderr


@in_namespace
@pytest.mark.timeout(120)
def test_check_refuses_another_user_when_kernelsup_is_not_root() -> None:
    """``check`` run as ``nobody`` (in the namespace, where it can start Python): another
    user is refused with the reason, its own user is fine; ``run`` structures the config
    the same way, so it refuses the same."""
    base = Path(tempfile.mkdtemp(prefix="ksu-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        (base / "aside").mkdir()
        (base / "ns.sh").write_text(namespace_script())
        outcomes = []
        for user in ("root", USER):
            config = base / f"{user}.toml"
            config.write_text(f'[[pool]]\nuser = "{user}"\n')
            config.chmod(0o644)
            as_nobody = ["setpriv", f"--reuid={USER}", f"--regid={pwd.getpwnam(USER).pw_gid}"]
            proc = subprocess.run(
                [
                    *("unshare", "--mount", "--propagation", "private", "sh"),
                    *(str(base / "ns.sh"), str(base / "aside"), *as_nobody, "--clear-groups"),
                    *(sys.executable, "-m", "kernelsup", "check", str(config)),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd="/",
            )
            outcomes.append((proc.returncode, proc.stdout + proc.stderr))
        (refused, said), (accepted, valid) = outcomes
        assert refused != 0
        assert (
            "$.pool[0].user: running kernels as user 'root' needs kernelsup to run as root" in said
        )
        assert f"(this process runs as uid {UID})" in said
        assert accepted == 0, valid
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _blocked_dir() -> str | None:
    """The first directory on the way to the interpreter that others may not enter: on
    the path as invoked (the venv's), then, past its symlink, on the path it resolves to."""
    for way in (Path(sys.executable), Path(os.path.realpath(sys.executable))):
        for p in reversed(way.parents):
            if not os.stat(p).st_mode & 1:
                return str(p)
    return None


def test_an_interpreter_the_user_cannot_execute_is_named(runtime_dir: Path) -> None:
    """On this machine as it is (no namespace): the venv's python resolves under /root,
    which nobody may enter. The start fails with the path and what to do."""
    blocked = _blocked_dir()
    if blocked is None:
        pytest.skip("every directory above the interpreter lets others in")
    with pytest.raises(KernelStartError) as info:
        plan_launch("k0", "python3", runtime_dir, user=USER)
    message = info.value.message
    assert f"user {USER!r} cannot execute the kernel's program" in message
    assert f"it may not enter {blocked}" in message, message
    assert "Kernels as another user" in message
    assert not list(runtime_dir.glob("kernel-*.json"))  # its connection file went
    assert leftovers_of(runtime_dir) == []  # and the directory made for the user


@pytest.mark.timeout(120)
def test_run_says_why_a_user_pools_kernel_is_not_up(tmp_path: Path, runtime_dir: Path) -> None:
    """``kernelsup run`` on this machine as it is: the ready line says the kernel failed to
    start, and names the path its user cannot reach."""
    blocked = _blocked_dir()
    if blocked is None:
        pytest.skip("every directory above the interpreter lets others in")
    config = tmp_path / "supervisor.toml"
    config.write_text(
        f'[supervisor]\nruntime_dir = "{runtime_dir}"\n'
        f'[[pool]]\nsize = 1\nspares = 0\nuser = "{USER}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelsup", "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "1 of them not up" in ready, ready
        assert f"user {USER!r} cannot execute" in ready and blocked in ready, ready
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert_nothing_left(runtime_dir, runtime_dir)
