"""
The head of a server's response made the client's: the headers that must
not pass removed, the route's rules applied, framing and C{Date} set.  (Its
body is relayed by L{lbproxy.upstream.attempt.Attempt}.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional, Sequence, cast
from typing import Protocol as Structure

from twisted.web.http import NO_BODY_CODES, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from lbproxy import headers as rules
from lbproxy._twisted import header_map, set_clean_header
from lbproxy.routing import Change, changes

if TYPE_CHECKING:
    from lbproxy.front.site import ProxyRequest
    from lbproxy.routing import Facts, Route
    from lbproxy.upstream.pool import Pool, ServerState


class Exchange(Structure):
    """
    What the response head needs of the request's lifecycle
    (L{lbproxy.upstream.lifecycle.Lifecycle}): declared here, read-only,
    so that this module does not import the lifecycle back.
    """

    @property
    def request(self) -> ProxyRequest: ...

    @property
    def route(self) -> Optional[Route]: ...

    @property
    def facts(self) -> Optional[Facts]: ...

    @property
    def pool(self) -> Pool: ...

    @property
    def cookie_server(self) -> Optional[ServerState]: ...


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


def end_to_end(headers: Headers, connection: Optional[Sequence[bytes]]) -> None:
    """
    Remove from a server's response C{headers} what does not go on to the
    client: the hop-by-hop headers, and those named by C{connection} (the
    response's C{Connection} values) or by a C{Connection} header among
    C{headers} (L{lbproxy.headers.removable}).
    """
    present = header_map(headers)
    own = present.get(b"Connection")
    if own:
        connection = [*own, *connection] if connection else own
    drop = rules.HOP_BY_HOP
    if connection:
        drop = drop | rules.connection_tokens(connection)
    gone = [name for name in present if name.lower() in drop]
    for name in gone:
        headers.removeHeader(name)


def relay_head(lifecycle: Exchange, server: ServerState, response: IResponse) -> None:
    """
    Give the client's request the status and headers of C{response}, from
    C{server}.

    The backend's header object goes to the client as it is: the backend's
    agent has removed what must not pass (L{end_to_end}, with the response's
    C{Connection} values, which Twisted's parser keeps apart); only the
    front connection's own C{Connection} header (set when the client asked
    to close) is carried over.
    """
    request = lifecycle.request
    request.setResponseCode(response.code, response.phrase)
    relayed = response.headers
    route = lifecycle.route
    if route is not None and route.response_rules:
        facts = lifecycle.facts
        if facts is not None:
            facts.server = server.name.encode("ascii", "replace")
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
        set_clean_header(relayed, b"Content-Length", [b"%d" % length])
    if not relayed.hasHeader(b"Date"):
        relayed.setRawHeaders(b"Date", [datetimeToString()])
    sticky = lifecycle.pool.sticky
    if sticky is not None and server is not lifecycle.cookie_server:
        relayed.addRawHeader(b"Set-Cookie", sticky.set_cookie(server))


__all__ = ["change_headers", "end_to_end", "relay_head"]
