"""io_errors.py: each row of the zmq/OS error table, and the IPC liveness probe on real
unix sockets."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import get_args

import pytest
import zmq

from kernelsup.adapters import io_errors
from kernelsup.adapters.io_errors import map_error, map_exceptions, probe_ipc
from kernelsup.core.errors import ConfigError, KernelStartError, KernelsupError, Unreachable

EP = "ipc:///run/x/control.sock"


@pytest.mark.parametrize(
    ("op", "exc", "cls", "code", "text"),
    [
        ("bind", zmq.ZMQError(errno.ENAMETOOLONG), ConfigError, "config_invalid", "too long"),
        ("bind", zmq.ZMQError(errno.EINVAL, "path too long"), ConfigError, "config_invalid", ""),
        (
            "bind",
            zmq.ZMQError(errno.EADDRINUSE),
            KernelsupError,
            "endpoint_in_use",
            "the address is in use",
        ),
        ("bind", zmq.ZMQError(errno.EACCES), KernelsupError, "endpoint_unavailable", "cannot"),
        ("connect", zmq.ZMQError(errno.EINVAL), Unreachable, "unreachable", "cannot connect"),
        ("probe", FileNotFoundError(errno.ENOENT, "x"), Unreachable, "unreachable", "not exist"),
        (
            "probe",
            ConnectionRefusedError(errno.ECONNREFUSED, "x"),
            Unreachable,
            "unreachable",
            "nothing listens",
        ),
        ("probe", PermissionError(errno.EACCES, "denied"), Unreachable, "unreachable", "denied"),
        ("io", zmq.ZMQError(errno.EPROTO), Unreachable, "unreachable", "connection failed"),
        ("spawn", FileNotFoundError(errno.ENOENT, "x"), KernelStartError, "start_failure", "exec"),
    ],
)
def test_each_row_of_the_table(
    op: io_errors.Operation, exc: BaseException, cls: type, code: str, text: str
) -> None:
    err = map_error(exc, op, EP)
    assert (type(err), err.code) == (cls, code)
    assert text in err.message


def test_every_operation_has_a_catch_all_row() -> None:
    ops = {op for op, _ in io_errors.TABLE}
    assert all((op, None) in io_errors.TABLE for op in ops)
    assert ops == set(get_args(io_errors.Operation))


def test_map_exceptions_raises_the_mapped_error_and_lets_others_through() -> None:
    with pytest.raises(KernelsupError) as info, map_exceptions("bind", EP):
        raise zmq.ZMQError(errno.EADDRINUSE)
    assert info.value.code == "endpoint_in_use" and info.value.data == {"endpoint": EP}
    with pytest.raises(ValueError), map_exceptions("bind", EP):
        raise ValueError("not an I/O error")


def test_gone_is_a_closed_socket_or_context() -> None:
    assert io_errors.is_gone(zmq.ZMQError(errno.ENOTSOCK))
    assert io_errors.is_gone(zmq.ZMQError(zmq.ETERM))
    assert not io_errors.is_gone(zmq.ZMQError(errno.EHOSTUNREACH))


def test_probe_tells_a_live_socket_a_stale_one_and_none(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    endpoint = f"ipc://{path}"
    with pytest.raises(Unreachable, match="does not exist"):
        probe_ipc(endpoint, 1.0)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    try:
        with pytest.raises(Unreachable, match="nothing listens"):
            probe_ipc(endpoint, 1.0)  # bound, not listening: as a killed server leaves it
        live.listen(1)
        assert probe_ipc(endpoint, 1.0) is True
    finally:
        live.close()


def test_probe_cannot_tell_about_tcp_or_abstract_sockets() -> None:
    assert probe_ipc("tcp://127.0.0.1:5555", 1.0) is False
    assert probe_ipc("ipc://@kernelsup-test", 1.0) is False
