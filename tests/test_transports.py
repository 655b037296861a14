"""
Transports that read into the process's buffer (lbproxy.transports), over
real sockets on 127.0.0.1: a read does what Twisted's own does on the
installed release, bytes split over many reads arrive whole and in order,
and the ends of a connection (EOF, reset, half-close) are seen as before,
also under TLS.
"""

from __future__ import annotations

import hashlib
import select
import socket
import ssl as stdlib_ssl
import struct
import threading
from typing import Any, List, Optional, Tuple

from twisted.internet import defer, main, reactor, ssl, tcp, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from lbproxy.transports import (
    READ_SIZE,
    Connecting,
    ReusedBufferClient,
    ReusedBufferServer,
    connecting,
    reuse_read_buffer,
)
from tests.support import CLIENT_TIMEOUT
from tests.test_tls import make_ca, make_server_cert, pem

HOST = "127.0.0.1"


class _Collect(Protocol):
    """Keeps every read; C{answer} is what C{dataReceived} returns."""

    answer: Any = None

    def __init__(self) -> None:
        self.reads: List[Any] = []

    def dataReceived(self, data: bytes) -> Any:
        self.reads.append(data)
        return self.answer


def _tcp_pair() -> Tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets on loopback: (ours, the peer's)."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)
        peer = socket.create_connection(listener.getsockname(), timeout=CLIENT_TIMEOUT)
        ours, _ = listener.accept()
    ours.setblocking(False)
    return ours, peer


def _readable(sock: socket.socket) -> None:
    """Wait (bounded) until C{sock} has something to read, or an end."""
    ready, _, _ = select.select([sock], [], [], CLIENT_TIMEOUT)
    assert ready, "nothing arrived in time"


def _reset(peer: socket.socket) -> None:
    """Close C{peer} with a reset (RST), not an orderly FIN."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


class DoReadTests(unittest.TestCase):
    """
    C{doRead} called as the reactor calls it, on Twisted's C{tcp.Server} and
    on L{ReusedBufferServer} side by side: the same results.
    """

    def connection(self, kind: type, answer: Any = None) -> Tuple[Any, _Collect, socket.socket]:
        ours, peer = _tcp_pair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        protocol = _Collect()
        protocol.answer = answer
        transport = kind(ours, protocol, (HOST, 1), None, 1, MemoryReactor())
        protocol.makeConnection(transport)
        return transport, protocol, peer

    def both(self, answer: Any = None) -> List[Tuple[Any, _Collect, socket.socket]]:
        return [self.connection(tcp.Server, answer), self.connection(ReusedBufferServer, answer)]

    def test_nothing_to_read_is_no_event(self) -> None:
        results = [(t.doRead(), p.reads) for t, p, _ in self.both()]
        self.assertEqual(results, [(None, []), (None, [])])

    def test_bytes_read_are_bytes_of_their_own(self) -> None:
        results = []
        for transport, protocol, peer in self.both():
            peer.sendall(b"GET / HTTP/1.1\r\n\r\n")
            _readable(transport.socket)
            results.append((transport.doRead(), protocol.reads))
        self.assertEqual(results[1], results[0])
        self.assertEqual(results[1], (None, [b"GET / HTTP/1.1\r\n\r\n"]))
        self.assertIs(type(results[1][1][0]), bytes)

    def test_more_than_one_read_takes_arrives_over_reads_and_stays_intact(self) -> None:
        payload = bytes(range(256)) * 1024  # 256 KiB: at least four reads
        transport, protocol, peer = self.connection(ReusedBufferServer)
        # The reactor is not turned here: a plain thread sends.
        sender = threading.Thread(target=peer.sendall, args=(payload,))
        sender.start()
        self.addCleanup(sender.join, CLIENT_TIMEOUT)
        got = 0
        for _ in range(10_000):
            if got >= len(payload):
                break
            _readable(transport.socket)
            self.assertIsNone(transport.doRead())
            got = sum(len(r) for r in protocol.reads)
        self.assertEqual(b"".join(protocol.reads), payload)
        self.assertGreaterEqual(len(protocol.reads), len(payload) // READ_SIZE)
        self.assertTrue(all(len(r) <= READ_SIZE for r in protocol.reads))

    def test_the_end_of_the_connection_is_connection_done(self) -> None:
        results = []
        for transport, protocol, peer in self.both():
            peer.sendall(b"last")
            peer.shutdown(socket.SHUT_WR)
            reads = []
            for _ in range(3):
                _readable(transport.socket)
                reads.append(transport.doRead())
                if reads[-1] is not None:
                    break
            results.append((reads[-1], b"".join(protocol.reads)))
        self.assertEqual(results, [(main.CONNECTION_DONE, b"last")] * 2)

    def test_a_reset_is_connection_lost(self) -> None:
        results = []
        for transport, _, peer in self.both():
            _reset(peer)
            _readable(transport.socket)
            results.append(transport.doRead())
        self.assertEqual(results, [main.CONNECTION_LOST] * 2)

    def test_what_data_received_returns_is_passed_on_as_twisted_does(self) -> None:
        results = []
        for transport, _, peer in self.both(answer=main.CONNECTION_DONE):
            peer.sendall(b"x")
            _readable(transport.socket)
            results.append(transport.doRead())
        self.flushWarnings()  # Twisted 25 warns that dataReceived returned something.
        self.assertEqual(results[1], results[0])

    def test_another_read_size_reads_as_twisted_does(self) -> None:
        transport, protocol, peer = self.connection(ReusedBufferServer)
        transport.bufferSize = 3
        peer.sendall(b"abcdef")
        _readable(transport.socket)
        self.assertIsNone(transport.doRead())
        self.assertEqual(protocol.reads, [b"abc"])


class _Digest(Protocol):
    """Answers, once the peer has finished sending, with the size and digest of what came."""

    def connectionMade(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self.reads = 0

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        self.reads += 1
        factory: Any = self.factory
        factory.transports.add(type(self.transport))
        factory.below.add(type(getattr(self.transport, "transport", None)))
        if self.size >= factory.expect:
            self.transport.write(
                b"%d %d %s" % (self.size, self.reads, self.hash.hexdigest().encode())
            )  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        factory: Any = self.factory
        factory.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class _AnswerAtEnd(Protocol):
    """Answers with the size of what came when the peer half-closes."""

    def connectionMade(self) -> None:
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"got %d" % self.size)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


class _Receive(Protocol):
    """Collects what arrives; C{done} fires with it and the reason it ended."""

    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.done: defer.Deferred[Tuple[bytes, Failure]] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback((b"".join(self.received), reason))


def _send_and_read(address: Tuple[str, int], payload: bytes, half_close: bool = False) -> bytes:
    """A blocking client (in a thread): send, then read until the server closes."""
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _tls_send_and_read(address: Tuple[str, int], ca_pem: bytes, payload: bytes) -> bytes:
    context = stdlib_ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(payload)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except stdlib_ssl.SSLEOFError:
                    chunk = b""
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)


class ThroughTheReactorTests(unittest.TestCase):
    """Listening ports and client connections of the real reactor."""

    def listen(self, protocol: type, expect: int = 0, tls: Optional[Any] = None) -> Any:
        factory: Any = Factory.forProtocol(protocol)
        factory.expect = expect
        factory.transports = set()
        factory.below = set()
        factory.lost = []
        if tls is None:
            port = reactor.listenTCP(0, factory, interface=HOST)  # type: ignore[attr-defined]
        else:
            port = reactor.listenSSL(0, factory, tls, interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.assertTrue(
            reuse_read_buffer(port, enabled=True, read_into=True, write_at_poll_end=False)
        )
        self.factory = factory
        return port

    @defer.inlineCallbacks
    def test_a_large_body_sent_by_our_client_arrives_whole_at_our_server(self) -> Any:
        payload = bytes(range(251)) * 8192  # ~2 MiB, over many reads
        port = self.listen(_Digest, expect=len(payload))
        client = _Receive()
        through = connecting(reactor, enabled=True, read_into=True, write_at_poll_end=False)
        self.assertIsInstance(through, Connecting)
        endpoint = TCP4ClientEndpoint(through, HOST, port.getHost().port, timeout=CLIENT_TIMEOUT)
        yield connectProtocol(endpoint, client)
        self.assertIsInstance(client.transport, ReusedBufferClient)
        client.transport.write(payload)  # type: ignore[union-attr]
        answer, reason = yield client.done
        size, reads, digest = answer.split()
        self.assertEqual(int(size), len(payload))
        self.assertGreater(int(reads), 1)
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest().encode())
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(self.factory.transports, {ReusedBufferServer})

    @defer.inlineCallbacks
    def test_a_large_answer_arrives_whole_at_our_client(self) -> Any:
        payload = bytes(range(253)) * 8192

        class Send(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(payload)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        port = reactor.listenTCP(0, Factory.forProtocol(Send), interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = _Receive()
        endpoint = TCP4ClientEndpoint(
            connecting(reactor, enabled=True, read_into=True, write_at_poll_end=False),
            HOST,
            port.getHost().port,
            timeout=CLIENT_TIMEOUT,
        )
        yield connectProtocol(endpoint, client)
        answer, reason = yield client.done
        self.assertEqual(answer, payload)
        self.assertGreater(len(client.received), 1)
        self.assertTrue(reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_a_raw_client_closing_is_connection_done(self) -> Any:
        port = self.listen(_Digest, expect=10**9)

        def send_and_close() -> None:
            with socket.create_connection(
                (HOST, port.getHost().port), timeout=CLIENT_TIMEOUT
            ) as sock:
                sock.sendall(b"a" * 100_000)

        yield threads.deferToThread(send_and_close)
        yield _wait(lambda: self.factory.lost)
        [reason] = self.factory.lost
        self.assertTrue(reason.check(ConnectionDone))
        self.assertEqual(self.factory.transports, {ReusedBufferServer})

    @defer.inlineCallbacks
    def test_a_reset_is_connection_lost(self) -> Any:
        port = self.listen(_Digest, expect=10**9)

        def send_and_reset() -> None:
            sock = socket.create_connection((HOST, port.getHost().port), timeout=CLIENT_TIMEOUT)
            sock.sendall(b"partial")
            _reset(sock)

        yield threads.deferToThread(send_and_reset)
        yield _wait(lambda: self.factory.lost)
        [reason] = self.factory.lost
        self.assertTrue(reason.check(ConnectionLost), reason)

    @defer.inlineCallbacks
    def test_a_half_close_is_read_end_and_the_answer_still_goes_out(self) -> Any:
        port = self.listen(_AnswerAtEnd)
        payload = b"b" * 300_000
        answer = yield threads.deferToThread(
            _send_and_read, (HOST, port.getHost().port), payload, half_close=True
        )
        self.assertEqual(answer, b"got %d" % len(payload))

    @defer.inlineCallbacks
    def test_a_tls_listener_reads_through_the_buffer(self) -> Any:
        ca_key, ca = make_ca()
        key, cert = make_server_cert(ca_key, ca, [_dns("localhost")])
        options = ssl.PrivateCertificate.loadPEM(pem(key) + pem(cert)).options()
        payload = bytes(range(255)) * 4096  # ~1 MiB, many TLS records and reads
        port = self.listen(_Digest, expect=len(payload), tls=options)
        answer = yield threads.deferToThread(
            _tls_send_and_read, (HOST, port.getHost().port), pem(ca), payload
        )
        size, reads, digest = answer.split()
        self.assertEqual(int(size), len(payload))
        self.assertGreater(int(reads), 1)
        self.assertEqual(digest, hashlib.sha256(payload).hexdigest().encode())
        # The TLS layer is above our transport.
        [made] = self.factory.transports
        self.assertTrue(issubclass(made, TLSMemoryBIOProtocol), made)
        self.assertIs(port.transport, ReusedBufferServer)
        self.assertEqual(self.factory.below, {ReusedBufferServer})


class InstallTests(unittest.TestCase):
    def test_disabled_leaves_twisted_alone(self) -> None:
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface=HOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.assertFalse(reuse_read_buffer(port, enabled=False))
        self.assertIs(port.transport, tcp.Server)
        self.assertIs(connecting(reactor, enabled=False), reactor)

    def test_ports_and_reactors_of_other_kinds_are_left_alone(self) -> None:
        memory = MemoryReactor()
        self.assertIs(connecting(memory, enabled=True), memory)

        class NotTCP:
            transport = object

        self.assertFalse(reuse_read_buffer(NotTCP(), enabled=True))  # type: ignore[arg-type]
        self.assertFalse(reuse_read_buffer(object(), enabled=True))  # type: ignore[arg-type]


def _dns(name: str) -> Any:
    from cryptography import x509

    return x509.DNSName(name)


def _wait(condition: Any) -> defer.Deferred[None]:
    from tests.support import wait_until

    return wait_until(condition)  # type: ignore[no-any-return]
