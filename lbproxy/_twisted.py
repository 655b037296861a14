"""
Every private part of Twisted that lbproxy relies on, in one place.

Twisted promises nothing about names that begin with an underscore, nor
about the modules that do (C{twisted.web._newclient}).  lbproxy uses a few
because a proxy needs what a plain client or server does not: the request
target sent byte for byte, a say in when a backend connection is reused,
a stricter chunked decoder, a request dispatched before its body has
arrived.  They have been stable from Twisted 16 to 26.

The rest of lbproxy imports the private classes from here, never from
Twisted; the private attributes it reads or overrides are listed in
L{INTERNALS} with the reason, and C{tests/test_twisted_internals.py} checks
each one on the installed Twisted and fails naming the one that changed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web._http2 import H2Connection, H2Stream
from twisted.web._newclient import (
    HEADER,
    STATUS,
    HTTP11ClientProtocol,
    HTTPClientParser,
    RequestGenerationFailed,
    RequestNotSent,
    ResponseDone,
    TransportProxyProducer,
)
from twisted.web._newclient import Request as ClientRequest
from twisted.web._newclient import _WrapperException as WrapperException
from twisted.web.client import _HTTP11ClientFactory as HTTP11ClientFactory
from twisted.web.client import _RetryingHTTP11ClientProtocol as RetryingHTTP11ClientProtocol
from twisted.web.http_headers import Headers

_log = Logger()

#: Twisted's chunked decoder, which the front's stricter decoder extends.
ChunkedTransferDecoder = http._ChunkedTransferDecoder

#: What the chunked decoder raises for malformed framing; the channel
#: answers it with 400.
MalformedChunkedDataError = http._MalformedChunkedDataError

#: C{(owner, attribute)}: why lbproxy uses it.  An owner is a class of
#: Twisted (or the private class itself, for the imports above); the test
#: checks every attribute on a live instance of it.  Attributes separated
#: by C{/} share their reason.
INTERNALS: Dict[Tuple[str, str], str] = {
    # -- modules and classes imported above --------------------------------
    ("twisted.web._newclient", "HTTP11ClientProtocol/HTTPClientParser"): (
        "the backend connection (upstream/backend.py) extends Twisted's client protocol"
    ),
    ("twisted.web._newclient", "RequestNotSent/RequestGenerationFailed/ResponseDone"): (
        "failure kinds of an attempt (upstream/failures.py); also public in twisted.web.client"
    ),
    ("twisted.web._newclient", "_WrapperException"): (
        "the base of the failures that wrap others (a TLS handshake failure inside "
        "ResponseNeverReceived): upstream/failures.py looks inside"
    ),
    ("twisted.web.client", "_HTTP11ClientFactory"): (
        "the connection factory of HTTPConnectionPool: extended by the backend pool "
        "and the health checker's quiet pool"
    ),
    ("twisted.web._http2", "H2Connection/H2Stream"): (
        "HTTP/2 on the front (front/h2.py) extends Twisted's connection; its streams "
        "are the requests' channels"
    ),
    ("twisted.web.http", "_ChunkedTransferDecoder/_MalformedChunkedDataError"): (
        "the front's stricter chunked decoder (front/channel.py) extends Twisted's"
    ),
    # -- the backend side (upstream/backend.py, upstream/health.py) ---------
    ("Agent", "_requestWithEndpoint"): (
        "sends a request to a given endpoint with a given target, byte for byte"
    ),
    ("HTTPConnectionPool", "_factory"): (
        "the protocol factory class: ours builds _BackendProtocol"
    ),
    ("HTTPConnectionPool", "_connections"): (
        "pool key -> idle connections: screened for unread bytes before reuse"
    ),
    (
        "HTTPConnectionPool",
        "_timeouts/_newConnection/retryAutomatically/_putConnection/_removeConnection/_reactor/"
        "closeCachedConnections",
    ): (
        "an idle connection is taken at once, without the pool's Deferred "
        "(BackendConnectionPool.idle_connection): its idle timer, the way to a new "
        "connection for Twisted's automatic retry, and whether it retries; a connection "
        "back in the pool moves its idle timer instead of making a new one"
    ),
    ("twisted.web.client", "_RetryingHTTP11ClientProtocol"): (
        "the wrapper that retries an idempotent request once on a new connection, "
        "as the pool wraps every reused connection"
    ),
    ("twisted.web._newclient", "Request"): (
        "the client's request object, made as Agent makes it (Request._construct) when "
        "a request goes straight to an idle connection"
    ),
    ("ClientRequest", "_construct"): ("how Agent makes a request with its parsed URI"),
    ("Headers", "_rawHeaders"): (
        "canonical name -> values: headers whose values are known clean are set "
        "without Twisted sanitizing them again (set_clean_header), and read by name "
        "(header_map, the access log)"
    ),
    ("_HTTP11ClientFactory", "_quiescentCallback"): (
        "how a connection goes back to the pool once its response is complete"
    ),
    ("HTTP11ClientProtocol", "_parser"): (
        "the parser of the response in flight; None when no response is expected"
    ),
    ("HTTP11ClientProtocol", "_finishResponse"): (
        "the parser's finisher: called with the bytes read past a complete response"
    ),
    ("HTTPClientParser", "request/response/headers/connHeaders"): (
        "the finished response's method, status and framing headers"
    ),
    ("HTTPClientParser before its response", "_responseDeferred/allHeadersReceived"): (
        "a 101 ends HTTP on an upgraded connection: upstream/tunnel.py fires the response "
        "Deferred itself (Twisted's parser skips every 1xx)"
    ),
    ("HTTPClientParser", "state/_buffer/_busyReceiving/paused/statusReceived/headerReceived"): (
        "a response head that arrives whole is read in one pass (read_response_head), "
        "through the parser's own steps, with the parser's buffer and re-entry flag kept "
        "as its line-by-line reading leaves them"
    ),
    ("HTTP11ClientProtocol", "_giveUp"): (
        "a response head the one-pass reading refuses fails the request as Twisted's would"
    ),
    ("twisted.web._newclient", "STATUS/HEADER"): ("the parser's states, for read_response_head"),
    ("HTTPClientParser", "_everReceivedData/finisher"): (
        "whether any byte of the response arrived (read_response_head), and what the parser "
        "calls when the response is complete: set by BackendParser, which makes its own "
        "response Deferred"
    ),
    ("twisted.web._newclient", "TransportProxyProducer"): (
        "the parser's view of the connection: extended by LazyPauseProxy"
    ),
    (
        "HTTP11ClientProtocol",
        "_state/_finishedRequest/_currentRequest/_transportProxy/_responseDeferred/"
        "_quiescentCallback/_disconnectParser",
    ): (
        "a request without a body is sent and its response awaited as Twisted's request() "
        "and _finishResponse_WAITING do, with one Deferred and one write (send_without_body, "
        "finish_response)"
    ),
    # -- the front (front/channel.py, front/site.py) ------------------------
    ("HTTPChannel", "_command/_path/_version"): (
        "the request line, which a request with a body is dispatched with before "
        "requestReceived (front/site.py)"
    ),
    ("HTTPChannel", "_transferDecoder/_maybeChooseTransferDecoder"): (
        "the body decoder in use: the chunked one is swapped for the stricter one"
    ),
    ("HTTPChannel", "_send100Continue"): ("no 100 Continue on a connection being refused"),
    ("HTTPChannel", "_dataBuffer"): (
        "the bytes read past a request while it is handled: after a 101 they are the "
        "tunnel's first (front/channel.py start_tunnel)"
    ),
    ("HTTPChannel", "_buffer/line_mode"): (
        "LineReceiver's partial line: a bare LF in it is refused"
    ),
    ("HTTPChannel", "_busyReceiving/paused/_receivedHeaderSize/_HTTPChannel__header"): (
        "a request head that arrives whole is read in one pass (front/channel.py "
        "_read_head) through twisted.web's own steps, with LineReceiver's buffer and "
        "re-entry flag, the head's size so far and the header line kept for the next "
        "as the line-by-line reading leaves them"
    ),
    ("_ChunkedTransferDecoder", "_buffer/_start/state/length/dataCallback/finishCallback"): (
        "the decoder's buffer and state: chunk lines and sizes are checked before it reads them"
    ),
    ("_ChunkedTransferDecoder", "_dataReceived_CHUNK_LENGTH/_dataReceived_TRAILER"): (
        "the decoder's steps for a chunk-size line and a trailer line, overridden to check them"
    ),
    # -- HTTP/2 on the front (front/h2.py) ----------------------------------
    ("H2Connection", "_requestReceived"): (
        "a stream's header block arrives: checked against the front's limits, "
        "refused while stopping, before Twisted makes the stream's request"
    ),
    ("H2Connection", "_requestDataReceived/_requestEnded/_requestAborted"): (
        "events for a stream: those of a stream already answered and gone are "
        "dropped (its data's window given back) instead of raising KeyError"
    ),
    ("H2Connection", "_requestDone"): (
        "a stream's response is over: the client is told to stop sending a body "
        "still arriving (RST_STREAM NO_ERROR), and a stopping connection closes"
    ),
    ("H2Connection", "_stillProducing"): ("the connection has not yet been closed"),
    ("H2Connection", "_tryToWriteControlData"): (
        "writes the frames the h2 state machine has queued (GOAWAY, RST_STREAM)"
    ),
    ("H2Connection", "_outboundStreamQueues/_sendPrioritisedData"): (
        "the response bytes queued per stream, and the loop that sends them: "
        "capped at SEND_BUFFER, capped streams resumed as the queue drains"
    ),
    ("H2Connection", "_abortingCall"): (
        "TimeoutMixin's pending forced close: set when a closing connection is "
        "given abortTimeout to finish its TLS close"
    ),
    ("Request", "_disconnected"): ("twisted.web.server.Request's flag for a client that went away"),
    ("Request", "_parsePOSTFormSubmission"): (
        "set by the front's request (front/site.py ProxyRequest.__init__), which makes "
        "itself as twisted.web's Request.__init__ does, without its chain of calls"
    ),
    ("HTTPChannel", "_HTTPChannel__first_line"): (
        "a request line read in one pass (front/channel.py _read_head) makes the request "
        "as twisted.web's lineReceived does: its factory called as twisted.web calls it, "
        "the channel no longer waiting for a request line"
    ),
    ("HTTPChannel", "_receivedHeaderCount/_respondToBadRequestAndDisconnect"): (
        "a header line is kept and counted by the front's own headerReceived "
        "(front/channel.py), as twisted.web's does, after the front's checks"
    ),
    # -- worker processes (workers/worker.py) ---------------------------------
    ("tcp.Port", "numberAccepts"): (
        "how many connections a listening port accepts per readiness (Twisted grows it "
        "by 20 while the queue stays full): a worker caps it so that a burst of "
        "connections spreads over the workers sharing the socket (accept_at_most)"
    ),
    # -- transports reading into one reused buffer (transports.py) -----------
    ("tcp.Port", "transport"): (
        "the class a listening port makes its connections with (undocumented): set to "
        "a subclass of tcp.Server whose doRead uses the process's read buffer"
    ),
    ("tcp.Connector", "_makeTransport"): (
        "makes the connector's tcp.Client: overridden to make one reading into the "
        "process's buffer, for the backend connections"
    ),
    ("tcp.Connection", "_dataReceived/bufferSize/socket"): (
        "what Twisted's doRead does with the bytes it read (the end of the connection, "
        "the protocol's dataReceived and what it returns), its read size and socket: "
        "the doRead that reads into the process's buffer ends with it"
    ),
    # -- the reactor's dispatch (dispatch.py) ---------------------------------
    ("EPollReactor", "_poller/_selectables/_doReadOrWrite"): (
        "the epoll reactor's poll, fd -> descriptor, and the handling of one ready "
        "descriptor: lbproxy's poll (dispatch.py) makes the same calls with one legacy "
        "log context per poll instead of one per event (epoll_parts)"
    ),
    # -- pyOpenSSL: TLS reads and writes through reused buffers (tlsio.py) ---
    # Not Twisted's, but private all the same: pyOpenSSL's cffi binding and
    # the parts of its Connection that recv, bio_read, send, bio_write use.
    ("OpenSSL._util", "ffi/lib"): (
        "pyOpenSSL's cffi binding of OpenSSL: the process's TLS buffers are made with "
        "its ffi, and the reads and writes call its lib (tls_read_binding)"
    ),
    ("pyOpenSSL's lib", "SSL_read/BIO_read/SSL_write/BIO_write"): (
        "what Connection.recv, bio_read, send and bio_write call, here with the process's "
        "buffers in place of a new one (or ffi.from_buffer's copy) per call"
    ),
    ("SSL.Connection", "_ssl/_from_ssl/_into_ssl"): (
        "the connection's SSL object and the memory BIOs its ciphertext goes through"
    ),
    ("SSL.Connection", "_raise_ssl_error/_handle_bio_errors"): (
        "pyOpenSSL's own handling of a call's result (WantReadError, ZeroReturnError, "
        "SysCallError, Error): the calls through the process's buffers end with it"
    ),
}


#: A backend response's header names as they arrived (C{content-length}) ->
#: Twisted's spelling of them (C{Content-Length}) and whether its parser
#: keeps them with the connection's headers (C{connHeaders}) rather than the
#: response's; a name gets here only once Twisted's own C{headerReceived}
#: took it, so it is one Twisted accepts.  Up to L{_RESPONSE_NAMES_CACHED}.
_response_names: Dict[bytes, Tuple[bytes, bool]] = {}
_RESPONSE_NAMES_CACHED = 1000


def _response_name(name: bytes) -> Tuple[bytes, bool]:
    lowered = name.lower()
    return canonical_name(lowered), lowered in HTTPClientParser.CONNECTION_CONTROL_HEADERS


def _plain_headers(parser: HTTPClientParser) -> bool:
    """
    Whether C{parser} stores a header as Twisted's C{HTTPClientParser} does
    (its own C{headerReceived} and C{isConnectionControlHeader}, plain
    C{Headers}): then L{read_response_head} may store a remembered name's
    value itself.
    """
    kind = type(parser)
    return (
        kind.headerReceived is HTTPClientParser.headerReceived
        and kind.isConnectionControlHeader is HTTPClientParser.isConnectionControlHeader
        and kind.CONNECTION_CONTROL_HEADERS is HTTPClientParser.CONNECTION_CONTROL_HEADERS
        and type(parser.headers) is Headers
        and type(parser.connHeaders) is Headers
    )


def read_response_head(parser: HTTPClientParser, data: bytes) -> bool:
    """
    Read a response head that has arrived whole in C{data} in one pass, as
    the parser would line by line; C{False} (nothing read) when the head is
    not plain: the parser then reads C{data} itself.

    Plain means: the parser waits for a status line with nothing buffered,
    and the head (up to its first empty line) ends every line with CRLF,
    has no folded line, and fits in one of the parser's lines.  For such a
    head the parser's own steps run in its order (C{statusReceived}, each
    C{headerReceived}, C{allHeadersReceived}, which takes Twisted's framing
    decision), with what follows the head in the parser's buffer, as
    C{LineReceiver} leaves it; the parser then reads the rest in whatever
    mode it is in.  Exceptions propagate as from the parser's
    C{dataReceived}.
    """
    if parser.state != STATUS or parser._buffer or parser._busyReceiving or parser.paused:
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > parser.MAX_LENGTH:
        return False
    head = data[:end]
    lines = head.split(b"\r\n")
    if b"\n" in head and head.count(b"\n") != len(lines) - 1:
        return False  # a bare LF ends a line for the parser
    for line in lines[1:]:
        if line[:1] in b" \t":
            return False  # a folded line (or an empty one: not plain)
    parser._everReceivedData = True
    parser._busyReceiving = True
    try:
        parser._buffer = data[end + 4 :]
        parser.statusReceived(lines[0])
        parser.state = HEADER
        received = parser.headerReceived
        if _plain_headers(parser):
            # Twisted's headerReceived, with what it works out for a name
            # remembered (L{_response_names}).
            names = _response_names
            head_request = parser.request.method == b"HEAD"
            entity = parser.headers._rawHeaders
            control = parser.connHeaders._rawHeaders
            for line in lines[1:]:
                name, value = line.split(b":", 1)
                value = value.strip()
                known = names.get(name)
                if known is None or b"\r" in value:
                    received(name, value)
                    if known is None and len(names) < _RESPONSE_NAMES_CACHED:
                        names[name] = _response_name(name)
                    continue
                canonical, connection_control = known
                if connection_control and not (head_request and canonical == b"Content-Length"):
                    control.setdefault(canonical, []).append(value)
                else:
                    entity.setdefault(canonical, []).append(value)
        else:
            for line in lines[1:]:
                name, value = line.split(b":", 1)
                received(name, value.strip())
        parser.allHeadersReceived()
    finally:
        parser._busyReceiving = False
    transport = parser.transport
    if parser._buffer and not (
        transport is not None and getattr(transport, "disconnecting", False)
    ):
        rest, parser._buffer = parser._buffer, b""
        parser.dataReceived(rest)
    return True


class LazyPauseProxy(TransportProxyProducer):
    """
    The parser's view of a backend connection, whose pause while a
    response's head is handled (L{BackendParser.allHeadersReceived}) reaches
    the connection only if nothing resumed it in the meantime.

    Twisted's parser pauses the connection once a response's head is read,
    until a protocol takes the body (C{Response.deliverBody} resumes it):
    two changes to the reactor's registrations (two C{epoll_ctl} calls) per
    response when the body is taken at once, as the proxy always does.
    Held here, a pause followed by a resume within the head's handling
    passes the resume on alone; the connection's reading ends as Twisted's
    calls would leave it (a pause and a resume both pass on only their
    last word), and no byte is read from the socket in between either way.
    """

    _holding = False
    _pause_held = False

    def hold(self) -> None:
        """Hold pauses until L{release}."""
        self._holding = True

    def release(self) -> None:
        """Pass on a pause held since L{hold} and not undone by a resume."""
        self._holding = False
        if self._pause_held:
            self._pause_held = False
            TransportProxyProducer.pauseProducing(self)

    def pauseProducing(self) -> None:
        if self._holding:
            self._pause_held = True
        else:
            TransportProxyProducer.pauseProducing(self)

    def resumeProducing(self) -> None:
        self._pause_held = False
        TransportProxyProducer.resumeProducing(self)


class BackendParser(HTTPClientParser):
    """
    Twisted's response parser, with the Deferred it fires given to it (the
    request's own, so that none is chained to another) and the pause of its
    connection at the end of a head held while the head is handled
    (L{LazyPauseProxy}).
    """

    def __init__(
        self,
        request: ClientRequest,
        finisher: Any,
        deferred: Deferred,  # type: ignore[type-arg]
        first: Optional[Callable[[Any, HTTPClientParser], Any]] = None,
    ) -> None:
        # What HTTPClientParser.__init__ sets, with the given Deferred.
        self.request = request
        self.finisher = finisher
        # The parser calls only callback and errback on it.
        self._responseDeferred = (
            deferred if first is None else _FirstThen(deferred, first, self)  # type: ignore[assignment]
        )
        self._everReceivedData = False

    def allHeadersReceived(self) -> None:
        proxy = self.transport
        if not isinstance(proxy, LazyPauseProxy):
            HTTPClientParser.allHeadersReceived(self)
            return
        proxy.hold()
        try:
            HTTPClientParser.allHeadersReceived(self)
        finally:
            proxy.release()


class _FirstThen:
    """
    What a parser fires in place of its Deferred: the response goes through
    C{first(response, parser)} before the Deferred fires with what that
    returns (or fails with what it raises), as a first callback added to the
    Deferred would, without a callback and its round through the Deferred's
    machinery.  A failure goes to the Deferred as it is.
    """

    __slots__ = ("deferred", "first", "parser")

    def __init__(
        self,
        deferred: Deferred,  # type: ignore[type-arg]
        first: Callable[[Any, HTTPClientParser], Any],
        parser: HTTPClientParser,
    ) -> None:
        self.deferred = deferred
        self.first = first
        self.parser: Optional[HTTPClientParser] = parser

    def callback(self, result: Any) -> None:
        parser, self.parser = self.parser, None
        try:
            result = self.first(result, parser)  # type: ignore[arg-type]
        except BaseException:
            self.deferred.errback(Failure())
            return
        self.deferred.callback(result)

    def errback(self, failure: Optional[Failure] = None) -> None:
        self.parser = None
        self.deferred.errback(failure)


def request_head(request: ClientRequest) -> Optional[bytes]:
    """
    The bytes Twisted's C{Request.writeTo} writes for C{request}, which has
    no body, or L{None} when it would refuse the request (not exactly one
    C{Host}): its request line, C{Connection: close} for a request that is
    not persistent, C{Content-Length: 0} for a PUT or POST, and the headers
    in their order, one line per value.
    """
    headers = request.headers._rawHeaders
    hosts = headers.get(b"Host")
    if hosts is None or len(hosts) != 1:
        return None
    method = request.method
    lines = [method, b" ", request.uri, b" HTTP/1.1\r\n"]
    if not request.persistent:
        lines.append(b"Connection: close\r\n")
    if method == b"PUT" or method == b"POST":
        lines.append(b"Content-Length: 0\r\n")
    for name, values in headers.items():
        for value in values:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def send_without_body(
    protocol: HTTP11ClientProtocol,
    request: ClientRequest,
    head: bytes,
    first: Optional[Callable[[Any, HTTPClientParser], Any]] = None,
) -> Deferred:  # type: ignore[type-arg]
    """
    What Twisted's C{HTTP11ClientProtocol.request} does for a request with no
    body on a C{QUIESCENT} connection, given the request's C{head}
    (L{request_head}): the head written at once, the connection then
    C{WAITING} for the response, which a L{BackendParser} reads.  The
    Deferred returned is the parser's (Twisted chains the parser's to one of
    its own once the request is written) and cancels as Twisted's does.

    @param first: If given, what the response goes through first, as a
        first callback C{first(response, parser)} of the Deferred returned
        would (L{_FirstThen}).
    """
    transport = protocol.transport
    protocol._state = "TRANSMITTING"
    try:
        transport.write(head)  # type: ignore[union-attr]
    except BaseException:
        failure = Failure()
        protocol._state = "GENERATION_FAILED"
        transport.abortConnection()  # type: ignore[union-attr]
        return fail(RequestGenerationFailed([failure]))

    def cancel(deferred: Deferred) -> None:  # type: ignore[type-arg]
        # The request is all written: what Twisted's cancelRequest does then.
        protocol.transport.abortConnection()  # type: ignore[union-attr]
        protocol._disconnectParser(Failure(CancelledError()))

    deferred: Deferred = Deferred(cancel)  # type: ignore[type-arg]
    protocol._finishedRequest = deferred
    protocol._currentRequest = request
    proxy = LazyPauseProxy(transport)
    protocol._transportProxy = proxy
    parser = BackendParser(request, protocol._finishResponse, deferred, first)
    protocol._parser = parser
    parser.makeConnection(proxy)
    protocol._responseDeferred = deferred
    protocol._state = "WAITING"
    return deferred


def finish_response(protocol: HTTP11ClientProtocol, parser: HTTPClientParser) -> bool:
    """
    What Twisted's C{_finishResponse_WAITING} does when a response is complete
    on a connection that was C{WAITING} for it with its request all sent:
    the connection closed if the response or the request says so, else
    resumed, handed to its quiescent callback and its parser disconnected.
    C{False} (nothing done) in any other state: Twisted's then runs.
    """
    if protocol._state != "WAITING" or protocol._parser is not parser:
        return False
    protocol._state = "QUIESCENT"
    reason = Failure._withoutTraceback(ConnectionDone("synthetic!"))
    closing = parser.connHeaders._rawHeaders.get(b"Connection", ())
    if b"close" in closing or not protocol._currentRequest.persistent:  # type: ignore[union-attr]
        protocol._giveUp(reason)
        return True
    transport = protocol.transport
    transport.resumeProducing()  # type: ignore[union-attr]
    try:
        protocol._quiescentCallback(protocol)
    except BaseException:
        _log.failure("while invoking quiescent callback:", level=LogLevel.critical)
        transport.loseConnection()  # type: ignore[union-attr]
    protocol._disconnectParser(reason)
    return True


def give_up(protocol: HTTP11ClientProtocol) -> None:
    """Fail the request in flight and close, as Twisted's client does on a parse error."""
    protocol._giveUp(Failure())


