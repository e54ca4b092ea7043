"""One unit per kernel that holds it and everything it starts, whatever they do.

Theory of operation
-------------------
A kernel's code can start processes that leave its process group and session (``setsid``,
a double fork) and clean their environment, so neither the group nor the tether's
environment marker can find them. The unit that can:

* **cgroup** (v1 hierarchies ``memory``, ``pids``, ``cpu``, ``cpuacct``, ``freezer``, where this
  process may create cgroups). Each kernel gets its own cgroup in every one of them,
  ``<our cgroup>/kernelsup-<runtime dir hash>/<kernel id>-<nonce>``, and joins them
  between fork and exec, so everything it ever starts is born inside. The members are
  listed by the kernel (``cgroup.procs``), whatever their parentage; killing the unit
  freezes it (nothing can fork meanwhile), SIGKILLs every member, thaws, and repeats until
  it is empty. The limits are the kernel's: ``memory_limit_mb`` (``memory.limit_in_bytes``,
  and the swap allowance likewise, so the kernel's OOM killer enforces it: a kill it made
  is classified ``limit``), ``pids_limit`` (``pids.max``), ``cpu_limit`` in cores (CFS
  quota over a 100 ms period). The supervisor's own directory of cgroups is named by its
  runtime directory, so the reaper (tether.py) and the next start find and empty it even
  after a SIGKILLed supervisor. The unit's files stay root's (the supervisor's) even when
  the kernel runs as another user: it cannot leave its cgroup, raise its limits or thaw.
* **subreaper** (no cgroups to be had). The kernel process is made a child subreaper
  (``PR_SET_CHILD_SUBREAPER``, kept across exec), so orphans of anything it started are
  re-parented to it rather than to init: every descendant stays in the kernel's process
  tree, where the memory watch counts it and the kill finds it. What this cannot cover:
  a descendant orphaned by the kernel's own death (it goes to init) is found only by the
  tether's environment marker, and ``pids_limit``/``cpu_limit`` are not enforced (the
  memory limit is, by the watch). README says so.

Which one a pool gets is ``containment`` (``auto``: a cgroup where possible); ``status``
shows it per kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Literal

import attrs
import psutil
import trio

Kind = Literal["cgroup", "subreaper"]
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
# CFS period for cpu_limit: 100 ms, the kernel's default.
CPU_PERIOD_US = 100_000
# Rounds of freeze / kill / thaw before giving up on a unit that will not empty (each
# round waits a little for killed members to leave). Bounded: cleanup must end.
KILL_ROUNDS = 100
KILL_ROUND_WAIT_S = 0.01
# Tries at removing an emptied cgroup: rmdir says EBUSY until its last killed member has
# left (exited, not only been signalled). Bounded (0.5 s): a unit that stays is swept by
# the tether when the supervisor ends, and by the next start.
RMDIR_TRIES = 50
# A unit's CPU % is its CPU time over the last window at least this long (status and a
# metrics scrape may sample it moments apart; a shorter window would be mostly noise).
CPU_WINDOW_S = 0.5

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_CHILD_SUBREAPER = 36


@attrs.frozen
class Limits:
    """What one kernel (with everything it starts) may use; 0 = no limit."""

    memory_mb: int = 0
    pids: int = 0
    cpu: float = 0.0


@attrs.frozen
class Usage:
    """What one unit uses now: ``memory_bytes`` resident (a cgroup's working set:
    ``memory.usage_in_bytes`` less ``total_inactive_file``, as cAdvisor counts it; else the
    RSS of every process in the kernel's tree), ``cpu_seconds`` used so far by its live
    members (a cgroup's ``cpuacct.usage`` counts the dead ones too) and ``cpu_percent`` of
    one core over the last window (None until one has passed)."""

    memory_bytes: int
    cpu_seconds: float
    cpu_percent: float | None


# --------------------------------------------------------------------------- discovery


@functools.cache
def _hierarchies() -> dict[str, Path]:
    """controller -> the directory of this process's own cgroup in that v1 hierarchy,
    for every controller in which this process can create a cgroup."""
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(rest) >= 3 and rest[0] == "cgroup":
                for controller in rest[2].split(","):
                    if controller in CONTROLLERS:
                        mounts[controller] = Path(fields[4])
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                own[controller] = path
    found: dict[str, Path] = {}
    for controller, mount in mounts.items():
        if controller not in own:
            continue
        base = mount / own[controller].lstrip("/")
        probe = base / f"kernelsup-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            continue
        found[controller] = base
    return found


def available() -> Kind:
    """The strongest containment this process can give its kernels."""
    hierarchies = _hierarchies()
    # The freezer (or at least one hierarchy to list members) is what makes a cgroup a
    # unit we can enumerate and kill; the memory hierarchy is also what the watch reads.
    return "cgroup" if "freezer" in hierarchies and "memory" in hierarchies else "subreaper"


def group_dir_name(runtime_dir: Path) -> str:
    """The directory, in every hierarchy, holding one supervisor's kernel cgroups."""
    return "kernelsup-" + hashlib.sha256(os.fsencode(os.path.abspath(runtime_dir))).hexdigest()[:12]


# --------------------------------------------------------------------------- one unit


class Unit:
    """One kernel's containment: made before the kernel starts, joined in its child
    between fork and exec (:meth:`join_in_child`), emptied and removed when it ends."""

    def __init__(self, kind: Kind, dirs: dict[str, Path], limits: Limits) -> None:
        self.kind = kind
        self.dirs = dirs
        self.limits = limits
        self.pid: int | None = None  # the kernel's, once started
        self._oom_before = 0
        # subreaper: descendants seen so far (pid -> start time), for when the kernel's
        # death has handed its orphans to init
        self._seen: dict[int, float] = {}
        # the last CPU sample a percentage is measured from: (monotonic time, cpu seconds)
        self._cpu_ref = (time.monotonic(), 0.0)
        self._cpu_percent: float | None = None

    @classmethod
    def create(cls, want: str, runtime_dir: Path, name: str, limits: Limits) -> Unit:
        """A unit for one kernel: ``want`` is ``auto``, ``cgroup`` or ``subreaper``.
        Raises OSError when ``cgroup`` is asked for and cannot be had."""
        kind: Kind = available() if want == "auto" else want  # type: ignore[assignment]
        if kind == "subreaper":
            return cls("subreaper", {}, limits)
        if want == "auto":
            try:
                return cls._cgroup(runtime_dir, name, limits)
            except OSError:  # this one could not be made: hold the kernel the other way
                return cls("subreaper", {}, limits)
        return cls._cgroup(runtime_dir, name, limits)

    @classmethod
    def _cgroup(cls, runtime_dir: Path, name: str, limits: Limits) -> Unit:
        hierarchies = _hierarchies()
        if "freezer" not in hierarchies or "memory" not in hierarchies:
            raise OSError('containment = "cgroup": no writable cgroup hierarchies here')
        dirs: dict[str, Path] = {}
        parent = group_dir_name(runtime_dir)
        try:
            for controller, base in hierarchies.items():
                path = base / parent / name
                path.mkdir(parents=True, exist_ok=True)
                dirs[controller] = path
            unit = cls("cgroup", dirs, limits)
            unit._apply_limits()
        except OSError:
            cls("cgroup", dirs, limits).remove()
            raise
        unit._oom_before = unit.oom_kills()
        return unit

    def _apply_limits(self) -> None:
        lim = self.limits
        if lim.memory_mb and "memory" in self.dirs:
            limit = str(lim.memory_mb * 2**20)
            _write(self.dirs["memory"] / "memory.limit_in_bytes", limit)
            swap = self.dirs["memory"] / "memory.memsw.limit_in_bytes"
            if swap.exists():  # memory + swap: the same bound, so swap is no way around it
                _write(swap, limit)
        if lim.pids and "pids" in self.dirs:
            _write(self.dirs["pids"] / "pids.max", str(lim.pids))
        if lim.cpu and "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(
                self.dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(lim.cpu * CPU_PERIOD_US)))
            )

    @property
    def enforces_memory_limit(self) -> bool:
        """The kernel's OOM killer holds the unit to its memory limit (a memory cgroup with
        the limit written); else only the supervisor's watch of its members can."""
        return self.kind == "cgroup" and bool(self.limits.memory_mb) and "memory" in self.dirs

    # -- in the child, between fork and exec -------------------------------------------
    def join_in_child(self) -> None:
        """Runs in the kernel's child process before exec: enter the unit."""
        if self.kind == "subreaper":
            _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            return
        me = str(os.getpid())
        for path in self.dirs.values():
            fd = os.open(path / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, me.encode())
            finally:
                os.close(fd)

    # -- members ----------------------------------------------------------------------
    def members(self) -> list[int]:
        """Every live process in the unit: the kernel and all it started, however they
        left its group or session (for a subreaper unit, the kernel's process tree)."""
        if self.kind == "cgroup":
            return _procs(self.dirs["freezer"])
        if self.pid is None:
            return []
        try:
            root = psutil.Process(self.pid)
            return [self.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:
            return []

    def memory_bytes(self) -> int:
        """Resident memory of every member."""
        total = 0
        for pid in self.members():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
        return total

    def usage(self) -> Usage:
        """Memory and CPU of the whole unit now (see :class:`Usage`). Reads a few cgroup
        files, or walks the kernel's process tree: cheap, blocking only on procfs."""
        memory = self._cgroup_memory() if self.kind == "cgroup" else None
        cpu = self._cgroup_cpu() if self.kind == "cgroup" else None
        if memory is None or cpu is None:
            tree_memory, tree_cpu = 0, 0.0
            for pid in self.members():
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(pid)
                    with proc.oneshot():
                        tree_memory += proc.memory_info().rss
                        times = proc.cpu_times()
                    tree_cpu += times.user + times.system
            memory = tree_memory if memory is None else memory
            cpu = tree_cpu if cpu is None else cpu
        now = time.monotonic()
        since, cpu_before = self._cpu_ref
        if now - since >= CPU_WINDOW_S:
            self._cpu_percent = max(0.0, 100.0 * (cpu - cpu_before) / (now - since))
            self._cpu_ref = (now, cpu)
        return Usage(memory, cpu, self._cpu_percent)

    def _cgroup_memory(self) -> int | None:
        path = self.dirs.get("memory")
        if path is None:
            return None
        try:
            used = int((path / "memory.usage_in_bytes").read_text())
            stat = (path / "memory.stat").read_text().split()
        except (OSError, ValueError):
            return None
        fields = dict(zip(stat[::2], stat[1::2], strict=False))
        inactive = int(fields.get("total_inactive_file", "0"))
        return max(0, used - inactive)

    def _cgroup_cpu(self) -> float | None:
        path = self.dirs.get("cpuacct")
        if path is None:
            return None
        try:
            return int((path / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """OOM kills inside the unit since it was made (a cgroup memory limit at work)."""
        path = self.dirs.get("memory")
        if path is None:
            return 0
        try:
            for line in (path / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) - self._oom_before
        except (OSError, ValueError):
            pass
        return 0

    # -- the end ----------------------------------------------------------------------
    def remember(self) -> None:
        """Subreaper: note the kernel's descendants now (after each request, before a
        shutdown), so they can be found after the kernel's own death. Cheap, no-op for a
        cgroup, which needs no memory."""
        if self.kind != "subreaper":
            return
        for pid in self.members():
            if pid != self.pid and pid not in self._seen:
                with contextlib.suppress(psutil.Error):
                    self._seen[pid] = psutil.Process(pid).create_time()

    async def kill_all(self) -> list[int]:
        """SIGKILL every member until none is left (bounded); return the pids killed."""
        killed: list[int] = []
        if self.kind == "subreaper":
            self.remember()
            for pid, started in self._seen.items():
                with contextlib.suppress(psutil.Error):  # gone, or the pid was reused
                    if psutil.Process(pid).create_time() == started and _kill(pid):
                        killed.append(pid)
            self._seen.clear()
            return killed
        freezer = self.dirs["freezer"] / "freezer.state"
        for _ in range(KILL_ROUNDS):
            pids = _procs(self.dirs["freezer"])
            if not pids:
                break
            _write(freezer, "FROZEN", quiet=True)  # nothing forks while we kill
            killed += [pid for pid in _procs(self.dirs["freezer"]) if _kill(pid)]
            _write(freezer, "THAWED", quiet=True)  # a frozen process cannot die
            await trio.sleep(KILL_ROUND_WAIT_S)
        return killed

    def remove(self) -> None:
        """Remove the unit's cgroups, waiting (bounded) for members killed a moment ago to
        leave; then the supervisor's directory, once its last unit has gone."""
        for path in self.dirs.values():
            if _rmdir(path):
                with contextlib.suppress(OSError):  # not empty: other kernels' units
                    path.parent.rmdir()


# --------------------------------------------------------------------------- sweeping


def sweep_groups(runtime_dir: Path) -> list[int]:
    """Kill every process in any kernel cgroup of the supervisor with this runtime
    directory, and remove those cgroups: the reaper's and the next start's sweep."""
    killed: list[int] = []
    hierarchies = _hierarchies()
    parent_name = group_dir_name(runtime_dir)
    freezer = hierarchies.get("freezer")
    parent = freezer / parent_name if freezer is not None else None
    for _ in range(KILL_ROUNDS):  # until every member has left (killed ones take a moment)
        if parent is None or not parent.is_dir():
            break
        units = [d for d in parent.iterdir() if d.is_dir()]
        pids = [pid for unit in units for pid in _procs(unit)]
        if not pids:
            break
        for unit in units:
            _write(unit / "freezer.state", "FROZEN", quiet=True)
        killed += [pid for pid in pids if _kill(pid)]
        for unit in units:
            _write(unit / "freezer.state", "THAWED", quiet=True)
        time.sleep(KILL_ROUND_WAIT_S)  # the reaper, or a start before anything runs
    for base in hierarchies.values():
        parent = base / parent_name
        if parent.is_dir():
            for unit in parent.iterdir():
                if unit.is_dir():
                    _rmdir(unit)
            _rmdir(parent)
    return killed


def leftover_groups(runtime_dir: Path) -> list[Path]:
    """The cgroup directories of the supervisor with this runtime directory that still
    exist (none, once it has ended cleanly or been swept)."""
    name = group_dir_name(runtime_dir)
    return [base / name for base in _hierarchies().values() if (base / name).exists()]


# --------------------------------------------------------------------------- helpers


def _procs(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _rmdir(path: Path) -> bool:
    """Remove an empty cgroup directory; True once it is gone. A cgroup whose killed
    members have not all left yet is busy (EBUSY): try again, a bounded number of times."""
    for _ in range(RMDIR_TRIES):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return False
        time.sleep(KILL_ROUND_WAIT_S)
    return False


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _write(path: Path, value: str, *, quiet: bool = False) -> None:
    try:
        path.write_text(value)
    except OSError:
        if not quiet:
            raise


__all__ = [
    "CONTROLLERS",
    "Kind",
    "Limits",
    "Unit",
    "Usage",
    "available",
    "group_dir_name",
    "leftover_groups",
    "sweep_groups",
]
