"""
The proxy as a twisted.web resource: every request of the site comes here.
"""

from __future__ import annotations

from typing import Optional

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from lbproxy.forwarder import Forwarder
from lbproxy.site import ProxyRequest


def refusal(request: ProxyRequest) -> Optional[tuple]:
    """
    Why a request must not be forwarded, as C{(code, phrase, detail)}, or
    L{None} when it may be.
    """
    if request.method == b"CONNECT":
        return (501, b"Not Implemented", b"CONNECT is not supported")
    hosts = request.requestHeaders.getRawHeaders(b"host")
    if hosts is None:
        if request.clientproto == b"HTTP/1.1":
            return (400, b"Bad Request", b"an HTTP/1.1 request needs a Host header")
    elif len(hosts) > 1:
        return (400, b"Bad Request", b"more than one Host header")
    return None


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
            self.forwarder.forward(request)
        return NOT_DONE_YET
