"""``kernelsup console``: an interactive console on a supervised kernel.

The console is a client like any other: its code runs in a session (``--session NAME``,
else a private one closed when the console leaves) of the supervisor ``kernelsup run``
serves for the config; when nothing serves it, in a supervisor embedded in this process
for the console's life (``--embedded`` asks for that outright), with a private runtime
directory, so it never meets a ``kernelsup run`` of the same config.

Built on prompt_toolkit rather than jupyter_console: jupyter_console drives one kernel
through jupyter_client's ``KernelClient`` on the kernel's own sockets, which would bypass
the supervisor (its sessions, restarts, limits and notices); what it adds on top of
prompt_toolkit (line editing, history, multi-line input) is prompt_toolkit's own, so the
console takes it from there and speaks to the supervisor through :class:`SyncClient`.

* Input: Enter runs the input once it is complete Python (``codeop``, as the REPL
  decides; an empty line ends an indented block; in a kernel of another language every
  Enter runs); Esc then Enter (or Alt-Enter) always adds a line. History is kept in
  ``$XDG_STATE_HOME/kernelsup/console_history`` (``~/.local/state``...).
* Output streams as the kernel prints it (a worker thread reads the stream; the main
  thread prints), with the terminal filter of ``exec``; rich output shows its
  ``text/plain`` or a placeholder naming its types; kernelsup's notices (state lost,
  output cut, ...) are printed as ``[kernelsup] ...``.
* Ctrl-C while code runs interrupts the session's kernel (the console stays; the code
  gets its KeyboardInterrupt); at the prompt it clears the input. Ctrl-D leaves, exit 0.
"""

from __future__ import annotations

import argparse
import codeop
import contextlib
import os
import queue
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kernelsup.cli.client_commands import _Console, _print_output
from kernelsup.cli.exits import Exit, fail
from kernelsup.control.sync_client import SyncClient
from kernelsup.core.codes import result_error
from kernelsup.core.config import Config, load_config
from kernelsup.core.errors import ConfigError, KernelsupError, Unreachable
from kernelsup.core.results import ExecuteResult, Output

# How long to wait for a running supervisor's hello before running embedded instead.
CONNECT_TIMEOUT_S = 5.0
# How long an embedded supervisor may take to start its kernels.
EMBEDDED_START_S = 300.0
# Outputs the reader thread may be ahead of the terminal by (each is bounded by the
# pool's max_output_bytes); past it the reader waits, so memory stays bounded.
OUTPUT_QUEUE = 256
_DONE = object()


