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
import subprocess
import sys
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


def pump(source: SSL.Connection, target: SSL.Connection) -> None:
    """The ciphertext C{source} has to send into C{target}, 32 KiB at a time, as Twisted."""
    while True:
        try:
            data = source.bio_read(32768)
        except SSL.WantReadError:
            return
        target.bio_write(data)


def read_all(connection: SSL.Connection) -> List[bytes]:
    """The plaintext C{connection} has, 32 KiB at a time."""
    read: List[bytes] = []
    while True:
        try:
            read.append(connection.recv(32768))
        except SSL.WantReadError:
            return read


def resident_mib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) >> 10
    raise AssertionError("no VmRSS in /proc/self/status")


#: The child of test_a_long_transfer_leaves_no_copies_behind: the bytes
#: received and the growth of its resident memory, in MiB.
LONG_TRANSFER = """
import os, sys
from OpenSSL import SSL
from lbproxy import tlsio
from tests.test_tlsio import pump, read_all, resident_mib

context = SSL.Context(SSL.TLS_SERVER_METHOD)
context.use_certificate_file(sys.argv[1])
context.use_privatekey_file(sys.argv[2])
server = tlsio.SharedBufferConnection(context, None)
server.set_accept_state()
client = tlsio.SharedBufferConnection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
client.set_connect_state()
for _ in range(10):
    for end in (client, server):
        try:
            end.do_handshake()
        except SSL.WantReadError:
            pass
    pump(client, server)
    pump(server, client)
payload = os.urandom(1 << 20)


def transfer(mib):
    received = 0
    for _ in range(mib):
        for start in range(0, len(payload), 16384):
            server.send(payload[start : start + 16384])
        pump(server, client)
        received += sum(map(len, read_all(client)))
    return received


transfer(32)  # the heap, the JIT's code and the buffers at their working size
before = resident_mib()
received = transfer(64)
print(received, resident_mib() - before)
"""


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
            (SSL.Connection, "_handle_bio_errors"),
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

    def test_writes_before_a_handshake_go_as_pyopenssls(self) -> None:
        """
        Each write to a connection that has not started does what
        pyOpenSSL's does: through the buffer, or (nothing to write, more
        than the buffer holds, anything but bytes) by pyOpenSSL itself.
        """

        def outcome(make: Any, write: str, data: Any) -> Tuple[str, str, bytes]:
            connection = make(SSL.Context(SSL.TLS_METHOD), None)
            connection.set_connect_state()
            try:
                done = ("returned", repr(getattr(connection, write)(data)))
            except Exception as e:
                done = (type(e).__name__, str(e))
            try:
                out = connection.bio_read(tlsio.BUFFER_SIZE)[:5]
            except SSL.WantReadError:
                out = b""
            return done + (out,)

        calls = [
            ("send", b"x"),
            ("write", b"x" * tlsio.BUFFER_SIZE),
            ("send", b"x" * (tlsio.BUFFER_SIZE + 1)),
            ("send", b""),
            ("send", bytearray(b"x")),
            ("send", 1),
            ("bio_write", b"\x16\x03\x01\x00\x05hello"),
            ("bio_write", b"x" * tlsio.BUFFER_SIZE),
            ("bio_write", b"x" * (tlsio.BUFFER_SIZE + 1)),
            ("bio_write", memoryview(b"x")),
            ("bio_write", 1),
        ]
        copied: List[int] = []
        kept = tlsio._memmove

        def memmove(target: Any, source: bytes, size: int) -> None:
            copied.append(size)
            kept(target, source, size)

        self.patch(tlsio, "_memmove", memmove)
        seen = set()
        for call in calls:
            ours = outcome(tlsio.SharedBufferConnection, *call)
            self.assertEqual(ours, outcome(SSL.Connection, *call), call)
            seen.add(ours[0])
        self.assertEqual(seen, {"returned", "TypeError", "WantReadError"})
        # Those within the buffer's size went through it.
        self.assertEqual(copied, [1, tlsio.BUFFER_SIZE, 10, tlsio.BUFFER_SIZE])

    def memory_pair(self, make: Any) -> Tuple[SSL.Connection, SSL.Connection]:
        """A server and a client connection of class C{make}, handshaken in memory."""
        server = make(self.server_context, None)
        server.set_accept_state()
        client = make(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        client.set_connect_state()
        for _ in range(10):
            for end in (client, server):
                try:
                    end.do_handshake()
                except SSL.WantReadError:
                    pass
            pump(client, server)
            pump(server, client)
        self.assertEqual(client.get_protocol_version_name(), server.get_protocol_version_name())
        return server, client

    def test_every_size_both_ways_in_memory(self) -> None:
        server, client = self.memory_pair(tlsio.SharedBufferConnection)
        for size in (1, 1000, 16384, 16385, tlsio.BUFFER_SIZE, tlsio.BUFFER_SIZE + 1):
            for sender, receiver in ((server, client), (client, server)):
                data = os.urandom(size)
                sent = 0
                received = []
                while sent < size:
                    sent += sender.send(data[sent:])
                    pump(sender, receiver)
                    received.extend(read_all(receiver))
                self.assertEqual(b"".join(received), data, size)

    def test_writes_make_no_from_buffer_copies(self) -> None:
        """
        pyOpenSSL's C{send} and C{bio_write} hand OpenSSL the bytes through
        C{ffi.from_buffer}, which on PyPy copies young C{bytes} to raw
        memory kept until a major collection (docs/pypy-tls-bio.md); the
        connections through the buffers call it for none of their writes.
        """
        calls: List[int] = []
        kept = SSL._ffi

        class Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(kept, name)

            def from_buffer(self, *args: Any) -> Any:
                calls.append(1)
                return kept.from_buffer(*args)

        self.patch(SSL, "_ffi", Counting())
        payload = os.urandom(1 << 20)
        counted: Dict[Any, int] = {}
        for make in (SSL.Connection, tlsio.SharedBufferConnection):
            server, client = self.memory_pair(make)
            del calls[:]
            for start in range(0, len(payload), 16384):
                server.send(payload[start : start + 16384])
                client.send(payload[start : start + 100])
                pump(server, client)
                pump(client, server)
            self.assertEqual(sum(map(len, read_all(client))), len(payload))
            self.assertEqual(sum(map(len, read_all(server))), len(payload) // 16384 * 100)
            counted[make] = len(calls)
        self.assertEqual(counted, {SSL.Connection: 4 * 64, tlsio.SharedBufferConnection: 0})

    def test_a_long_transfer_leaves_no_copies_behind(self) -> None:
        """
        A process with the unit's PyPy settings (etc/lbproxy.service) sends
        96 MiB through a pair of connections as Twisted does (new 16 KiB
        slices): the last 64 MiB leave its resident memory where it was.
        With pyOpenSSL's writes it grew by 133 MiB (docs/pypy-tls-bio.md).
        """
        env = dict(
            os.environ,
            PYPY_GC_NURSERY="32MB",
            PYPY_GC_MIN="64MB",
            PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        )
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                LONG_TRANSFER,
                self.files.path("a.crt"),
                self.files.path("a.key"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        received, grown = map(int, out.stdout.split())
        self.assertEqual(received, 64 << 20)
        self.assertLess(grown, 24, f"resident memory grew {grown} MiB over 64 MiB sent")

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
