"""Where a pool keeps its sessions' snapshots, and how one is taken or restored.

Theory of operation. A snapshot is taken inside the session's kernel by a silent request
(core/snapshots.py writes it, core/kernel_snapshot.py runs): the kernel pickles its user
namespace into a file this module named, under ``<runtime_dir>/snapshots/<session key>/``,
and leaves a JSON report beside it. The supervisor never unpickles anything: it only reads
the report. A restore is the same in reverse on the session's next kernel. Both run on the
session's own kernel, under the session's lock, so a snapshot never waits for, or blocks,
any other kernel.

Each session keeps its last ``KEEP`` snapshots; closing the session removes them.
Python kernels only (the kernel's ``kernel_info`` language): others are told
``checkpoint_unsupported``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import attrs
import trio

from kernelsup.core.errors import Rejected
from kernelsup.core.results import ExecuteResult, Output
from kernelsup.core.snapshots import (
    RestoreInfo,
    SnapshotInfo,
    failure,
    load_request,
    read_report,
    save_request,
)
from kernelsup.tree.kernel_handle import KernelHandle

KEEP = 3  # snapshots kept per session: the latest, and two to go back to
# A save or restore request may run this much longer than checkpoint_timeout: the request
# also compiles the shipped code and the kernel must answer (the save stops itself).
GRACE_S = 5.0


def is_python(handle: KernelHandle) -> bool:
    info = handle.kernel_info.get("language_info")
    name = info.get("name", "") if isinstance(info, dict) else ""
    return isinstance(name, str) and name.lower().startswith("python")


def _unsupported(session: str, handle: KernelHandle) -> Rejected:
    info = handle.kernel_info.get("language_info")
    language = info.get("name", "?") if isinstance(info, dict) else "?"
    return Rejected(
        f"session {session!r} runs a {language} kernel: snapshots are for Python kernels",
        code="checkpoint_unsupported",
    )


class Checkpoints:
    """A pool's snapshot store: one directory per session, the last KEEP snapshots each."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        timeout: float,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.timeout = timeout
        # A pool's `user`: its kernels write the snapshots, so each session's directory
        # is theirs (uid, gid); the root above it stays the supervisor's.
        self.owner = owner

    def dir_for(self, session: str) -> Path:
        # A hash: session names may hold any printable character, '/' and '..' too.
        key = hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        return self.root / key

    def ids(self, session: str) -> list[str]:
        """The session's snapshot ids, oldest first."""
        try:
            names = os.listdir(self.dir_for(session))
        except FileNotFoundError:
            return []
        ids = [n[: -len(".pkl")] for n in names if n.endswith(".pkl") and n.startswith("s")]
        return sorted(ids, key=_serial)

    def latest(self, session: str) -> str | None:
        ids = self.ids(session)
        return ids[-1] if ids else None

    def _next_id(self, session: str) -> str:
        ids = self.ids(session)
        last = _serial(ids[-1]) if ids else 0
        return f"s{last + 1}"

    async def take(self, handle: KernelHandle, session: str) -> SnapshotInfo:
        """Snapshot the session's namespace on its kernel. Raises Rejected (checkpoint_* codes)."""
        if not is_python(handle):
            raise _unsupported(session, handle)
        folder = self._make_dir(session)
        snap_id = self._next_id(session)
        path, report_path = folder / f"{snap_id}.pkl", folder / f"{snap_id}.save.json"
        code = save_request(str(path), str(report_path), self.max_bytes, self.timeout)
        report = await self._run(handle, code, report_path, session, "snapshot")
        why = failure(report, max_bytes=self.max_bytes, timeout=self.timeout)
        if why is not None:
            raise Rejected(f"no snapshot of session {session!r}: {why}", code="checkpoint_skipped")
        self._prune(session)
        return SnapshotInfo.from_report(report, id=snap_id, session=session, created=time.time())

    async def restore(
        self, handle: KernelHandle, session: str, snapshot_id: str | None = None
    ) -> RestoreInfo:
        """Load a snapshot (the latest by default) into the session's kernel."""
        if not is_python(handle):
            raise _unsupported(session, handle)
        snap_id = snapshot_id if snapshot_id is not None else self.latest(session)
        if snap_id is None or snap_id not in self.ids(session):
            raise Rejected(
                f"session {session!r} has no snapshot {snap_id!r}"
                if snap_id is not None
                else f"session {session!r} has no snapshot",
                code="unknown_snapshot",
            )
        folder = self.dir_for(session)
        report_path = folder / f"{snap_id}.load.json"
        code = load_request(str(folder / f"{snap_id}.pkl"), str(report_path))
        report = await self._run(handle, code, report_path, session, "restore")
        if report.get("ok") is not True:
            raise Rejected(
                f"snapshot {snap_id} of session {session!r} could not be loaded: "
                f"{report.get('error', 'no report')}",
                code="checkpoint_failed",
            )
        return RestoreInfo.from_report(report, session=session, snapshot_id=snap_id)

    async def _run(
        self, handle: KernelHandle, code: str, report_path: Path, session: str, what: str
    ) -> dict[str, object]:
        _remove(report_path)
        result = await handle.execute(code, timeout=self.timeout + GRACE_S, silent=True)
        try:
            if result.status != "ok":
                error = result.error
                detail = f"{error.ename}: {error.evalue}" if error else result.message
                raise Rejected(
                    f"the {what} of session {session!r} ended {result.status}: {detail}",
                    code="checkpoint_failed",
                )
            try:
                return read_report(await trio.Path(report_path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise Rejected(
                    f"the {what} of session {session!r} left no readable report ({exc})",
                    code="checkpoint_failed",
                ) from None
        finally:
            _remove(report_path)

    def copy_latest(self, source: str, target: str) -> str:
        """Give ``target`` a copy of ``source``'s latest snapshot (for fork_session)."""
        snap_id = self.latest(source)
        if snap_id is None:
            raise Rejected(f"session {source!r} has no snapshot", code="unknown_snapshot")
        folder = self._make_dir(target)
        shutil.copyfile(self.dir_for(source) / f"{snap_id}.pkl", folder / "s1.pkl")
        return "s1"

    def _make_dir(self, session: str) -> Path:
        folder = self.dir_for(session)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        folder.mkdir(exist_ok=True, mode=0o700)
        if self.owner is not None:
            os.chown(folder, *self.owner)
        return folder

    def _prune(self, session: str) -> None:
        for old in self.ids(session)[:-KEEP]:
            _remove(self.dir_for(session) / f"{old}.pkl")

    def forget(self, session: str) -> None:
        """The session closed: its snapshots go."""
        shutil.rmtree(self.dir_for(session), ignore_errors=True)


def with_restore(result: ExecuteResult, restore: RestoreInfo | str | None) -> ExecuteResult:
    """A session request's result, told what the restore before it did: the names that
    came back (``state_restored``), or why nothing did (a notice; the router then says
    ``state_lost`` as for any lost kernel)."""
    if restore is None:
        return result
    if isinstance(restore, str):
        notice = Output("notice", name="state_not_restored", text=restore)
        return attrs.evolve(result, outputs=(notice, *result.outputs))
    text = f"[kernelsup] the session's kernel was replaced; restored snapshot {restore.snapshot_id}"
    text += f": {', '.join(restore.restored) or 'no names'}"
    if restore.not_restored:
        text += "; not restored: " + ", ".join(
            f"{name} ({why})" for name, why in restore.not_restored.items()
        )
    notice = Output("notice", name="state_restored", text=text)
    return attrs.evolve(
        result,
        state_restored=True,
        restored=restore.restored,
        not_restored=dict(restore.not_restored),
        outputs=(notice, *result.outputs),
    )


def _serial(snap_id: str) -> int:
    try:
        return int(snap_id[1:])
    except ValueError:
        return 0


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


__all__ = ["KEEP", "Checkpoints", "is_python", "with_restore"]