def register(sub: Any) -> None:
    """Add ``console`` to ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "console",
        help="an interactive console on a supervised kernel",
        description="Run code interactively in a session of a running supervisor (or one "
        "embedded in this process). Enter runs a complete input, Esc Enter adds a line, "
        "Ctrl-C interrupts the code, Ctrl-D leaves.",
    )
    p.add_argument(
        "-c",
        "--config",
        default="supervisor.toml",
        help="the supervisor's config file (default ./supervisor.toml; none: embedded defaults)",
    )
    p.add_argument("--session", help="the session to use (kept open when the console leaves)")
    p.add_argument("--pool", help="the pool to run in (default: the first pool)")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="run a supervisor in this process even if one serves the config",
    )
    p.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    try:
        with _target(args) as (client, interrupter, where):
            return Console(client, interrupter, where, args.session, args.pool).loop()
    except ConfigError as err:
        return fail(err)
    except KernelsupError as err:
        return fail(err, Exit.REJECTED)


# --------------------------------------------------------------------------- the target
@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[tuple[SyncClient, SyncClient, str]]:
    """Two clients of the supervisor (one streams, one interrupts) and where it runs."""
    exists = Path(args.config).is_file()
    config = load_config(args.config) if exists else None
    with contextlib.ExitStack() as stack:
        if config is not None and not args.embedded:
            try:
                client = stack.enter_context(SyncClient(config, timeout=CONNECT_TIMEOUT_S))
            except Unreachable:
                pass  # nothing serves it: run embedded
            else:
                other = stack.enter_context(SyncClient(config, timeout=CONNECT_TIMEOUT_S))
                yield client, other, f"the supervisor at {client.endpoint}"
                return
        embedded = stack.enter_context(_embedded(config or Config.default()))
        client = stack.enter_context(SyncClient(embedded, timeout=CONNECT_TIMEOUT_S))
        other = stack.enter_context(SyncClient(embedded, timeout=CONNECT_TIMEOUT_S))
        where = f"a supervisor embedded in this console ({embedded.supervisor.runtime_dir})"
        yield client, other, where


@contextlib.contextmanager
def _embedded(config: Config) -> Iterator[Config]:
    """A supervisor with its control endpoint, run by trio in a thread of this process
    (private runtime directory) until the block ends; yields the config to connect with."""
    import attrs
    import trio

    from kernelsup.api import open_supervisor
    from kernelsup.control import server

    runtime = tempfile.mkdtemp(prefix="kscon-")
    config = attrs.evolve(
        config, supervisor=attrs.evolve(config.supervisor, runtime_dir=runtime), source=None
    )
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with open_supervisor(config) as sup, trio.open_nursery() as nursery:
            await nursery.start(server.serve, sup, config)
            box["stop"] = nursery.cancel_scope.cancel
            box["token"] = trio.lowlevel.current_trio_token()
            ready.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the console's thread
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="kernelsup-embedded", daemon=True)
    thread.start()
    try:
        if not ready.wait(EMBEDDED_START_S) or "error" in box:
            raise box.get("error") or KernelsupError(
                f"the embedded supervisor did not start within {EMBEDDED_START_S:g} s"
            )
        yield config
    finally:
        if "token" in box:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(box["stop"], trio_token=box["token"])
        thread.join()
        shutil.rmtree(runtime, ignore_errors=True)


# --------------------------------------------------------------------------- the console
def input_complete(text: str) -> bool:
    """Whether Enter should run ``text`` (Python): it compiles as it is, or it is
    wrong in a way more lines cannot mend, or its last line is empty (a block ends)."""
    lines = text.split("\n")
    if len(lines) > 1 and not lines[-1].strip():
        return True
    try:
        code = codeop.compile_command(text, "<console>", "single")
    except (SyntaxError, ValueError, OverflowError):
        return True  # the kernel will say what is wrong
    if code is None:
        return False
    return len(lines) == 1 or not lines[-1][:1].isspace()


def _indent(text: str) -> str:
    """The indentation the next line gets: the current line's, one level more after ':'."""
    line = text.rsplit("\n", 1)[-1]
    indent = line[: len(line) - len(line.lstrip())]
    return indent + "    " if line.rstrip().endswith(":") else indent


def history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "kernelsup" / "console_history"


