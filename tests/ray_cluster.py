"""A real Ray cluster on this machine, inside a network namespace with only loopback up.

Ray advertises the machine's external address even when told 127.0.0.1; in a namespace
whose only interface is ``lo`` it can only use 127.0.0.1, and nothing started here can bind
or reach any other address. :func:`run_in_netns` runs a command in a fresh such namespace;
the namespace's id (``/proc/PID/ns/net``) names every process started in it, so
:func:`kill_netns` ends them all by pid, pass or fail, and :func:`netns_pids` says whether
any is left. :class:`Cluster` (used inside the namespace) starts a head and worker nodes
with ``ray start`` and crashes or hangs one node by the pids of its raylet and workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_PORT = 6379
# Node failure noticed in about 3 s instead of Ray's 30 s default (the spike's tuning).
HEALTH_ENV = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_USAGE_STATS_ENABLED": "0",
}


# --------------------------------------------------------------------------- namespaces


def run_in_netns(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new network namespace with only loopback up (needs root)."""
    inner = "ip link set lo up && exec " + " ".join(_quote(a) for a in argv)
    return subprocess.Popen(["unshare", "--net", "--fork", "--", "sh", "-c", inner], **kwargs)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def netns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def netns_pids(netns: str) -> list[int]:
    """Every live process in the network namespace ``netns`` (``net:[N]``)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and netns_of(int(entry.name)) == netns:
            try:
                if psutil.Process(int(entry.name)).status() != psutil.STATUS_ZOMBIE:
                    found.append(int(entry.name))
            except psutil.Error:
                pass
    return found


def kill_netns(netns: str, within: float = 20.0) -> list[int]:
    """SIGCONT and SIGKILL every process in ``netns`` until none is left (bounded);
    returns the pids still there at the end (none, normally)."""
    deadline = time.monotonic() + within
    while True:
        pids = netns_pids(netns)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """A head and worker nodes started with ``ray start`` (in the current namespace)."""

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.address = f"127.0.0.1:{HEAD_PORT}"
        self.env = {**os.environ, **HEALTH_ENV}
        self.nodes: dict[str, int] = {}  # node name -> its node manager port
        self._next_port = 40100

    def _start(self, args: list[str]) -> None:
        subprocess.run(
            [RAY, "start", *args, "--disable-usage-stats"],
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def start_head(self) -> None:
        """The head takes no kernels (its loss would take the cluster)."""
        port = self._port()
        self._start(
            [
                "--head",
                f"--port={HEAD_PORT}",
                "--node-ip-address=127.0.0.1",
                f"--node-manager-port={port}",
                "--num-cpus=1",
                "--include-dashboard=false",
                f"--temp-dir={self.temp_dir}",
            ]
        )
        self.nodes["head"] = port

    def add_worker(self, name: str, slots: int) -> None:
        """A worker node offering ``slots`` of the custom resource ``kernel_slot``."""
        port = self._port()
        self._start(
            [
                f"--address={self.address}",
                "--node-ip-address=127.0.0.1",
                f"--node-manager-port={port}",
                "--num-cpus=1",
                "--resources=" + json.dumps({"kernel_slot": slots}),
            ]
        )
        self.nodes[name] = port

    def workers(self) -> list[str]:
        return [name for name in self.nodes if name != "head"]

    def _port(self) -> int:
        self._next_port += 10
        return self._next_port

    def raylet(self, name: str) -> psutil.Process:
        """The raylet of node ``name``, found by its own node manager port."""
        needle = f"--node_manager_port={self.nodes[name]}"
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if cmdline and cmdline[0].endswith("raylet") and needle in cmdline:
                return proc
        raise LookupError(f"no raylet for node {name}")

    def node_processes(self, name: str) -> list[psutil.Process]:
        """The raylet of ``name`` and everything under it (its workers, their kernels)."""
        raylet = self.raylet(name)
        return [raylet, *raylet.children(recursive=True)]

    def crash(self, name: str) -> None:
        """SIGKILL the node's raylet (its workers notice and exit; so do their kernels)."""
        self.raylet(name).kill()
        del self.nodes[name]

    def hang(self, name: str) -> list[psutil.Process]:
        """SIGSTOP the node: its raylet, workers and kernels all freeze."""
        procs = self.node_processes(name)
        for proc in procs:
            proc.suspend()
        return procs


__all__ = ["Cluster", "kill_netns", "netns_of", "netns_pids", "run_in_netns"]
