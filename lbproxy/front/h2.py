"""
HTTP/2 on the front: a C{tls:} connection whose client chose C{h2} by ALPN
is served by L{ProxyH2Connection}, Twisted's C{H2Connection} (the C{h2}
package underneath) with the proxy's limits and defences; each stream's
request is an L{H2Request}, the same L{ProxyRequest} the HTTP/1.1 front
makes, so that routing, header rules, the forwarder, the access log and the
counters do not know which protocol the client spoke.  Backends are always
spoken to in HTTP/1.1.

Cleartext HTTP/2 (h2c, by C{Upgrade} or prior knowledge) is never served.

What differs from HTTP/1.1, and why:

  - A refusal (400, 414, 431, 413) ends the stream, not the connection:
    the other streams go on.
  - A request body with no C{content-length} is one that ends with the
    stream; when the whole of it has arrived before the request is handed
    on (the usual case for small bodies), it goes to the backend with a
    C{Content-Length}, else chunked.
  - Backpressure on uploads is HTTP/2 flow control: a stream whose body the
    backend is not taking stops being given window, so the client stops
    sending on that stream alone.  Responses are bounded the other way:
    at most L{SEND_BUFFER} bytes are queued per stream (or the client's
    window, if smaller) before the backend connection is paused.
  - Abuse that costs the server more than the client (CVE-2023-44487
    "rapid reset", PING and SETTINGS floods) is bounded per connection by
    token buckets (L{TokenBucket}); past them the connection is closed with
    GOAWAY ENHANCE_YOUR_CALM.  Twisted closes a connection whose peer does
    not read the control frames it is sent (17 KB buffered).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy._twisted import H2Connection, H2Stream
from lbproxy.config import FrontLimits
from lbproxy.front.channel import ProxyChannel
from lbproxy.front.h2head import (
    CONTROL_BURST,
    CONTROL_RATE,
    RESET_BURST,
    RESET_RATE,
    TokenBucket,
    request_head_problem,
)
from lbproxy.front.h2request import H2Request, StreamFront

log = Logger()

#: What ALPN offers when HTTP/2 is on, in the server's order of preference.
H2_PROTOCOLS = (b"h2", b"http/1.1")

#: Response bytes queued per stream before its backend is paused.
SEND_BUFFER = 256 * 1024

#: Header names that describe an HTTP/1.1 connection: the h2 package
#: refuses to send them, so they are left out of HTTP/2 responses
#: (RFC 9113 section 8.2.2).
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


class _GuardedH2(h2.connection.H2Connection):
    """
    The h2 package's connection state machine with flood limits: a client
    that resets more streams, or sends more PING or SETTINGS frames, than
    its token buckets allow gets GOAWAY ENHANCE_YOUR_CALM, and the error
    ends the connection as any protocol error does.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(h2.config.H2Configuration(client_side=False, header_encoding=None))
        now = clock()
        self.clock = clock
        self.resets = TokenBucket(RESET_RATE, RESET_BURST, now)
        self.control = TokenBucket(CONTROL_RATE, CONTROL_BURST, now)

    def receive_data(self, data: Any) -> List[h2.events.Event]:
        events: List[h2.events.Event] = super().receive_data(data)
        for event in events:
            if isinstance(event, h2.events.StreamReset):
                bucket, what = self.resets, "stream resets"
            elif isinstance(event, (h2.events.PingReceived, h2.events.RemoteSettingsChanged)):
                bucket, what = self.control, "PING/SETTINGS frames"
            else:
                continue
            if not bucket.take(self.clock()):
                log.warn("HTTP/2 client sent too many {what}: closing", what=what)
                self.close_connection(error_code=_ENHANCE_YOUR_CALM)
                raise h2.exceptions.ProtocolError(f"too many {what}")
        return events


