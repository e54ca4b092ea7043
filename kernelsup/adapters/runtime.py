"""Where a supervisor keeps its private files: kernel connection files and sockets, the
control endpoint and its key.

The directory is derived from the config file's absolute path, so ``kernelsup run X`` and
``kernelsup exec -c X`` find each other without being told: it is
``$XDG_RUNTIME_DIR/kernelsup/<hash>`` (or ``/tmp/kernelsup-<uid>/<hash>``), mode 0700,
short enough for IPC socket paths. ``[supervisor] runtime_dir`` overrides it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
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


def control_endpoint(config: Config) -> str:
    """The control endpoint: the configured one, else IPC in the runtime directory."""
    if config.server.endpoint:
        return config.server.endpoint
    return f"ipc://{runtime_dir_for(config, create=False) / 'control.sock'}"


def key_file(config: Config) -> Path:
    """The 0600 file holding the control endpoint's signing key."""
    return runtime_dir_for(config, create=False) / "control.key"
