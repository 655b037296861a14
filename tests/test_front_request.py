"""
The front's request against twisted.web's own: L{ProxyRequest} makes itself
with the attributes twisted.web's C{Request} has, writes a response's head
and first bytes in one write with the bytes twisted.web would write, and
L{ProxyChannel.headerReceived} keeps header lines as twisted.web's does.
"""

from __future__ import annotations

import itertools
from functools import partial
from typing import List, Optional, Sequence, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy._twisted import header_map
from lbproxy.front.site import ProxyRequest, ProxySite

CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
SERVER = IPv4Address("TCP", "127.0.0.1", 8080)


class Holder(Resource):
    """Keeps the requests it is given, unanswered."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: List[ProxyRequest] = []

    def render(self, request: ProxyRequest) -> int:  # type: ignore[override]
        self.requests.append(request)
        return NOT_DONE_YET


def connected(site: server.Site) -> Tuple[http.HTTPChannel, StringTransport]:
    channel = site.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT, hostAddress=SERVER)
    channel.makeConnection(transport)
    return channel, transport


def held(head: bytes) -> Tuple[ProxyRequest, StringTransport]:
    """A request of the proxy's front with C{head}, not yet answered."""
    resource = Holder()
    channel, transport = connected(ProxySite(resource, reactor=Clock()))
    channel.dataReceived(head)
    [request] = resource.requests
    transport.clear()
    return request, transport


class RequestAttributeTests(unittest.TestCase):
    def test_the_request_has_twisted_webs_attributes(self) -> None:
        """
        The request made without twisted.web's chain of constructors has
        every attribute twisted.web's C{Request} gives itself, alike.
        """
        resource = Holder()
        site = ProxySite(resource, reactor=Clock())
        channel, transport = connected(site)
        ours = ProxyRequest(channel, 0)
        theirs = server.Request(channel, 0)
        self.assertEqual(set(vars(ours)) - {"started"}, set(vars(theirs)))
        for name, value in vars(theirs).items():
            if name in ("requestHeaders", "responseHeaders"):
                self.assertEqual(list(getattr(ours, name).getAllRawHeaders()), [])
            elif name == "_parsePOSTFormSubmission":
                self.assertIs(getattr(ours, name), False)  # bodies are never parsed
            else:
                self.assertEqual(getattr(ours, name), value, name)
        self.assertIsNot(ours.requestHeaders, ours.responseHeaders)


#: (method, version, code, headers, writes) of the responses compared.
STATUSES = (200, 204, 304, 404)
METHODS = (b"GET", b"HEAD")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
HEADS: Sequence[Sequence[Tuple[bytes, bytes]]] = (
    (),
    ((b"Content-Length", b"5"),),
    ((b"content-type", b"text/plain"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")),
    ((b"Connection", b"close"), (b"Content-Length", b"0")),
    ((b"Transfer-Encoding", b"chunked"), (b"X-Odd", b"\x80\xff")),
)
WRITES: Sequence[Sequence[bytes]] = ((), (b"hello",), (b"",), (b"he", b"", b"llo"))


def answered(
    method: bytes,
    version: bytes,
    code: int,
    head: Sequence[Tuple[bytes, bytes]],
    writes: Sequence[bytes],
    twisted_web: bool,
    extra: Optional[str] = None,
) -> Tuple[bytes, int, int, bool]:
    """
    What the client receives for a response, written by the front's
    request or (C{twisted_web}) by twisted.web's C{Request.write}, and the
    request's C{sentLength}, C{chunked} and the connection's persistence.
    """
    request, transport = held(method + b" / " + version + b"\r\nHost: h\r\n\r\n")
    request.setResponseCode(code)
    headers = Headers()
    for name, value in head:
        headers.addRawHeader(name, value)
    request.responseHeaders = headers
    if extra == "etag":
        request.setETag(b'"x"')
    elif extra == "cookie":
        request.addCookie(b"k", b"v")
    for data in writes:
        if twisted_web:
            # twisted.web's write, or what it replaced itself with for a
            # response without a body.
            vars(request).get("write", partial(server.Request.write, request))(data)
        else:
            request.write(data)
    if twisted_web and not request.startedWriting:
        server.Request.write(request, b"")
    request.finish()
    return (transport.value(), request.sentLength, request.chunked, transport.disconnecting)


class ResponseHeadTests(unittest.TestCase):
    def test_the_bytes_are_twisted_webs(self) -> None:
        """
        For every status, method, version, head and sequence of writes, the
        client receives what twisted.web's own write would have sent, and
        the request and connection end in the same state.
        """
        cases = itertools.product(METHODS, VERSIONS, STATUSES, HEADS, WRITES)
        for method, version, code, head, writes in cases:
            ours = answered(method, version, code, head, writes, twisted_web=False)
            theirs = answered(method, version, code, head, writes, twisted_web=True)
            self.assertEqual(ours, theirs, (method, version, code, head, writes))

    def test_an_etag_or_a_cookie_is_left_to_twisted_web(self) -> None:
        for extra in ("etag", "cookie"):
            ours = answered(b"GET", b"HTTP/1.1", 200, (), (b"x",), False, extra)
            theirs = answered(b"GET", b"HTTP/1.1", 200, (), (b"x",), True, extra)
            self.assertEqual(ours, theirs, extra)
            self.assertIn(b"ETag" if extra == "etag" else b"Set-Cookie", ours[0])

    def test_a_head_and_its_first_bytes_go_in_one_write(self) -> None:
        request, transport = held(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        writes: List[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        request.setHeader(b"Content-Length", b"2")
        request.write(b"ok")
        self.assertEqual(writes, [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])


class HeaderLineTests(unittest.TestCase):
    def test_headers_are_kept_as_twisted_web_keeps_them(self) -> None:
        """
        The front's channel keeps the header lines it accepts with the
        names, values and order twisted.web's channel gives them.
        """
        names = [
            b"host",
            b"HOST",
            b"x-forwarded-for",
            b"etag",
            b"te",
            b"dnt",
            b"www-authenticate",
            b"content-md5",
            b"x-xss-protection",
            b"Accept-Encoding",
            b"X-a_b.c~d",
        ]
        values = [b"v", b"  spaced \t", b"", b"\x80\xff obs-text", b"a, b"]
        lines = [b"Host: h"]
        for name, value in itertools.product(names[1:], values):
            lines.append(name + b":" + value)
        head = b"GET / HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
        ours, _ = held(head)

        class Plain(http.Request):
            seen: List[http.Request] = []

            def process(self) -> None:
                self.seen.append(self)

        channel = http.HTTPChannel()
        channel.requestFactory = Plain  # type: ignore[assignment]
        channel.makeConnection(StringTransport())
        channel.dataReceived(head)
        [theirs] = Plain.seen
        self.assertEqual(
            list(header_map(ours.requestHeaders).items()),
            list(header_map(theirs.requestHeaders).items()),
        )
        self.assertEqual(ours.requestHeaders.getRawHeaders(b"content-md5")[0], b"v")