def request_line(channel: http.HTTPChannel) -> Tuple[bytes, bytes, bytes]:
    """
    The method, target and version of the request whose head C{channel}
    has just read; known to the channel only until the body ends.
    """
    return (channel._command, channel._path, channel._version)  # type: ignore[attr-defined]


def take_response_deferred(parser: HTTPClientParser) -> Deferred:  # type: ignore[type-arg]
    """
    The Deferred that C{parser} would fire with its response, taken from
    it: the parser will not fire it (a switched connection's, which the
    caller fires).
    """
    deferred = parser._responseDeferred
    del parser._responseDeferred
    return deferred  # type: ignore[no-any-return]


def accept_at_most(port: object, most: int) -> None:
    """
    Make the listening C{port} (a C{twisted.internet.tcp.Port}, or a UNIX
    one) accept at most C{most} connections the next time the reactor finds
    its socket readable.  Twisted sets its own figure again after each
    readiness (up to hundreds in a row): set it before every one.
    """
    port.numberAccepts = most  # type: ignore[attr-defined]


def epoll_parts(reactor: Any) -> Tuple[Any, Dict[int, Any], Any]:
    """
    The epoll object of Twisted's epoll C{reactor}, its descriptors by file
    number, and its C{_doReadOrWrite(selectable, fd, event)}: what its
    C{doPoll} uses.
    """
    return (reactor._poller, reactor._selectables, reactor._doReadOrWrite)


