"""
TLS reads through the process's buffer (lbproxy.tlsio), over real sockets
on loopback: a C{tls:} listener's connections and a Twisted TLS client's,
each scenario run with the shared-buffer connection and with pyOpenSSL's
own, which must come out the same.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Tuple

from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.trial import unittest

from lbproxy import _twisted, tlsio
from lbproxy.front.tls import SNIConnectionCreator, server_endpoint
from tests.test_tls_front import Certificates

HOST = "127.0.0.1"
NAME = "a.example.test"


class Recorder(Protocol):
    """The server's end: keeps what it reads and how the connection ended."""

    def __init__(self, echo: bool, greeting: bytes) -> None:
        self.echo = echo
        self.greeting = greeting
        self.data: List[bytes] = []
        self.ended: defer.Deferred[Tuple[bytes, str]] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)
        if self.echo:
            self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended.callback((b"".join(self.data), reason.type.__name__))


class StdlibClient(Protocol):
    """
    A client whose TLS is Python's C{ssl} over memory BIOs, so that the
    test says byte for byte what goes on the wire after the handshake.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.ready: defer.Deferred[StdlibClient] = defer.Deferred()
        self.received: List[bytes] = []

    def connectionMade(self) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = self.context.wrap_bio(self.incoming, self.outgoing, server_hostname=NAME)
        self._handshake()

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        self.flush()

    def flush(self) -> None:
        out = self.outgoing.read()
        if out:
            self.transport.write(out)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.tls.server_side and self.tls.version() is None:
            self._handshake()
        while True:
            try:
                self.received.append(self.tls.read(65536))
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            except ssl.SSLError:
                break
        self.flush()
        if self.received and not self.ready.called:
            # The server's greeting: it has finished its handshake, so
            # every byte this side wrote so far has been read.
            self.ready.callback(self)

    def record(self, data: bytes) -> bytes:
        """C{data} as TLS records, not sent."""
        self.tls.write(data)
        return self.outgoing.read()  # type: ignore[no-any-return]


class TLSReadTests(unittest.TestCase):
    def setUp(self) -> None:
        self.files = Certificates(os.path.abspath(self.mktemp()))
        self.files.leaf("a", [NAME])
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate_file(self.files.path("a.crt"))
        context.use_privatekey_file(self.files.path("a.key"))
        self.server_context = context

    @defer.inlineCallbacks
    def serve(self, shared: bool, echo: bool = False, greeting: bytes = b"ready"):  # type: ignore[no-untyped-def]
        """A C{tls:} listener; C{(port number, the Recorders it made)}."""
        creator = SNIConnectionCreator(reuse_read_buffer=shared)
        creator.use(SimpleNamespace(default=self.server_context))  # type: ignore[arg-type]
        made: List[Recorder] = []

        def build(address: Any) -> Recorder:
            made.append(Recorder(echo, greeting))
            return made[-1]

        factory = Factory.forProtocol(Recorder)
        factory.buildProtocol = build  # type: ignore[method-assign]
        port = yield server_endpoint(reactor, f"tls:0:interface={HOST}", creator).listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port, made

    @defer.inlineCallbacks
    def stdlib_client(self, port: int):  # type: ignore[no-untyped-def]
        """A connected L{StdlibClient}, once the server's greeting is in."""
        context = ssl.create_default_context(cafile=self.files.ca_file)
        client = StdlibClient(context)
        yield connectProtocol(TCP4ClientEndpoint(reactor, HOST, port), client)
        yield client.ready
        return client

    @defer.inlineCallbacks
    def both_ways(self, scenario: Callable[..., Any]):  # type: ignore[no-untyped-def]
        """C{scenario(shared)} with the shared buffer and without: the same outcome."""
        outcomes: Dict[bool, Any] = {}
        for shared in (True, False):
            outcomes[shared] = yield scenario(shared)
        self.assertEqual(outcomes[True], outcomes[False])
        return outcomes[True]

    def test_the_connections_made_read_through_the_buffer(self) -> None:
        self.assertTrue(tlsio.usable(True))
        creator = SNIConnectionCreator(reuse_read_buffer=True)
        creator.use(SimpleNamespace(default=self.server_context))  # type: ignore[arg-type]
        self.assertIs(type(creator.serverConnectionForTLS(None)), tlsio.SharedBufferConnection)
        creator = SNIConnectionCreator(reuse_read_buffer=False)
        creator.use(SimpleNamespace(default=self.server_context))  # type: ignore[arg-type]
        self.assertIs(type(creator.serverConnectionForTLS(None)), SSL.Connection)

    def test_without_pyopenssls_parts_its_own_reads_are_used(self) -> None:
        for owner, name in [
            (SSL.Connection, "_raise_ssl_error"),
        ]:
            kept = getattr(owner, name)
            delattr(owner, name)
            try:
                self.assertIsNone(_twisted.tls_read_binding(), name)
            finally:
                setattr(owner, name, kept)
        self.assertIsNotNone(_twisted.tls_read_binding())
        # tlsio looked once, at import: with nothing found, pyOpenSSL's.
        self.patch(tlsio, "_binding", None)
        self.assertFalse(tlsio.usable(True))
        creator = SNIConnectionCreator(reuse_read_buffer=True)
        creator.use(SimpleNamespace(default=self.server_context))  # type: ignore[arg-type]
        self.assertIs(type(creator.serverConnectionForTLS(None)), SSL.Connection)
        options = optionsForClientTLS(NAME)
        self.assertIs(tlsio.reading_client_creator(options, True), options)
        connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        self.assertIs(type(tlsio.read_through_buffer(connection, True)), SSL.Connection)

    def test_reads_before_a_handshake_fail_as_pyopenssls(self) -> None:
        """
        Each read of a connection that has not started raises what
        pyOpenSSL's raises: through the buffer, or (a peek, a size past the
        buffer's, a size that is no int) by pyOpenSSL itself.
        """

        def outcome(make: Any, read: str, *args: Any) -> Tuple[str, str]:
            connection = make(SSL.Context(SSL.TLS_METHOD), None)
            connection.set_connect_state()
            try:
                return ("returned", repr(getattr(connection, read)(*args)))
            except Exception as e:
                return (type(e).__name__, str(e))

        calls = [
            ("bio_read", 1),
            ("bio_read", tlsio.BUFFER_SIZE),
            ("bio_read", tlsio.BUFFER_SIZE + 1),
            ("bio_read", "1"),
            ("recv", 100),
            ("read", tlsio.BUFFER_SIZE + 1),
            ("recv", 100, socket.MSG_PEEK),
        ]
        seen = set()
        for call in calls:
            ours = outcome(tlsio.SharedBufferConnection, *call)
            self.assertEqual(ours, outcome(SSL.Connection, *call), call)
            seen.add(ours[0])
        self.assertEqual(seen, {"TypeError", "WantReadError"})

    @defer.inlineCallbacks
    def test_large_bodies_both_ways(self):  # type: ignore[no-untyped-def]
        body = os.urandom(3 * 1024 * 1024 + 7)

        @defer.inlineCallbacks
        def scenario(shared: bool):  # type: ignore[no-untyped-def]
            port, made = yield self.serve(shared, echo=True, greeting=b"")
            back: List[bytes] = []
            done: defer.Deferred[None] = defer.Deferred()

            class Sender(Protocol):
                def connectionMade(self) -> None:
                    self.transport.write(body)  # type: ignore[union-attr]

                def dataReceived(self, data: bytes) -> None:
                    back.append(data)
                    if sum(map(len, back)) >= len(body):
                        self.transport.loseConnection()  # type: ignore[union-attr]

                def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
                    done.callback(None)

            trust = Certificate.loadPEM(open(self.files.ca_file, "rb").read())
            creator = tlsio.reading_client_creator(optionsForClientTLS(NAME, trust), shared)
            self.assertEqual(isinstance(creator, tlsio.ReadingClientCreator), shared)
            endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, HOST, port))
            sender = Sender()
            yield connectProtocol(endpoint, sender)
            handle = sender.transport.getHandle()  # type: ignore[union-attr]
            self.assertEqual(isinstance(handle, tlsio.SharedBufferConnection), shared)
            server_handle = made[0].transport.getHandle()  # type: ignore[union-attr]
            self.assertEqual(isinstance(server_handle, tlsio.SharedBufferConnection), shared)
            yield done
            received, how = yield made[0].ended
            echoed = b"".join(back)
            return (
                hashlib.sha256(received).hexdigest() == hashlib.sha256(body).hexdigest(),
                echoed == body,
                how,
            )

        outcome = yield self.both_ways(scenario)
        self.assertEqual(outcome, (True, True, "ConnectionDone"))

    @defer.inlineCallbacks
    def test_close_notify_ends_the_connection_cleanly(self):  # type: ignore[no-untyped-def]
        @defer.inlineCallbacks
        def scenario(shared: bool):  # type: ignore[no-untyped-def]
            port, made = yield self.serve(shared)
            client = yield self.stdlib_client(port)
            client.transport.write(client.record(b"hello"))
            try:
                client.tls.unwrap()
            except ssl.SSLWantReadError:
                pass
            client.flush()
            outcome = yield made[0].ended
            return outcome

        outcome = yield self.both_ways(scenario)
        self.assertEqual(outcome, (b"hello", "ConnectionDone"))

    @defer.inlineCallbacks
    def test_a_peer_that_resets_mid_record(self):  # type: ignore[no-untyped-def]
        @defer.inlineCallbacks
        def scenario(shared: bool):  # type: ignore[no-untyped-def]
            port, made = yield self.serve(shared)
            client = yield self.stdlib_client(port)
            record = client.record(b"x" * 1000)
            sock = client.transport.getHandle()
            # Twisted's write buffer is empty (the server has read all so
            # far): half a record straight on the socket, then a reset.
            sock.send(record[: len(record) // 2])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.transport.abortConnection()
            outcome = yield made[0].ended
            return outcome

        outcome = yield self.both_ways(scenario)
        self.assertEqual(outcome, (b"", "ConnectionLost"))

    @defer.inlineCallbacks
    def test_bytes_after_a_tls_alert(self):  # type: ignore[no-untyped-def]
        # A fatal handshake_failure alert, in the clear where records are
        # encrypted, then bytes that are no TLS at all.
        alert = b"\x15\x03\x03\x00\x02\x02\x28"

        @defer.inlineCallbacks
        def scenario(shared: bool):  # type: ignore[no-untyped-def]
            port, made = yield self.serve(shared)
            client = yield self.stdlib_client(port)
            client.transport.write(client.record(b"before") + alert + b"not TLS at all\r\n" * 64)
            outcome = yield made[0].ended
            return outcome

        data, how = yield self.both_ways(scenario)
        self.assertEqual((data, how), (b"before", "Error"))

    @defer.inlineCallbacks
    def test_bytes_after_close_notify(self):  # type: ignore[no-untyped-def]
        @defer.inlineCallbacks
        def scenario(shared: bool):  # type: ignore[no-untyped-def]
            port, made = yield self.serve(shared)
            client = yield self.stdlib_client(port)
            hello = client.record(b"hello")
            try:
                client.tls.unwrap()
            except ssl.SSLWantReadError:
                pass
            client.transport.write(hello + client.outgoing.read() + b"trailing junk" * 100)
            outcome = yield made[0].ended
            return outcome

        data, how = yield self.both_ways(scenario)
        self.assertEqual(data, b"hello")
