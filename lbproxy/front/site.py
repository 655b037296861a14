"""
The HTTP server side: a twisted.web C{Site} whose requests go straight to
the proxy resource.
"""

from __future__ import annotations

from time import monotonic
from typing import Any, Callable, Optional, Set, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocolNegotiationFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from zope.interface import classImplementsOnly, implementedBy

from lbproxy._twisted import header_map, request_line, set_clean_header
from lbproxy.config import FrontLimits
from lbproxy.front.body import StreamedBody
from lbproxy.front.channel import ProxyChannel, error_response
from lbproxy.front.errors import ErrorPage
from lbproxy.record import IExchange, RequestRecord

log = Logger()

#: Seconds an idle client connection is kept open (nginx's default).
KEEPALIVE_TIMEOUT = 75


#: The status counted and logged for a request whose client went away before
#: the response began (nginx's convention).
CLIENT_CLOSED = 499


def _nothing() -> None:
    pass


def _drop(data: bytes) -> None:
    pass


class BodyTooLarge(Exception):
    """The request body grew past max_body_size."""


class ProxyRequest(server.Request):
    """
    A request of the proxy's front.

    Unlike C{twisted.web.server.Request} it adds no default headers (no
    C{Server}, no C{text/html} content type: the backend's response speaks for
    itself), and it hands itself to the site's root resource without
    splitting or unquoting its path, which the proxy forwards as sent.
    """

    defaultContentType = None
    #: The request on its way to a server, told of the client's side
    #: (attached and detached by the lifecycle).
    exchange: Optional[IExchange] = None
    #: What is known of the request: created when it is handed on.
    record: Optional[RequestRecord] = None
    #: The request target that goes to a backend: as sent, or the
    #: origin-form of an absolute-form one (see L{lbproxy.front.resource}).
    target = b""
    #: The request body, streamed; L{None} when the request has none.
    body: Optional[StreamedBody] = None
    #: Body bytes received so far.
    received_bytes = 0
    #: The request line of a request with a body, until it is dispatched.
    _head: Optional[Tuple[bytes, bytes, bytes]] = None
    #: Refused mid-body: whatever the parser still delivers is ignored.
    _rejected = False
    #: When its first line arrived (monotonic seconds).
    started = 0.0
    #: Handed to the resource, and not yet reported as done.
    _reporting = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) > 1:
            super().__init__(channel, *args, **kwargs)
        else:
            # What twisted.web's Request.__init__ sets (through
            # server.Request's and Componentized's), for the channel's usual
            # call (the channel, and an HTTP/1.1 channel's queue position),
            # without the three calls.  tests/test_site.py holds the
            # attributes to twisted.web's.  Bodies are never parsed into
            # C{args} here (L{requestReceived}).
            self.notifications = []
            self.channel = channel
            self.client = channel.getPeer()
            self.host = channel.getHost()
            self.requestHeaders = Headers()
            self.received_cookies = {}
            self.responseHeaders = Headers()
            self.cookies = []
            self.transport = channel.transport
            self.queued = args[0] if args else False
            self._parsePOSTFormSubmission = False
            Componentized.__init__(self)
        self.started = monotonic()

    def parseCookies(self) -> None:
        """
        Nothing: cookies go to the backend in their header, and nothing of
        the proxy reads C{received_cookies} (twisted.web parses them for
        every request).
        """

    @property
    def front(self) -> ProxyChannel:
        """The client connection, as the proxy's own channel."""
        return self.channel  # type: ignore[return-value]

    def gotLength(self, length: Optional[int]) -> None:
        """
        The header section is complete; C{length} is the body's declared
        length, L{None} for a chunked body.

        A request with a body is dispatched without waiting for the body: it
        streams to the backend as it arrives (L{StreamedBody}), never
        spooled to memory or disk.  A body with a declared length goes at
        once; a chunked one once its first chunk has been decoded (or it
        ended), so that malformed chunked framing, the usual smuggling
        vehicle, is refused before any server hears of the request.  The
        dispatch runs in the next reactor turn, outside the HTTP parser's
        call stack.
        """
        # No C{content}: the body is never held (twisted.web's own makes one).
        front = self.front
        limit = front.limits.max_body_size
        if limit and length is not None and length > limit:
            front.refuse(413, b"Content Too Large", b"the request body is too large")
            return
        if length == 0:
            if b"Content-Length" in header_map(self.requestHeaders):
                self.body = StreamedBody(0, _nothing, _nothing)
                self.body.finish()
            return
        self.body = StreamedBody(length, self._pause_client, self._resume_client)
        channel = self.channel
        # The request line is known to the channel only until the body ends.
        self._head = request_line(channel)
        if length is not None:
            self._schedule_dispatch()

    def _schedule_dispatch(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self.channel.callLater(0, self._dispatch_early, *head)  # type: ignore[attr-defined,call-arg]

    def _dispatch_early(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._disconnected or self.finished or self.front.refused:
            return
        self._set_request_line(command, path, version)
        self.process()

    def handleContentChunk(self, data: bytes) -> None:
        body = self.body
        if body is None or self.finished or self._rejected:
            # No body, or the response is over (it began early and the
            # connection is closing), or refused: nothing more to pass on.
            return
        self.received_bytes += len(data)
        limit = self.front.limits.max_body_size
        if limit and self.received_bytes > limit:
            self._body_too_large()
            return
        body.feed(data)
        if self._head is not None:
            self._schedule_dispatch()
        exchange = self.exchange
        if exchange is not None:
            exchange.touch()

    def _body_too_large(self) -> None:
        # A chunked body grew past max_body_size: stop the backend side,
        # then answer 413 if nothing was answered yet, else cut the
        # connection (a response cannot be taken back).
        self._rejected = True
        reason = Failure(BodyTooLarge())
        exchange = self.exchange
        if exchange is not None:
            exchange.client_lost(reason)
        if self.body is not None:
            self.body.fail(reason)
        front = self.front
        if self.startedWriting:
            front.transport.abortConnection()  # type: ignore[union-attr]
        else:
            front.refuse(413, b"Content Too Large", b"the request body is too large")

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The whole request has arrived: hand it on, or, when its body was
        streaming, mark the body complete.

        Unlike twisted.web's own, this parses neither the query string nor
        the body into C{args}: a proxy forwards them as they are, and parsing
        a form body would read all of it into memory.
        """
        if self._rejected or self.front.refused:
            return
        if self.body is not None and self.body.length != 0:
            self.body.finish()
            if self._head is not None:
                self._schedule_dispatch()
            return
        self._set_request_line(command, path, version)
        self.process()

    def _set_request_line(self, command: bytes, path: bytes, version: bytes) -> None:
        self.method = command
        self.uri = path
        self.target = path
        self.clientproto = version
        self.path = path.split(b"?", 1)[0]
        self.args = {}

    def _pause_client(self) -> None:
        transport = self.channel.transport if self.channel is not None else None
        producer = IPushProducer(transport, None)
        if producer is not None:
            producer.pauseProducing()

    def _resume_client(self) -> None:
        transport = self.channel.transport if self.channel is not None else None
        producer = IPushProducer(transport, None)
        if producer is not None:
            producer.resumeProducing()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            body = self.body
            if body is not None and not body.complete:
                # A response that starts before the request body has fully
                # arrived ends the connection: the rest of that body must
                # never be read as a next request.
                if self.channel is not None:
                    self.channel.persistent = False
                self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            if self._write_head(data):
                return
        super().write(data)

    def _write_head(self, data: bytes) -> bool:
        """
        The first write of a response on an HTTP/1.1 connection: its head
        and C{data} written as twisted.web's C{Request.write} and
        C{HTTPChannel.writeHeaders} would write them (the same bytes, the
        same framing decision: chunked when an HTTP/1.1 response that may
        have a body has no C{Content-Length}), in one write to the
        connection instead of a sequence for the head and another write for
        the body.  C{False} (nothing done) when the response is not plain:
        then twisted.web writes it (an HTTP/2 stream, a C{Last-Modified},
        C{ETag} or cookie set through the request, a default content type,
        a head given as other than C{Headers}).  (twisted.web's response
        encoders and its C{HEAD} faked as C{GET} come from
        C{server.Request.render} and C{EncodingResourceWrapper}, which a
        request of the proxy never goes through: L{process}.)
        """
        if self.finished or self._disconnected:
            return False  # twisted.web's own raise, or nothing written
        channel = self.channel
        headers = self.responseHeaders
        if (
            not isinstance(channel, ProxyChannel)
            or type(headers) is not Headers
            or self.lastModified is not None
            or self.etag is not None
            or self.cookies
            or self.defaultContentType is not None
        ):
            return False
        self.startedWriting = 1
        code = self.code
        version = self.clientproto
        raw = header_map(headers)
        no_body = self.method == b"HEAD" or code in NO_BODY_CODES
        if version == b"HTTP/1.1" and not no_body and b"Content-Length" not in raw:
            set_clean_header(headers, b"Transfer-Encoding", [b"chunked"])
            self.chunked = 1
        out = [version, b" %d " % code, self.code_message, b"\r\n"]
        for name, values in raw.items():
            for value in values:
                out += (name, b": ", value, b"\r\n")
        out.append(b"\r\n")
        if no_body:
            # As twisted.web does: nothing of a body is ever written.
            self.write = _drop  # type: ignore[method-assign]
        else:
            self.sentLength += len(data)
            if data:
                if self.chunked:
                    out += (b"%x\r\n" % len(data), data, b"\r\n")
                else:
                    out.append(data)
        channel.write(b"".join(out))
        return True

    def process(self) -> None:
        self.site = self.channel.site  # type: ignore[attr-defined]
        self._reporting = True
        address = self.getClientAddress()
        self.record = RequestRecord(
            method=self.method,
            target=self.uri,
            protocol=self.clientproto,
            client=getattr(address, "host", "unix"),
            scheme=b"https" if self.isSecure() else b"http",
            headers=self.requestHeaders,
            started=self.started,
        )
        try:
            self.site.resource.render(self)
        except Exception:
            log.failure("internal error while handling {method} request", method=self.method)
            if not self.startedWriting and not self.finished and not self._disconnected:
                self.respond_error(500, b"Internal Server Error", b"internal error")

    def connectionLost(self, reason: Failure) -> None:
        """
        The client went away before the response was complete: tell the
        forwarder (directly, rather than through a C{notifyFinish} Deferred
        that every request would pay for).
        """
        super().connectionLost(reason)
        # The lifecycle hears first (and detaches itself), so that the
        # body's failure that follows is known as the client's, never taken
        # for the server's.
        exchange = self.exchange
        if exchange is not None:
            exchange.client_lost(reason)
        if self.body is not None and not self.body.complete:
            self.body.fail(reason)
        self._report(self.code if self.startedWriting else CLIENT_CLOSED)

    def finish(self) -> None:
        super().finish()
        self._report(self.code)

    def _report(self, status: int) -> None:
        """Tell the site, once, that this request is over and how."""
        if self._reporting:
            self._reporting = False
            done = self.site.request_done  # type: ignore[union-attr]  # a ProxySite's
            record = self.record
            if done is not None and record is not None:
                record.status = status
                record.sent = self.sentLength
                record.duration = monotonic() - record.started
                done(record)

    def cut_short(self) -> None:
        """
        End a response whose body could not be completed, so that the client
        cannot take it for a whole one: after what was sent, the connection
        is closed without the end of the body.  A body framed by
        C{Content-Length} or chunking then visibly falls short; a body that
        ends at the close (HTTP/1.0 without a length) would look complete, so
        that connection is reset instead.
        """
        channel = self.channel
        if channel is None:
            return
        if self.chunked or self.responseHeaders.hasHeader(b"content-length"):
            channel.loseConnection()
        else:
            channel.transport.abortConnection()  # type: ignore[union-attr]

    def respond_error(
        self,
        code: int,
        phrase: bytes,
        detail: bytes,
        close: bool = False,
        retry_after: Optional[int] = None,
    ) -> None:
        """
        Answer with a short plain-text error page of the proxy's own.

        @param detail: A fixed text: nothing taken from the request, so that
            nothing a client sent is reflected.
        @param close: Close the connection after the response.
        @param retry_after: Seconds for a C{Retry-After} header, if any.
        """
        if self._disconnected or self.finished:
            return
        ErrorPage(code, phrase, detail, close, retry_after).write_to(self)


class _Busy(Protocol):
    """Answers a connection beyond max_connections with 503 and closes it."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(error_response(503, b"Service Unavailable", b"too many connections"))
        self.transport.loseConnection()


class ProxySite(server.Site):
    """
    The proxy's HTTP server: L{ProxyChannel} connections with the front
    limits, at most C{max_connections} at once (more are answered 503 and
    closed, never queued).

    @ivar request_done: Called with the L{RequestRecord} of every request
        that reached the proxy resource, once, when it is over (counters and
        the access log); L{None} for nothing.
    @ivar channels: The open client connections.
    """

    request_done: Optional[Callable[[RequestRecord], None]] = None
    #: Serve HTTP/2 to clients whose TLS handshake chose it by ALPN: given
    #: the site and a new connection's HTTP/1.1 channel, the protocol that
    #: picks one of them (L{lbproxy.front.h2.NegotiatingChannel}, set by the
    #: service); L{None}: HTTP/1.1 only.
    negotiate: Optional[Callable[[ProxySite, ProxyChannel], Protocol]] = None
    #: Streams an HTTP/2 client may have open at once.
    http2_max_streams = 100

    noisy = False
    displayTracebacks = False
    protocol = ProxyChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: IResource,
        timeout: float = KEEPALIVE_TIMEOUT,
        reactor: Any = None,
        limits: Optional[FrontLimits] = None,
        max_connections: int = 10000,
    ) -> None:
        super().__init__(resource, requestFactory=ProxyRequest, timeout=timeout, reactor=reactor)
        self.limits = limits or FrontLimits()
        self.max_connections = max_connections
        self.channels: Set[ProxyChannel] = set()
        self.closing = False
        self._drained: Optional[Deferred[None]] = None

    @property
    def open_connections(self) -> int:
        return len(self.channels)

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.channels) >= self.max_connections or self.closing:
            return _Busy()
        channel = super().buildProtocol(addr)
        channel.limits = self.limits
        self.channels.add(channel)
        if self.negotiate is not None:
            return self.negotiate(self, channel)
        return channel

    def connection_closed(self, channel: ProxyChannel) -> None:
        self.channels.discard(channel)
        if self._drained is not None and not self.channels:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def drain(self, timeout: float, clock: IReactorTime) -> Deferred[None]:
        """
        Close the connections (L{close_connections}); fires once they are
        all closed, cutting those still open after C{timeout} seconds.
        """
        self.close_connections()
        drained: Deferred[None] = Deferred()
        if not self.channels:
            drained.callback(None)
            return drained
        self._drained = drained
        log.info(
            "stopping: waiting up to {timeout:g}s for {n} client connections",
            timeout=timeout,
            n=len(self.channels),
        )

        def cut() -> None:
            if self.channels:
                log.warn(
                    "stopping: closing {n} client connections still busy after {timeout:g}s",
                    n=len(self.channels),
                    timeout=timeout,
                )
            for channel in list(self.channels):
                if channel.transport is not None:
                    channel.transport.abortConnection()  # type: ignore[attr-defined]

        timer = clock.callLater(timeout, cut)
        drained.addBoth(lambda result: timer.cancel() if timer.active() else None)
        return drained

    def close_connections(self) -> None:
        """
        Stopping: close every idle client connection now, and every busy one
        once its response is complete (C{Connection: close} is sent when the
        response has not begun).
        """
        self.closing = True
        for channel in list(self.channels):
            channel.close_when_idle()

    def log(self, request: http.Request) -> None:
        pass


# ALPN is lbproxy.front.tls's: a Site that provides
# IProtocolNegotiationFactory has Twisted's TLS wrapper replace the ALPN
# callback of the listener's default OpenSSL context on every connection.
classImplementsOnly(
    ProxySite,
    *(i for i in implementedBy(server.Site) if i is not IProtocolNegotiationFactory),
)
