"""
The way to the backends: Twisted's C{Agent} over one persistent
C{HTTPConnectionPool}, used the way a proxy needs it.

Three things differ from a plain C{Agent.request(method, url)}:

 - Each server's endpoint, pool key and parsed URI are built once, when the
   configuration is applied (L{Route}), not parsed from a URL on every
   request.
 - The client's request target is sent byte for byte.  C{Agent.request}
   re-assembles the target from a parsed URL, which drops an empty query
   (C{/a?}) or empty parameters (C{/a;}); a proxy must not change them.
 - A response comes with the headers that go on to the client only: the
   hop-by-hop ones are removed, and so are those its C{Connection} header
   names, which Twisted's parser files away with the framing headers, out
   of reach of the response object (L{lbproxy.upstream.relay.end_to_end}).

 - A backend connection is reused only when nothing can be left on it from
   the previous response (see L{_BackendProtocol}): stray bytes never answer
   another client's request.

These rest on private parts of C{twisted.web.client} and
C{twisted.web._newclient}, imported from and listed with their reasons in
L{lbproxy._twisted}; C{tests/test_twisted_internals.py} fails, naming the
one that is gone, if a Twisted release changes them.
"""

from __future__ import annotations

import select
import socket
from functools import partial
from typing import Callable, List, Optional, Union

import attr
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse

from lbproxy import headers as rules
from lbproxy._twisted import (
    HTTP11ClientFactory,
    HTTP11ClientProtocol,
    HTTPClientParser,
    RequestNotSent,
    RetryingHTTP11ClientProtocol,
    client_request,
    finish_response,
    give_up,
    header_map,
    read_response_head,
    request_head,
    send_without_body,
)
from lbproxy.config import PoolConfig, ServerConfig
from lbproxy.tlsio import reading_client_creator
from lbproxy.transports import connecting
from lbproxy.upstream.relay import end_to_end
from lbproxy.upstream.tunnel import Switched, SwitchedConnection, watch_for_switch

log = Logger()


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Route:
    """
    Everything needed to send a request to one server, built once.
    """

    key: tuple
    endpoint: IStreamClientEndpoint
    uri: URI


