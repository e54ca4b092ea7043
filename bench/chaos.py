"""chaos: N requests from C clients through the control endpoint while kernels die.

``python -m bench chaos --requests N --seed S [--clients C] [--json FILE]``

Theory of operation
-------------------
``kernelsup run`` serves a pool of 4 kernels and a spare with a fast heartbeat, short
timeouts, a small output cap and a memory limit. C clients (each its own connection)
take requests from one seeded plan and send them one at a time: plain code, session code
(four session names shared by every client), errors, ``while True: pass`` under a 0.5 s
timeout, loops that ignore SIGINT, output floods, memory hogs, ``os._exit(1)``, and code
that leaves a child process behind. Meanwhile a chaos task, seeded too, SIGKILLs or
SIGSTOPs a random kernel, sends ``os._exit(1)`` into a random session, closes one, or
floods the control endpoint with ``FLOOD_CONNECTIONS`` bare connects (more than its
``max_connections``) held for a moment; sessions also expire when idle.

Every request's code first appends ``<id> <pid>`` to a ledger file, so the kernels
themselves say what ran. At the end :func:`audit` (pure, table-tested) checks:

* every request submitted has exactly one outcome, and none is left without one;
* no id is in the ledger twice (nothing ran twice), none is there that was never sent;
* every ``ok`` or ``error`` request is in the ledger, no ``rejected`` one is (a rejected
  request never ran);
* every ``ok`` result is the request's own (its last expression is its id);
* no client call raised instead of returning a result.

Around it: kernel exits by cause and restarts (from a ``watch`` subscription), chaos
actions taken, and the supervisor process's open file descriptors and RSS, taken in the
same quiet state (every session closed, the pool's kernels idle) after a warm-up (every
request kind and chaos action once, then a tenth of N more requests under chaos, so the
heap has reached its working set) and at the end; the slowest request against a hang
limit, no session kernel left once every session is closed, no internal error in the
server; then SIGTERM: exit status 0 and no process tethered to the runtime directory.

A supervisor that stops answering (a request waits ``HANG_S`` with no outcome, or a client
finds it gone) ends the soak early: it is sent SIGABRT, and faulthandler (enabled through
PYTHONFAULTHANDLER when it was started) writes every thread's stack to its log, which the
report quotes. (A client itself waits as long as the supervisor process is there.)

Any failed invariant is listed in ``extra["violations"]`` and makes the command exit 1.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import psutil
import trio

import kernelsup
from bench.common import (
    Report,
    config_dict,
    log,
    ms,
    pool_config,
    runtime_dir,
    stop_tethered,
    to_toml,
    wait_for_output,
)
from kernelsup.adapters.tether import sweep, tethered_pids
from kernelsup.core import events as ev
from kernelsup.core.errors import KernelsupError, Unreachable

REQUESTS = {"smoke": 150, "quick": 1000, "full": 10_000}
# The warm-up load before the first footprint, as a share of the requests: long enough for
# the supervisor's heap to reach its working set, so that growth after it means a leak.
WARMUP_SHARE = 0.1
WARMUP_MIN = 30
CLIENTS = {"smoke": 2, "quick": 4, "full": 6}
# Mean seconds between chaos actions (exponentially distributed).
CHAOS_INTERVAL_S = {"smoke": 0.5, "quick": 1.0, "full": 1.0}

POOL_SIZE = 4
SPARES = 1
SESSIONS = ("s0", "s1", "s2", "s3")
EXEC_TIMEOUT_S = 10.0  # the pool's default; plain requests finish in milliseconds
SHORT_TIMEOUT_S = 0.5  # the requests that loop forever
INTERRUPT_GRACE_S = 1.0
MAX_OUTPUT_BYTES = 65_536  # a flood prints about 2 MB
MEMORY_LIMIT_MB = 512  # a hog allocates up to 2 GiB, 32 MiB at a time
SESSION_IDLE_S = 3.0
HEARTBEAT_S, HEARTBEAT_MISSES = 0.2, 3

# A request slower than this is a hang (the slowest legitimate one, a memory hog or a
# session waiting for a cold start on a loaded machine, takes a few seconds).
HANG_S = 60.0
# After the last request was sent, everything must have ended within this.
DRAIN_TIMEOUT_S = 120.0
# Bound on any wait for the pool to be quiet (every session closed, every kernel idle).
QUIET_TIMEOUT_S = 120.0
# After the pool is quiet, how long zmq may take to close what it closes lazily.
FD_SETTLE_S = 15.0
RSS_TOLERANCE = 0.10
SERVER_START_TIMEOUT_S = 90.0
SERVER_STOP_TIMEOUT_S = 60.0
TETHER_LEFT_WAIT_S = 5.0
SAMPLE_EVERY_S = 1.0
ROOT = str(Path(__file__).resolve().parent.parent)  # where `-m bench.tether` is found
RUN_ARGV = [sys.executable, "-m", "kernelsup", "run"]  # a diagnosis may run a wrapper
MB = 1024 * 1024
# The escaping processes' sleep arguments, by which the soak finds any that outlived it.
ESCAPE_SLEEP = ("91731", "91732")


# --------------------------------------------------------------------------- the plan
@attrs.frozen
class Kind:
    """One kind of request: how often, its code after the ledger line (``{tag}`` is the
    request id's repr), its timeout, and whether it runs in a session."""

    name: str
    weight: int
    body: str
    timeout: float | None = None
    session: bool = False


KINDS: tuple[Kind, ...] = (
    Kind("plain", 600, "sum(range(1000))\n{tag}"),
    Kind("session", 230, "_n = globals().get('_n', 0) + 1\n{tag}", session=True),
    Kind("error", 40, "1 / 0"),
    Kind("timeout", 30, "while True:\n    pass", timeout=SHORT_TIMEOUT_S),
    Kind(
        "stubborn",
        5,
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        timeout=SHORT_TIMEOUT_S,
    ),
    Kind(
        "flood",
        30,
        "import sys\nfor _ in range(2000):\n    sys.stdout.write('y' * 1000 + '\\n')\n{tag}",
    ),
    Kind(
        "memory",
        7,
        "import time\ndef _hog():\n    h = []\n    for _ in range(64):\n"
        "        h.append(b'x' * (32 << 20))\n        time.sleep(0.01)\n_hog()\n{tag}",
    ),
    Kind("exit", 10, "import os\nos._exit(1)"),
    Kind("child", 5, "import subprocess\nsubprocess.Popen(['sleep', '1000'])\n{tag}"),
    # Two processes built to escape: a new session with a cleaned environment, and a
    # setsid double-forked daemon with none (no group, session or marker to find them by).
    Kind(
        "escape",
        5,
        "import os, subprocess\n"
        "subprocess.Popen(['sleep', '" + ESCAPE_SLEEP[0] + "'], env={{'PATH': os.environ['PATH']}},"
        " start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execve('/bin/sleep', ['sleep', '" + ESCAPE_SLEEP[1] + "'], {{}})\n"
        "    os._exit(0)\n"
        "os.waitpid(-1, 0)\n{tag}",
    ),
)
# Sent by the chaos task into a random session, not part of the plan.
CHAOS_EXIT = Kind("chaos_exit", 0, "import os\nos._exit(1)", session=True)
KIND_BY_NAME = {k.name: k for k in (*KINDS, CHAOS_EXIT)}

CHAOS_ACTIONS = {
    "sigkill": 4,
    "sigstop": 2,
    "session_exit": 2,
    "close_session": 3,
    "conn_flood": 1,
}
# The endpoint's bound in the soak, and a flood of bare connects past it (the clients'
# own connections have spoken, so the flood's give way: control/gate.py).
MAX_CONNECTIONS = 64
FLOOD_CONNECTIONS = 2 * MAX_CONNECTIONS
FLOOD_HOLD_S = 0.2
FLOOD_TIMEOUT_S = 5.0


@attrs.frozen
class Planned:
    rid: str
    kind: str
    session: str | None = None


def make_plan(n: int, seed: int, prefix: str = "r") -> list[Planned]:
    """The requests, in order: the same for the same ``n`` and ``seed``."""
    rng = random.Random(seed)
    kinds = rng.choices(KINDS, weights=[k.weight for k in KINDS], k=n)
    width = len(str(max(n - 1, 1)))
    return [
        Planned(f"{prefix}{i:0{width}d}", k.name, rng.choice(SESSIONS) if k.session else None)
        for i, k in enumerate(kinds)
    ]


def code_for(p: Planned, ledger: Path) -> str:
    """The request's code: append ``<id> <pid>`` to the ledger, then the kind's body."""
    head = (
        f"import os as _os\nwith open({str(ledger)!r}, 'a') as _f:\n"
        f"    _f.write({p.rid!r} + ' %d\\n' % _os.getpid())\n"
    )
    return head + KIND_BY_NAME[p.kind].body.format(tag=repr(p.rid))


# --------------------------------------------------------------------------- outcomes
@attrs.frozen
class Outcome:
    rid: str
    kind: str
    status: str  # ExecuteResult.status, or "raised" (a client exception)
    code: str | None
    seconds: float
    own_result: bool | None  # for ok: the result is this request's id
    state_lost: bool = False
    truncated_bytes: int = 0
    detail: str = ""


@attrs.frozen
class Audit:
    """What the outcomes and the ledger prove; each list holds request ids."""

    submitted: int
    with_outcome: int
    lost: list[str]
    multiple: list[str]
    ran_twice: list[str]
    phantom: list[str]
    ran_not_in_ledger: list[str]
    rejected_but_ran: list[str]
    wrong_result: list[str]
    raised: list[str]
    by_status: dict[str, int]
    by_kind: dict[str, dict[str, int]]
    by_code: dict[str, int]  # "status: code" of every outcome but ok
    ledger_lines: int

    def violations(self) -> list[str]:
        checks = [
            ("requests without an outcome", self.lost),
            ("requests with more than one outcome", self.multiple),
            ("requests run twice (ledger)", self.ran_twice),
            ("ledger ids never submitted", self.phantom),
            ("ok/error requests missing from the ledger", self.ran_not_in_ledger),
            ("rejected requests that ran (ledger)", self.rejected_but_ran),
            ("ok results that are not the request's own", self.wrong_result),
            ("client calls that raised", self.raised),
        ]
        return [
            f"{what}: {len(ids)} ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})"
            for what, ids in checks
            if ids
        ]


def parse_ledger(text: str) -> list[str]:
    """Request ids in the ledger, in order, duplicates kept."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def audit(
    submitted: Sequence[Planned],
    outcomes: Mapping[str, Outcome],
    extra_outcomes: Sequence[str],
    ledger: Sequence[str],
) -> Audit:
    """Check the outcomes against what was sent and what the kernels wrote (pure)."""
    sent = {p.rid: p for p in submitted}
    counts = collections.Counter(ledger)
    in_ledger = set(counts)
    by_status = collections.Counter(o.status for o in outcomes.values())
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for o in outcomes.values():
        by_kind[o.kind][o.status] += 1
    ids = sorted(outcomes)
    return Audit(
        submitted=len(sent),
        with_outcome=sum(1 for rid in sent if rid in outcomes),
        lost=sorted(rid for rid in sent if rid not in outcomes),
        multiple=sorted(set(extra_outcomes)),
        ran_twice=sorted(rid for rid, n in counts.items() if n > 1),
        phantom=sorted(in_ledger - set(sent)),
        ran_not_in_ledger=[
            r for r in ids if outcomes[r].status in ("ok", "error") and r not in in_ledger
        ],
        rejected_but_ran=[r for r in ids if outcomes[r].status == "rejected" and r in in_ledger],
        wrong_result=[
            r for r in ids if outcomes[r].status == "ok" and outcomes[r].own_result is False
        ],
        raised=[r for r in ids if outcomes[r].status == "raised"],
        by_status=dict(sorted(by_status.items())),
        by_kind={k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        by_code=dict(
            sorted(
                collections.Counter(
                    f"{o.status}: {o.code}" for o in outcomes.values() if o.status != "ok"
                ).items()
            )
        ),
        ledger_lines=len(ledger),
    )


# --------------------------------------------------------------------------- `kernelsup run`
def write_config(directory: Path) -> tuple[Path, Path]:
    """The soak's config file and its (short, private) runtime directory."""
    rt = directory / "rt"
    pool = pool_config(
        "default",
        size=POOL_SIZE,
        spares=SPARES,
        heartbeat=HEARTBEAT_S,
        misses=HEARTBEAT_MISSES,
        exec_timeout=EXEC_TIMEOUT_S,
        max_output_bytes=MAX_OUTPUT_BYTES,
        memory_limit_mb=MEMORY_LIMIT_MB,
        session_idle_timeout=SESSION_IDLE_S,
        interrupt_grace=INTERRUPT_GRACE_S,
        queue_limit=10_000,
        queue_timeout=HANG_S,
        start_timeout=60.0,
        shutdown={"grace": 0.5, "term_timeout": 0.5},
    )
    path = directory / "chaos.toml"
    config = config_dict(pool, runtime_dir=rt)
    config["server"] = {"max_connections": MAX_CONNECTIONS}
    path.write_text(to_toml(config))
    return path, rt


@attrs.define
class Served:
    """A running ``kernelsup run`` (under bench.tether) and what its stop showed."""

    tether: trio.Process
    pid: int
    exit_code: int | None = None
    left_after_stop: list[int] = attrs.field(factory=list)
    escaped_after_stop: list[int] = attrs.field(factory=list)

    async def terminate(self, rt: Path) -> None:
        """SIGTERM ``kernelsup run`` itself; record its exit status and what is left."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        with trio.move_on_after(SERVER_STOP_TIMEOUT_S):
            await self.tether.wait()  # the tether exits with its child's status
        self.exit_code = self.tether.returncode
        deadline = trio.current_time() + TETHER_LEFT_WAIT_S
        while True:  # a process killed a moment ago may still be in the table
            self.left_after_stop = _live(tethered_pids(rt))
            self.escaped_after_stop = _escaped()
            if not (self.left_after_stop or self.escaped_after_stop):
                break
            if trio.current_time() > deadline:
                break
            await trio.sleep(0.05)


def _escaped() -> list[int]:
    """Live processes started by the escape kind (found by their sleep argument)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            cmd = proc.info["cmdline"] or []
            if len(cmd) == 2 and cmd[1] in ESCAPE_SLEEP and proc.info["status"] != "zombie":
                found.append(proc.pid)
    return found


def _detail(r: kernelsup.ExecuteResult, own: bool | None) -> str:
    """What to keep of a result: its message, or for an ok result that is not the
    request's own, what it did hold."""
    if own is False:
        notices = [o.name for o in r.outputs if o.type == "notice"]
        return (
            f"result {r.result!r}, kernel {r.kernel_id}, count {r.execution_count}, "
            f"stdout {r.stdout[:120]!r}, notices {notices}"
        )
    return "" if r.status == "ok" else r.message[:200]


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


def _tail(path: Path, size: int = 1500) -> str:
    return path.read_text(errors="replace")[-size:]


def _live(pids: Iterable[int]) -> list[int]:
    """Pids that are not zombies (a zombie is gone, only not yet reaped by its parent)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@asynccontextmanager
async def serve(cfg_path: Path, rt: Path, log_path: Path) -> AsyncIterator[Served]:
    """``kernelsup run CONFIG`` under bench.tether (which stops it if we die); yields once
    it printed its ready line. Whatever happens, nothing of it is left afterwards."""
    with _open_log(log_path) as log_file:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.tether", *RUN_ARGV, "--log-json", str(cfg_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            cwd=ROOT,
            start_new_session=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    try:
        await wait_for_output(
            proc,
            b"kernelsup ready",
            SERVER_START_TIMEOUT_S,
            lambda: "kernelsup run exited before it was ready: " + _tail(log_path),
        )
        children = psutil.Process(proc.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one `kernelsup run` under the tether: {children}")
        yield Served(proc, children[0].pid)
    finally:
        with trio.CancelScope(shield=True):
            await stop_tethered(proc, SERVER_STOP_TIMEOUT_S)
            sweep(rt)  # only if something went wrong: a clean stop left nothing
            if proc.stdout is not None:
                await proc.stdout.aclose()


# --------------------------------------------------------------------------- the soak
@attrs.define
class Soak:
    clients: list[kernelsup.Client]
    control: kernelsup.Client
    ledger: Path
    rt: Path
    pid: int
    sent: list[Planned] = attrs.field(factory=list)
    outcomes: dict[str, Outcome] = attrs.field(factory=dict)
    extra_outcomes: list[str] = attrs.field(factory=list)
    running: dict[str, float] = attrs.field(factory=dict)
    actions: collections.Counter[str] = attrs.field(factory=collections.Counter)
    exits: collections.Counter[str] = attrs.field(factory=collections.Counter)
    restarts: collections.Counter[str] = attrs.field(factory=collections.Counter)
    last_exit: dict[str, str] = attrs.field(factory=dict)  # kernel id -> its last cause
    events: collections.Counter[str] = attrs.field(factory=collections.Counter)
    events_dropped: int = 0
    samples: list[tuple[float, float, int]] = attrs.field(factory=list)
    chaos_seq: int = 0
    t0: float = attrs.field(factory=time.monotonic)  # samples are timed from here
    broken: str = ""  # why the supervisor is considered unresponsive, once it is

    def fail(self, why: str) -> None:
        """The supervisor stopped answering: stop sending, keep the first reason."""
        if not self.broken:
            self.broken = why
            log(f"chaos: ABORTING: {why}")

    # -- one request --
    async def one(self, client: kernelsup.Client, p: Planned) -> None:
        kind = KIND_BY_NAME[p.kind]
        self.sent.append(p)
        t0 = time.perf_counter()
        self.running[p.rid] = t0
        try:
            r = await client.execute(
                code_for(p, self.ledger), session=p.session, timeout=kind.timeout
            )
        except KernelsupError as exc:
            out = Outcome(
                p.rid,
                p.kind,
                "raised",
                exc.code,
                time.perf_counter() - t0,
                None,
                detail=exc.describe(),
            )
            if isinstance(exc, Unreachable):
                self.fail(f"request {p.rid}: {exc.describe()}")
        else:
            own = r.result == repr(p.rid) if r.status == "ok" else None
            out = Outcome(
                p.rid,
                p.kind,
                r.status,
                r.code,
                time.perf_counter() - t0,
                own,
                r.state_lost,
                r.truncated_bytes,
                detail=_detail(r, own),
            )
        del self.running[p.rid]
        if p.rid in self.outcomes:
            self.extra_outcomes.append(p.rid)
        else:
            self.outcomes[p.rid] = out

    async def client_loop(self, client: kernelsup.Client, plan: Iterable[Planned]) -> None:
        for p in plan:  # a shared iterator: each client takes the next request
            if self.broken:
                return
            await self.one(client, p)

    # -- chaos --
    async def act(self, action: str, rng: random.Random, nursery: trio.Nursery) -> None:
        try:
            await self._act(action, rng, nursery)
        except KernelsupError as exc:  # the control client failing is a finding too
            self.actions[f"{action} raised {exc.code}"] += 1
            if isinstance(exc, Unreachable):
                self.fail(f"chaos {action}: {exc.describe()}")

    async def _act(self, action: str, rng: random.Random, nursery: trio.Nursery) -> None:
        if action in ("sigkill", "sigstop"):
            st = await self.control.status()
            pids = [
                k["pid"]
                for k in st.kernels
                if k["pid"] and k["state"] in ("idle", "busy") and self._ours(k["pid"])
            ]
            if not pids:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(pids), signal.SIGKILL if action == "sigkill" else signal.SIGSTOP)
        elif action == "session_exit":
            self.chaos_seq += 1
            p = Planned(f"x{self.chaos_seq:05d}", CHAOS_EXIT.name, rng.choice(SESSIONS))
            nursery.start_soon(self.one, self.control, p)
        elif action == "conn_flood":
            await self._flood()
        else:
            await self.control.close_session(rng.choice(SESSIONS))
        self.actions[action] += 1

    async def _flood(self) -> None:
        """FLOOD_CONNECTIONS unix connects that never speak, held FLOOD_HOLD_S, closed."""
        endpoint = self.control.endpoint
        if not endpoint.startswith("ipc://"):
            return
        socks: list[socket.socket] = []
        try:
            with trio.move_on_after(FLOOD_TIMEOUT_S):
                while len(socks) < FLOOD_CONNECTIONS:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.setblocking(False)
                    try:
                        while True:
                            try:
                                s.connect(endpoint[len("ipc://") :])
                                break
                            except BlockingIOError:  # the backlog is full: let it drain
                                await trio.sleep(0.001)
                    except BaseException:
                        s.close()
                        raise
                    socks.append(s)
            await trio.sleep(FLOOD_HOLD_S)
        except OSError:
            pass  # refused: the flood is over
        finally:
            for s in socks:
                s.close()

    def _ours(self, pid: int) -> bool:
        """A pid from status is still one of our kernels (not a reused pid)."""
        try:
            return any(str(self.rt) in arg for arg in psutil.Process(pid).cmdline())
        except psutil.Error:
            return False

    async def chaos(self, seed: int, interval: float, stop: trio.Event) -> None:
        rng = random.Random(seed ^ 0x5EED)
        names, weights = list(CHAOS_ACTIONS), list(CHAOS_ACTIONS.values())
        async with trio.open_nursery() as nursery:
            while not (stop.is_set() or self.broken):
                with trio.move_on_after(rng.expovariate(1 / interval)):
                    await stop.wait()
                if not (stop.is_set() or self.broken):
                    await self.act(rng.choices(names, weights)[0], rng, nursery)

    # -- observation --
    async def watch(
        self,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with self.control.subscribe() as events:
                task_status.started()
                async for e in events:
                    self.events[e.kind] += 1
                    if e.kind == ev.KERNEL_EXITED:
                        cause = str(e.data.get("text", "?"))
                        self.exits[cause] += 1
                        self.last_exit[str(e.kernel_id)] = cause
                    elif e.kind == ev.RESTART_SCHEDULED:
                        self.restarts[self.last_exit.get(str(e.kernel_id), "?")] += 1
                    elif e.kind == ev.LAGGED:
                        self.events_dropped += int(e.data.get("dropped", 0))
        except KernelsupError as exc:
            self.fail(f"watch: {exc.describe()}")

    async def sample(self) -> None:
        proc = psutil.Process(self.pid)
        while True:
            with contextlib.suppress(psutil.Error):
                self.samples.append(
                    (
                        round(time.monotonic() - self.t0, 1),
                        round(proc.memory_info().rss / MB, 2),
                        proc.num_fds(),
                    )
                )
            await trio.sleep(SAMPLE_EVERY_S)

    async def quiet(self) -> list[dict[str, Any]]:
        """Close every session and wait until the pool's own kernels are all idle.
        Kernels still bound to a session then are leaks: they are returned, and killed
        (a session kernel is never restarted), so that every footprint is taken with the
        same kernels. Each wait is bounded by QUIET_TIMEOUT_S."""
        for name in SESSIONS:
            await self.control.close_session(name)
        await self._settled()
        leaked = [k for k in (await self.control.status()).kernels if k["role"] == "session"]
        for k in leaked:
            if k["pid"] and self._ours(k["pid"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(k["pid"], signal.SIGKILL)
        if leaked:
            await self._settled(sessions_gone=True)
        await trio.sleep(0.5)  # let ipykernel finish its post-start work
        return leaked

    async def _settled(self, *, sessions_gone: bool = False) -> None:
        with trio.move_on_after(QUIET_TIMEOUT_S):
            while True:
                ks = (await self.control.status()).kernels
                own = [k for k in ks if k["role"] != "session"]
                if (
                    len(own) == POOL_SIZE + SPARES
                    and all(k["state"] == "idle" for k in ks)
                    and not (sessions_gone and len(ks) > len(own))
                ):
                    return
                await trio.sleep(0.05)

    def footprint(self) -> tuple[int, float]:
        proc = psutil.Process(self.pid)
        return proc.num_fds(), proc.memory_info().rss / MB


async def _settle_fds(soak: Soak, target: int | None) -> tuple[int, float]:
    """The supervisor's fds and RSS once lazily closed fds had time to go: at most
    ``target`` fds, or (no target) the same count for a second, bounded by FD_SETTLE_S."""
    deadline = trio.current_time() + FD_SETTLE_S
    fds, rss = soak.footprint()
    while trio.current_time() < deadline:
        if target is not None and fds <= target:
            break
        await trio.sleep(1.0)
        before = fds
        fds, rss = soak.footprint()
        if target is None and fds == before:
            break
    return fds, rss


async def _warm_up(soak: Soak, nursery: trio.Nursery) -> None:
    """Every request kind and every chaos action once, so the first footprint is taken
    with every code path (and its imports and caches) already used."""
    client = soak.clients[0]
    rng = random.Random(0)
    for i, kind in enumerate(KINDS):
        session = SESSIONS[i % len(SESSIONS)] if kind.session else None
        await soak.one(client, Planned(f"k{i:02d}", kind.name, session))
    for i, name in enumerate(SESSIONS):
        await soak.one(client, Planned(f"k{len(KINDS) + i:02d}", "session", name))
    for action in CHAOS_ACTIONS:
        await soak.act(action, rng, nursery)
        await trio.sleep(1.0)


def _rss_halves(
    samples: Sequence[tuple[float, float, int]], window: tuple[float, float] | None
) -> tuple[float, float] | None:
    """Median RSS over the main phase's second quarter and over its last quarter: growth
    between them, after the heap reached its working set, is what a leak looks like."""
    if window is None:
        return None
    t0, t1 = window
    q = (t1 - t0) / 4

    def median(lo: float, hi: float) -> float | None:
        xs = sorted(rss for t, rss, _ in samples if lo <= t <= hi)
        return xs[len(xs) // 2] if xs else None

    a, b = median(t0 + q, t0 + 2 * q), median(t1 - q, t1)
    return None if a is None or b is None else (a, b)


def _round(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(x, digits)


def _percent(a: float, b: float) -> float:
    return 100.0 * (b - a) / a if a else 0.0


async def run(
    mode: str, *, requests: int | None = None, seed: int = 0, clients: int | None = None
) -> Report:
    n = requests if requests is not None else REQUESTS[mode]
    c = clients if clients is not None else CLIENTS[mode]
    interval = CHAOS_INTERVAL_S[mode]
    deadline_s = 300.0 + 0.5 * n
    rep = Report(
        "chaos",
        mode,
        params={
            "requests": n,
            "clients": c,
            "seed": seed,
            "chaos_interval_s": interval,
            "pool_size": POOL_SIZE,
            "spares": SPARES,
            "sessions": len(SESSIONS),
            "heartbeat": f"{HEARTBEAT_S:g} s x {HEARTBEAT_MISSES}",
            "exec_timeout_s": EXEC_TIMEOUT_S,
            "short_timeout_s": SHORT_TIMEOUT_S,
            "max_output_bytes": MAX_OUTPUT_BYTES,
            "memory_limit_mb": MEMORY_LIMIT_MB,
            "session_idle_timeout_s": SESSION_IDLE_S,
            "hang_s": HANG_S,
            "deadline_s": deadline_s,
            "kinds": {k.name: k.weight for k in KINDS},
            "chaos_actions": CHAOS_ACTIONS,
        },
    )
    plan = make_plan(n, seed)
    with runtime_dir("c") as tmp:
        cfg_path, rt = write_config(tmp)
        ledger = tmp / "ledger"
        ledger.touch()
        log_path = tmp / "run.log"
        try:
            facts = await _soak(cfg_path, rt, ledger, log_path, plan, c, seed, interval, deadline_s)
        except BaseException:
            _keep(tmp, "failed")
            raise
        facts["audit"] = audit(
            facts["sent"],
            facts["outcomes"],
            facts["extra_outcomes"],
            parse_ledger(ledger.read_text()),
        )
        _fill(rep, facts)
        if rep.extra["violations"]:
            rep.notes.append(f"files kept for analysis: {_keep(tmp, 'violations')}")
    return rep


def _keep(tmp: Path, why: str) -> str:
    dest = Path(tempfile.mkdtemp(prefix=f"kernelsup-chaos-{why}-"))
    for name in ("chaos.toml", "ledger", "run.log"):
        with contextlib.suppress(OSError):
            shutil.copy(tmp / name, dest / name)
    return str(dest)


async def _soak(
    cfg_path: Path,
    rt: Path,
    ledger: Path,
    log_path: Path,
    plan: list[Planned],
    n_clients: int,
    seed: int,
    interval: float,
    deadline_s: float,
) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "warmup_requests": 0,
        "warmup_leaked": [],
        "leaked": [],
        "fds_start": None,
        "rss_start": None,
        "fds_end": None,
        "rss_end": None,
        "deadline_hit": False,
        "main_s": 0.0,
        "pending": [],
        "server_stats": {},
        "kernels_end": [],
        "stacks": "",
        "rss_launch": None,
        "main_window": None,
    }
    async with serve(cfg_path, rt, log_path) as served:
        async with contextlib.AsyncExitStack() as stack:
            control = await stack.enter_async_context(kernelsup.connect(cfg_path))
            clients = [
                await stack.enter_async_context(kernelsup.connect(cfg_path))
                for _ in range(n_clients)
            ]
            soak = Soak(clients, control, ledger, rt, served.pid)
            async with trio.open_nursery() as observers:
                await observers.start(soak.watch)
                observers.start_soon(soak.sample)
                try:
                    await _phases(soak, plan, seed, interval, deadline_s, facts)
                except KernelsupError as exc:  # a status or close_session call failed
                    soak.fail(f"control call: {exc.describe()}")
                if soak.broken:
                    facts["stacks"] = await _dump_stacks(served.pid, log_path)
                observers.cancel_scope.cancel()
        if not soak.broken:
            log("chaos: SIGTERM to kernelsup run")
            await served.terminate(rt)
    facts.update(
        sent=soak.sent,
        outcomes=soak.outcomes,
        extra_outcomes=soak.extra_outcomes,
        actions=dict(soak.actions),
        exits=dict(soak.exits),
        events=dict(soak.events),
        restarts=dict(soak.restarts),
        events_dropped=soak.events_dropped,
        samples=soak.samples,
        exit_code=served.exit_code,
        left=served.left_after_stop,
        escaped=served.escaped_after_stop,
        broken=soak.broken,
    )
    return facts


async def _phases(
    soak: Soak,
    plan: list[Planned],
    seed: int,
    interval: float,
    deadline_s: float,
    facts: dict[str, Any],
) -> None:
    """Warm up, take the first footprint, run the plan, take the last one. Stops early
    (leaving the facts not measured at None) if the supervisor stops answering."""
    facts["rss_launch"] = soak.footprint()[1]
    warm = make_plan(max(WARMUP_MIN, int(len(plan) * WARMUP_SHARE)), seed + 1, prefix="w")
    log(f"chaos: warming up: every kind and chaos action once, then {len(warm)} requests")
    async with trio.open_nursery() as nursery:
        await _warm_up(soak, nursery)
    if not soak.broken:
        facts["deadline_hit"] = await _main_phase(soak, warm, seed + 1, interval, deadline_s)
    facts["warmup_requests"] = len(soak.sent)
    if soak.broken or facts["deadline_hit"]:
        return
    facts["warmup_leaked"] = await soak.quiet()
    facts["fds_start"], facts["rss_start"] = await _settle_fds(soak, None)
    t0 = time.monotonic()
    log(f"chaos: {len(plan)} requests from {len(soak.clients)} clients")
    facts["deadline_hit"] = await _main_phase(soak, plan, seed, interval, deadline_s)
    facts["main_s"] = time.monotonic() - t0
    facts["main_window"] = (t0 - soak.t0, time.monotonic() - soak.t0)
    facts["pending"] = sorted(soak.running)
    if soak.broken:
        return
    facts["leaked"] = await soak.quiet()
    facts["fds_end"], facts["rss_end"] = await _settle_fds(soak, facts["fds_start"])
    facts["server_stats"] = await soak.control.server_stats()
    facts["kernels_end"] = list((await soak.control.status()).kernels)


async def _dump_stacks(pid: int, log_path: Path) -> str:
    """An unresponsive supervisor: SIGABRT it so faulthandler (PYTHONFAULTHANDLER, set
    at its start) writes every thread's stack to its log; returns that part of the log."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGABRT)
    await trio.sleep(2.0)
    text = _tail(log_path, 20_000)
    at = text.find("Fatal Python error")
    return text[at:] if at >= 0 else "(no stack dump in the log)"


async def _main_phase(
    soak: Soak, plan: list[Planned], seed: int, interval: float, deadline_s: float
) -> bool:
    """Send the plan from every client while the chaos runs; True if the deadline hit."""
    shared = iter(plan)
    stop = trio.Event()
    with trio.move_on_after(deadline_s) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress, soak, len(plan))
            nursery.start_soon(_hang_watch, soak, scope)
            async with trio.open_nursery() as chaos:
                chaos.start_soon(soak.chaos, seed, interval, stop)
                async with trio.open_nursery() as senders:
                    for client in soak.clients:
                        senders.start_soon(soak.client_loop, client, shared)
                stop.set()  # the chaos task ends once its own requests have ended
                chaos.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT_S
            nursery.cancel_scope.cancel()
    return scope.cancelled_caught or bool(soak.running)


