"""
Forwarding one client request to a server of a pool and its response back.

The L{Forwarder} makes the request ready for a backend (the proxy's own
headers, its C{X-Request-ID}, the route's header rules) and hands it to a
L{Lifecycle}, the state machine that walks the pool's candidates, waits in
the pool's queue, retries, times out and relays the response (see
L{lbproxy.upstream.lifecycle}).  The retry policy is in
L{lbproxy.upstream.retry}.  A request that asks for an allowed protocol
upgrade (L{lbproxy.upgrade}) goes on with its C{Connection: Upgrade} and
C{Upgrade} headers; a C{101} makes its attempt a tunnel
(L{lbproxy.upstream.tunnel}).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

from lbproxy import headers as rules
from lbproxy._twisted import canonical_name, header_map, set_clean_header
from lbproxy.routing import Facts, Route, changes
from lbproxy.upstream.backend import BackendAgent
from lbproxy.upstream.failures import describe, is_client_error, was_not_sent
from lbproxy.upstream.lifecycle import Lifecycle
from lbproxy.upstream.pool import Pool
from lbproxy.upstream.relay import change_headers
from lbproxy.upstream.retry import IDEMPOTENT, RETRY_BACKOFF
from lbproxy.upstream.tunnel import requested_upgrade

if TYPE_CHECKING:
    from lbproxy.front.site import ProxyRequest


#: How Twisted's headers spell it.
_X_REQUEST_ID = canonical_name(b"X-Request-ID")


def _set_header(headers: Headers, name: bytes, values: List[bytes]) -> None:
    """
    C{headers.setRawHeaders(name, values)} for a header of
    L{rules.request_changes} (its names are spelt as Twisted spells them),
    without sanitizing values again that hold no CR or LF.
    """
    for value in values:
        if b"\r" in value or b"\n" in value:
            headers.setRawHeaders(name, values)
            return
    set_clean_header(headers, name, values)


class RequestIds:
    """
    The request IDs the proxy makes: 32 hexadecimal digits of C{os.urandom}
    each, read for L{BATCH} IDs at a time.  On PyPy 3.9 every C{os.urandom}
    opens, reads and closes C{/dev/urandom} (five system calls, about 5 µs).

    Filled on first use, when requests arrive: after twistd has forked to
    daemonize, and in each worker, which is a new process (not a fork), so
    no two processes hand out the same digits.
    """

    BATCH = 256

    def __init__(self) -> None:
        self._digits = b""
        self._at = 0

    def take(self) -> bytes:
        """A new request ID, never handed out before."""
        at = self._at
        if at >= len(self._digits):
            self._digits = os.urandom(16 * self.BATCH).hex().encode("ascii")
            at = 0
        self._at = at + 32
        return self._digits[at : at + 32]


class Forwarder:
    """
    Sends requests to one pool through the backend agent.

    @param via: The pseudonym for C{Via} headers, or L{None}.
    @param clock: Where timeouts are scheduled (the reactor).
    """

    def __init__(
        self,
        pool: Pool,
        agent: BackendAgent,
        via: Optional[bytes],
        clock: IReactorTime,
        client_body_timeout: float = 30.0,
    ) -> None:
        self.pool = pool
        self.agent = agent
        self.via = via
        self.clock = clock
        config = pool.config
        self.response_timeout = config.response_timeout
        self.idle_timeout = config.idle_timeout
        # Gaps in a client's request body: the stricter of the two limits.
        self.upload_idle_timeout = min(client_body_timeout, config.idle_timeout)
        self.attempts = config.retries + 1
        self._request_ids = RequestIds()

    def forward(
        self, request: ProxyRequest, route: Optional[Route] = None, facts: Optional[Facts] = None
    ) -> None:
        """
        Forward C{request} and respond to it; never raises.

        @param route: The request's route: its header rules and C{Host}
            rewrite are applied.
        @param facts: What the route's rules read; needed when
            C{route.needs_facts}.
        """
        record = request.record
        assert record is not None, "the front creates the record before forwarding"
        client = record.client.encode("ascii", "replace")
        # The client's header object becomes the backend's: it is changed in
        # place rather than copied, which every request would pay for.
        outgoing = request.requestHeaders
        pool = self.pool
        key = pool.request_key(client, outgoing.getRawHeaders, request.uri)
        cookie_server = None
        if pool.sticky is not None:
            cookie_server = pool.sticky_server(outgoing.getRawHeaders(b"cookie"))
        version = record.protocol[len(b"HTTP/") :]
        # Read before the hop-by-hop headers go.
        upgrade = requested_upgrade(request)
        remove, add = rules.request_changes(
            outgoing.getAllRawHeaders(), client, record.scheme, version, self.via
        )
        for name in remove:
            outgoing.removeHeader(name)
        for name, values in add:
            _set_header(outgoing, name, values)
        if upgrade is not None:
            outgoing.setRawHeaders(b"Connection", [b"Upgrade"])
            outgoing.setRawHeaders(b"Upgrade", [upgrade])
        request_id = rules.kept_request_id(header_map(outgoing).get(_X_REQUEST_ID))
        if request_id is None:
            request_id = self._request_ids.take()
            set_clean_header(outgoing, _X_REQUEST_ID, [request_id])
        record.request_id = request_id
        record.pool = pool
        if route is not None:
            if facts is not None:
                facts.client = client
                facts.request_id = request_id
            if route.request_rules:
                change_headers(outgoing, changes(route.request_rules, facts))
            if route.host_rewrite is not None:
                outgoing.setRawHeaders(b"Host", [route.host_rewrite])
        Lifecycle(self, request, record, route, facts, key, cookie_server).start()


__all__ = [
    "IDEMPOTENT",
    "RETRY_BACKOFF",
    "Forwarder",
    "RequestIds",
    "change_headers",
    "describe",
    "is_client_error",
    "was_not_sent",
]
