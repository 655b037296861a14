"""
Writes of the transports of lbproxy.transports (L{PollEndWrite}) on a real
epoll reactor with lbproxy's poll (lbproxy.dispatch), over real sockets on
127.0.0.1: what a poll's events write is sent when the poll is handled,
with no writability round through the reactor, and everything else is
Twisted's: what a send does not take, producers (streaming and pull),
closing after the pending bytes, half-closing, a failed send, pauses.
Each case runs on Twisted's own transport too, where the results must be
the same (but for when the bytes go out).
"""

from __future__ import annotations

import hashlib
import select
import socket
import struct
from typing import Any, Callable, List

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from lbproxy.dispatch import HELD
from lbproxy.transports import (
    _SERVERS,
    READ_INTO,
    Connecting,
    PollEndWrite,
    ReusedBufferRead,
    reuse_read_buffer,
)
from tests.test_dispatch import fresh_reactor

HOST = "127.0.0.1"

#: How many polls a case may take before it counts as stuck.
MOST_POLLS = 2000


class _Server(Protocol):
    """The server side of a case: C{on_data(protocol, data)} decides what to do."""

    def __init__(self, case: _Cases) -> None:
        self.case = case
        self.received: List[bytes] = []
        self.lost: List[Failure] = []
        self.write_lost = False

    def connectionMade(self) -> None:
        self.case.servers.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.case.on_data(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class _HalfCloseServer(_Server):
    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        self.write_lost = True


@implementer(IPushProducer)
class _Recorder:
    """A streaming producer that records what it is asked."""

    def __init__(self) -> None:
        self.calls: List[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class _Cases:
    """
    The cases, run on L{PollEndTests} (lbproxy's transports) and
    L{TwistedTests} (Twisted's own): the same results.
    """

    ours = True
    servers: List[_Server]

    # Provided by unittest.TestCase.
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIn: Any
    assertNotIn: Any
    assertIsInstance: Any
    assertGreater: Any
    addCleanup: Any

    def setUp(self) -> None:
        self.reactor: EPollReactor = fresh_reactor(self, quick=True)  # type: ignore[arg-type]
        self.servers = []
        self.on_data: Callable[[_Server, bytes], object] = lambda p, d: None
        self.watched: List[Any] = []
        self.unread: List[Any] = []
        add_writer, remove_reader = self.reactor.addWriter, self.reactor.removeReader

        def counting_add_writer(writer: Any) -> None:
            self.watched.append(writer)
            add_writer(writer)

        def counting_remove_reader(reader: Any) -> None:
            self.unread.append(reader)
            remove_reader(reader)

        self.reactor.addWriter = counting_add_writer  # type: ignore[method-assign]
        self.reactor.removeReader = counting_remove_reader  # type: ignore[method-assign]

    def listen(self, protocol: type = _Server) -> int:
        factory = Factory()
        factory.buildProtocol = lambda addr: protocol(self)  # type: ignore[method-assign]
        # Closed with the reactor (fresh_reactor's cleanup disconnects all).
        port = self.reactor.listenTCP(0, factory, interface=HOST)
        if self.ours:
            self.assertTrue(reuse_read_buffer(port, enabled=True, write_at_poll_end=True))
            self.assertTrue(issubclass(port.transport, PollEndWrite))  # type: ignore[attr-defined]
            self.assertEqual(
                issubclass(port.transport, ReusedBufferRead),  # type: ignore[attr-defined]
                READ_INTO,
            )
        return int(port.getHost().port)

    def peer(self, port: int) -> socket.socket:
        sock = socket.create_connection((HOST, port), timeout=5)
        self.addCleanup(sock.close)
        sock.setblocking(False)
        self.poll_until(lambda: bool(self.servers))
        return sock

    def poll_until(self, done: Callable[[], bool]) -> None:
        for _ in range(MOST_POLLS):
            if done():
                return
            self.reactor.iterate(0.01)
        raise AssertionError("the reactor never got there")

    def read_all(self, sock: socket.socket, until: Callable[[bytes], bool]) -> bytes:
        """Read from C{sock}, the reactor polled meanwhile, until C{until(got)} or the end."""
        got: List[bytes] = []
        for _ in range(MOST_POLLS * 10):
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                if until(b"".join(got)):
                    break
                self.reactor.iterate(0.001)
                continue
            if not chunk:
                break
            got.append(chunk)
        return b"".join(got)

    def test_a_write_made_while_reading_is_sent(self) -> None:
        self.on_data = lambda p, d: p.transport.write(b"echo:" + d)  # type: ignore[union-attr]
        sock = self.peer(self.listen())
        for n in range(5):
            sock.sendall(b"ping %d" % n)
            answer = self.read_all(sock, lambda got, n=n: got == b"echo:ping %d" % n)
            self.assertEqual(answer, b"echo:ping %d" % n)
        if self.ours:
            # Sent when the poll was handled: the reactor never watched it.
            self.assertEqual(self.watched, [])
        else:
            self.assertEqual(len(self.watched), 5)

    def test_sent_when_the_poll_that_read_it_is_handled(self) -> None:
        self.on_data = lambda p, d: p.transport.write(b"got it")  # type: ignore[union-attr]
        sock = self.peer(self.listen())
        sock.sendall(b"hello")
        self.poll_until(lambda: bool(self.servers[0].received))
        ready, _, _ = select.select([sock], [], [], 0)
        # Ours sent within the poll that read; Twisted's waits for the next.
        self.assertEqual(bool(ready), self.ours)
        self.assertEqual(self.read_all(sock, lambda got: got == b"got it"), b"got it")

    def test_more_than_a_send_takes_goes_out_whole_then_the_close(self) -> None:
        payload = bytes(range(256)) * (32 * 1024)  # 8 MiB

        def answer(p: _Server, d: bytes) -> None:
            p.transport.write(payload)  # type: ignore[union-attr]
            p.transport.loseConnection()  # type: ignore[union-attr]

        self.on_data = answer
        sock = self.peer(self.listen())
        sock.sendall(b"go")
        got = self.read_all(sock, lambda got: False)  # until the end
        self.assertEqual(len(got), len(payload))
        self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(payload).digest())
        self.poll_until(lambda: bool(self.servers[0].lost))
        self.assertTrue(self.servers[0].lost[0].check(ConnectionDone))
        # What the first send did not take waited for writability.
        self.assertIn(self.servers[0].transport, self.watched)

    def test_a_close_after_a_write_sends_it_first(self) -> None:
        def answer(p: _Server, d: bytes) -> None:
            p.transport.write(b"last words")  # type: ignore[union-attr]
            p.transport.loseConnection()  # type: ignore[union-attr]

        self.on_data = answer
        sock = self.peer(self.listen())
        sock.sendall(b"bye")
        self.assertEqual(self.read_all(sock, lambda got: False), b"last words")
        self.poll_until(lambda: bool(self.servers[0].lost))
        self.assertTrue(self.servers[0].lost[0].check(ConnectionDone))

    def test_a_half_close_after_a_write_sends_it_and_keeps_reading(self) -> None:
        def answer(p: _Server, d: bytes) -> None:
            if d == b"first":
                p.transport.write(b"answer")  # type: ignore[union-attr]
                p.transport.loseWriteConnection()  # type: ignore[union-attr]

        self.on_data = answer
        sock = self.peer(self.listen(_HalfCloseServer))
        sock.sendall(b"first")
        self.assertEqual(self.read_all(sock, lambda got: False), b"answer")  # then the end
        server = self.servers[0]
        self.poll_until(lambda: server.write_lost)
        sock.sendall(b"second")
        self.poll_until(lambda: b"".join(server.received) == b"firstsecond")
        self.assertEqual(server.lost, [])

    def test_a_streaming_producer_is_paused_over_the_limit_and_resumed(self) -> None:
        producer = _Recorder()
        payload = b"p" * (4 << 20)

        def answer(p: _Server, d: bytes) -> None:
            p.transport.registerProducer(producer, True)  # type: ignore[union-attr]
            p.transport.write(payload)  # type: ignore[union-attr]

        self.on_data = answer
        sock = self.peer(self.listen())
        sock.sendall(b"go")
        got = self.read_all(sock, lambda got: len(got) >= len(payload))
        self.assertEqual(got, payload)
        self.poll_until(lambda: producer.calls == ["pause", "resume"])

    def test_a_pull_producer_is_asked_again_each_time_the_bytes_are_sent(self) -> None:
        chunks = [b"%d," % n * 1000 for n in range(20)]

        class Pull:
            def __init__(self, transport: Any) -> None:
                self.transport = transport
                self.left = list(chunks)

            def resumeProducing(self) -> None:
                if self.left:
                    self.transport.write(self.left.pop(0))
                else:
                    self.transport.unregisterProducer()
                    self.transport.loseConnection()

            def stopProducing(self) -> None:
                pass

        def answer(p: _Server, d: bytes) -> None:
            p.transport.registerProducer(Pull(p.transport), False)  # type: ignore[union-attr]

        self.on_data = answer
        sock = self.peer(self.listen())
        sock.sendall(b"go")
        self.assertEqual(self.read_all(sock, lambda got: False), b"".join(chunks))
        self.poll_until(lambda: bool(self.servers[0].lost))
        self.assertTrue(self.servers[0].lost[0].check(ConnectionDone))

    def test_a_pause_resumed_while_reading_costs_the_reactor_nothing(self) -> None:
        def answer(p: _Server, d: bytes) -> None:
            p.transport.pauseProducing()  # type: ignore[union-attr]
            p.transport.resumeProducing()  # type: ignore[union-attr]

        self.on_data = answer
        sock = self.peer(self.listen())
        server = self.servers[0]
        sock.sendall(b"one")
        self.poll_until(lambda: server.received == [b"one"])
        sock.sendall(b"two")
        self.poll_until(lambda: server.received == [b"one", b"two"])
        self.assertIn(server.transport, self.reactor.getReaders())
        if self.ours:
            self.assertNotIn(server.transport, self.unread)

    def test_a_pause_not_resumed_holds_the_reads_until_resumed(self) -> None:
        self.on_data = lambda p, d: p.transport.pauseProducing()  # type: ignore[union-attr]
        sock = self.peer(self.listen())
        server = self.servers[0]
        sock.sendall(b"one")
        self.poll_until(lambda: server.received == [b"one"])
        self.assertNotIn(server.transport, self.reactor.getReaders())
        sock.sendall(b"two")
        for _ in range(5):
            self.reactor.iterate(0.01)
        self.assertEqual(server.received, [b"one"])
        self.on_data = lambda p, d: None
        server.transport.resumeProducing()  # type: ignore[union-attr]
        self.poll_until(lambda: server.received == [b"one", b"two"])

    def test_a_failed_send_loses_the_connection(self) -> None:
        # Two connections: a read on the first writes to the second, whose
        # peer has reset it (unread, so that only the send meets the reset).
        port = self.listen()
        first = self.peer(port)
        second = socket.create_connection((HOST, port), timeout=5)
        self.poll_until(lambda: len(self.servers) == 2)
        victim = self.servers[1]
        victim.transport.stopReading()  # type: ignore[union-attr]
        second.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        second.close()
        self.on_data = lambda p, d: victim.transport.write(b"x" * 1000)  # type: ignore[union-attr]
        first.sendall(b"go")
        self.poll_until(lambda: bool(victim.lost))
        self.assertTrue(victim.lost[0].check(ConnectionLost), victim.lost[0])
        self.assertEqual(self.servers[0].lost, [])

    def test_a_backend_connection_writes_the_same_way(self) -> None:
        self.on_data = lambda p, d: p.transport.write(d.upper())  # type: ignore[union-attr]
        port = self.listen()
        answers: List[bytes] = []
        made: List[Any] = []

        class Client(Protocol):
            def connectionMade(self) -> None:
                made.append(self.transport)
                self.transport.write(b"hello")  # type: ignore[union-attr]

            def dataReceived(self, data: bytes) -> None:
                answers.append(data)
                if b"".join(answers) == b"HELLO":
                    self.transport.write(b"again")  # type: ignore[union-attr]

        through: Any = Connecting(self.reactor, READ_INTO, True) if self.ours else self.reactor
        through.connectTCP(HOST, port, ClientFactory.forProtocol(Client))
        self.poll_until(lambda: b"".join(answers) == b"HELLOAGAIN")
        # Watched for writability once to learn that the connection is
        # made; Twisted's watches again for each of its two writes.
        self.assertIsInstance(made[0], PollEndWrite if self.ours else tcp.Client)
        self.assertEqual(self.watched.count(made[0]), 1 if self.ours else 3)
        made[0].loseConnection()
        self.poll_until(lambda: all(s.lost for s in self.servers))


class PollEndTests(_Cases, unittest.TestCase):
    """lbproxy's transports."""


class TwistedTests(_Cases, unittest.TestCase):
    """Twisted's own transports, for the same results."""

    ours = False


class OtherReactorTests(unittest.TestCase):
    def test_a_connection_of_another_reactor_is_not_held(self) -> None:
        # Another reactor's poll being dispatched: Twisted's own path.
        reactor = fresh_reactor(self, quick=True)
        other = fresh_reactor(self, quick=True)
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        kind = _SERVERS[tcp.Server][READ_INTO, True]
        transport = kind(ours, Protocol(), (HOST, 1), None, 1, reactor)
        self.addCleanup(transport.stopWriting)
        self.addCleanup(transport.stopReading)
        HELD.active = other
        try:
            transport.write(b"x")
        finally:
            HELD.active = None
        self.assertEqual(HELD.writes, [])
        self.assertIn(transport, reactor.getWriters())
        transport.stopWriting()
        HELD.active = reactor
        try:
            transport.write(b"y")
        finally:
            HELD.active = None
        held, HELD.writes[:] = list(HELD.writes), []
        self.assertEqual(held, [transport])
        self.assertNotIn(transport, reactor.getWriters())
