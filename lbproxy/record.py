"""
What the proxy knows of one request, in one typed object, and the seam
between the front and the request's lifecycle.

The front (L{lbproxy.front.site.ProxyRequest}) creates a L{RequestRecord}
when a request is handed on; the lifecycle (L{lbproxy.upstream.lifecycle})
fills in where it went; the front adds how it ended and hands the record to
the accounting (L{lbproxy.ops.accounting}), which reads nothing else.
Nothing is stamped on twisted.web's request object.

While a request is on its way to a server, the front tells the lifecycle
what happens on the client's side through L{IExchange}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import attr
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import Interface

if TYPE_CHECKING:
    from lbproxy.upstream.pool import Pool, ServerState


@attr.s(slots=True, auto_attribs=True)
class RequestRecord:
    """
    One request, from its arrival to its access log line.

    Set by the front: C{method}, C{target} (as the client sent it),
    C{protocol}, C{client} (the client's address), C{scheme}, C{headers}
    (the request's header object: by reference, not copied), C{started}.

    Set by the way to a server: C{request_id} (its C{X-Request-ID}), the
    C{pool}, the last C{server} it was sent to and how many C{attempts} it
    took.

    Set by the front when it is over: C{status} (499 when the client went
    away before the response began), C{sent} (response bytes) and
    C{duration} (seconds).
    """

    method: bytes
    target: bytes
    protocol: bytes
    client: str
    scheme: bytes
    headers: Headers
    started: float
    request_id: bytes = b""
    pool: Optional[Pool] = None
    server: Optional[ServerState] = None
    attempts: int = 0
    status: int = 0
    sent: int = 0
    duration: float = 0.0


class IExchange(Interface):
    """
    A request on its way to a server, as the front sees it: what happens on
    the client's side while a response is awaited or relayed.  The front
    holds one per request between the lifecycle attaching it and the
    lifecycle detaching it (L{lbproxy.front.site.ProxyRequest.attach}).
    """

    def touch() -> None:
        """A byte of the request body arrived: the upload is not stalled."""

    def client_lost(reason: Failure) -> None:
        """
        The client connection closed (or its body was refused) before the
        response was complete: stop the server's side and give back what
        the request holds.
        """


__all__ = ["IExchange", "RequestRecord"]
