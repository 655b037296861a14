"""
The proxy's HTTP/1.1 server connection: twisted.web's C{HTTPChannel}, with
the checks an edge proxy needs before a request may go anywhere.

twisted.web's parser already refuses most malformed requests (conflicting or
malformed framing headers, bad chunk sizes, invalid header names and
values).  On top of it, this channel answers with the specific status and
closes the connection for: an overlong request line (414), header sections
over the size or count limit (431), an invalid method or request target
(400), header names that are not tokens and values with control bytes
(400), folded header lines (400), transfer codings other than chunked (501)
or any on an HTTP/1.0 request (400), invalid trailer fields (400), and
header sections that take too long (408).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple
from typing import Protocol as Structure

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import INonQueuedRequestFactory

from lbproxy import headers as rules
from lbproxy._twisted import (
    ChunkedTransferDecoder,
    MalformedChunkedDataError,
    canonical_name,
    header_map,
    keep_header_line,
    take_buffered_data,
)
from lbproxy.config import FrontLimits
from lbproxy.front.errors import error_response

Refusal = Tuple[int, bytes, bytes]

#: Header names as received -> as Twisted's C{Headers} spell them (at most
#: L{_CANONICAL_CACHED}; others are spelt again each time).
_canonical: Dict[bytes, bytes] = {}
_CANONICAL_CACHED = 1000

#: Whether a request factory is called without the request's place in the
#: queue (twisted.web asks zope.interface for every request).
_unqueued: Dict[Any, bool] = {}

#: twisted.web's own reading of one line of a request head (bound once:
#: C{twisted.web.http} is a deprecation proxy, slow to look names up in).
_http_line_received = http.HTTPChannel.lineReceived


def request_line_refusal(line: bytes) -> Optional[Refusal]:
    """
    Why a request line must be refused, or L{None}: its method must be a
    token and its target one of the forms of L{rules.target_problem}.  The
    version and the spacing are left to twisted.web's parser, which refuses
    them with 400.  (twisted.web's own target check lets bytes 0x7F-0xB0
    through, which Twisted's HTTP client then refuses to send.)
    """
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, _ = parts
    if not rules.is_token(method):
        return (400, b"Bad Request", b"invalid method")
    problem = rules.target_problem(method, target)
    if problem is not None:
        return (400, b"Bad Request", problem)
    return None


def transfer_coding_refusal(value: bytes, version: bytes) -> Optional[Refusal]:
    """
    Why a C{Transfer-Encoding} header must be refused, or L{None}: only
    exactly C{chunked} is accepted, and only from HTTP/1.1.
    """
    if version != b"HTTP/1.1":
        return (400, b"Bad Request", b"Transfer-Encoding is not allowed in HTTP/1.0")
    codings = [c.strip() for c in value.lower().split(b",")]
    if codings == [b"chunked"]:
        return None
    if all(c == b"chunked" for c in codings):
        return (400, b"Bad Request", b"chunked applied more than once")
    return (501, b"Not Implemented", b"unsupported transfer coding")


class StrictChunkedDecoder(ChunkedTransferDecoder):
    """
    twisted.web's chunked decoder, which also holds trailer fields to the
    rules of header fields (L{rules.field_line_problem}) and chunk
    extensions to their grammar (L{rules.chunk_extension_problem}).  Trailers are
    read and dropped, never forwarded; one that breaks the rules is still
    refused, as twisted.web refuses control bytes in chunk extensions.
    """

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        end = self._buffer.find(b"\r\n", self._start)
        if end > 0:
            semicolon = self._buffer.find(b";", 0, end)
            if semicolon >= 0 and rules.chunk_extension_problem(bytes(self._buffer[semicolon:end])):
                raise MalformedChunkedDataError("invalid chunk extension")
        more: bool = super()._dataReceived_CHUNK_LENGTH()
        return more

    def _dataReceived_TRAILER(self) -> bool:
        end = self._buffer.find(b"\r\n", self._start)
        if end > 0 and rules.field_line_problem(bytes(self._buffer[:end])) is not None:
            raise MalformedChunkedDataError("invalid trailer field")
        more: bool = super()._dataReceived_TRAILER()
        return more


class Tunnelled(Structure):
    """
    What takes a client connection's bytes after a C{101}
    (L{lbproxy.upstream.tunnel.Tunnel}): declared here so that the front
    does not import the upstream side.
    """

    def from_client(self, data: bytes) -> None: ...

    def client_lost(self, reason: Failure) -> None: ...


class ProxyChannel(http.HTTPChannel):
    """
    An HTTP server connection of the proxy, with L{FrontLimits}.
    """

    limits = FrontLimits()
    # twisted.web's own limits sit above ours, so that ours answer first.
    totalHeadersSize = 1 << 30
    maxHeaders = 1 << 30

    # Where the connection stands: before a request line, in a header
    # section, or with a request whose head is complete.
    _IDLE, _HEADERS, _REQUEST = range(3)
    _phase = _IDLE
    _header_lines = 0
    _header_bytes = 0
    _request_version = b""
    _header_timer: Optional[IDelayedCall] = None
    #: Request heads completed on this connection.
    _heads = 0
    #: The idle timeout is off while a request is handled (L{setTimeout}).
    _idle_suspended = False
    _lost = False
    refused = False
    #: After a 101: the tunnel that takes this connection's bytes
    #: (L{lbproxy.upstream.tunnel.Tunnel}); no more HTTP is parsed.
    tunnel: Optional[Tunnelled] = None
    #: The connection's two ends and whether it is TLS, which every
    #: request asks for (a new address object each time from a transport).
    _peer = None
    _host = None
    _secure: Optional[bool] = None
    #: A request head that arrives whole is read in one pass
    #: (L{_read_head}); off, every head is read line by line.
    read_heads_whole = True

    def connectionMade(self) -> None:
        self.MAX_LENGTH = max(self.limits.max_request_line, self.limits.max_header_size) + 2
        super().connectionMade()

    def getPeer(self) -> Any:
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def getHost(self) -> Any:
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def isSecure(self) -> bool:
        secure = self._secure
        if secure is None:
            secure = bool(super().isSecure())
            if self.transport is not None:
                self._secure = secure
        return secure

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.refused:
            return
        # The first bytes of a request: its head has client_header_timeout
        # to arrive whole, however slowly it trickles (slowloris).  The
        # timer is set only when no head was completed with these bytes
        # (the usual request arrives whole in one read and needs none),
        # from this same moment.
        starting = self._phase == self._IDLE and self._header_timer is None
        heads = self._heads
        if not (self.read_heads_whole and starting and self._read_head(data)):
            super().dataReceived(data)
        if self.refused:
            return
        # Whole CRLF-terminated lines have been taken; an LF left over in a
        # partial line has no CR before it.  (LineReceiver keeps that partial
        # line in ``_buffer``.)
        if self.line_mode and b"\n" in self._buffer:
            self.refuse(400, b"Bad Request", b"lines must end with CRLF")
            return
        if starting and self._heads == heads and self._header_timer is None:
            self._header_timer = self.callLater(  # type: ignore[attr-defined]
                self.limits.client_header_timeout, self._header_timed_out
            )

    def _read_head(self, data: bytes) -> bool:
        """
        Read a request head that has arrived whole in C{data} in one pass,
        as the line-by-line reading would; C{False} (nothing read) when the
        head is not plain: C{data} then goes the line-by-line way.

        Plain means: the channel waits for a request line with nothing
        buffered, and the head (up to its first empty line) ends every line
        with CRLF, starts with a request line that passes this channel's
        checks and twisted.web's (three parts, HTTP/1.1 or HTTP/1.0), has no
        folded line, and is within every limit (the line length, the
        request line, the header count and size).  For such a head every
        check of L{lineReceived} passes, so what is left of it is
        twisted.web's own reading: the request made as its C{lineReceived}
        makes it, then each C{headerReceived}, and its C{lineReceived} for
        the last header line and the empty one (C{allHeadersReceived} with
        its framing and keep-alive decisions), with what follows the head in
        C{LineReceiver}'s buffer as its splitting would leave it; when a
        line closes the connection the rest stays unread, as there.  The
        bytes after the head are then read in whatever mode the channel is
        in.
        """
        if (
            not self.line_mode
            or self._buffer
            or self._busyReceiving
            or self.paused
            or not self.persistent
        ):
            return False
        transport: Any = self.transport  # its "disconnecting" as LineReceiver reads it
        if transport is None or transport.disconnecting:
            return False
        end = data.find(b"\r\n\r\n")
        if (
            end < 0
            or end > self.MAX_LENGTH
            or end > self.totalHeadersSize - self._receivedHeaderSize
        ):
            return False
        head = data[:end]
        lines = head.split(b"\r\n")
        if b"\n" in head and head.count(b"\n") != len(lines) - 1:
            return False  # a bare LF: refused line by line
        first = lines[0]
        limits = self.limits
        if (
            not first  # an empty line before the request line
            or len(first) > limits.max_request_line
            or len(lines) - 1 > limits.max_headers
            or end - len(first) > limits.max_header_size
        ):
            return False
        if b"\r\n " in head or b"\r\n\t" in head:
            return False  # a folded line
        if request_line_refusal(first) is not None:
            return False
        waiting: int = self._HTTPChannel__first_line  # type: ignore[has-type]
        parts = first.split(b" ")
        if not waiting or len(parts) != 3:
            return False
        method, target, version = parts
        if version != b"HTTP/1.1" and version != b"HTTP/1.0":
            return False  # twisted.web's to refuse, line by line
        # What this channel's lineReceived does for a request line that
        # passes its checks, and for header lines within the limits.
        last = len(lines) - 1
        self._phase = self._HEADERS
        self._header_lines = last
        self._header_bytes = end - len(first)
        self._request_version = version
        self._busyReceiving = True
        try:
            self._buffer = data[end + 4 :]
            # What twisted.web's lineReceived does with a request line that
            # its parser takes (a token for the method, a target of visible
            # ASCII, HTTP/1.1 or HTTP/1.0), within its size limit, on a
            # persistent connection: count it, make the request (without
            # asking zope.interface each time how to call the factory),
            # keep the request line.  tests/test_request_head.py holds the
            # result to twisted.web's own reading, line by line.
            self._receivedHeaderSize += len(first)
            factory = self.requestFactory
            unqueued = _unqueued.get(factory)
            if unqueued is None:
                unqueued = _unqueued[factory] = INonQueuedRequestFactory.providedBy(factory)
            request = factory(self) if unqueued else factory(self, len(self.requests))
            self.requests.append(request)
            self._HTTPChannel__first_line = 0
            self._command = method
            self._path = target
            self._version = version
            # Of each header line twisted.web counts its size, reads the
            # line before it (headerReceived) and keeps it for the next.
            received = self.headerReceived
            for i in range(1, last):
                received(lines[i])
                if transport.disconnecting:
                    self._stop_head(data, end, lines, i + 1)
                    return True
            if last:
                self._receivedHeaderSize += end - len(first) - 2 * last - len(lines[last])
                _http_line_received(self, lines[last])
            # The empty line: the last header read, the framing decided.
            _http_line_received(self, b"")
        finally:
            self._busyReceiving = False
            # Bytes arrived: the idle timeout starts again (as twisted.web's
            # dataReceived does first), unless a request is now being
            # handled, which has it off (L{setTimeout}): then nothing is
            # done, and it starts again when the response is complete.
            self.resetTimeout()
        if self._buffer and not transport.disconnecting:
            rest, self._buffer = self._buffer, b""
            LineReceiver.dataReceived(self, rest)
        return True

    def _stop_head(self, data: bytes, end: int, lines: List[bytes], read: int) -> None:
        """
        A line of a head read in one pass (its C{read}th header line, 0 for
        the request line) closed the connection: leave the channel as the
        line-by-line reading would have, with the rest of the head unread.
        """
        size = sum(len(line) for line in lines[1 : read + 1])
        self._header_lines = read
        self._header_bytes = size + 2 * read
        self._receivedHeaderSize += size
        if read:
            keep_header_line(self, lines[read])
        at = len(lines[0]) + 2 + self._header_bytes
        self._buffer = data[at : end + 4] + self._buffer

    def lineReceived(self, line: bytes) -> None:
        limits = self.limits
        if self._phase == self._IDLE:
            if not line:
                return super().lineReceived(line)  # a stray CRLF before a request
            if len(line) > limits.max_request_line:
                return self.refuse(414, b"URI Too Long", b"the request line is too long")
            problem = request_line_refusal(line)
            if problem is not None:
                return self.refuse(*problem)
            self._phase = self._HEADERS
            self._header_lines = 0
            self._header_bytes = 0
            self._request_version = line.rsplit(b" ", 1)[-1]
        elif line:
            if line[:1] in (b" ", b"\t"):
                return self.refuse(400, b"Bad Request", b"folded header lines are not accepted")
            self._header_lines += 1
            self._header_bytes += len(line) + 2
            if self._header_lines > limits.max_headers:
                return self.refuse(
                    431, b"Request Header Fields Too Large", b"too many header fields"
                )
            if self._header_bytes > limits.max_header_size:
                return self.refuse(
                    431, b"Request Header Fields Too Large", b"the header section is too large"
                )
        return super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._phase == self._IDLE:
            self.refuse(414, b"URI Too Long", b"the request line is too long")
        else:
            self.refuse(431, b"Request Header Fields Too Large", b"a header field is too large")

    def headerReceived(self, line: bytes) -> bool:
        # RFC 9110 sections 5.1 and 5.5: a token for a name, no control byte
        # but HTAB in a value.  (twisted.web checks names, and NUL, CR and
        # LF only in the values, not every supported release even those.)
        detail = rules.field_line_problem(line)
        if detail is not None:
            self.refuse(400, b"Bad Request", detail)
            return False
        name, _, value = line.partition(b":")
        if name.lower() == b"transfer-encoding":
            problem = transfer_coding_refusal(value.strip(), self._request_version)
            if problem is not None:
                self.refuse(*problem)
                return False
        # What is left of twisted.web's headerReceived for a line that has
        # passed the checks above (a token for a name, no NUL, CR or LF in
        # the value): the name in Twisted's spelling, the value stripped,
        # twisted.web's framing decision, the header kept (as addRawHeader
        # keeps it: a value without CR or LF is not changed) and counted.
        header = _canonical.get(name)
        if header is None:
            header = canonical_name(name)
            if len(_canonical) < _CANONICAL_CACHED:
                _canonical[name] = header
        data = value.strip(b" \t")
        if not self._maybeChooseTransferDecoder(header, data):
            return False
        header_map(self.requests[-1].requestHeaders).setdefault(header, []).append(data)
        self._receivedHeaderCount += 1
        if self._receivedHeaderCount > self.maxHeaders:
            self._respondToBadRequestAndDisconnect()
            return False
        return True

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok: bool = super()._maybeChooseTransferDecoder(header, data)  # type: ignore[misc]
        decoder = self._transferDecoder
        if ok and type(decoder) is ChunkedTransferDecoder:
            self._transferDecoder = StrictChunkedDecoder(
                decoder.dataCallback, decoder.finishCallback
            )
        return ok

    def rawDataReceived(self, data: bytes) -> None:
        super().rawDataReceived(data)
        # A chunk announced larger than max_body_size is refused at once,
        # not after the client has sent it.  (twisted.web's chunked decoder
        # keeps the remaining length of the current chunk in ``length``.)
        limit = self.limits.max_body_size
        decoder = self._transferDecoder
        if decoder is None or self.refused:
            return
        if isinstance(decoder, ChunkedTransferDecoder):
            if limit and getattr(decoder, "length", 0) > limit:
                self.refuse(413, b"Content Too Large", b"the request body is too large")
            elif getattr(decoder, "state", "") in ("CHUNK_LENGTH", "TRAILER") and b"\n" in getattr(
                decoder, "_buffer", b""
            ):
                # The decoder waits for a CRLF that a bare LF never gives.
                self.refuse(400, b"Bad Request", b"chunk lines must end with CRLF")

    def allHeadersReceived(self) -> None:
        self._heads += 1
        self._cancel_header_timer()
        self._phase = self._REQUEST
        # twisted.web's allHeadersReceived, its header read by its name as
        # Twisted spells it (no name encoded again).
        request = self.requests[-1]
        request.parseCookies()
        version = self._version
        self.persistent = self.checkPersistence(request, version)
        request.gotLength(self.length)
        expect = header_map(request.requestHeaders).get(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and version == b"HTTP/1.1":
            self._send100Continue()

    def _send100Continue(self) -> None:
        if not self.refused:
            super()._send100Continue()

    def requestDone(self, request: http.Request) -> None:
        self._phase = self._IDLE
        super().requestDone(request)

    def start_tunnel(self, tunnel: Tunnelled) -> bytes:
        """
        Hand this connection to C{tunnel}: from now on every byte goes to its
        C{from_client}.  Returns the bytes that arrived after the request
        (twisted.web keeps them in C{_dataBuffer} while a request is handled).
        """
        self.tunnel = tunnel
        self._cancel_header_timer()
        self.cancel_idle_timeout()
        early = take_buffered_data(self)
        # twisted.web pauses reading while it holds more than 16 KB.
        producer = IPushProducer(self.transport, None)
        if producer is not None:
            producer.resumeProducing()
        return early

    def setTimeout(self, period: Optional[float]) -> Optional[float]:
        """
        twisted.web turns the idle timeout off while each request is handled
        and on again after it.  Off only suspends it here: the pending call
        stays, is reset when the timeout comes back and ignored if it runs
        out meanwhile; one timer per connection, not one per request.  When
        the connection is lost it is cancelled as usual.
        """
        if period is None and not self._lost:
            self._idle_suspended = True
            previous, self.timeOut = self.timeOut, None
            return previous  # type: ignore[no-any-return]
        self._idle_suspended = False
        return super().setTimeout(period)  # type: ignore[no-any-return]

    def cancel_idle_timeout(self) -> None:
        """
        Turn the idle timeout off for good (not suspended): the connection
        is handed over to a tunnel or to HTTP/2.
        """
        self._idle_suspended = False
        super().setTimeout(None)

    def timeoutConnection(self) -> None:
        if not self._idle_suspended:
            super().timeoutConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self.tunnel is not None:
            self.tunnel.client_lost(reason)
        self._cancel_header_timer()
        closed = getattr(self.factory, "connection_closed", None)
        if closed is not None:
            closed(self)
        super().connectionLost(reason)

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        if getattr(self.factory, "closing", False):
            # The proxy is stopping: this response is the connection's last.
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        # twisted.web's checkPersistence, to the letter (the first
        # Connection value, split at spaces), its header read by its name as
        # Twisted spells it.
        connection = header_map(request.requestHeaders).get(b"Connection")
        if version != b"HTTP/1.1":
            return False
        if connection and b"close" in [t.lower() for t in connection[0].split(b" ")]:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return True

    def close_when_idle(self) -> None:
        """
        Close now if no request is under way; else after the current
        response, which tells the client so when it has not begun.
        """
        self.persistent = False
        if self._phase == self._IDLE and not self.requests:
            if self.transport is not None:
                self.transport.loseConnection()
            return
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])

    def _cancel_header_timer(self) -> None:
        timer, self._header_timer = self._header_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._phase != self._REQUEST:
            self.refuse(408, b"Request Timeout", b"the request head took too long")

    # -- refusing --------------------------------------------------------------

    def refuse(self, code: int, phrase: bytes, detail: bytes) -> None:
        """
        Answer C{code} and close the connection; nothing more of it is read.
        """
        if self.refused:
            return
        self.refused = True
        self.persistent = False
        self._cancel_header_timer()
        if self.transport is not None:
            self.transport.write(error_response(code, phrase, detail))
            self.transport.loseConnection()