async def _hang_watch(soak: Soak, scope: trio.CancelScope) -> None:
    """A request waiting HANG_S with no outcome: the supervisor stopped answering (its
    clients wait for as long as its process exists). Ends the phase."""
    while True:
        await trio.sleep(1.0)
        if soak.running:
            rid, since = min(soak.running.items(), key=lambda item: item[1])
            if time.perf_counter() - since > HANG_S:
                soak.fail(f"request {rid} has waited {HANG_S:g} s with no outcome")
                scope.cancel()
                return


async def _progress(soak: Soak, total: int) -> None:
    t0, base = time.monotonic(), len(soak.outcomes)
    while True:
        await trio.sleep(30)
        done = len(soak.outcomes) - base
        log(
            f"chaos: {done}/{total} requests done in {time.monotonic() - t0:.0f} s; "
            f"{sum(soak.actions.values())} chaos actions; exits {dict(soak.exits)}"
        )


# --------------------------------------------------------------------------- the report
def _fill(rep: Report, f: dict[str, Any]) -> None:
    a: Audit = f["audit"]
    outcomes: dict[str, Outcome] = f["outcomes"]
    violations = a.violations()

    def check(
        name: str,
        value: float | None,
        target: str,
        met: bool,
        unit: str = "count",
        listed: bool = False,
    ) -> None:
        """A row; None means it could not be measured (the supervisor stopped answering).
        ``listed``: the audit already named this violation, with the request ids."""
        met = met and value is not None
        rep.row(
            name,
            unit,
            [] if value is None else [float(value)],
            target=target,
            met=met,
            anchor_note="" if value is not None else "not measured",
        )
        if not met and not listed:
            shown = "not measured" if value is None else f"{value:g}"
            violations.append(f"{name}: {shown} (target {target or 'a value'})")

    check("supervisor answered throughout", 0 if f["broken"] else 1, "1", not f["broken"])
    check(
        "requests sent (plan + warm-up + chaos)",
        a.submitted,
        "every one has an outcome",
        a.with_outcome == a.submitted,
        listed=True,
    )
    check("requests without an outcome (lost)", len(a.lost), "0", not a.lost, listed=True)
    check("requests run twice (ledger)", len(a.ran_twice), "0", not a.ran_twice, listed=True)
    check(
        "ok/error requests missing from the ledger",
        len(a.ran_not_in_ledger),
        "0",
        not a.ran_not_in_ledger,
        listed=True,
    )
    check(
        "rejected requests that ran, or ledger ids never sent",
        len(a.rejected_but_ran) + len(a.phantom),
        "0",
        not (a.rejected_but_ran or a.phantom),
        listed=True,
    )
    check(
        "ok results not the request's own",
        len(a.wrong_result),
        "0",
        not a.wrong_result,
        listed=True,
    )
    chaos_raised = {k: v for k, v in f["actions"].items() if " raised " in k}
    check(
        "client calls that raised",
        len(a.raised) + sum(chaos_raised.values()),
        "0",
        not (a.raised or chaos_raised),
        listed=True,
    )
    if chaos_raised:
        violations.append(f"chaos control calls that raised: {chaos_raised}")
    hogs = a.by_kind.get("memory", {})
    check(
        f"memory hogs not stopped by memory_limit_mb ({MEMORY_LIMIT_MB})",
        hogs.get("ok", 0),
        "0",
        not hogs.get("ok", 0),
    )
    by_status: dict[str, list[float]] = collections.defaultdict(list)
    for o in outcomes.values():
        by_status[o.status].append(ms(o.seconds))
    for status in sorted(by_status):
        rep.row(f"latency, status {status}", "ms", by_status[status])
    slowest = max(outcomes.values(), key=lambda o: o.seconds, default=None)
    check(
        "slowest request",
        ms(slowest.seconds) if slowest else 0.0,
        f"< {HANG_S:g} s (no hang)",
        not f["deadline_hit"] and (slowest is None or slowest.seconds < HANG_S),
        unit="ms",
    )
    exits = sum(f["exits"].values())
    rep.row("kernel exits (every cause)", "count", [float(exits)])
    rep.row("restarts scheduled", "count", [float(f["events"].get(ev.RESTART_SCHEDULED, 0))])
    leaked = [*f["warmup_leaked"], *f["leaked"]]
    check("session kernels left once every session closed", len(leaked), "0", not leaked)
    fds0, fds1, rss0, rss1 = f["fds_start"], f["fds_end"], f["rss_start"], f["rss_end"]
    both = None not in (fds0, fds1, rss0, rss1)
    check("supervisor open fds, after warm-up", fds0, "", True)
    check("supervisor open fds, at the end", fds1, "<= after warm-up", both and fds1 <= fds0)
    check("supervisor RSS, at launch (ready)", f["rss_launch"], "", True, unit="MB")
    check("supervisor RSS, after warm-up", rss0, "", True, unit="MB")
    change = _percent(rss0, rss1) if both else 0.0
    check(
        "supervisor RSS, at the end",
        rss1,
        "within 10 % of after warm-up",
        both and abs(change) <= 100 * RSS_TOLERANCE,
        unit="MB",
    )
    halves = None if f["broken"] else _rss_halves(f["samples"], f["main_window"])
    if halves is not None:
        rep.row("supervisor RSS growth, second half of the run", "MB", [halves[1] - halves[0]])
    internal = int(f["server_stats"].get("internal_errors", 0))
    check("control server internal errors", internal, "0", internal == 0)
    check(
        "`kernelsup run` exit status after SIGTERM",
        f["exit_code"] if f["exit_code"] is not None else -1,
        "0",
        f["exit_code"] == 0,
    )
    check("processes tethered to the runtime dir after it", len(f["left"]), "0", not f["left"])
    check(
        "escaped daemons (own session, no environment) after it",
        len(f["escaped"]),
        "0",
        not f["escaped"],
    )
    if f["deadline_hit"]:
        violations.append(
            f"the run hit its deadline; {len(f['pending'])} requests pending: {f['pending'][:10]}"
        )
    peak_rss = max((s[1] for s in f["samples"]), default=0.0)
    peak_fds = max((s[2] for s in f["samples"]), default=0)
    rep.extra.update(
        {
            "violations": violations,
            "outcomes": a.by_status,
            "outcomes_by_kind": a.by_kind,
            "outcomes_by_code": a.by_code,
            "state_lost_results": sum(1 for o in outcomes.values() if o.state_lost),
            "truncated_results": sum(1 for o in outcomes.values() if o.truncated_bytes),
            "ledger_lines": a.ledger_lines,
            "warmup_requests": f["warmup_requests"],
            "chaos_actions": f["actions"],
            "kernel_exits_by_cause": f["exits"],
            "restarts_by_cause": f["restarts"],
            "events": f["events"],
            "events_dropped": f["events_dropped"],
            "fds": {"start": fds0, "end": fds1, "peak": peak_fds},
            "rss_mb": {
                "start": _round(rss0),
                "end": _round(rss1),
                "peak": peak_rss,
                "change_pct": round(change, 2),
            },
            "unresponsive": f["broken"],
            "stacks": f["stacks"],
            "slowest": attrs.asdict(slowest) if slowest else None,
            "main_phase_s": round(f["main_s"], 1),
            "server_stats": f["server_stats"],
            "kernels_end": f["kernels_end"],
            "leaked_session_kernels": f["leaked"],
            "warmup_leaked": f["warmup_leaked"],
            "exit_code": f["exit_code"],
            "left_after_sigterm": f["left"],
            "escaped_after_sigterm": f["escaped"],
            "samples": f["samples"][:: max(1, len(f["samples"]) // 600)],
            "failures": [
                attrs.asdict(o)
                for o in outcomes.values()
                if o.status in ("raised",) or o.own_result is False
            ][:50],
        }
    )
    count = collections.Counter(p.rid[0] for p in f["sent"])
    rep.notes.append(
        f"{count['r']} planned requests in {f['main_s']:.0f} s "
        f"({count['r'] / max(f['main_s'], 1e-9):.1f}/s) from "
        f"{rep.params['clients']} clients, seed {rep.params['seed']}; before "
        f"them {count['k'] + count['w']} warm-up requests (every kind once, "
        f"then {count['w']} of the mix), and {count['x']} chaos requests "
        "(os._exit into a session)"
    )
    rep.notes.append(f"outcomes: {a.by_status}")
    rep.notes.append("outcomes by kind: " + "; ".join(f"{k} {v}" for k, v in a.by_kind.items()))
    rep.notes.append(f"outcomes by code (all but ok): {a.by_code}")
    rep.notes.append(
        f"chaos actions: {f['actions']}; kernel exits by cause: "
        f"{dict(sorted(f['exits'].items()))}; restarts by cause: "
        f"{dict(sorted(f['restarts'].items()))} (session kernels are replaced, "
        "not restarted; signal(15) and exit(0) are closed sessions)"
        + (f"; {f['events_dropped']} events missed (lagged)" if f["events_dropped"] else "")
    )
    rep.notes.append(
        f"supervisor fds {fds0} -> {fds1} (peak {peak_fds}); RSS at launch "
        f"{_round(f['rss_launch'], 1)} MB, after warm-up {_round(rss0, 1)} -> "
        f"end {_round(rss1, 1)} MB ({change:+.1f} %, peak {peak_rss:.1f} MB)"
        + (
            f"; median RSS over the run's 2nd quarter {halves[0]:.1f} MB, "
            f"last quarter {halves[1]:.1f} MB"
            if halves
            else ""
        )
    )
    if leaked:
        rep.notes.append(
            "kernels still bound to a session after every session was closed "
            "(killed before the footprint was taken): "
            + ", ".join(f"{k['id']} (session {k['session']})" for k in leaked)
        )
    if f["broken"]:
        rep.notes.append(
            f"the supervisor stopped answering: {f['broken']}; its stacks "
            f"(SIGABRT + faulthandler):\n{f['stacks']}"
        )
    if slowest is not None:
        rep.notes.append(
            f"slowest request: {slowest.rid} ({slowest.kind}) {slowest.status} "
            f"in {slowest.seconds:.2f} s"
        )
    if violations:
        rep.notes.append("INVARIANTS FAILED: " + "; ".join(violations))
    else:
        rep.notes.append("every invariant held")