class _BackendProtocol(HTTP11ClientProtocol):
    """
    An HTTP/1.1 client connection to a backend that leaves the response's
    C{Connection} header among its headers, and never lets a byte that is not
    part of the response in flight be read as a response.

    Twisted's client parses whatever arrives on a connection as the response
    to the request in flight, so a byte that a backend sends outside of a
    response (a body after a HEAD, 204 or 304 response, more than its
    C{Content-Length}) would answer the next request sent on the connection,
    often another client's.  Hence:

     - A byte that arrives while no response is expected (the connection is
       idle in the pool, or its response is complete) closes the connection
       at once; it is never parsed.
     - A connection goes back to the pool only when nothing can be left on it
       from its response, as far as that can be known: not when bytes were
       already read past the end of the response, and not after a HEAD, 204
       or 304 response whose head announces a body (a C{Content-Length}
       other than 0, or a C{Transfer-Encoding}): that is where a confused
       backend sends one anyway, possibly later.
     - Before an idle connection takes a request, its socket is checked for
       bytes (or a close) that the reactor has not read yet
       (L{ready_for_request}).

    What stays possible: a backend that writes past its C{Content-Length} in
    a later segment, which reaches the proxy only after the next request was
    sent on the connection.  No client can tell those bytes from a response.
    """

    def __init__(self, quiescentCallback: Callable[[HTTP11ClientProtocol], None]) -> None:
        super().__init__(self._response_complete)
        self._return_to_pool = quiescentCallback
        #: The last response may be followed by stray bytes.
        self._tainted = False
        #: Closed by this class: never to be handed out again.
        self._discarded = False
        #: After a 101: the connection is a tunnel's, no longer HTTP.
        self.switched: Optional[SwitchedConnection] = None
        #: The socket under the transport (found once, on the first reuse).
        self._socket: Union[socket.socket, None, bool] = False
        #: Polls that socket for bytes or a close (made with it).
        self._readable: Optional[select.poll] = None
        #: Closes the connection once idle in the pool for its timeout
        #: (L{BackendConnectionPool}); it runs on while the connection is
        #: busy and is moved, not made again, when it goes back.
        self.idle_timer: Optional[IDelayedCall] = None

    @property
    def state(self) -> str:
        """
        Twisted's state, except that a connection this class has closed is
        never C{QUIESCENT}: the pool does not hand it out while the close is
        on its way.
        """
        if self._discarded:
            return "DISCARDED"
        return super().state  # type: ignore[no-any-return]

    def dataReceived(self, data: bytes) -> None:
        if self.switched is not None:
            self.switched.data_received(data)
            return
        if self._parser is None:
            # No request in flight, or its response is complete.
            self._discard(f"{len(data)} bytes arrived while no response was expected")
            return
        try:
            # A head that arrived whole is read in one pass (the usual case).
            if read_response_head(self._parser, data):
                return
        except BaseException:
            give_up(self)
            return
        super().dataReceived(data)

    def _finishResponse(self, rest: bytes) -> None:
        if rest:
            self._tainted = True
            self._warn(f"{len(rest)} bytes arrived past the end of a response")
        parser = self._parser
        if parser is not None and _announces_unsent_body(parser):
            self._tainted = True
        if parser is None or not finish_response(self, parser):
            super()._finishResponse(rest)

    def _response_complete(self, protocol: HTTP11ClientProtocol) -> None:
        if self._tainted or self._discarded:
            self._discarded = True
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self._return_to_pool(self)

    def ready_for_request(self) -> bool:
        """
        Whether this idle connection can take a request: nothing, not even a
        close, has arrived on its socket since its last response.  A
        connection that cannot is closed.
        """
        if self._discarded or super().state != "QUIESCENT":
            return False
        sock = self._socket
        if sock is False:
            sock = self._socket = _socket_of(self.transport)
            if sock is not None:
                self._readable = select.poll()
                self._readable.register(sock.fileno(), select.POLLIN)
        if sock is None:
            return True
        # Nothing to read and no close: what the usual case costs is one
        # poll(), not a recv() that fails (its exception costs more than
        # the system call).
        if not self._readable.poll(0):  # type: ignore[union-attr]
            return True
        try:
            waiting = sock.recv(1, socket.MSG_PEEK)  # type: ignore[union-attr]
        except BlockingIOError:
            return True
        except OSError:
            waiting = b""
        if waiting:
            self._discard("bytes arrived while no response was expected")
        else:
            # Closed by the server (or broken): nothing to report.
            self._discarded = True
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
        return False

    def _discard(self, why: str) -> None:
        """Close the connection at once, with a log line saying why."""
        if self._discarded:
            return
        self._discarded = True
        self._warn(why)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _warn(self, why: str) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        log.warn(
            "backend {host}:{port}: {why}; closing the connection",
            host=getattr(peer, "host", "?"),
            port=getattr(peer, "port", "?"),
            why=why,
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        timer = self.idle_timer
        if timer is not None and timer.active():
            timer.cancel()
        if self.switched is not None:
            self.switched.connection_lost(reason)
        super().connectionLost(reason)

    def _switch(self, connection: SwitchedConnection) -> None:
        self.switched = connection

    def request(self, request):  # type: ignore[no-untyped-def]
        if self._discarded:
            return fail(RequestNotSent())
        head = None
        if request.bodyProducer is None and super().state == "QUIESCENT":
            head = request_head(request)
        if head is not None:
            # The usual case: one write, one Deferred (Twisted's request()
            # makes three) whose response has been through _end_to_end
            # already, the connection's pause at the end of the response
            # head held until its body is taken.
            result = send_without_body(self, request, head, self._end_to_end)
        else:
            result = super().request(request)
        parser = self._parser
        if parser is not None:
            offered = header_map(request.headers).get(b"Upgrade")
            if offered:
                # An upgrade request: a 101 ends HTTP on this connection.
                watch_for_switch(self, parser, offered[0], self._switch)
            if head is None:
                result.addCallback(self._end_to_end, parser)
        return result

    def _end_to_end(self, response: IResponse, parser: HTTPClientParser) -> IResponse:
        """
        The response with only the headers that go on to the client
        (L{end_to_end}: the hop-by-hop ones and those its C{Connection}
        names removed); a response framed two ways at once refused.
        """
        if isinstance(response, Switched):
            end_to_end(response.headers, None)
            return response
        framing = header_map(parser.connHeaders)
        if b"Transfer-Encoding" in framing and b"Content-Length" in framing:
            # Ambiguous framing: this connection cannot be trusted for
            # another response.  Close it and fail the attempt.
            response.deliverBody(_Abandon())
            raise AmbiguousFraming("a response with Content-Length and Transfer-Encoding")
        # Twisted's parser keeps the Connection header with the framing
        # headers, out of the response's: its values are handed over here.
        end_to_end(response.headers, framing.get(b"Connection"))
        return response


class AmbiguousFraming(Exception):
    """A backend response framed two ways at once."""


class _Abandon(Protocol):
    """Takes a response body only to close its connection at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


class _BackendProtocolFactory(HTTP11ClientFactory):
    noisy = False

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return _BackendProtocol(self._quiescentCallback)


class BackendConnectionPool(HTTPConnectionPool):
    """
    The proxy's one pool of persistent backend connections.  An idle
    connection with unread bytes or a close waiting on its socket is closed
    rather than handed out (L{_BackendProtocol.ready_for_request}).

    An idle connection closes C{cachedConnectionTimeout} seconds after it
    went back to the pool, as in Twisted's pool, but its timer is not
    cancelled when a request takes it and made again when it comes back: it
    runs on, is moved to the new time when the connection comes back, and
    does nothing if it runs out while the connection is busy.
    """

    _factory = _BackendProtocolFactory

    def idle_connection(
        self, key: tuple, endpoint: IStreamClientEndpoint
    ) -> Union[HTTP11ClientProtocol, RetryingHTTP11ClientProtocol, None]:
        """
        An idle connection for C{key} that can take a request, at once (no
        Deferred), or L{None}: what C{getConnection} fires with at once when
        it has one.  Like Twisted's pool, the connection is wrapped to retry
        an idempotent request once on a new connection when the reused one
        fails before a response.
        """
        idle: Optional[List[_BackendProtocol]] = self._connections.get(key)
        while idle:
            connection = idle.pop(0)
            # Its idle timer runs on (see the class docstring).
            del self._timeouts[connection]
            # Twisted's pool takes the first idle connection that is
            # QUIESCENT; this one also closes those with unread bytes or a
            # close waiting, and passes over them.
            if connection.ready_for_request():
                if self.retryAutomatically:
                    return RetryingHTTP11ClientProtocol(
                        connection, partial(self._newConnection, key, endpoint)
                    )
                return connection
        return None

    def _putConnection(self, key, connection):  # type: ignore[no-untyped-def]
        if connection.state != "QUIESCENT" or not isinstance(connection, _BackendProtocol):
            super()._putConnection(key, connection)
            return
        connections = self._connections.setdefault(key, [])
        if len(connections) == self.maxPersistentPerHost:
            dropped = connections.pop(0)
            dropped.transport.loseConnection()
            self._timeouts.pop(dropped).cancel()
        connections.append(connection)
        timer = connection.idle_timer
        if timer is not None and timer.active():
            timer.reset(self.cachedConnectionTimeout)
        else:
            timer = connection.idle_timer = self._reactor.callLater(
                self.cachedConnectionTimeout, self._idle_timed_out, key, connection
            )
        self._timeouts[connection] = timer

    def _idle_timed_out(self, key: tuple, connection: _BackendProtocol) -> None:
        """A connection's idle timer ran out: closed if it is still idle."""
        connection.idle_timer = None
        if connection in self._timeouts:
            self._removeConnection(key, connection)

    def closeCachedConnections(self):  # type: ignore[no-untyped-def]
        # A connection cancels its idle timer when it closes, which Twisted's
        # pool would cancel again after closing it: the timers go first.
        timers, self._timeouts = self._timeouts, {}
        for timer in timers.values():
            if timer.active():
                timer.cancel()
        return super().closeCachedConnections()

    def getConnection(self, key, endpoint):  # type: ignore[no-untyped-def]
        connection = self.idle_connection(key, endpoint)
        if connection is not None:
            return succeed(connection)
        return self._newConnection(key, endpoint)


def _announces_unsent_body(parser: HTTPClientParser) -> bool:
    """
    Whether a response that has no body (to a HEAD request, or a 204 or 304)
    announces one in its head: a C{Transfer-Encoding}, or a C{Content-Length}
    other than 0.  (For HEAD, Twisted files C{Content-Length} with the
    response's headers; otherwise with the framing headers.)
    """
    if parser.request.method != b"HEAD" and parser.response.code not in (204, 304):
        return False
    framing = parser.connHeaders
    if framing.hasHeader(b"transfer-encoding"):
        return True
    lengths = (
        framing.getRawHeaders(b"content-length")
        or parser.headers.getRawHeaders(b"content-length")
        or []
    )
    return any(part.strip().lstrip(b"0") for value in lengths for part in value.split(b","))


def _socket_of(transport: object) -> Optional[socket.socket]:
    """
    The socket under a connection's transport, through a TLS layer (whose
    own handle is its OpenSSL connection); L{None} if there is none.
    """
    for _ in range(3):
        if transport is None:
            return None
        get_handle = getattr(transport, "getHandle", None)
        handle = get_handle() if get_handle is not None else None
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)
    return None


