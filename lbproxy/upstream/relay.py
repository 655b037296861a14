"""
Relaying a server's response to the client: its head at once (with the
headers that must not pass removed and the route's rules applied), its body
as it arrives, with backpressure (a client that reads slowly pauses the
backend connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, cast

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from lbproxy import headers as rules
from lbproxy.routing import Change, changes

if TYPE_CHECKING:
    from lbproxy.upstream.lifecycle import Lifecycle


def change_headers(headers: Headers, to_make: Iterable[Change]) -> None:
    """
    Make header rules' changes (L{lbproxy.routing.changes}) to Twisted's
    C{headers} in place.
    """
    for action, name, value in to_make:
        if action == "remove":
            headers.removeHeader(name)
        elif action == "set":
            headers.setRawHeaders(name, [cast(bytes, value)])
        else:
            headers.addRawHeader(name, cast(bytes, value))


def relay_head(lifecycle: Lifecycle, response: IResponse) -> None:
    """
    Give the client's request the status and headers of C{response}.

    The backend's header object goes to the client as it is, less what must
    not pass; only the front connection's own C{Connection} header (set
    when the client asked to close) is carried over.
    """
    request = lifecycle.request
    server = lifecycle.server
    request.setResponseCode(response.code, response.phrase)
    relayed = response.headers
    for name in rules.response_removals(relayed.getAllRawHeaders()):
        relayed.removeHeader(name)
    route = lifecycle.route
    if route is not None and route.response_rules:
        facts = lifecycle.facts
        if facts is not None:
            facts.server = server.name.encode("ascii", "replace") if server else b"-"
        change_headers(relayed, changes(route.response_rules, facts))
    closing = request.responseHeaders.getRawHeaders(b"connection")
    if closing is not None:
        relayed.setRawHeaders(b"Connection", closing)
    request.responseHeaders = relayed
    length = response.length
    if (
        length is not UNKNOWN_LENGTH
        and request.method != b"HEAD"
        and response.code not in NO_BODY_CODES
    ):
        relayed.setRawHeaders(b"Content-Length", [b"%d" % length])
    if not relayed.hasHeader(b"Date"):
        relayed.setRawHeaders(b"Date", [datetimeToString()])
    sticky = lifecycle.pool.sticky
    if sticky is not None and server is not None and server is not lifecycle.cookie_server:
        relayed.addRawHeader(b"Set-Cookie", sticky.set_cookie(server))


class BodyRelay(Protocol):
    """
    Receives a backend response body and hands it to the lifecycle, which
    writes it to the client; registers the backend connection as the
    request's producer so that a slow client pauses the backend.
    """

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def connectionMade(self) -> None:
        lifecycle = self.lifecycle
        if lifecycle.request.exchange is lifecycle:
            lifecycle.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.lifecycle.body_received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lifecycle.body_finished(reason)


__all__ = ["BodyRelay", "change_headers", "relay_head"]
