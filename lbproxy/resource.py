"""
The proxy as a twisted.web resource: every request of the site comes here.
"""

from __future__ import annotations

from typing import Optional, Tuple

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy import headers as rules
from lbproxy.forwarder import Forwarder
from lbproxy.site import ProxyRequest

Refusal = Tuple[int, bytes, bytes]


def refusal(request: ProxyRequest) -> Optional[Refusal]:
    """
    Why a request must not be forwarded, as C{(code, phrase, detail)}, or
    L{None} when it may be.

    The Host rules (RFC 9110 section 7.2, RFC 9112 section 3.2): exactly
    one C{Host} on an HTTP/1.1 request, at most one on HTTP/1.0, each a
    valid C{uri-host [":" port]}; with an absolute-form target, a C{Host}
    naming the target's authority.
    """
    if request.method == b"CONNECT":
        return (501, b"Not Implemented", b"CONNECT is not supported")
    hosts = request.requestHeaders.getRawHeaders(b"host")
    host: Optional[bytes] = None
    if hosts is None:
        if request.clientproto == b"HTTP/1.1":
            return (400, b"Bad Request", b"an HTTP/1.1 request needs a Host header")
    elif len(hosts) > 1:
        return (400, b"Bad Request", b"more than one Host header")
    else:
        host = hosts[0]
        if rules.parse_authority(host) is None:
            return (400, b"Bad Request", b"invalid Host header")
    absolute = rules.absolute_target(request.uri)
    if absolute is not None and host is not None:
        scheme, authority, _ = absolute
        if not rules.same_authority(host, authority, scheme):
            return (400, b"Bad Request", b"the Host header disagrees with the request target")
    return None


def normalize(request: ProxyRequest) -> None:
    """
    Make an absolute-form request origin-form, as a backend expects it: the
    target's path and query go on as C{request.target}, its authority as
    the C{Host} header (RFC 9112 section 3.2.2), which C{X-Forwarded-Host}
    then repeats.  An OPTIONS request for C{http://host} (no path) becomes
    C{OPTIONS *}.  The channel has checked the target's form and authority.
    """
    absolute = rules.absolute_target(request.uri)
    if absolute is not None:
        _, authority, origin = absolute
        if request.method == b"OPTIONS" and request.uri.endswith(b"://" + authority):
            # RFC 9112 section 3.2.4: OPTIONS of the whole server.
            origin = b"*"
        request.target = origin
        request.requestHeaders.setRawHeaders(b"Host", [authority])


class ProxyResource(Resource):
    """
    The root (and only) resource of the proxy's site: it refuses what must
    not reach a backend and hands everything else to the forwarder.
    """

    isLeaf = True

    def __init__(self, forwarder: Forwarder) -> None:
        """
        @param forwarder: Where requests go; the service replaces it when a
            reloaded configuration is applied.
        """
        super().__init__()
        self.forwarder = forwarder

    def render(self, request: ProxyRequest) -> int:  # type: ignore[override]
        problem = refusal(request)
        if problem is not None:
            code, phrase, detail = problem
            request.respond_error(code, phrase, detail, close=True)
        else:
            normalize(request)
            self.forwarder.forward(request)
        return NOT_DONE_YET
