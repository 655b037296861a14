"""
Every private part of Twisted listed in L{lbproxy._twisted.INTERNALS} is
there on the installed Twisted: a release that changes one fails here,
naming it and what lbproxy needs it for.
"""

from __future__ import annotations

import importlib
import socket
from typing import Dict, List, Tuple

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import HTTPChannel, Request
from twisted.web.http_headers import Headers

from lbproxy import _twisted
from lbproxy._twisted import (
    INTERNALS,
    ChunkedTransferDecoder,
    ClientRequest,
    H2Connection,
    HTTP11ClientFactory,
    HTTP11ClientProtocol,
    HTTPClientParser,
)


class _Held(Request):
    """A request that is never answered: the channel holds what follows it."""

    def process(self) -> None:
        pass


def _owners() -> Dict[str, object]:
    """A live instance (or the class) of every owner named in INTERNALS."""
    parser = HTTPClientParser(ClientRequest(b"GET", b"/", Headers(), None), lambda rest: None)
    parser.makeConnection(StringTransport())
    parser.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    waiting = HTTPClientParser(ClientRequest(b"GET", b"/", Headers(), None), lambda rest: None)
    waiting.makeConnection(StringTransport())
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    # A decoder inside a chunk: the state in which the channel reads it.
    decoder = ChunkedTransferDecoder(lambda data: None, lambda rest: None)
    decoder.dataReceived(b"5\r\nab")
    owners: Dict[str, object] = {
        "Agent": Agent,
        "ClientRequest": ClientRequest,
        "Headers": Headers(),
        "HTTPConnectionPool": HTTPConnectionPool(reactor, persistent=False),
        "_HTTP11ClientFactory": HTTP11ClientFactory(lambda p: None, "metadata"),
        "HTTP11ClientProtocol": HTTP11ClientProtocol(),
        "HTTPClientParser": parser,
        "HTTPClientParser before its response": waiting,
        "TransportProxyProducer": _twisted.TransportProxyProducer(StringTransport()),
        "HTTPChannel": channel,
        "_ChunkedTransferDecoder": decoder,
        "Request": Request(channel),
        # Its first send loop goes on the given clock, never run.
        "H2Connection": H2Connection(Clock()),
    }
    channel.connectionLost(None)  # type: ignore[arg-type]
    return owners


def _listening(case: unittest.TestCase) -> object:
    """A live listening C{tcp.Port} on loopback, that stops with C{case}."""
    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
    case.addCleanup(port.stopListening)
    return port


def _connection(case: unittest.TestCase) -> object:
    """A live C{tcp.Connection} (a C{tcp.Server}) on a loopback pair, closed with C{case}."""
    ours, peer = socket.socketpair()
    case.addCleanup(peer.close)
    case.addCleanup(ours.close)
    connection = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, MemoryReactor())
    return connection


def _epoll_reactor(case: unittest.TestCase) -> object:
    """A new epoll reactor (never run), closed with C{case}."""
    from twisted.internet.epollreactor import EPollReactor

    epoll = EPollReactor()
    case.addCleanup(epoll._poller.close)  # type: ignore[attr-defined]
    case.addCleanup(lambda: epoll.waker.connectionLost(None))  # type: ignore[attr-defined]
    return epoll


def missing(table: Dict[Tuple[str, str], str], owners: Dict[str, object]) -> List[str]:
    """The internals of C{table} that are not there, each with its reason."""
    gone: List[str] = []
    for (owner, names), why in table.items():
        for name in names.split("/"):
            if owner.startswith(("twisted.", "OpenSSL.")):
                there = hasattr(importlib.import_module(owner), name)
            else:
                there = hasattr(owners[owner], name)
            if not there:
                gone.append(f"{owner}.{name} ({why})")
    return gone