class Console:
    """The read-run-print loop; see the module docstring."""

    def __init__(
        self,
        client: SyncClient,
        interrupter: SyncClient,
        where: str,
        session: str | None,
        pool: str | None,
    ) -> None:
        self.client = client
        self.interrupter = interrupter
        self.where = where
        self.own_session = session is None
        self.session = session or f"console-{os.getpid()}-{secrets.token_hex(3)}"
        self.pool = pool
        self.count = 1

    def loop(self) -> int:
        from prompt_toolkit import PromptSession

        python = self._python()
        prompt: PromptSession[str] = PromptSession(
            history=self._history(),
            multiline=True,
            key_bindings=_bindings(input_complete if python else lambda _text: True),
            prompt_continuation=lambda width, _line, _soft: "...: ".rjust(width),
        )
        print(
            f"kernelsup console: session {self.session} on {self.where}\n"
            "Enter runs a complete input, Esc Enter adds a line, Ctrl-C interrupts, "
            "Ctrl-D leaves.",
            flush=True,
        )
        try:
            while True:
                try:
                    code = prompt.prompt(f"[{self.count}]: ")
                except KeyboardInterrupt:
                    continue  # the input is cleared
                except EOFError:
                    return Exit.OK
                if code.strip():
                    self.run(code)
                    self.count += 1
        finally:
            if self.own_session:
                with contextlib.suppress(KernelsupError):
                    self.interrupter.close_session(self.session)

    def _python(self) -> bool:
        pools = self.interrupter.status().pools
        chosen = [p for p in pools if self.pool is None or p.get("name") == self.pool]
        return not chosen or "python" in str(chosen[0].get("kernel", "")).lower()

    def _history(self) -> Any:
        from prompt_toolkit.history import FileHistory, InMemoryHistory

        path = history_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError:
            return InMemoryHistory()
        return FileHistory(str(path))

    def run(self, code: str) -> None:
        """Run one input; outputs print as they come; Ctrl-C interrupts the kernel."""
        items: queue.Queue[Any] = queue.Queue(OUTPUT_QUEUE)
        reader = threading.Thread(target=self._read, args=(code, items), daemon=True)
        reader.start()
        console = _Console()
        shown: set[str] = set()
        interrupts = 0
        try:
            while True:
                try:
                    item = items.get()
                    if item is _DONE:
                        return
                    self._show(console, item, shown)
                except KeyboardInterrupt:
                    interrupts += 1
                    self._interrupt(interrupts)
        finally:
            console.end()
            reader.join()

    def _show(self, console: _Console, item: Any, shown: set[str]) -> None:
        if isinstance(item, KernelsupError):
            console.err.write(item.describe() + "\n")
        elif isinstance(item, Output):
            if item.type == "notice" and item.name:
                shown.add(item.name)
            _print_output(console, item)
        elif isinstance(item, ExecuteResult):
            self._finish(console, item, shown)

    def _read(self, code: str, items: queue.Queue[Any]) -> None:
        try:
            for item in self.client.stream(code, session=self.session, pool=self.pool):
                items.put(item)
        except KernelsupError as err:
            items.put(err)
        finally:
            items.put(_DONE)

    def _interrupt(self, times: int) -> None:
        try:
            self.interrupter.interrupt(session=self.session)
        except KernelsupError as err:
            print(f"\n[kernelsup] could not interrupt: {err.describe()}", file=sys.stderr)
            return
        more = " (it ignores interrupts: `kernelsup restart` replaces it)" if times > 2 else ""
        print(f"\n[kernelsup] interrupted the kernel{more}", file=sys.stderr, flush=True)

    def _finish(self, console: _Console, result: ExecuteResult, shown: set[str]) -> None:
        # Notices only the final result holds (state lost or restored): say them too.
        for out in result.outputs:
            if out.type == "notice" and out.name not in shown:
                _print_output(console, out)
        if result.status == "error" and result.error is not None:
            if not any(o.type == "error" for o in result.outputs):
                tb = "\n".join(result.error.traceback)
                console.err.write((tb or f"{result.error.ename}: {result.error.evalue}") + "\n")
        elif result.status != "ok":
            err = result_error(result)
            if err is not None:
                console.err.write(err.describe() + "\n")


def _bindings(complete: Callable[[str], bool]) -> Any:
    from prompt_toolkit.key_binding import KeyBindings

    kb = KeyBindings()

    @kb.add("enter")
    def _enter(event: Any) -> None:
        buffer = event.current_buffer
        text = buffer.document.text
        if buffer.document.is_cursor_at_the_end and complete(text):
            buffer.validate_and_handle()
        else:
            buffer.insert_text("\n" + _indent(buffer.document.text_before_cursor))

    @kb.add("escape", "enter")
    def _newline(event: Any) -> None:
        buffer = event.current_buffer
        buffer.insert_text("\n" + _indent(buffer.document.text_before_cursor))

    return kb


__all__ = ["Console", "input_complete", "register"]