class ProxyH2Connection(H2Connection):
    """
    One HTTP/2 client connection of the proxy's site.
    """

    def __init__(self, site: Any, limits: FrontLimits, max_streams: int, reactor: Any) -> None:
        super().__init__(reactor)
        self._proxy_site: Any = site
        self.site = site
        self.factory = site
        self.limits = limits
        self.clock = reactor
        self.requestFactory = self._new_request
        self.conn = _GuardedH2(reactor.seconds)
        # What the client is told it may send: the header list measured as
        # HTTP/2 does (32 bytes of overhead a field); the decoder's hard limit
        # sits above it, so that the limits of request_head_problem answer
        # first, with a 431 on the stream.
        advertised = limits.max_header_size + 32 * (limits.max_headers + 8)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: advertised,
            },
        )
        self.conn.decoder.max_header_list_size = 2 * advertised
        self.closing = False
        #: GOAWAY sent by the proxy: what the client still sends is dropped.
        self._said_goodbye = False
        self._last_request: Optional[H2Request] = None
        self._capped: Dict[int, None] = {}

    def _new_request(self, stream: H2Stream, queued: bool = False) -> H2Request:
        request = H2Request(stream, queued=queued)
        front = StreamFront(self.limits, stream, self.clock.callLater)
        front.request = request
        request.stream_front = front
        self._last_request = request
        return request

    # -- streams -------------------------------------------------------------

    def _requestReceived(self, event: Any) -> None:
        if self.closing:
            # Stopping: a stream opened now is refused, safe to retry
            # elsewhere (RFC 9113 section 8.7).
            self.conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._tryToWriteControlData()
            return
        problem, event.headers = request_head_problem(event.headers, self.limits)
        self._last_request = None
        super()._requestReceived(event)
        request = self._last_request
        if request is not None:
            request.front.open(problem)

    def _requestDataReceived(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestDataReceived(event)
            return
        # The response is over (or the stream refused): the data is dropped,
        # and the connection's window given back.
        try:
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        except h2.exceptions.ProtocolError:
            pass

    def _requestEnded(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)

    def _requestDone(self, streamID: int) -> None:
        if self._stillProducing:
            # A response that ended before its request's body did: the
            # client is told to stop sending (RFC 9113 section 8.1).
            stream = self.conn.streams.get(streamID)
            if stream is not None and not stream.closed:
                try:
                    self.conn.reset_stream(streamID, _NO_ERROR)
                except h2.exceptions.ProtocolError:
                    pass
                self._tryToWriteControlData()
        self._capped.pop(streamID, None)
        super()._requestDone(streamID)
        if self.closing and not self.streams and self._stillProducing:
            self._goodbye()

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Any, streamID: int
    ) -> None:
        kept = [(name, value) for name, value in headers if name.lower() not in CONNECTION_SPECIFIC]
        try:
            super().writeHeaders(version, code, reason, kept, streamID)
        except h2.exceptions.ProtocolError as e:
            # A response header HTTP/2 cannot carry: the stream is reset.
            log.warn("HTTP/2 response refused by h2: {error}", error=e)
            if streamID in self.streams:
                self.abortRequest(streamID)

    def abortRequest(self, streamID: int) -> None:
        """
        Reset a stream (a response cut short, a body too large): its request
        hears of it as a lost connection, so that nothing more is written.
        """
        stream = self.streams.get(streamID)
        super().abortRequest(streamID)
        if stream is not None:
            stream.connectionLost(Failure(ConnectionLost("stream reset by the proxy")))

    # -- bounded response buffering --------------------------------------------

    def remainingOutboundWindow(self, streamID: int) -> int:
        # Twisted counts the queued bytes against the client's window, which
        # a client may set to 2 GB: the queue is capped at SEND_BUFFER.
        remaining: int = super().remainingOutboundWindow(streamID)
        queued = SEND_BUFFER - sum(
            len(chunk) for chunk in self._outboundStreamQueues[streamID] if isinstance(chunk, bytes)
        )
        if queued < remaining:
            self._capped[streamID] = None
            return queued
        return remaining

    def _sendPrioritisedData(self, *args: Any) -> None:
        super()._sendPrioritisedData(*args)
        # Streams paused by the cap, not by the client's window, resume as
        # their queues drain.
        for streamID in list(self._capped):
            if streamID not in self.streams:
                self._capped.pop(streamID, None)
            elif self.remainingOutboundWindow(streamID) > 0:
                self._capped.pop(streamID, None)
                self.streams[streamID].windowUpdated()

    # -- the connection ------------------------------------------------------

    def timeoutConnection(self) -> None:
        # Idle means no request in flight: their own timeouts are the
        # forwarder's.
        if self.streams:
            self.resetTimeout()
            return
        super().timeoutConnection()

    def close_when_idle(self) -> None:
        """
        Stopping: new streams are refused; the connection closes (GOAWAY)
        once the streams in flight are done.
        """
        self.closing = True
        if not self.streams and self._stillProducing:
            self._goodbye()

    def dataReceived(self, data: bytes) -> None:
        if self._said_goodbye:
            # Frames the client sent before it read the GOAWAY (RFC 9113
            # section 6.8): h2's closed state machine would call them a
            # protocol error and tear the connection down a second time.
            return
        super().dataReceived(data)

    def _goodbye(self) -> None:
        self._said_goodbye = True
        try:
            self.conn.close_connection()
        except h2.exceptions.ProtocolError:
            pass
        self._tryToWriteControlData()
        if self.transport is not None:
            self.transport.loseConnection()
            # TLS waits for the client's close_notify: not for ever.
            if self.abortTimeout is not None and self._abortingCall is None:
                self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def connectionLost(
        self, reason: Failure = connectionDone, _cancelTimeouts: bool = True
    ) -> None:
        super().connectionLost(reason, _cancelTimeouts)
        if _cancelTimeouts:
            # The transport's own connectionLost: the connection is gone.
            # (Twisted also calls this early, with the timers kept, when it
            # tears a connection down itself; the socket is still open then.)
            self._proxy_site.connection_closed(self)


