"""scripts/unasync.py: the blocking client is generated from the async one, and is current."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", ROOT / "scripts" / "unasync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


unasync = _load_script()


def test_the_generated_sync_client_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    """What CI runs: edit client.py without regenerating and this fails."""
    assert unasync.main(["--check"]) == 0, capsys.readouterr().err


def test_check_reports_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "sync_client.py"
    stale.write_text((ROOT / "kernelsup/control/sync_client.py").read_text() + "# edited\n")
    monkeypatch.setattr(unasync, "TARGET", stale)
    assert unasync.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "-# edited" in err and "is stale" in err
    assert stale.read_text().endswith("# edited\n")  # --check writes nothing
    assert unasync.main([]) == 0
    assert unasync.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("    async def f(self) -> None:\n", "    def f(self) -> None:\n"),
        ("        return await self._call(x)\n", "        return self._call(x)\n"),
        ("    async with a() as b, c:\n", "    with a() as b, c:\n"),
        ("    async for x in xs:\n", "    for x in xs:\n"),
        (") -> AsyncGenerator[StreamItem, None]:\n", ") -> Generator[StreamItem, None, None]:\n"),
        (
            "from collections.abc import AsyncGenerator, AsyncIterator\n",
            "from collections.abc import Generator, Iterator\n",
        ),
        ("    @asynccontextmanager\n", "    @contextmanager\n"),
        ("    def __aiter__(self) -> _Events:\n", "    def __iter__(self) -> _Events:\n"),
        ("    async def __anext__(self) -> Event:\n", "    def __next__(self) -> Event:\n"),
        ("        raise StopAsyncIteration\n", "        raise StopIteration\n"),
        ("    client: Client\n", "    client: SyncClient\n"),
        ("-> AsyncIterator[ClientSession]:\n", "-> Iterator[SyncSession]:\n"),
        ("raise ClientError('x')\n", "raise ClientError('x')\n"),  # a longer name stays
        ("    SyncClient(SyncTransport)\n", "    SyncClient(SyncTransport)\n"),  # idempotent
        ("    awaiting = await_all\n", "    awaiting = await_all\n"),  # names, not the keyword
    ],
)
def test_renames(line: str, expected: str) -> None:
    assert unasync.rename(line) == expected


SOURCE = """\
if True:  # ASYNC
    import trio
else:
    import time

class C:
    if True:  # ASYNC

        def __init__(self, io: int) -> None:
            self.io = io

    else:

        def __init__(self) -> None:
            self.io = 0

        def close(self) -> None:
            pass

    def f(self) -> None:
        if True:  # ASYNC
            print("async only")
        return None
"""

EXPECTED = """\
import time

class C:
    def __init__(self) -> None:
        self.io = 0

    def close(self) -> None:
        pass

    def f(self) -> None:
        return None
"""


def test_async_blocks_keep_only_their_else_branch() -> None:
    lines = SOURCE.splitlines(keepends=True)
    assert "".join(unasync.drop_async_blocks(lines)) == EXPECTED


def test_a_body_less_async_block_is_refused() -> None:
    with pytest.raises(unasync.UnasyncError):
        unasync.drop_async_blocks(["if True:  # ASYNC\n", "x = 1\n"])


def test_a_loop_that_only_reyields_becomes_yield_from() -> None:
    text = "    with s() as events:\n        for e in events:\n            yield e\n"
    assert unasync._REYIELD.sub(r"\1yield from \3\n", text) == (
        "    with s() as events:\n        yield from events\n"
    )
    kept = "    for e in events:\n        yield e.kind\n"  # not a plain re-yield
    assert unasync._REYIELD.sub(r"\1yield from \3\n", kept) == kept


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", ["sync_client", "sync_transport"])
def test_the_blocking_client_needs_no_event_loop_library(module: str) -> None:
    imported = _imports(ROOT / "kernelsup" / "control" / f"{module}.py")
    banned = {
        "trio",
        "sniffio",
        "asyncio",
        "zmq.asyncio",
        "kernelsup.adapters.zmqio",
        "kernelsup.control.async_transport",
    }
    assert not imported & banned
