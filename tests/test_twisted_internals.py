"""
Every private part of Twisted listed in L{lbproxy._twisted.INTERNALS} is
there on the installed Twisted: a release that changes one fails here,
naming it and what lbproxy needs it for.
"""

from __future__ import annotations

import importlib
from typing import Dict, List, Tuple

from twisted.internet import reactor
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import HTTPChannel, Request
from twisted.web.http_headers import Headers

from lbproxy import _twisted
from lbproxy._twisted import (
    INTERNALS,
    ChunkedTransferDecoder,
    HTTP11ClientFactory,
    HTTP11ClientProtocol,
    HTTPClientParser,
)


def _owners() -> Dict[str, object]:
    """A live instance (or the class) of every owner named in INTERNALS."""
    from twisted.web._newclient import Request as ClientRequest

    parser = HTTPClientParser(ClientRequest(b"GET", b"/", Headers(), None), lambda rest: None)
    parser.makeConnection(StringTransport())
    parser.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    # A decoder inside a chunk: the state in which the channel reads it.
    decoder = ChunkedTransferDecoder(lambda data: None, lambda rest: None)
    decoder.dataReceived(b"5\r\nab")
    owners: Dict[str, object] = {
        "Agent": Agent,
        "HTTPConnectionPool": HTTPConnectionPool(reactor, persistent=False),
        "_HTTP11ClientFactory": HTTP11ClientFactory(lambda p: None, "metadata"),
        "HTTP11ClientProtocol": HTTP11ClientProtocol(),
        "HTTPClientParser": parser,
        "HTTPChannel": channel,
        "_ChunkedTransferDecoder": decoder,
        "Request": Request(channel),
    }
    channel.connectionLost(None)  # type: ignore[arg-type]
    return owners


def missing(table: Dict[Tuple[str, str], str], owners: Dict[str, object]) -> List[str]:
    """The internals of C{table} that are not there, each with its reason."""
    gone: List[str] = []
    for (owner, names), why in table.items():
        for name in names.split("/"):
            if owner.startswith("twisted."):
                there = hasattr(importlib.import_module(owner), name)
            else:
                there = hasattr(owners[owner], name)
            if not there:
                gone.append(f"{owner}.{name} ({why})")
    return gone


class TwistedInternalsTests(unittest.TestCase):
    def test_every_listed_internal_is_there(self) -> None:
        self.assertEqual(
            missing(INTERNALS, _owners()),
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

    def test_a_missing_internal_is_named(self) -> None:
        table = {
            ("Agent", "_requestWithEndpoint/_gone"): "why",
            ("twisted.web.http", "_NoSuchThing"): "because",
        }
        self.assertEqual(
            missing(table, {"Agent": Agent}),
            ["Agent._gone (why)", "twisted.web.http._NoSuchThing (because)"],
        )