class NegotiatingChannel(Protocol):
    """
    A client connection that speaks HTTP/1.1 (L{ProxyChannel}) unless its
    TLS handshake chose C{h2} by ALPN: the choice is known when the first
    bytes arrive, and the connection then goes to a L{ProxyH2Connection}.
    """

    def __init__(self, site: Any, channel: ProxyChannel) -> None:
        self.site = site
        self.channel: Any = channel
        self._decided = False

    def makeConnection(self, transport: Any) -> None:
        self.connected = 1
        self.transport = transport
        self.channel.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if not self._decided:
            self._decided = True
            if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
                self._speak_h2()
        self.channel.dataReceived(data)

    def _speak_h2(self) -> None:
        http1 = self.channel
        transport = self.transport
        assert transport is not None
        # The HTTP/1.1 channel has read nothing: it lets go of the transport.
        transport.unregisterProducer()  # type: ignore[attr-defined]
        http1.cancel_idle_timeout()
        site = self.site
        connection = ProxyH2Connection(site, site.limits, site.http2_max_streams, site.reactor)
        connection.timeOut = site.timeOut
        connection.callLater = site.reactor.callLater  # type: ignore[method-assign]
        site.channels.discard(http1)
        site.channels.add(connection)
        self.channel = connection
        connection.makeConnection(transport)
        transport.registerProducer(connection, True)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = 0
        self.channel.connectionLost(reason)


__all__ = [
    "CONTROL_BURST",
    "CONTROL_RATE",
    "H2_PROTOCOLS",
    "H2Request",
    "NegotiatingChannel",
    "ProxyH2Connection",
    "RESET_BURST",
    "RESET_RATE",
    "SEND_BUFFER",
    "StreamFront",
    "TokenBucket",
    "request_head_problem",
]
