"""Files in a session's directory (issue 15): put, get and list, moved by the supervisor
(no code runs in the kernel, so a busy kernel or another language changes nothing); paths
that lead outside the directory refused, sizes bounded. Real kernels in-process, and the
same calls through `kernelsup run` from the sync client.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import kernelsup
from kernelsup.core.errors import Rejected
from tests.helpers import FAST_POOL
from tests.supervisor_process import SupervisorProcess, supervisor

BINARY = bytes(range(256)) * 40  # not UTF-8, 10 KiB


def config(**supervisor: Any) -> kernelsup.Config:
    pool = {**FAST_POOL, "name": "default", "size": 1, "spares": 1}
    return kernelsup.Config.from_dict(
        {"supervisor": {"intensity": 1000, **supervisor}, "pool": [pool]}
    )


async def test_a_round_trip_the_kernel_sees(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(config(), runtime_dir=runtime_dir) as sup:
        s = (await sup.open_session("f")).name
        await sup.put_file(s, "data/blob.bin", BINARY)
        await sup.put_file(s, "notes.txt", "héllo\n".encode())
        assert await sup.list_files(s) == ["data/", "notes.txt"]
        assert await sup.list_files(s, "data") == ["blob.bin"]
        assert await sup.get_file(s, "data/blob.bin") == BINARY
        r = await sup.execute(
            "print(len(open('data/blob.bin','rb').read()), open('notes.txt').read(), end='')\n"
            "open('out.csv','w').write('a,b\\n1,2\\n')",
            session=s,
        )
        assert r.stdout == "10240 héllo\n", r
        assert await sup.get_file(s, "./out.csv") == b"a,b\n1,2\n"
        await sup.put_file(s, "notes.txt", b"replaced")  # an existing file is replaced
        assert await sup.get_file(s, "notes.txt") == b"replaced"


async def test_files_move_while_the_kernel_is_busy(runtime_dir: Path) -> None:
    """No code runs in the kernel for a file: a kernel busy with a long request (or of
    any language) is no obstacle."""
    async with kernelsup.open_supervisor(config(), runtime_dir=runtime_dir) as sup:
        await sup.open_session("busy")
        job = await sup.submit("import time; time.sleep(60)", session="busy")
        with trio.fail_after(10):
            await sup.put_file("busy", "in.txt", b"x")
            assert await sup.get_file("busy", "in.txt") == b"x"
        assert (await sup.job(job.id)).status in ("queued", "running")
        assert await sup.cancel(job.id)


async def test_paths_outside_the_session_are_refused(runtime_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    async with kernelsup.open_supervisor(config(), runtime_dir=runtime_dir) as sup:
        info = await sup.open_session("p")
        cwd = Path(info.cwd)
        # the session's own code makes symlinks that lead out
        os.symlink(outside, cwd / "out_dir")
        os.symlink(outside / "secret.txt", cwd / "out_file")
        os.symlink("../../..", cwd / "up")
        (cwd / "inside").mkdir()
        for call in (
            lambda: sup.get_file("p", "../x"),
            lambda: sup.get_file("p", "inside/../../x"),
            lambda: sup.get_file("p", "/etc/passwd"),
            lambda: sup.get_file("p", "out_dir/secret.txt"),
            lambda: sup.get_file("p", "out_file"),
            lambda: sup.get_file("p", "up/etc/passwd"),
            lambda: sup.put_file("p", "out_dir/new.txt", b"x"),
            lambda: sup.put_file("p", "out_file", b"overwritten"),
            lambda: sup.put_file("p", "/tmp/escape.txt", b"x"),
            lambda: sup.list_files("p", "out_dir"),
            lambda: sup.list_files("p", ".."),
        ):
            with pytest.raises(Rejected) as exc:
                await call()
            assert exc.value.code == "path_outside_session", exc.value
            assert "stay inside it" in exc.value.message
        assert (outside / "secret.txt").read_text() == "secret"
        assert not (outside / "new.txt").exists() and not Path("/tmp/escape.txt").exists()
        # a symlink that stays inside is followed by nothing: listed as a name
        assert "out_dir" in await sup.list_files("p")


async def test_sizes_are_bounded_and_bad_input_named(runtime_dir: Path) -> None:
    async with kernelsup.open_supervisor(
        config(max_file_bytes=1024), runtime_dir=runtime_dir
    ) as sup:
        await sup.open_session("z")
        with pytest.raises(Rejected) as exc:
            await sup.put_file("z", "big.bin", b"x" * 1025)
        assert exc.value.code == "file_too_large" and "1025" in exc.value.message
        await sup.put_file("z", "ok.bin", b"x" * 1024)
        r = await sup.execute("open('grown.bin', 'wb').write(b'y' * 5000)", session="z")
        assert r.status == "ok"
        with pytest.raises(Rejected) as exc:
            await sup.get_file("z", "grown.bin")
        assert exc.value.code == "file_too_large" and "5000" in exc.value.message
        for call, code, names in [
            (lambda: sup.get_file("z", "missing.txt"), "file_not_found", "missing.txt"),
            (lambda: sup.get_file("z", "."), "bad_request", "directory"),
            (lambda: sup.get_file("z", ""), "bad_request", "path"),
            (lambda: sup.put_file("z", "a\0b", b""), "bad_request", "NUL"),
            (lambda: sup.put_file("z", "t.txt", "text"), "bad_request", "bytes"),  # type: ignore[arg-type]
            (lambda: sup.get_file("nobody", "x"), "unknown_session", "nobody"),
        ]:
            with pytest.raises(Rejected) as exc:
                await call()
            assert exc.value.code == code and names in exc.value.message, exc.value


@pytest.fixture(scope="module")
def served() -> Iterator[SupervisorProcess]:
    yield from supervisor(size=1, spares=1)


def test_files_through_the_endpoint(served: SupervisorProcess) -> None:
    with kernelsup.SyncClient(served.config) as client:
        name = client.open_session().name
        client.put_file(name, "sub/blob.bin", BINARY)
        assert client.list_files(name) == ["sub/"]
        assert client.get_file(name, "sub/blob.bin") == BINARY
        r = client.execute("print(open('sub/blob.bin','rb').read()[:3])", session=name)
        assert r.stdout == "b'\\x00\\x01\\x02'\n"
        with pytest.raises(Rejected) as exc:
            client.get_file(name, "../../etc/passwd")
        assert exc.value.code == "path_outside_session"
        assert client.close_session(name)