class BackendAgent(Agent):
    """
    An C{Agent} that sends a request to a chosen server (a L{Route}) with the
    client's request target unchanged.
    """

    def send(
        self,
        route: Route,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Optional[IBodyProducer],
    ) -> Deferred[IResponse]:
        """
        Send a request to the server at C{route}.

        @param target: The request target exactly as the client sent it.
        @param headers: The complete header set, including C{Host}.
        @returns: A Deferred that fires with the response, as from
            C{IAgent.request}.
        """
        problem = unsendable(method, target, headers)
        if problem is not None:
            return fail(UnsendableRequest(problem))
        pool = self._pool
        if isinstance(pool, BackendConnectionPool) and b"Host" in header_map(headers):
            # An idle connection is used at once: what Agent does through
            # the pool's Deferred and a callback, without them.
            connection = pool.idle_connection(route.key, route.endpoint)
            if connection is not None:
                try:
                    return connection.request(  # type: ignore[no-any-return]
                        client_request(method, target, headers, body, pool.persistent, route.uri)
                    )
                except Exception:
                    return fail()
        try:
            return self._requestWithEndpoint(
                route.key, route.endpoint, method, route.uri, headers, body, target
            )
        except ValueError as e:
            return fail(UnsendableRequest(str(e)))
        except Exception:
            return fail()


