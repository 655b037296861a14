"""
Upgraded connections (RFC 9110 section 7.8, RFC 6455): after a backend's
C{101 Switching Protocols}, the client connection and the backend connection
become one byte tunnel.

Three pieces, each with one job:

 - L{watch_for_switch} teaches one backend request's response parser what
   Twisted's HTTP client does not know (it skips every 1xx response): a
   C{101} that names a protocol the request offered ends HTTP on that
   connection.  The response Deferred fires with a L{Switched} instead of a
   response; the connection never goes back to the pool.  A C{101} that
   names no offered protocol is the server's failure (L{BadSwitch}), and its
   connection is closed.
 - L{SwitchedConnection} holds the backend connection's bytes from the
   C{101} until the tunnel takes them (the connection is paused meanwhile).
 - L{Tunnel} sends the C{101} head to the client, then copies bytes both
   ways.  Each connection is the other's producer: a reader that does not
   keep up pauses the other side's reads, so no buffer grows past the
   transports' own.  A tunnel that moves no byte either way for
   C{tunnel_timeout} is cut.  When one side closes, the other is closed
   once its pending bytes are written.  The server's in-flight slot is
   held until its connection is gone (the attempt that made the tunnel
   gives it back, L{lbproxy.upstream.attempt}); the request is reported
   (status 101, its duration, the bytes each way, in its L{RequestRecord})
   when the client connection is gone.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, List, Optional, cast

import attr
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from lbproxy._twisted import take_response_deferred
from lbproxy.record import RequestRecord
from lbproxy.upgrade import accepted_switch, offered_upgrade

if TYPE_CHECKING:
    from lbproxy.front.site import ProxyRequest

log = Logger()


def requested_upgrade(request: ProxyRequest) -> Optional[bytes]:
    """
    The C{Upgrade} value to forward with C{request} (read before its
    hop-by-hop headers are removed), or L{None}; see L{offered_upgrade}.
    """
    headers = request.requestHeaders
    upgrade = headers.getRawHeaders(b"upgrade")
    if not upgrade:
        return None
    return offered_upgrade(
        request.method,
        request.clientproto,
        headers.getRawHeaders(b"connection", []),
        upgrade,
        request.body is not None and request.body.length != 0,
        request.front.limits.upgrade,
    )


def tunnel_timeout(request: ProxyRequest) -> float:
    """How long a tunnel of C{request}'s connection may stay idle."""
    return request.front.limits.tunnel_timeout


class BadSwitch(Exception):
    """A backend answered an upgrade request with a 101 that names no offered protocol."""


class SwitchedConnection:
    """
    A backend connection that left HTTP after a C{101}: its bytes wait here
    (the connection is paused) until a tunnel takes them.
    """

    def __init__(self, transport: ITransport, early: bytes) -> None:
        self.transport = transport
        self._early: List[bytes] = [early] if early else []
        self._lost: Optional[Failure] = None
        self._tunnel: Optional[Tunnel] = None
        IPushProducer(transport).pauseProducing()

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.from_backend(data)
        else:
            self._early.append(data)

    def connection_lost(self, reason: Failure) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.backend_lost(reason)
        else:
            self._lost = reason

    def attach(self, tunnel: Tunnel) -> None:
        """Send what arrived so far, and all that follows, to C{tunnel}."""
        self._tunnel = tunnel
        early, self._early = self._early, []
        for data in early:
            tunnel.from_backend(data)
        if self._lost is not None:
            tunnel.backend_lost(self._lost)
        else:
            IPushProducer(self.transport).resumeProducing()

    def abort(self) -> None:
        self.transport.abortConnection()  # type: ignore[attr-defined]


@attr.s(slots=True, auto_attribs=True)
class Switched:
    """
    What an upgrade request's response Deferred fires with when the backend
    switched protocols: the head of the C{101} (as far as the forwarder
    reads a response) and the connection.
    """

    code: int
    phrase: bytes
    headers: Headers
    #: The backend's C{Upgrade} value: the protocol it switched to.
    upgrade: bytes
    connection: SwitchedConnection
    length: object = UNKNOWN_LENGTH


def watch_for_switch(
    protocol: Any, parser: Any, offered: bytes, on_switch: Callable[[SwitchedConnection], None]
) -> None:
    """
    Make C{parser} (the C{HTTPClientParser} of a request that offered the
    upgrades C{offered}) end HTTP at a C{101} response.

    Twisted's parser skips 1xx responses and would parse the new protocol's
    bytes as the next response.  Here, a C{101} takes the bytes that follow
    its head out of the parser, which then parses nothing more; C{on_switch}
    gets the connection, and the response Deferred a L{Switched} (or
    L{BadSwitch} when the C{101} names no offered protocol, and the
    connection is closed).  Every other response is parsed as usual.

    @param protocol: The C{HTTP11ClientProtocol} the request was sent on.
    """
    parse_head = parser.allHeadersReceived

    def all_headers_received() -> None:
        response = parser.response
        if response.code != 101:
            parse_head()
            return
        rest = parser.clearLineBuffer()
        # Nothing more is parsed (HTTPParser ignores lines once DONE); the
        # Deferred is fired here, not by the parser.
        parser.state = "DONE"
        deferred = take_response_deferred(parser)
        answer = parser.connHeaders.getRawHeaders(b"upgrade", [])
        transport = protocol.transport
        if not accepted_switch(offered, answer):
            transport.abortConnection()
            deferred.errback(Failure(BadSwitch("a 101 response without an offered Upgrade")))
            return
        connection = SwitchedConnection(transport, rest)
        on_switch(connection)
        deferred.callback(
            Switched(response.code, response.phrase, parser.headers, answer[0], connection)
        )

    parser.allHeadersReceived = all_headers_received


