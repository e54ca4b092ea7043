"""The pure parts of adapters/ray_host.py: how a host actor's death becomes an exit cause,
what of a plan's environment a node is given, and what `check` says of a pool placed on a
cluster (the cluster itself: tests/test_ray.py)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from kernelsup.adapters.ray_host import (
    _env_overrides,
    _lost,
    _ray_reason,
    _remove_stale_host_dirs,
)
from kernelsup.adapters.tether import TETHER_ENV
from kernelsup.cli.main import main

# Ray 2.60's texts, as a supervisor received them in tests/test_ray.py's scenarios.
WORKER_DIED = """The actor died unexpectedly before finishing this task.
\tclass_name: KernelHost
\tactor_id: 7b984bc3d4b5b398a530833501000000
\tpid: 26451
\tnamespace: kernelsup
\tip: 127.0.0.1
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR \
Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file. \
Some common causes include: (1) the process was killed by the OOM killer"""

NODE_DIED = """The actor died unexpectedly before finishing this task.
\tclass_name: KernelHost
\tactor_id: 690a06c87c8f0c0d99ad6bf601000000
The actor died because its node has died. Node Id: 3869a7ae2d6bbe59 the actor's node was \
terminated unexpectedly: health check failed due to missing too many heartbeats"""


class ActorUnavailableError(Exception):
    """Named as Ray names it: the actor cannot be reached for now."""


@pytest.mark.parametrize(
    ("error", "kind", "detail"),
    [
        (
            Exception(WORKER_DIED),
            "host_lost",
            "The actor is dead because its worker process has died. Worker exit type: "
            "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection "
            "error code 2. End of file.",
        ),
        (
            Exception(NODE_DIED),
            "node_lost",
            "The actor died because its node has died. Node Id: 3869a7ae2d6bbe59 the actor's "
            "node was terminated unexpectedly: health check failed due to missing too many "
            "heartbeats",
        ),
        (ActorUnavailableError("the actor is temporarily unavailable"), "node_lost", None),
        (Exception(""), "host_lost", "Exception"),
    ],
)
def test_a_dead_host_is_a_cause_with_rays_reason(
    error: Exception, kind: str, detail: str | None
) -> None:
    cause = _lost(error)
    assert cause.kind == kind
    assert cause.signal == 9
    if detail is not None:
        assert cause.detail == detail
    assert "class_name" not in cause.detail and "Some common causes" not in cause.detail


def test_rays_reason_is_bounded() -> None:
    assert len(_ray_reason("x" * 10_000)) == 300


def test_a_node_gets_the_plans_own_variables_not_this_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KS_SAME", "1")
    env = {
        **os.environ,
        "KS_SAME": "1",  # ours, unchanged: the node has its own
        "KS_POOL": "pool",  # the pool's, a session's, the kernelspec's: sent
        "PATH": "/here/bin:" + os.environ.get("PATH", ""),  # the node makes its own
        "JPY_PARENT_PID": "1",
        TETHER_ENV: "/tmp/x",
    }
    assert _env_overrides(env) == {"KS_POOL": "pool"}


def test_check_names_the_cluster_a_pool_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("kernelsup.core.config.ray_installed", lambda: True)
    config = tmp_path / "supervisor.toml"
    config.write_text(
        '[ray]\naddress = "10.0.0.5:6379"\n'
        '[[pool]]\nname = "remote"\nplacement = "ray"\nray_resources = { kernel_slot = 1 }\n'
        '[[pool]]\nname = "here"\n'
    )
    assert main(["check", str(config)]) == 0
    assert capsys.readouterr().out == (
        f"{config}: valid; pools: remote (2 x python3, 1 spare, on the Ray cluster at "
        "10.0.0.5:6379), here (2 x python3, 1 spare)\n"
    )


def test_a_new_host_removes_the_directories_of_hosts_that_are_gone(tmp_path: Path) -> None:
    def host_dir(name: str, age_s: float) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "supervisor.lock").write_text("1")
        then = time.time() - age_s
        os.utime(d, (then, then))
        return d

    gone = host_dir("ray-1-gone", 3600)
    live = host_dir("ray-2-live", 3600)
    young = host_dir("ray-3-young", 0)  # its host may be about to take its lock
    other = tmp_path / "not-a-host"
    other.mkdir()
    fd = os.open(live / "supervisor.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a live host's Tether holds it
        _remove_stale_host_dirs(tmp_path)
    finally:
        os.close(fd)
    assert not gone.exists()
    assert live.exists() and young.exists() and other.exists()