class UnsendableRequest(Exception):
    """
    The request holds what Twisted's HTTP client refuses to send: the
    client's failure, found before any server was contacted.
    """


def unsendable(method: bytes, target: bytes, headers: Headers) -> Optional[str]:
    """
    Why Twisted's HTTP client would refuse to send a request, or L{None}: a
    method that is not a token, a target that is not visible ASCII
    (C{_ensureValidMethod}, C{_ensureValidURI}), more than one C{Host}
    (C{BadHeaders}).  The front refuses these before; this keeps them, should
    one get through, from costing a backend connection or counting against
    a server.
    """
    if not rules.is_token(method):
        return "invalid method"
    if not rules.is_visible_ascii(target):
        return "invalid request target"
    if len(header_map(headers).get(b"Host", ())) > 1:
        return "more than one Host header"
    return None


def tls_policy(pool: PoolConfig) -> IPolicyForHTTPS:
    """
    The certificate checks for a pool's https:// servers: Agent's default
    (the system's trusted authorities and the server's host name), or the
    authorities in the pool's C{tls_ca_file}.
    """
    if pool.tls_ca_file is None:
        return BrowserLikePolicyForHTTPS()
    with open(pool.tls_ca_file, "rb") as f:
        pem = f.read()
    certificates = []
    marker = b"-----END CERTIFICATE-----"
    for block in pem.split(marker)[:-1]:
        certificates.append(Certificate.loadPEM(block + marker))
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certificates))


def make_route(  # type: ignore[no-untyped-def]
    reactor, server: ServerConfig, policy: IPolicyForHTTPS, connect_timeout: float
) -> Route:
    """
    Build the endpoint and pool key of one server.

    @param connect_timeout: Seconds a connection attempt may take.
    """
    host = server.host
    endpoint: IStreamClientEndpoint
    if _is_ipv4(host):
        endpoint = TCP4ClientEndpoint(
            connecting(reactor), host, server.port, timeout=connect_timeout
        )
    elif ":" in host:
        endpoint = TCP6ClientEndpoint(
            connecting(reactor), host, server.port, timeout=connect_timeout
        )
    else:
        endpoint = HostnameEndpoint(reactor, host, server.port, timeout=connect_timeout)
    host_bytes = host.encode("ascii")
    if server.scheme == "https":
        creator = reading_client_creator(policy.creatorForNetloc(host_bytes, server.port))
        endpoint = wrapClientTLS(creator, endpoint)
    scheme = server.scheme.encode("ascii")
    netloc = (f"[{host}]" if ":" in host else host).encode("ascii") + b":%d" % server.port
    uri = URI(scheme, netloc, host_bytes, server.port, b"/", b"", b"", b"")
    return Route(key=(scheme, host_bytes, server.port), endpoint=endpoint, uri=uri)


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)