class TwistedInternalsTests(unittest.TestCase):
    def test_every_listed_internal_is_there(self) -> None:
        owners = _owners()
        owners["tcp.Port"] = _listening(self)
        owners["tcp.Connector"] = tcp.Connector("127.0.0.1", 1, ClientFactory(), 30, None, reactor)
        owners["tcp.Connection"] = _connection(self)
        owners["EPollReactor"] = _epoll_reactor(self)
        from OpenSSL import SSL, _util

        owners["pyOpenSSL's lib"] = _util.lib
        owners["SSL.Connection"] = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        self.assertEqual(
            missing(INTERNALS, owners),
            [],
            "this Twisted release changed internals that lbproxy relies on "
            "(see INTERNALS in lbproxy/_twisted.py)",
        )

    def test_the_internals_have_the_shapes_lbproxy_expects(self) -> None:
        owners = _owners()
        pool = owners["HTTPConnectionPool"]
        self.assertIsInstance(
            pool._connections,  # type: ignore[attr-defined]
            dict,
            "HTTPConnectionPool._connections is no longer a dict of idle connections",
        )
        self.assertTrue(
            issubclass(pool._factory, HTTP11ClientFactory),  # type: ignore[attr-defined]
            "HTTPConnectionPool._factory is no longer _HTTP11ClientFactory",
        )
        self.assertTrue(
            issubclass(_twisted.MalformedChunkedDataError, Exception),
            "http._MalformedChunkedDataError is no longer an exception",
        )
        self.assertIsInstance(
            owners["HTTPChannel"]._transferDecoder,  # type: ignore[attr-defined]
            ChunkedTransferDecoder,
            "HTTPChannel._transferDecoder no longer holds the chunked decoder",
        )

    def test_the_request_line_is_read_from_the_channel(self) -> None:
        channel = HTTPChannel()
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"POST /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(
            _twisted.request_line(channel),
            (b"POST", b"/a?b", b"HTTP/1.1"),
            "HTTPChannel._command/_path/_version no longer hold the request line",
        )
        channel.connectionLost(None)  # type: ignore[arg-type]

    def test_a_parsers_response_deferred_can_be_taken(self) -> None:
        from twisted.web._newclient import Request as ClientRequest

        parser = HTTPClientParser(ClientRequest(b"GET", b"/", Headers(), None), lambda rest: None)
        parser.makeConnection(StringTransport())
        deferred = _twisted.take_response_deferred(parser)
        self.assertIsInstance(deferred, Deferred)
        self.assertFalse(
            hasattr(parser, "_responseDeferred"),
            "HTTPClientParser._responseDeferred is no longer where its response Deferred is",
        )

    def test_bytes_past_a_request_are_taken_from_the_channel(self) -> None:
        channel = HTTPChannel()
        channel.requestFactory = lambda *a, **k: _Held(*a, **k)  # type: ignore[assignment]
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nearly bytes")
        self.assertEqual(
            _twisted.take_buffered_data(channel),
            b"early bytes",
            "HTTPChannel._dataBuffer no longer holds the bytes past a request being handled",
        )
        self.assertEqual(_twisted.take_buffered_data(channel), b"")
        channel.connectionLost(None)  # type: ignore[arg-type]

    def test_the_http2_internals_have_the_shapes_lbproxy_expects(self) -> None:
        connection = H2Connection(Clock())
        self.assertIsInstance(
            connection._outboundStreamQueues,  # type: ignore[attr-defined]
            dict,
            "H2Connection._outboundStreamQueues is no longer a dict of stream queues",
        )
        self.assertIs(
            connection._stillProducing,  # type: ignore[attr-defined]
            True,
            "H2Connection._stillProducing no longer says the connection is open",
        )
        self.assertIsNone(
            connection._abortingCall,  # type: ignore[attr-defined]
            "H2Connection._abortingCall no longer starts as None",
        )

    def test_accept_at_most_one_takes_one_connection_per_readiness(self):  # type: ignore[no-untyped-def]
        accepted = []

        class Held(Protocol):
            def connectionMade(self) -> None:
                self.lost: Deferred[None] = Deferred()
                accepted.append(self)

            def connectionLost(self, reason: object = None) -> None:
                self.lost.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Held), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        # The test calls doRead itself, as the reactor would.
        port.stopReading()
        clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(4)]
        for client in clients:
            self.addCleanup(client.close)
        _twisted.accept_at_most(port, 1)
        port.doRead()
        self.assertEqual(len(accepted), 1)
        # Twisted raised its own figure after a full accept: set it again.
        _twisted.accept_at_most(port, 1)
        port.doRead()
        self.assertEqual(len(accepted), 2)
        _twisted.accept_at_most(port, 100)
        port.doRead()
        self.assertEqual(len(accepted), 4)
        for protocol in accepted:
            protocol.transport.abortConnection()
        return DeferredList([protocol.lost for protocol in accepted])

    def test_a_missing_internal_is_named(self) -> None:
        table = {
            ("Agent", "_requestWithEndpoint/_gone"): "why",
            ("twisted.web.http", "_NoSuchThing"): "because",
        }
        self.assertEqual(
            missing(table, {"Agent": Agent}),
            ["Agent._gone (why)", "twisted.web.http._NoSuchThing (because)"],
        )


class CleanHeaderTests(unittest.TestCase):
    def test_a_clean_header_is_set_as_setRawHeaders_sets_it(self) -> None:
        """
        set_clean_header with a name in canonical_name's spelling leaves the
        header object as setRawHeaders leaves it: same names, same order,
        same values, on the installed Twisted.
        """
        names = [b"X-Request-ID", b"x-forwarded-for", b"Via", b"Content-Length", b"te"]
        twisted_way, clean_way = Headers(), Headers()
        for headers in (twisted_way, clean_way):
            headers.setRawHeaders(b"host", [b"h"])
            headers.setRawHeaders(b"via", [b"1.0 old"])
        for name in names:
            twisted_way.setRawHeaders(name, [b"v " + name])
            _twisted.set_clean_header(clean_way, _twisted.canonical_name(name), [b"v " + name])
        self.assertEqual(list(clean_way.getAllRawHeaders()), list(twisted_way.getAllRawHeaders()))
        self.assertEqual(_twisted.canonical_name(b"x-request-id"), b"X-Request-Id")
        self.assertEqual(_twisted.canonical_name(b"te"), b"TE")
