"""kernelsup.adapters.zmqio: the trio <-> pyzmq socket wrapper."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
import zmq

from kernelsup.adapters.zmqio import Socket, context

STRESS_MESSAGES = 10_000


def _inproc() -> str:
    return f"inproc://zmqio-test-{uuid.uuid4().hex}"


def _socket(kind: int, **options: int) -> Socket:
    sock = context().socket(kind)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    return Socket(sock)


@asynccontextmanager
async def open_pair(hwm: int = 1000) -> AsyncIterator[tuple[Socket, Socket, bytes]]:
    """A DEALER connected to a ROUTER over inproc, both closed on exit.

    ``hwm`` is the dealer's SNDHWM and the router's RCVHWM. Yields (dealer, router,
    dealer's routing id). The dealer says hello first, so the router knows the dealer's
    routing id before the test starts.
    """
    address = _inproc()
    with _socket(zmq.ROUTER, RCVHWM=hwm) as router, _socket(zmq.DEALER, SNDHWM=hwm) as dealer:
        router.zmq.bind(address)
        dealer.zmq.connect(address)
        await dealer.send_multipart([b"hello"])
        routing_id, hello = await router.recv_multipart()
        assert hello == b"hello"
        yield dealer, router, routing_id


async def _send_numbered(sock: Socket, count: int) -> None:
    for i in range(count):
        await sock.send_multipart([b"%d" % i])


async def _receive_one(sock: Socket, out: list[list[bytes]]) -> None:
    out.append(await sock.recv_multipart())


# --- echo peers for the stress test ---------------------------------------------------
# Both peers make the return path unbounded (SNDHWM=0 here, RCVHWM=0 on the dealer): a
# ROUTER at its high water mark drops messages, which would look like a stall. The
# forward path's HWM is a parameter of the stress test.


@contextmanager
def thread_echo(address: str) -> Iterator[None]:
    """A ROUTER echo peer in a plain thread with blocking zmq, stopped on exit."""
    control_address = _inproc()
    ready = threading.Event()

    def serve() -> None:
        with context().socket(zmq.ROUTER) as router, context().socket(zmq.PAIR) as control:
            router.setsockopt(zmq.SNDHWM, 0)
            router.bind(address)
            control.connect(control_address)
            ready.set()
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(control, zmq.POLLIN)
            while True:
                ready_sockets = dict(poller.poll())
                if control in ready_sockets:
                    return
                router.send_multipart(router.recv_multipart())

    with context().socket(zmq.PAIR) as control:
        control.bind(control_address)
        thread = threading.Thread(target=serve, name="zmqio-echo", daemon=True)
        thread.start()
        assert ready.wait(10), "echo thread did not start"
        try:
            yield
        finally:
            with suppress(zmq.Again):  # a dead echo thread must not block the teardown
                control.send(b"stop", zmq.NOBLOCK)
            thread.join(10)
            assert not thread.is_alive(), "echo thread did not stop"


@asynccontextmanager
async def trio_echo(address: str) -> AsyncIterator[None]:
    """A ROUTER echo peer driven by a trio task through zmqio, stopped on exit."""

    async def serve(router: Socket) -> None:
        while True:
            await router.send_multipart(await router.recv_multipart())

    with _socket(zmq.ROUTER, SNDHWM=0) as router:
        router.zmq.bind(address)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, router)
            yield
            nursery.cancel_scope.cancel()


@pytest.fixture(params=["inproc", "ipc"])
def address(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _inproc() if request.param == "inproc" else f"ipc://{tmp_path}/echo"


@pytest.fixture(params=["thread", "trio"])
async def echo(request: pytest.FixtureRequest, address: str) -> AsyncIterator[str]:
    """An echo peer bound at ``address``; yields the address to connect to."""
    if request.param == "thread":
        with thread_echo(address):
            yield address
    else:
        async with trio_echo(address):
            yield address


# --- tests --------------------------------------------------------------------------


@pytest.mark.parametrize("send_hwm", [0, 1000], ids=["unbounded", "hwm1000"])
async def test_stress_send_and_receive_on_one_dealer(echo: str, send_hwm: int) -> None:
    """One task sends in a tight loop while another receives: no echo may stall.

    Regression test for zmq's edge-triggered FD: a send drains the FD's edge that would
    have woken the receiver, so the wrapper must re-check EVENTS after every send. With an
    unbounded send queue the sender never blocks, so nothing else rescues a receiver whose
    edge was eaten; with zmq's default HWM the sender blocks too, and both directions wait.
    Whether a send eats an edge here depends on timing (a loaded machine makes it likely);
    test_send_that_drains_the_fd_still_wakes_the_receiver stages it deterministically.
    """
    received: list[bytes] = []

    async def send_all(dealer: Socket) -> None:
        for i in range(STRESS_MESSAGES):
            await dealer.send_multipart([b"%d" % i])

    async def receive_all(dealer: Socket) -> None:
        for _ in range(STRESS_MESSAGES):
            [frame] = await dealer.recv_multipart()
            received.append(frame)

    with _socket(zmq.DEALER, SNDHWM=send_hwm, RCVHWM=0) as dealer:
        dealer.zmq.connect(echo)
        with trio.move_on_after(60) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_all, dealer)
                nursery.start_soon(send_all, dealer)
    assert not deadline.cancelled_caught, (
        f"stalled after {len(received)} of {STRESS_MESSAGES} echoes"
    )
    assert received == [b"%d" % i for i in range(STRESS_MESSAGES)]


class _PeerRepliesFirst(list[bytes]):
    """Frames that run ``before_send`` when pyzmq starts reading them, once.

    pyzmq reads the frames in the same trio step as its zmq send, so whatever
    ``before_send`` triggers reaches the socket with no chance for trio to poll in between.
    """

    def __init__(self, frames: list[bytes], before_send: Callable[[], object]) -> None:
        super().__init__(frames)
        self._before_send: Callable[[], object] | None = before_send

    def __iter__(self) -> Iterator[bytes]:
        if self._before_send is not None:
            before_send, self._before_send = self._before_send, None
            before_send()
        return super().__iter__()


async def test_send_that_drains_the_fd_still_wakes_the_receiver() -> None:
    """The stress test's bug, made deterministic (ARCHITECTURE.md, "Decisions worth knowing").

    The receiver is parked on the FD. The peer's reply lands and signals the FD, and in the
    same trio step the dealer sends: zmq processes its pending commands inside that send
    and the FD goes quiet, so only the EVENTS re-check after the send can wake the
    receiver. (zmq processes commands in a send at most once a millisecond or so, hence
    the pause before each round.)
    """
    with trio.fail_after(10):
        async with open_pair() as (dealer, router, routing_id):
            for n in range(3):
                reply = b"reply %d" % n
                # Raw and non-blocking on purpose: it must not checkpoint (nobody waits on
                # the router, so bypassing the wrapper is harmless).
                peer_replies = partial(router.zmq.send_multipart, [routing_id, reply], zmq.NOBLOCK)
                received: list[list[bytes]] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_receive_one, dealer, received)
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.sleep(0.05)
                    await dealer.send_multipart(_PeerRepliesFirst([b"ping"], peer_replies))
                assert received == [[reply]]
                assert await router.recv_multipart() == [routing_id, b"ping"]


async def test_multipart_round_trip_with_empty_and_large_frames() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    frames = [b"", b"head", b"", big, b"tail", b""]
    with trio.fail_after(10):
        async with open_pair() as (dealer, router, routing_id):
            await dealer.send_multipart(frames)
            got = await router.recv_multipart()
            assert got == [routing_id, *frames]
            await router.send_multipart(got)
            assert await dealer.recv_multipart() == frames


async def test_close_wakes_blocked_receiver_and_sender() -> None:
    """A DEALER with no peer blocks both ways; close() wakes both tasks.

    One blocked task watches the fd and the other sleeps, so both wake paths are covered.
    """
    woken: list[str] = []

    async def blocked_recv(sock: Socket) -> None:
        with pytest.raises(trio.ClosedResourceError):
            await sock.recv_multipart()
        woken.append("recv")

    async def blocked_send(sock: Socket) -> None:
        with pytest.raises(trio.ClosedResourceError):
            await sock.send_multipart([b"nobody listens"])
        woken.append("send")

    with trio.fail_after(10), _socket(zmq.DEALER) as sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_recv, sock)
            nursery.start_soon(blocked_send, sock)
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []
            sock.close()
        assert sorted(woken) == ["recv", "send"]
        assert sock.closed
        sock.close()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await sock.recv_multipart()
        with pytest.raises(trio.ClosedResourceError):
            await sock.send_multipart([b"late"])


async def test_zmq_socket_closed_underneath_maps_to_closed_resource_error() -> None:
    with trio.fail_after(10), _socket(zmq.DEALER) as sock:
        sock.zmq.close()
        with pytest.raises(trio.ClosedResourceError):
            await sock.recv_multipart()
        with pytest.raises(trio.ClosedResourceError):
            await sock.send_multipart([b"x"])


async def test_cancelled_recv_loses_nothing() -> None:
    with trio.fail_after(10):
        async with open_pair() as (dealer, router, routing_id):
            # Cancelled while blocked: raises Cancelled, and the socket keeps working.
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(dealer.recv_multipart)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            assert scope.cancelled_caught
            await router.send_multipart([routing_id, b"after"])
            assert await dealer.recv_multipart() == [b"after"]

            # Cancelled with a message waiting (inproc delivers on send): the message
            # stays on the socket for the next receive.
            await router.send_multipart([routing_id, b"kept"])
            with trio.CancelScope() as scope:
                scope.cancel()
                await dealer.recv_multipart()
            assert scope.cancelled_caught
            assert await dealer.recv_multipart() == [b"kept"]


# Only one task can wait on the FD: the first of a blocked receiver and a blocked sender.
# When that one is cancelled, the other must take over the FD or sleep through its wake-up.


async def test_cancelled_receiver_hands_the_fd_to_a_blocked_sender() -> None:
    count = 20
    with trio.fail_after(10):
        async with open_pair(hwm=1) as (dealer, router, routing_id):
            async with trio.open_nursery() as nursery:
                receiver_scope = trio.CancelScope()

                async def receive() -> None:
                    with receiver_scope:
                        await dealer.recv_multipart()

                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(_send_numbered, dealer, count)  # blocks at the HWM
                await trio.testing.wait_all_tasks_blocked()
                receiver_scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                for i in range(count):
                    assert await router.recv_multipart() == [routing_id, b"%d" % i]
            assert receiver_scope.cancelled_caught


async def test_cancelled_sender_hands_the_fd_to_a_blocked_receiver() -> None:
    received: list[list[bytes]] = []
    with trio.fail_after(10):
        async with open_pair(hwm=1) as (dealer, router, routing_id):
            async with trio.open_nursery() as nursery:
                sender_scope = trio.CancelScope()

                async def send() -> None:
                    with sender_scope:
                        await _send_numbered(dealer, 20)  # blocks at the HWM

                nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(_receive_one, dealer, received)
                await trio.testing.wait_all_tasks_blocked()
                sender_scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                await router.send_multipart([routing_id, b"reply"])
            assert sender_scope.cancelled_caught
    assert received == [[b"reply"]]


async def test_send_at_high_water_mark_blocks_until_peer_reads() -> None:
    count = 50
    sent = 0

    async def send_all(dealer: Socket) -> None:
        nonlocal sent
        for i in range(count):
            await dealer.send_multipart([b"%d" % i])
            sent += 1

    with trio.fail_after(10):
        async with open_pair(hwm=1) as (dealer, router, routing_id):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all, dealer)
                await trio.testing.wait_all_tasks_blocked()
                assert 0 < sent < count, f"sender should block at the HWM, sent {sent}"
                for i in range(count):
                    assert await router.recv_multipart() == [routing_id, b"%d" % i]
            assert sent == count


async def test_try_send_never_waits_and_names_a_full_or_gone_peer() -> None:
    """On a ROUTER_MANDATORY socket: a full peer's pipe gives False at once (others are
    not held up), an unknown peer raises EHOSTUNREACH, and the socket keeps working."""
    address = _inproc()
    with (
        _socket(zmq.ROUTER, ROUTER_MANDATORY=1, SNDHWM=2) as router,
        _socket(zmq.DEALER, RCVHWM=2) as dealer,
    ):
        router.zmq.bind(address)
        dealer.zmq.connect(address)
        await dealer.send_multipart([b"hello"])
        routing_id, _ = await router.recv_multipart()
        results = [router.try_send_multipart([routing_id, b"%d" % i]) for i in range(50)]
        assert results[0] and not results[-1]  # the pipe filled, and no call waited
        taken = results.index(False)
        assert all(results[:taken]) and not any(results[taken:])
        with pytest.raises(zmq.ZMQError) as info:
            router.try_send_multipart([b"nobody", b"x"])
        assert info.value.errno == zmq.EHOSTUNREACH
        with trio.fail_after(10):
            for i in range(taken):
                assert await dealer.recv_multipart() == [b"%d" % i]
            while not router.try_send_multipart([routing_id, b"again"]):
                await trio.sleep(0.01)  # the dealer's pipe drains in zmq's own thread
            assert await dealer.recv_multipart() == [b"again"]
        router.close()
        with pytest.raises(trio.ClosedResourceError):
            router.try_send_multipart([routing_id, b"x"])
