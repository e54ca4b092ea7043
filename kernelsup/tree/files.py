"""Files in a session's directory: put, get, list. The supervisor moves the bytes itself
(no code runs in the kernel), so this works for a kernel of any language, busy or not.

Theory of operation
-------------------
A path is relative to the session's directory (its ``cwd``) and must stay inside it. It
is refused (``path_outside_session``) when it is absolute, has a ``..`` part, or goes
through a symlink (which could lead out, now or once the session's own code swaps it):
each step is opened relative to the one before with ``O_NOFOLLOW``, and the kernel's
view of what was opened (``/proc/self/fd``) must lie under the directory, so nothing
swapped in between a check and an open changes what is read or written. Sizes are bounded by
``max_file_bytes`` (``file_too_large``); a directory listing by ``MAX_LIST_ENTRIES``.
Everything here blocks: callers run it in a worker thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kernelsup.core.errors import Rejected

# Names one list_files call returns at most (a reply holds them all).
MAX_LIST_ENTRIES = 10_000
# The longest path accepted (bytes), as PATH_MAX less its NUL.
MAX_PATH_BYTES = 4095


def _outside(path: str, why: str) -> Rejected:
    return Rejected(
        f"path {path[:200]!r} {why}; paths are relative to the session's directory and "
        "stay inside it",
        code="path_outside_session",
        path=path[:200],
    )


def _parts(path: object) -> list[str]:
    """The path's parts, after the checks that need no file system."""
    if not isinstance(path, str):
        raise Rejected(f"path must be a string, not {type(path).__name__}", code="bad_request")
    if not path or "\0" in path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise Rejected(
            f"path must be 1 to {MAX_PATH_BYTES} bytes without NUL (got {path[:80]!r})",
            code="bad_request",
        )
    if os.path.isabs(path):
        raise _outside(path, "is absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _outside(path, "has a '..' part")
    return parts


def _inside(root: Path, fd: int, path: str) -> None:
    """Raises path_outside_session unless the open descriptor ``fd`` lies under ``root``."""
    real = os.readlink(f"/proc/self/fd/{fd}")
    if real != str(root) and not real.startswith(str(root).rstrip("/") + "/"):
        raise _outside(path, "leads outside through a symlink")


def _root(cwd: str) -> Path:
    return Path(os.path.realpath(cwd))


def _open_dir(root: Path, parts: list[str], path: str, *, create: bool) -> int:
    """A descriptor of the directory ``parts`` under ``root``, each step opened without
    following a symlink (made when ``create``)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                raise Rejected(f"no directory {path[:200]!r}", code="file_not_found") from None
            except (NotADirectoryError, OSError) as exc:
                if os.path.islink(os.path.join(f"/proc/self/fd/{fd}", part)):
                    raise _outside(path, "leads outside through a symlink") from None
                raise Rejected(
                    f"cannot open {path[:200]!r}: {exc.strerror or exc}", code="file_not_found"
                ) from None
            os.close(fd)
            fd = nxt
        _inside(root, fd, path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_file(cwd: str, path: str, flags: int, *, write: bool) -> tuple[Path, int]:
    """The session's real root and a descriptor of the file ``path`` under it, opened
    with ``flags`` and never through a symlink (for a write, its directories made)."""
    parts = _parts(path)
    if not parts:
        raise Rejected(
            f"path {path!r} names the session's directory, not a file", code="bad_request"
        )
    root = _root(cwd)
    dfd = _open_dir(root, parts[:-1], path, create=write)
    try:
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644, dir_fd=dfd)
        except FileNotFoundError:
            raise Rejected(f"no file {path[:200]!r}", code="file_not_found") from None
        except OSError as exc:
            if os.path.islink(os.path.join(f"/proc/self/fd/{dfd}", parts[-1])):
                raise _outside(path, "is a symlink") from None
            raise Rejected(
                f"cannot {'write' if write else 'read'} {path[:200]!r}: {exc.strerror or exc}",
                code="bad_request" if write else "file_not_found",
            ) from None
    finally:
        os.close(dfd)
    try:
        _inside(root, fd, path)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Rejected(
                f"{path[:200]!r} is not a regular file",
                code="bad_request" if write else "file_not_found",
            )
    except BaseException:
        os.close(fd)
        raise
    return root, fd


def put_file(cwd: str, path: str, data: bytes, max_bytes: int) -> int:
    """Write ``data`` to ``path`` under ``cwd`` (parents made, an existing file replaced);
    returns the size written."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Rejected(f"data must be bytes, not {type(data).__name__}", code="bad_request")
    if len(data) > max_bytes:
        raise Rejected(
            f"{len(data)} bytes is more than max_file_bytes = {max_bytes}",
            code="file_too_large",
            size=len(data),
        )
    _, fd = _open_file(cwd, path, os.O_WRONLY | os.O_CREAT, write=True)
    try:
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return len(data)


def get_file(cwd: str, path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` under ``cwd``."""
    _, fd = _open_file(cwd, path, os.O_RDONLY, write=False)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise Rejected(
                f"{path[:200]!r} holds {size} bytes, more than max_file_bytes = {max_bytes}",
                code="file_too_large",
                size=size,
            )
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # it grew while we read
                raise Rejected(
                    f"{path[:200]!r} grew past max_file_bytes = {max_bytes} while read",
                    code="file_too_large",
                )
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def list_files(cwd: str, path: str = ".") -> list[str]:
    """The names in directory ``path`` under ``cwd``, sorted; directories end with "/"."""
    parts = _parts(path) if path not in (".", "./") else []
    root = _root(cwd)
    fd = _open_dir(root, parts, path, create=False)
    names: list[str] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if len(names) >= MAX_LIST_ENTRIES:
                    raise Rejected(
                        f"{path[:200]!r} holds more than {MAX_LIST_ENTRIES} entries; list a "
                        "subdirectory",
                        code="bad_request",
                    )
                is_dir = entry.is_dir(follow_symlinks=False)
                names.append(entry.name + ("/" if is_dir else ""))
    finally:
        os.close(fd)
    return sorted(names)


__all__ = ["MAX_LIST_ENTRIES", "get_file", "list_files", "put_file"]