def keep_header_line(channel: http.HTTPChannel, line: bytes) -> None:
    """
    Leave C{line} as the header line C{channel} keeps unread until the next
    line shows whether it is folded: where twisted.web's line-by-line
    reading leaves a head that a header closed the connection in (the one
    after the header that did).
    """
    channel._HTTPChannel__header = line  # type: ignore[attr-defined]


def take_buffered_data(channel: http.HTTPChannel) -> bytes:
    """
    The bytes C{channel} has read past the request it is handling (held
    until that request is done), taken from it.
    """
    buffered = b"".join(channel._dataBuffer)  # type: ignore[attr-defined]
    channel._dataBuffer = []  # type: ignore[attr-defined]
    return buffered


def set_clean_header(headers: Headers, name: bytes, values: List[bytes]) -> None:
    """
    C{headers.setRawHeaders(name, values)} for a C{name} already in Twisted's
    canonical capitalization (C{X-Request-Id}, see L{canonical_name}) and
    C{values} that hold no CR or LF: the same result, without encoding the
    name and sanitizing every value again.
    """
    headers._rawHeaders[name] = values


def header_map(headers: Headers) -> Dict[bytes, List[bytes]]:
    """
    The values of C{headers} by canonical name (C{User-Agent}), for reading
    a few of them without encoding each name again; not to be changed.
    """
    return headers._rawHeaders