def switch_head(headers: Headers, upgrade: bytes) -> bytes:
    """
    The C{101} head that goes to the client: the backend's headers as the
    forwarder left them (hop-by-hop ones removed, header rules applied),
    then C{Connection: Upgrade} and the backend's C{Upgrade}.
    """
    lines = [b"HTTP/1.1 101 Switching Protocols\r\n"]
    for name, values in headers.getAllRawHeaders():
        if name.lower() in (b"connection", b"upgrade", b"content-length", b"transfer-encoding"):
            continue
        for value in values:
            lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % upgrade)
    return b"".join(lines)


class Tunnel:
    """
    The bytes of one upgraded request, both ways, until either side closes
    or nothing moves for C{idle_timeout} seconds.

    @param release: Called once, when the backend connection is gone: gives
        the server's in-flight slot back.
    """

    def __init__(
        self,
        request: ProxyRequest,
        record: RequestRecord,
        switched: Switched,
        release: Callable[[], None],
        clock: IReactorTime,
        idle_timeout: float,
    ) -> None:
        self.request = request
        self.record = record
        self.switched = switched
        self._release: Optional[Callable[[], None]] = release
        self.clock = clock
        self.idle_timeout = idle_timeout
        #: Bytes from the client to the backend, and back.
        self.bytes_up = 0
        self.bytes_down = 0
        self.last_byte = 0.0
        self._timer: Optional[IDelayedCall] = None
        self.client_open = False
        self.backend_open = True
        self.channel: Any = None
        #: The backend connection's transport (a TCP or TLS transport).
        self.backend: Any = switched.connection.transport

    def start(self) -> None:
        request = self.request
        channel: Any = request.channel
        connection = self.switched.connection
        if channel is None or channel.transport is None:
            # The client left while the 101 was on its way.
            connection.attach(self)
            connection.abort()
            return
        self.channel = channel
        self.client_open = True
        client = channel.transport
        client.write(switch_head(request.responseHeaders, self.switched.upgrade))
        # The head is written: the request is reported as a 101 whose body
        # is what went to the client.
        request.startedWriting = True
        record = self.record
        # The clock of the duration the front records.
        record.switched_after = monotonic() - record.started
        record.received = 0
        early = channel.start_tunnel(self)
        # Each side's reads pause while the other side cannot keep up.
        channel.registerProducer(self.backend, True)
        self.backend.registerProducer(client, True)
        self.last_byte = self.clock.seconds()
        self._timer = self.clock.callLater(self.idle_timeout, self._check_idle)
        if early:
            self.from_client(early)
        connection.attach(self)

    # -- bytes -----------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if not self.backend_open:
            return
        self.bytes_up += len(data)
        self.record.received = self.bytes_up
        self.last_byte = self.clock.seconds()
        self.backend.write(data)

    def from_backend(self, data: bytes) -> None:
        if not self.client_open:
            return
        self.bytes_down += len(data)
        self.request.sentLength = self.bytes_down
        self.last_byte = self.clock.seconds()
        self.channel.transport.write(data)

    # -- ends ------------------------------------------------------------------

    def client_lost(self, reason: Failure) -> None:
        """The client connection is gone: close the backend's once written."""
        if not self.client_open:
            return
        self.client_open = False
        if self.backend_open:
            self.backend.unregisterProducer()
            self.backend.loseConnection()
        self._ended()

    def backend_lost(self, reason: Failure) -> None:
        """The backend connection is gone: close the client's once written."""
        if not self.backend_open:
            return
        self.backend_open = False
        release, self._release = self._release, None
        if release is not None:
            release()
        if self.client_open:
            self.channel.unregisterProducer()
            self.channel.loseConnection()
        self._ended()

    def _ended(self) -> None:
        if not (self.client_open or self.backend_open):
            self._stop_timer()

    def close(self) -> None:
        """Cut both connections now."""
        if self.client_open and self.channel.transport is not None:
            self.channel.transport.abortConnection()
        if self.backend_open:
            cast(Any, self.backend).abortConnection()

    def _check_idle(self) -> None:
        self._timer = None
        quiet = self.clock.seconds() - self.last_byte
        if quiet < self.idle_timeout:
            self._timer = self.clock.callLater(self.idle_timeout - quiet, self._check_idle)
            return
        log.info(
            "tunnel to server {server}: no byte for {seconds:g}s; closing",
            server=getattr(self.record.server, "name", "?"),
            seconds=self.idle_timeout,
        )
        self.close()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
