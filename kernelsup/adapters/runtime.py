"""Where a supervisor keeps its private files: kernel connection files and sockets, the
control endpoint and its key.

The directory is derived from the config file's absolute path, so ``kernelsup run X`` and
``kernelsup exec -c X`` find each other without being told: it is
``$XDG_RUNTIME_DIR/kernelsup/<hash>`` (or ``/tmp/kernelsup-<uid>/<hash>``), mode 0700,
short enough for IPC socket paths. ``[supervisor] runtime_dir`` overrides it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import resource
import stat
from pathlib import Path

from kernelsup.core.config import Config


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create (or tighten) a directory only this user can enter: mode 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(p.stat().st_mode) != 0o700:
        p.chmod(0o700)
    return p


def _base() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "kernelsup"
    return Path("/tmp") / f"kernelsup-{os.getuid()}"


def runtime_dir_for(config: Config, *, create: bool = True) -> Path:
    """The supervisor's private runtime directory for this config."""
    if config.supervisor.runtime_dir:
        path = Path(config.supervisor.runtime_dir).expanduser()
        if config.source and not path.is_absolute():
            path = Path(config.source).parent / path
    else:
        origin = str(Path(config.source).resolve()) if config.source else f"pid-{os.getpid()}"
        digest = hashlib.sha256(origin.encode()).hexdigest()[:12]
        path = _base() / digest
    if create:
        private_dir(path.parent)
        private_dir(path)
    return path


# Some kernels copy an endpoint into a 32-byte buffer (xeus-python reads ZMQ_LAST_ENDPOINT
# that way, and fails with "Invalid argument" past it), so every IPC endpoint a kernel binds
# must fit in 31 bytes, as jupyter_client's own default ("ipc://kernel-ipc-1") does.
MAX_IPC_ENDPOINT = 31
# An IPC socket's base name inside its directory (a random hex string, `-N` is appended).
IPC_NAME_LEN = 6


def ipc_dir_for(runtime_dir: Path) -> Path:
    """Where a runtime directory's kernels put their IPC sockets: the runtime directory
    itself when its endpoints fit in :data:`MAX_IPC_ENDPOINT` bytes, else a short private
    directory ``/tmp/ks<hash>`` of its own (removed by the tether when the supervisor ends)."""
    if _ipc_fits(runtime_dir):
        return runtime_dir
    digest = hashlib.sha256(os.fsencode(os.path.abspath(runtime_dir))).hexdigest()[:8]
    return Path("/tmp") / f"ks{digest}"


def _ipc_fits(directory: Path) -> bool:
    longest = f"ipc://{directory}/{'x' * IPC_NAME_LEN}-9"
    return len(os.fsencode(longest)) <= MAX_IPC_ENDPOINT


def own_private_dir(path: Path) -> Path:
    """:func:`private_dir` for a path in a shared place (``/tmp``): refuse one that is a
    symlink or belongs to another user, instead of using it."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)  # not following a symlink someone else may have put there
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{path} exists and is not a directory of this user's")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


# The list, in the runtime directory, of the directories made for pools that run as
# another user (see user_dir); the tether removes them when the supervisor ends.
USER_DIRS_FILE = "user-dirs"


def user_dir_for(runtime_dir: Path, uid: int) -> Path:
    """Where the kernels of a pool that runs as user ``uid`` find their connection files
    and bind their IPC sockets: ``/tmp/ks<hash>`` of the runtime directory and the uid, as
    short as :func:`ipc_dir_for`'s (the runtime directory itself is the supervisor's
    alone, mode 0700, and stays so)."""
    digest = hashlib.sha256(os.fsencode(f"{os.path.abspath(runtime_dir)}\0{uid}")).hexdigest()
    return Path("/tmp") / f"ks{digest[:8]}"


def user_dir(runtime_dir: Path, uid: int, gid: int) -> Path:
    """:func:`user_dir_for`, made (or taken over) for that user: owned by it, mode 0700,
    listed in the runtime directory first so the tether removes it however we end.
    Refuses a symlink, or a directory someone else owns. Raises OSError."""
    path = user_dir_for(runtime_dir, uid)
    listed = runtime_dir / USER_DIRS_FILE
    if str(path) not in user_dirs(runtime_dir):
        with open(listed, "a") as f:
            f.write(f"{path}\n")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)  # a symlink: ELOOP
    try:
        st = os.fstat(fd)
        if st.st_uid not in (os.getuid(), uid):
            raise PermissionError(f"{path} exists and belongs to uid {st.st_uid}")
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def open_user_dir(path: Path, uid: int) -> int:
    """A descriptor of ``path``, a directory of user ``uid``'s, not reached through a
    symlink (the user may rename its own directory in /tmp and plant one): work inside it
    with ``dir_fd``. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    if os.fstat(fd).st_uid != uid:
        os.close(fd)
        raise PermissionError(f"{path} is not user {uid}'s directory")
    return fd


def user_dirs(runtime_dir: Path) -> list[str]:
    """The directories :func:`user_dir` made for this runtime directory (its list)."""
    try:
        lines = (runtime_dir / USER_DIRS_FILE).read_text().splitlines()
    except OSError:
        return []
    return [line for line in lines if re.fullmatch(r"/tmp/ks[0-9a-f]{8}", line)]


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value


@functools.cache
def keep_memory_flat() -> None:
    """Fix glibc's mmap threshold at its default, process-wide.

    glibc raises the threshold each time a large block is freed, after which large blocks
    come from the heap and stay in the process when freed. A kernel flooding output sends
    multi-megabyte iopub messages, so a supervisor's RSS grew by 40-70 MB during one flood
    and stayed there; with the threshold pinned those buffers go back to the OS (measured:
    growth under 1 MB). A no-op where the C library has no mallopt (musl, macOS).
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (as Go's runtime and
    systemd's services do: the soft default of 1024 dates from select()); kernels started
    afterwards inherit it. Returns (soft before, soft now). Where the hard limit is
    unlimited, the kernel's own ceiling (/proc/sys/fs/nr_open) is the target; if the
    limit cannot be raised it stays as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


def control_endpoint(config: Config) -> str:
    """The control endpoint: the configured one, else IPC in the runtime directory."""
    if config.server.endpoint:
        return config.server.endpoint
    return f"ipc://{runtime_dir_for(config, create=False) / 'control.sock'}"


def key_file(config: Config) -> Path:
    """The 0600 file holding the control endpoint's signing key."""
    return runtime_dir_for(config, create=False) / "control.key"