def client_request(  # type: ignore[no-untyped-def]
    method: bytes, target: bytes, headers: Headers, body, persistent: bool, uri
) -> ClientRequest:
    """The client's request object for C{target} on the server at C{uri}, as Agent makes it."""
    return ClientRequest._construct(method, target, headers, body, persistent, uri)


def tls_read_binding() -> Optional[Tuple[Any, Any]]:
    """
    pyOpenSSL's C{ffi} and C{lib} when every pyOpenSSL part listed in
    L{INTERNALS} is there (on the module, its C{lib}, and a live memory-BIO
    C{SSL.Connection}), else C{None}: then TLS reads are pyOpenSSL's own.
    """
    try:
        from OpenSSL import SSL, _util
    except ImportError:
        return None
    ffi = getattr(_util, "ffi", None)
    lib = getattr(_util, "lib", None)
    if ffi is None or lib is None:
        return None
    try:
        probe = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    except Exception:
        return None
    for (owner, names), _why in INTERNALS.items():
        target = {"pyOpenSSL's lib": lib, "SSL.Connection": probe}.get(owner)
        if target is not None:
            for name in names.split("/"):
                if not hasattr(target, name):
                    return None
    return ffi, lib


def canonical_name(name: bytes) -> bytes:
    """C{name} as Twisted's C{Headers} spells it (C{X-Request-Id})."""
    headers = Headers()
    headers.setRawHeaders(name, [b""])
    return next(iter(headers.getAllRawHeaders()))[0]


__all__ = [
    "BackendParser",
    "LazyPauseProxy",
    "finish_response",
    "request_head",
    "send_without_body",
    "INTERNALS",
    "ClientRequest",
    "header_map",
    "RetryingHTTP11ClientProtocol",
    "canonical_name",
    "client_request",
    "set_clean_header",
    "ChunkedTransferDecoder",
    "H2Connection",
    "H2Stream",
    "HTTP11ClientFactory",
    "HTTP11ClientProtocol",
    "HTTPClientParser",
    "MalformedChunkedDataError",
    "RequestGenerationFailed",
    "RequestNotSent",
    "ResponseDone",
    "give_up",
    "keep_header_line",
    "read_response_head",
    "WrapperException",
    "accept_at_most",
    "epoll_parts",
    "request_line",
    "take_buffered_data",
    "take_response_deferred",
    "tls_read_binding",
]
