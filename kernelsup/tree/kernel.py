"""The kernel actor: one supervised Jupyter kernel process.

Theory of operation
-------------------
``run_kernel`` owns one kernel process for its whole life and returns (or, before it was
ready, raises) why that life ended. Inside one nursery run:

* process watch   ``await proc.wait()`` on a pidfd: death is seen within a millisecond;
* heartbeat       a ping every half ``interval``, each waiting at most that long; no reply
                  for ``misses * interval`` means the process is frozen (SIGSTOP, a stuck
                  native call); with ``memory_limit_mb``, a memory watch beside it (both in
                  watchdogs.py);
* readers         one task per socket (shell, iopub, control) parses every message; shell
                  replies wake the waiter for their msg_id; iopub output goes to the request
                  whose msg_id is its parent; whatever fails to parse or verify is dropped
                  (and counted, on iopub), and the kernel is left alone;
* executor        takes one request at a time from the inbox (an unbuffered channel, so a
                  request is either taken by the executor or was never started);
* shutdown ladder shutdown_request -> grace -> SIGTERM to the group -> term_timeout ->
                  SIGKILL to the group.

The first terminal event (exit, missed heartbeats, a kill we decided on, the end of the
ladder) records the exit cause and cancels the nursery. Cleanup then runs shielded and
bounded: the process group is SIGKILLed and the leader reaped, the request in flight is
answered ``died`` with the cause (or ``cancelled`` on our own shutdown), the inbox is closed
so queued callers learn the kernel is gone, and the files are removed.

When a request is finished, and what its result says, is decided by
``core/execution.py``; the executor does the waiting. Once the first half of a finish
(reply or idle) is in, the other is awaited at most ``LATE_HALF_S``. ``timeout`` is a
wall-clock deadline from the moment the request is sent to the (idle) kernel; output never
extends it. At the deadline (or when the caller cancels) the kernel is interrupted and given
``interrupt_grace`` to finish; failing that it is killed and the request reports
``kernel_restarted`` and ``state_lost``. Code is never replayed.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import trio
import zmq
from zmq.utils.monitor import parse_monitor_message

from kernelsup.adapters import zmqio
from kernelsup.adapters.containment import Limits, Unit
from kernelsup.adapters.launch import LaunchPlan, plan_launch
from kernelsup.adapters.runtime import keep_memory_flat
from kernelsup.adapters.started import EXEC, Launcher, StartedKernel
from kernelsup.core.errors import KernelStartError
from kernelsup.core.execution import Execution, MessageNumbers
from kernelsup.core.outputs import OutputCollector, message_limit, strip_ansi
from kernelsup.core.results import ExecuteResult, ExitCause, Output
from kernelsup.core.slot import KernelState
from kernelsup.core.wire import Message, Wire, WireError
from kernelsup.tree.kernel_handle import (
    HEARTBEAT_MAXMSGSIZE,
    HEARTBEAT_RCVHWM,
    ActorStats,
    ExecuteRequest,
    KernelHandle,
    KernelOptions,
    message_cap,
)
from kernelsup.tree.watchdogs import watch_heartbeat, watch_memory

# How long to wait for the late half of a finished request (reply or idle), see top.
LATE_HALF_S = 3.0
# How often to repeat kernel_info_request while waiting for the iopub subscription to
# be confirmed (a SUB that connects late silently misses messages). Short: a forked
# kernel answers within milliseconds, and each probe is one small request.
IOPUB_PROBE_INTERVAL_S = 0.01
# Upper bound on killing and reaping during cleanup; SIGKILL cannot be ignored, so this
# only guards against a process stuck in uninterruptible sleep.
REAP_TIMEOUT_S = 10.0
# After a kernel's exit, how long its last words may take to come through its output pipe
# (the pipe ends at once unless something that escaped its process group holds it).
OUTPUT_END_S = 1.0


# The channels reopened when zmq drops the kernel's end (see _reopen_dropped). Not the
# heartbeat (a kernel that floods it is frozen as far as we can tell: it is restarted) or
# control (interrupts and shutdowns fall back to signals); each reopened channel costs a
# monitor socket pair, two more descriptors per kernel.
REOPENED = ("shell", "iopub")
# How long after a disconnect zmq has to show it is reconnecting by itself (it does so at
# once: see _reopen_dropped) before we take the disconnect for a refused message.
RECONNECT_WAIT_S = 1.0


@attrs.define(eq=False)
class _Running:
    """The request in flight: its bookkeeping, and the events the executor waits on."""

    request: ExecuteRequest
    execution: Execution
    got_reply: trio.Event = attrs.field(factory=trio.Event)
    got_idle: trio.Event = attrs.field(factory=trio.Event)
    got_either: trio.Event = attrs.field(factory=trio.Event)
    interrupted: bool = False  # we interrupted the kernel while it ran (for any reason)


class KernelActor:
    def __init__(
        self,
        kernel_id: str,
        options: KernelOptions,
        runtime_dir: Path,
        on_state: Callable[[KernelState], None] | None = None,
        on_exit: Callable[[ExitCause], None] | None = None,
        launcher: Launcher = EXEC,
    ) -> None:
        self.kernel_id = kernel_id
        self.launcher = launcher
        self.options = options
        self.runtime_dir = runtime_dir
        self._state: KernelState = "starting"
        self._on_state = on_state
        self._on_exit = on_exit
        self.stats = ActorStats()
        self.proc: StartedKernel | None = None
        self.kernel_info: dict[str, Any] = {}
        self.cause: ExitCause | None = None
        self.stop_requested = trio.Event()
        # Unbuffered: a request is either taken by the executor or it never started.
        self.inbox_send, self.inbox = trio.open_memory_channel[ExecuteRequest](0)
        self._nursery: trio.Nursery | None = None
        self._running: _Running | None = None
        self._waiters: dict[str, tuple[trio.Event, list[Message]]] = {}
        self._iopub_seen = trio.Event()
        self._output_done = trio.Event()  # the kernel's stdout/stderr pipe is at its end
        self._wire: Wire | None = None
        self._sockets: dict[str, zmqio.Socket] = {}
        self._monitors: dict[str, zmqio.Socket] = {}  # see _reopen_dropped
        # Lost-message detection, see core/execution.py.
        self._numbers = MessageNumbers()

    @property
    def state(self) -> KernelState:
        return self._state

    @state.setter
    def state(self, value: KernelState) -> None:
        if value != self._state:
            self._state = value
            if self._on_state is not None:
                self._on_state(value)

    def finish(self, cause: ExitCause) -> None:
        """Record the first terminal cause and stop every child task. ``on_exit`` hears
        of it now, before the clean-up (killing the group, reaping) has run."""
        if self.cause is None:
            self.cause = cause
            if self._state not in ("starting", "exited"):
                self.state = "stopping"
            if self._on_exit is not None:
                self._on_exit(cause)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------- main body
    async def run(self, task_status: trio.TaskStatus[KernelHandle]) -> ExitCause:
        keep_memory_flat()
        opts = self.options
        plan = plan_launch(
            self.kernel_id,
            opts.kernel_name,
            self.runtime_dir,
            transport=opts.transport,
            extra_env=opts.env,
            interrupt_mode=opts.interrupt_mode,
            cwd=opts.cwd,
            user=opts.user,
        )
        # Signatures are verified, but no replay history is kept: these sockets are our
        # connections to ones the kernel bound in our private directory, so only the
        # kernel (which holds the key and runs as us) can send on them. A full history
        # cost 550 KB per long-lived kernel (measured in the chaos soak's RSS).
        self._wire = Wire(plan.connection.key, plan.connection.signature_scheme, replay_window=0)
        unit = self._make_unit(plan)
        self.proc, output = await self.launcher.start(plan, unit)
        started = False
        try:
            try:
                self._open_sockets()
            except (OSError, zmq.ZMQError) as exc:  # out of descriptors, say
                self.finish(ExitCause("start_failure", detail=f"cannot open its sockets: {exc}"))
                raise _NoSockets from None
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._drain, output)
                nursery.start_soon(self._watch_process)
                nursery.start_soon(self._shell_reader)
                nursery.start_soon(self._iopub_reader)
                nursery.start_soon(self._control_reader)
                for channel in REOPENED:
                    nursery.start_soon(self._reopen_dropped, channel)
                with trio.move_on_after(opts.start_timeout) as start_scope:
                    await self._handshake()
                    nursery.start_soon(self._heartbeat)
                    if opts.memory_limit_mb > 0 and not self.proc.unit.enforces_memory_limit:
                        # Only where no memory cgroup holds the limit: the watch sums its
                        # members' resident memory, counting pages they share once each,
                        # so beside a cgroup it killed the whole kernel where the OOM
                        # killer would have taken only the command that wanted too much.
                        nursery.start_soon(self._memory_watch)
                    await self._run_startup_code()
                if start_scope.cancelled_caught:
                    self.finish(
                        ExitCause(
                            "start_timeout",
                            detail=f"not ready within start_timeout = {opts.start_timeout:g} s",
                        )
                    )
                else:
                    self.state = "idle"
                    started = True
                    nursery.start_soon(self._executor)
                    nursery.start_soon(self._shutdown_ladder)
                    task_status.started(KernelHandle(self))
        except _NoSockets:
            pass  # a start failure: cleaned up and reported below
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup()
        assert self.cause is not None
        if not started:
            kind = self.cause.kind if self.cause.kind == "start_timeout" else "start_failure"
            cause = attrs.evolve(self.cause, kind=kind)
            tail = self.proc.output_tail()
            # The reason first: how the process ended (with what it wrote last, for an
            # exit status), or the failing start-up code's exception and traceback.
            reason = cause.describe()
            if self.cause.code is not None or self.cause.signal is not None:
                reason = f"the kernel process ended: {reason}"
            if cause.detail:
                reason += f": {cause.detail}"
            if kind == "start_timeout" and tail:
                reason += f"; its output ended: {tail}"
            if plan.connection.transport == "ipc" and not self.kernel_info:
                reason += IPC_HINT
            raise KernelStartError(
                f"kernel {self.kernel_id} failed to start: {reason}",
                code=kind,
                kernel_id=self.kernel_id,
                cause=cause,
                output_tail=tail,
            )
        return self.cause

    async def _cleanup(self) -> None:
        assert self.proc is not None
        self.state = "exited"
        if self.cause is None:  # cancelled from outside: the supervisor is going away
            self.cause = ExitCause("normal", detail="supervisor stopped")
        with trio.move_on_after(REAP_TIMEOUT_S):
            await self.proc.kill_and_reap()
        lost = getattr(self.proc, "lost", None)  # see _watch_process
        if isinstance(lost, ExitCause) and self.cause.kind == "heartbeat":
            self.cause = lost  # the heartbeat stopped because the node or host went
        rc = self.proc.returncode
        if (
            self.cause.code is None
            and self.cause.signal is None
            and rc is not None
            and self.cause.kind == "failure"
        ):
            self.cause = attrs.evolve(
                self.cause, code=rc if rc >= 0 else None, signal=-rc if rc < 0 else None
            )
        if self._running is not None:
            run = self._running
            run.request.deliver(
                self._end(run).died_result(
                    self.cause,
                    shut_down=self.stop_requested.is_set(),
                    kernel_id=self.kernel_id,
                    now=trio.current_time(),
                )
            )
        self.inbox.close()
        for channel, monitor in self._monitors.items():
            with contextlib.suppress(zmq.ZMQError):
                self._sockets[channel].zmq.disable_monitor()
            monitor.close()
        for sock in self._sockets.values():
            sock.close()
        self.proc.cleanup_files()

    # ------------------------------------------------------------------- sockets
    def _open_sockets(self) -> None:
        assert self.proc is not None
        conn = self.proc.plan.connection
        ctx = zmqio.context()
        kinds = {"shell": zmq.DEALER, "control": zmq.DEALER, "iopub": zmq.SUB, "hb": zmq.DEALER}
        cap = message_cap(self.options.max_output_bytes)
        for channel, kind in kinds.items():
            raw = ctx.socket(kind)
            raw.setsockopt(zmq.LINGER, 0)
            if channel == "hb":
                raw.setsockopt(zmq.MAXMSGSIZE, HEARTBEAT_MAXMSGSIZE)
                raw.setsockopt(zmq.RCVHWM, HEARTBEAT_RCVHWM)
            else:
                raw.setsockopt(zmq.MAXMSGSIZE, cap)
            if kind == zmq.SUB:
                raw.setsockopt(zmq.RCVHWM, self.options.iopub_rcvhwm)
                raw.setsockopt(zmq.SUBSCRIBE, b"")
            raw.connect(conn.endpoint(channel))
            self._sockets[channel] = zmqio.Socket(raw)
        for channel in REOPENED:
            monitor = self._sockets[channel].zmq.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
            )
            self._monitors[channel] = zmqio.Socket(monitor)

    async def _send(
        self, channel: str, msg_type: str, content: dict[str, Any] | None = None
    ) -> str:
        assert self._wire is not None
        msg_id, frames = self._wire.build(msg_type, content)
        await self._sockets[channel].send_multipart(frames)
        return msg_id

    def _expect(self, msg_id: str) -> tuple[trio.Event, list[Message]]:
        waiter: tuple[trio.Event, list[Message]] = (trio.Event(), [])
        self._waiters[msg_id] = waiter
        return waiter

    async def _request(
        self, channel: str, msg_type: str, content: dict[str, Any] | None = None
    ) -> Message:
        assert self._wire is not None
        msg_id, frames = self._wire.build(msg_type, content)
        event, box = self._expect(msg_id)
        try:
            await self._sockets[channel].send_multipart(frames)
            await event.wait()
            return box[0]
        finally:
            self._waiters.pop(msg_id, None)

    # ------------------------------------------------------------------- readers
    async def _read(self, channel: str) -> Message | None:
        assert self._wire is not None
        frames = await self._sockets[channel].recv_multipart()
        try:
            # A message too big for any request's budget is not decoded (core/wire.py):
            # it comes back with ``oversized`` set (a stream's text with its head and
            # tail), and the frames are freed on return.
            budget = self.options.max_output_bytes
            limit = message_limit(budget)
            run = self._running
            if run is not None and run.request.message_bytes > limit:
                limit = run.request.message_bytes  # a job's spool wants its output whole
            msg = self._wire.parse(frames, max_bytes=limit, keep=budget - budget // 2)
        except WireError:
            if channel == "iopub":
                self.stats.iopub_dropped += 1
            return None
        n = self._numbers.take(msg.msg_id)
        if n is not None and self._running is not None:
            self._running.execution.count(n, msg)
        return msg

    async def _shell_reader(self) -> None:
        while True:
            msg = await self._read("shell")
            if msg is None:
                continue
            if msg.msg_type == "kernel_info_reply":
                self.kernel_info = msg.content
            run = self._running
            if run is not None and msg.parent_id == run.execution.msg_id:
                run.execution.take_reply(msg)
                run.got_reply.set()
                run.got_either.set()
            elif msg.parent_id in self._waiters:
                event, box = self._waiters[msg.parent_id]
                box.append(msg)
                event.set()
            # else: a late reply nobody waits for any more (a repeated kernel_info probe's)

    async def _control_reader(self) -> None:
        while True:
            await self._read("control")  # replies to interrupt/shutdown: nothing to do

    async def _iopub_reader(self) -> None:
        while True:
            msg = await self._read("iopub")
            if msg is None:
                continue
            self._iopub_seen.set()
            run = self._running
            if run is None or msg.parent_id != run.execution.msg_id:
                continue
            out = run.execution.take_iopub(msg)
            if run.execution.idle:
                run.got_idle.set()
                run.got_either.set()
            if out is not None and run.request.on_output is not None:
                run.request.on_output(out)

    async def _reopen_dropped(self, channel: str) -> None:
        """Reconnect ``channel`` when zmq drops the kernel's end of it for good.

        zmq drops a peer that sends a frame over MAXMSGSIZE (``message_cap``) and, unlike
        after any other disconnect, never reconnects it: without this, one oversized print
        would leave every later request of the kernel without output. The two are told
        apart by what zmq does next: after a peer that went away (the kernel died) it
        schedules a reconnect at once (``EVENT_CONNECT_RETRIED``, measured well under a
        millisecond later); after a refused message, nothing. Only then is the endpoint
        disconnected and connected again (disconnecting a live pipe can abort libzmq in
        fq.cpp, so never otherwise), and the running request told.
        """
        assert self.proc is not None
        endpoint = self.proc.plan.connection.endpoint(channel)
        cap = message_cap(self.options.max_output_bytes)
        monitor = self._monitors[channel]
        raw = self._sockets[channel].zmq
        while True:
            frames = await monitor.recv_multipart()
            if parse_monitor_message(frames)["event"] != zmq.EVENT_DISCONNECTED:
                continue
            with trio.move_on_after(RECONNECT_WAIT_S):
                await monitor.recv_multipart()  # zmq reconnects by itself
                continue
            if monitor.zmq.poll(0) or self.proc.returncode is not None:
                continue  # its retry came as our wait ran out; or the kernel is gone
            raw.disconnect(endpoint)
            raw.connect(endpoint)
            self.stats.reconnects += 1
            run = self._running
            if run is not None:
                run.execution.link_dropped(channel, cap)

    # ------------------------------------------------------------------- lifecycle
    def _make_unit(self, plan: LaunchPlan) -> Unit:
        opts = self.options
        limits = Limits(opts.memory_limit_mb, opts.pids_limit, opts.cpu_limit)
        try:
            return Unit.create(
                opts.containment, self.runtime_dir, plan.connection_file.stem, limits
            )
        except OSError as exc:
            plan.connection_file.unlink(missing_ok=True)
            raise KernelStartError(
                f"kernel {self.kernel_id} failed to start: cannot contain it "
                f"(containment = {opts.containment!r}): {exc}",
                code="start_failure",
                kernel_id=self.kernel_id,
            ) from None

    async def _drain(self, output: trio.abc.ReceiveStream) -> None:
        assert self.proc is not None
        try:
            await self.proc.drain_output(output)
        finally:
            self._output_done.set()

    async def _watch_process(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        # A kernel on a Ray node (adapters/ray_host.py) can be lost with its host or node:
        # that is its cause, not the SIGKILL its status stands for.
        lost = getattr(self.proc, "lost", None)
        if isinstance(lost, ExitCause):
            self.finish(lost)
            return
        if code == -signal.SIGKILL and self.proc.unit.oom_kills():
            # The cgroup's memory limit at work: the kernel's OOM killer chose the kernel.
            self.finish(
                ExitCause(
                    "limit",
                    signal=signal.SIGKILL,
                    detail="killed by the OOM killer at memory_limit_mb = "
                    f"{self.options.memory_limit_mb}",
                )
            )
            return
        # A signal says what happened; the kernel's own last words help otherwise (an exit
        # status, or any exit before it was ready: they say why it could not start). Before
        # it was ready they are the reason, and the pipe may still hold them: its end comes
        # once the process and its group are gone (a process that escaped the group and
        # keeps it open is waited for at most OUTPUT_END_S). A ready kernel's death is
        # recorded at once, before its heartbeat can be taken for the cause.
        starting = self.state == "starting"
        tail = ""
        if code > 0 or (code == 0 and starting):
            if starting:
                with trio.move_on_after(OUTPUT_END_S):
                    await self._output_done.wait()
            tail = self.proc.output_tail()
        self.finish(
            ExitCause.from_returncode(code, requested=self.stop_requested.is_set(), detail=tail)
        )

    async def _handshake(self) -> None:
        """Ready = kernel_info_reply received and the iopub subscription confirmed."""
        reply = await self._request("shell", "kernel_info_request")
        self.kernel_info = reply.content
        while not self._iopub_seen.is_set():
            await self._send("shell", "kernel_info_request")
            with trio.move_on_after(IOPUB_PROBE_INTERVAL_S):
                await self._iopub_seen.wait()

    async def _run_startup_code(self) -> None:
        """Run the pool's ``startup_code`` silently (execution counts start at 1 for the
        user). With none, a Python kernel (by its ``kernel_info`` language) is warmed up with
        a silent ``pass``, so its first real request does not pay the interpreter's
        first-execution cost (about 7 ms, measured in bench/restart); other languages get
        no code at all: nothing here knows what is valid in them."""
        source = self.options.startup_code
        if not source and self.language.startswith("python"):
            source = "pass"
        if not source:
            return
        send, recv = trio.open_memory_channel[ExecuteResult](1)
        req = ExecuteRequest(source, reply=send, silent=True, timeout=self.options.start_timeout)
        result = await self._run_one(req)
        recv.close()
        if result.status != "ok":
            what = "startup_code" if self.options.startup_code else "the warm-up execute"
            self.finish(ExitCause("start_failure", detail=f"{what} failed: {_failure(result)}"))
            await trio.sleep_forever()

    @property
    def language(self) -> str:
        """The kernel's language as its ``kernel_info_reply`` says (lower case)."""
        info = self.kernel_info.get("language_info")
        name = info.get("name") if isinstance(info, dict) else None
        return name.lower() if isinstance(name, str) else ""

    async def _heartbeat(self) -> None:
        def missed() -> None:
            self.stats.heartbeat_misses += 1

        self.finish(
            await watch_heartbeat(
                self._sockets["hb"],
                self.options.heartbeat_interval,
                self.options.heartbeat_misses,
                missed,
            )
        )

    async def _memory_watch(self) -> None:
        assert self.proc is not None
        cause = await watch_memory(self.proc.unit.memory_bytes, self.options.memory_limit_mb)
        if cause is not None:
            self.finish(cause)

    async def _shutdown_ladder(self) -> None:
        assert self.proc is not None
        await self.stop_requested.wait()
        self.state = "stopping"
        self.proc.unit.remember()  # its descendants, before its exit hands them to init
        if self._running is not None:
            self._running.request.cancel()
        await self._send("control", "shutdown_request", {"restart": False})
        proc = self.proc
        with trio.move_on_after(self.options.shutdown_grace):
            await proc.wait()
            return
        proc.signal_group(signal.SIGTERM)
        with trio.move_on_after(self.options.term_timeout):
            await proc.wait()
            return
        proc.signal_group(signal.SIGKILL)

    async def interrupt(self) -> None:
        """Interrupt what the kernel runs (a deadline, a cancel, or an operator); the
        request in flight then says ``interrupted``, whatever the kernel answers (kernels
        answer an interrupt as an error, an abort, or not at all)."""
        assert self.proc is not None
        if self._running is not None:
            self._running.interrupted = True
        if self.proc.plan.interrupt_mode == "signal":
            self.proc.signal_group(signal.SIGINT)
        else:
            await self._send("control", "interrupt_request")

    # ------------------------------------------------------------------- execute
    async def _executor(self) -> None:
        async for req in self.inbox:
            if self.stop_requested.is_set():
                req.deliver(_rejected("shutting_down", f"kernel {self.kernel_id} is stopping"))
                continue
            if req.cancel_requested:
                req.deliver(ExecuteResult("cancelled", code="cancelled", kernel_id=self.kernel_id))
                continue
            self.state = "busy"
            oom_before = self._oom_kills()
            result = await self._run_one(req)
            req.deliver(self._with_oom_notice(req, result, oom_before))
            assert self.proc is not None
            self.proc.unit.remember()
            if self.state == "busy":
                self.state = "idle"

    def _oom_kills(self) -> int:
        """OOM kills in the kernel's unit so far; only counted under a memory limit."""
        assert self.proc is not None
        return self.proc.unit.oom_kills() if self.options.memory_limit_mb > 0 else 0

    def _with_oom_notice(
        self, req: ExecuteRequest, result: ExecuteResult, before: int
    ) -> ExecuteResult:
        """The cgroup's OOM killer chose a process the kernel started (a command of a bash
        kernel, ``!python`` or a subprocess of a Python one), not the kernel, which lives
        on (its own death ends the request ``died``): the result says so in a
        ``memory_limit`` notice, streamed too, since the kernel may say nothing of it."""
        killed = self._oom_kills() - before
        if killed <= 0:
            return result
        what = "a process" if killed == 1 else f"{killed} processes"
        notice = Output(
            "notice",
            name="memory_limit",
            text=f"[kernelsup: the OOM killer killed {what} this kernel started, at "
            f"memory_limit_mb = {self.options.memory_limit_mb}; the kernel itself is alive]",
        )
        if req.on_output is not None:
            req.on_output(notice)
        return attrs.evolve(result, outputs=(*result.outputs, notice))

    async def _run_one(self, req: ExecuteRequest) -> ExecuteResult:
        assert self._wire is not None
        msg_id, frames = self._wire.build(
            "execute_request",
            {
                "code": req.code,
                "silent": req.silent,
                "store_history": not req.silent,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        run = _Running(
            req,
            Execution(
                msg_id,
                OutputCollector(self.options.max_output_bytes),
                started_at=trio.current_time(),
                baseline=self._numbers.highest,
            ),
        )
        self._running = run
        ex = run.execution
        deadline = ex.started_at + req.timeout if math.isfinite(req.timeout) else math.inf
        await self._sockets["shell"].send_multipart(frames)
        with trio.CancelScope(deadline=deadline) as req.scope:
            if req.cancel_requested:
                req.scope.cancel()
            await self._finished(run)
        req.scope = None
        if ex.finished(cancelled=req.cancel_requested):
            return self._end(run).result(
                ex.status(),
                kernel_id=self.kernel_id,
                now=trio.current_time(),
                interrupted=run.interrupted,
            )
        # Deadline passed or the caller cancelled: interrupt, then grace, then kill.
        status: Literal["timeout", "cancelled"] = "cancelled" if req.cancel_requested else "timeout"
        await self.interrupt()
        with trio.move_on_after(self.options.interrupt_grace):
            await self._finished(run)
        if ex.answered:
            return self._end(run).limit_result(
                status, req.timeout, kernel_id=self.kernel_id, now=trio.current_time()
            )
        result = self._end(run).limit_result(
            status,
            req.timeout,
            kernel_id=self.kernel_id,
            now=trio.current_time(),
            killed_after=self.options.interrupt_grace,
        )
        self.state = "stopping"
        req.deliver(result)
        self.finish(
            ExitCause("failure", detail=f"killed: request ignored interrupt after {status}")
        )
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def _finished(self, run: _Running) -> None:
        await run.got_either.wait()
        with trio.move_on_after(LATE_HALF_S):
            await run.got_reply.wait()
            await run.got_idle.wait()
        if not run.got_idle.is_set():
            self.stats.idle_missing += 1

    def _end(self, run: _Running) -> Execution:
        """The run is over: route no more messages to it, and count what it lost."""
        self._running = None
        self.stats.iopub_lost += run.execution.lost
        return run.execution


class _NoSockets(Exception):
    """The kernel's sockets could not be opened (the cause is already recorded)."""


# Said of a kernel that never answered kernel_info over IPC: some kernels listen on TCP only
# (or fail on IPC endpoints), and their own last words rarely name the transport.
IPC_HINT = (
    '; it never answered over IPC: if this kernel cannot use IPC sockets, set transport = "tcp" '
    "in its pool"
)
# How much of a failed startup_code's traceback goes into the start failure's reason.
STARTUP_TRACEBACK_CHARS = 4000


def _failure(result: ExecuteResult) -> str:
    """What went wrong in a start-up execute: the exception and its traceback (the end of
    it, ANSI colours stripped), else the status and message."""
    err = result.error
    if err is None:
        return f"{result.status}: {result.message}" if result.message else result.status
    head = f"{err.ename}: {err.evalue}" if err.ename else err.evalue or "an error"
    tb = strip_ansi("\n".join(err.traceback)).strip()
    if len(tb) > STARTUP_TRACEBACK_CHARS:
        tb = "..." + tb[-STARTUP_TRACEBACK_CHARS:]
    return f"{head}\n{tb}" if tb and tb != head else head


def _rejected(code: str, message: str) -> ExecuteResult:
    return ExecuteResult("rejected", code=code, message=message)


async def run_kernel(
    kernel_id: str,
    options: KernelOptions,
    runtime_dir: Path,
    *,
    on_state: Callable[[KernelState], None] | None = None,
    on_exit: Callable[[ExitCause], None] | None = None,
    launcher: Launcher = EXEC,
    task_status: trio.TaskStatus[KernelHandle] = trio.TASK_STATUS_IGNORED,
) -> ExitCause:
    """Run one kernel until it exits; return why.

    Start with ``handle = await nursery.start(run_kernel, ...)``: ``start`` returns once the
    kernel answered ``kernel_info`` with its iopub subscription confirmed (and
    ``startup_code`` ran), or raises :class:`KernelStartError` whose ``data["cause"]`` is a
    ``start_timeout`` or ``start_failure`` :class:`ExitCause`. Cancelling the task kills
    the kernel's process group at once; ``handle.shutdown()`` stops it gracefully.
    ``on_state`` is called synchronously on every state change (idle, busy, ...), and
    ``on_exit`` with the exit cause the moment it is known (before clean-up).
    ``launcher`` starts the process (adapters/started.py): exec by default.
    """
    actor = KernelActor(kernel_id, options, runtime_dir, on_state, on_exit, launcher)
    return await actor.run(task_status)


__all__ = ["run_kernel"]
