"""A session's place and environment: the directory and variables each of its kernels has.

Theory of operation
-------------------
A session has a working directory (``cwd``) and its own variables (``env``, laid over the
pool's ``env``); every kernel it gets, the first and each replacement, has them before it
runs the session's first request. A session that names no directory gets a private one
(mode 0700) under the pool's ``workdir`` (default: ``sessions`` in the runtime
directory), removed when the session closes; a directory the user gave is never removed.

A kernel reaches a session in one of two ways (``Pool._bind``, tree/router.py):

* **adapted**: a warm spare (or an unused pool kernel) whose language is Python is given
  the session's place by a silent execute of :func:`adapt_code` (``os.chdir`` and
  ``os.environ.update``) before it is bound; ``silent`` keeps it out of the kernel's
  history and execution count, and it does not mark the kernel used (it ran no user's
  code). The kernel's process was started in the pool's directory with the pool's
  environment, so what read the environment at start-up (the interpreter's own
  ``PYTHON*`` variables) saw the pool's; ``os.environ``, ``os.getcwd()``, relative paths,
  ``subprocess`` and imports from the directory see the session's. Measured in
  bench/sessions.py: binding an adapted spare takes a few milliseconds, a fresh kernel a
  whole start.
* **fresh**: any other kernel (another language, no spare ready) is started for the
  session with ``cwd`` and ``env`` in its launch (:func:`session_options`), so the
  process itself has them. A session kernel restarted in place (``restart``) is started
  this way too.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import attrs

from kernelsup.adapters.runtime import open_user_dir, user_dir_for
from kernelsup.tree.kernel_handle import KernelHandle, KernelOptions

# How much of a session's name shows in its private directory's name (the rest of the
# name is random, so two sessions never share one).
_DIR_NAME_SHOWN = 40
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# The adapting execute is the supervisor's own code: a few system calls.
ADAPT_TIMEOUT_S = 30.0


def session_root(workdir: str, runtime_dir: Path, user: str = "") -> Path:
    """Where a pool's sessions' private directories go: its ``workdir``; else, for a pool
    that runs as another ``user``, that user's own directory (the one its kernels' files
    are in: the runtime directory is closed to it); else ``sessions`` in the runtime
    directory."""
    if workdir:
        return Path(workdir)
    if user:
        return user_dir_for(runtime_dir, pwd.getpwnam(user).pw_uid)
    return runtime_dir / "sessions"


def make_private_dir(root: Path, name: str, user: str = "") -> Path:
    """A new private directory (0700) for session ``name`` under ``root`` (made if need be),
    owned by ``user`` when the pool runs as one. Raises OSError when it cannot be made."""
    prefix = _UNSAFE.sub("_", name)[:_DIR_NAME_SHOWN] + "-"
    if user:  # in the user's own directory, where nothing is followed through a symlink
        pw = pwd.getpwnam(user)
        dir_fd = open_user_dir(root, pw.pw_uid)
        try:
            leaf = prefix + secrets.token_hex(4)
            os.mkdir(leaf, 0o700, dir_fd=dir_fd)
            os.chown(leaf, pw.pw_uid, pw.pw_gid, dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(dir_fd)
        return root / leaf
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()


def remove_private_dir(path: Path) -> None:
    """Remove a session's private directory and everything in it (blocking; errors are
    ignored: a file a kernel left open or made read-only must not fail a close)."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:  # rmtree recurses per level; a kernel can nest deeper than that
        subprocess.run(
            ["rm", "-rf", "--", str(path)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def session_options(base: KernelOptions, cwd: str, env: Mapping[str, str]) -> KernelOptions:
    """The options of a kernel started for a session: the pool's, in ``cwd``, with
    ``env`` laid over the pool's variables."""
    return attrs.evolve(base, cwd=cwd, env={**base.env, **env})


def adapt_code(cwd: str, env: Mapping[str, str]) -> str:
    """Python that gives a running kernel the session's directory and variables."""
    lines = ["import os as _kernelsup_os", f"_kernelsup_os.chdir({cwd!r})"]
    if env:
        lines.append(f"_kernelsup_os.environ.update({dict(env)!r})")
    lines.append("del _kernelsup_os")
    return "\n".join(lines)


def is_python(handle: KernelHandle) -> bool:
    """Whether the kernel says (in its ``kernel_info_reply``) that it runs Python."""
    info = handle.kernel_info.get("language_info")
    name = info.get("name") if isinstance(info, dict) else None
    return isinstance(name, str) and name.lower().startswith("python")


def cwd_problem(cwd: object) -> str | None:
    """Why ``cwd`` cannot be a session's directory, or None."""
    if not isinstance(cwd, str):
        return f"cwd must be a string, not {type(cwd).__name__}"
    if "\0" in cwd or not cwd:
        return "cwd must be a non-empty path without NUL"
    if not os.path.isabs(cwd):
        return f"cwd must be an absolute path (got {cwd[:200]!r})"
    if not os.path.isdir(cwd):
        return f"cwd {cwd[:200]!r} is not a directory"
    return None


__all__ = [
    "ADAPT_TIMEOUT_S",
    "adapt_code",
    "cwd_problem",
    "is_python",
    "make_private_dir",
    "remove_private_dir",
    "session_options",
    "session_root",
]
