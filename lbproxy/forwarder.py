"""
Forwarding one client request to a server of a pool and its response back.

The L{Forwarder} walks the pool's candidates: a server that cannot be reached
(nothing was sent to it) is skipped for the next one, whatever the method.
The first response is relayed: status, reason and headers at once, the body
as it arrives, with backpressure both ways of the relay (a client that reads
slowly pauses the backend connection).  A client that goes away cancels the
backend side.  The in-flight count of the chosen server is released exactly
once, on every outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional, cast

from OpenSSL.SSL import Error as SSLError
from service_identity.exceptions import VerificationError as CertificateVerificationError
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent, ResponseDone, _WrapperException
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from lbproxy import headers as rules
from lbproxy.backend import BackendAgent
from lbproxy.body import StreamedBody
from lbproxy.pool import Pool, ServerState

if TYPE_CHECKING:
    from lbproxy.site import ProxyRequest

log = Logger()

#: Failures of the TLS handshake with a backend: nothing was sent yet.
_TLS_FAILURES = (SSLError, CertificateVerificationError)


def was_not_sent(failure: Failure) -> bool:
    """
    Whether a failed attempt is known not to have delivered the request to
    the server (it could not connect, or the TLS handshake failed), so that
    trying another server cannot make it act twice.
    """
    if failure.check(error.ConnectError, RequestNotSent):
        return True
    if isinstance(failure.value, _WrapperException):
        return any(reason.check(*_TLS_FAILURES) for reason in failure.value.reasons)
    return False


def describe(failure: Failure) -> str:
    """
    A short description of why an attempt failed, for a log line.
    """
    value = failure.value
    if isinstance(value, _WrapperException):
        inner = [describe(reason) for reason in value.reasons]
        return f"{type(value).__name__}: {'; '.join(inner)}"
    text = str(value).strip()
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


class Forwarder:
    """
    Sends requests to one pool through the backend agent.

    @param via: The pseudonym for C{Via} headers, or L{None}.
    """

    def __init__(self, pool: Pool, agent: BackendAgent, via: Optional[bytes]) -> None:
        self.pool = pool
        self.agent = agent
        self.via = via

    def forward(self, request: ProxyRequest) -> None:
        """
        Forward C{request} and respond to it; never raises.
        """
        _Exchange(self, request).start()


class _Exchange:
    """
    One client request on its way through the proxy.
    """

    def __init__(self, forwarder: Forwarder, request: ProxyRequest) -> None:
        self.forwarder = forwarder
        self.pool = forwarder.pool
        self.request = request
        self.candidates: Iterator[ServerState] = iter(())
        self.server: Optional[ServerState] = None
        self.pending: Optional[Deferred[IResponse]] = None
        self.relay: Optional[_BodyRelay] = None
        self.client_gone = False
        self.outgoing: Headers = request.requestHeaders
        self.body: Optional[StreamedBody] = None

    def start(self) -> None:
        request = self.request
        address = request.getClientAddress()
        client = getattr(address, "host", "unix").encode("ascii", "replace")
        version = request.clientproto[len(b"HTTP/") :]
        scheme = b"https" if request.isSecure() else b"http"
        self.body = request.body
        # The client's header object becomes the backend's: it is changed in
        # place rather than copied, which every request would pay for.
        outgoing = request.requestHeaders
        remove, add = rules.request_changes(
            outgoing.getAllRawHeaders(), client, scheme, version, self.forwarder.via
        )
        for name in remove:
            outgoing.removeHeader(name)
        for name, values in add:
            outgoing.setRawHeaders(name, values)
        self.outgoing = outgoing
        request.exchange = self
        self.candidates = self.pool.candidates()
        self._try_next()

    # -- dispatch ----------------------------------------------------------

    def _try_next(self) -> None:
        server = next(self.candidates, None)
        if server is None:
            self._respond_error(502, b"Bad Gateway", b"no server could take the request")
            return
        self.server = server
        self.pool.dispatch(server)
        request = self.request
        pending = self.forwarder.agent.send(
            server.route, request.method, request.uri, self.outgoing, self.body
        )
        self.pending = pending
        pending.addCallbacks(self._got_response, self._attempt_failed)

    def _release(self) -> None:
        server = self.server
        if server is not None:
            self.server = None
            self.pool.release(server)

    def _attempt_failed(self, failure: Failure) -> None:
        self.pending = None
        server = self.server
        self._release()
        if self.client_gone or failure.check(CancelledError):
            return
        name = server.name if server is not None else "?"
        # A streamed body that an attempt began to take cannot be sent again.
        replayable = self.body is None or not self.body.started
        if replayable and was_not_sent(failure):
            log.warn(
                "server {server}: cannot connect, trying the next one: {cause}",
                server=name,
                cause=describe(failure),
            )
            self._try_next()
        else:
            log.warn(
                "server {server}: request failed: {cause}", server=name, cause=describe(failure)
            )
            self._respond_error(502, b"Bad Gateway", b"the server failed to answer")

    # -- response ----------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self.pending = None
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        # The backend's header object goes to the client as it is, less what
        # must not pass; only the front connection's own Connection header
        # (set when the client asked to close) is carried over.
        relayed = response.headers
        for name in rules.response_removals(relayed.getAllRawHeaders()):
            relayed.removeHeader(name)
        closing = request.responseHeaders.getRawHeaders(b"connection")
        if closing is not None:
            relayed.setRawHeaders(b"Connection", closing)
        request.responseHeaders = relayed
        length = response.length
        if (
            length is not UNKNOWN_LENGTH
            and request.method != b"HEAD"
            and response.code not in NO_BODY_CODES
        ):
            relayed.setRawHeaders(b"Content-Length", [b"%d" % length])
        if not relayed.hasHeader(b"Date"):
            relayed.setRawHeaders(b"Date", [datetimeToString()])
        relay = _BodyRelay(self)
        self.relay = relay
        response.deliverBody(relay)

    def body_received(self, data: bytes) -> None:
        if not self.client_gone:
            self.request.write(data)

    def body_finished(self, reason: Failure) -> None:
        self.relay = None
        server = self.server
        self._release()
        if self.client_gone:
            return
        request = self.request
        request.exchange = None
        if request.producer is not None:
            request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        log.warn(
            "server {server}: response body cut short, closing the client connection: {cause}",
            server=server.name if server is not None else "?",
            cause=describe(reason),
        )
        request.cut_short()

    # -- the client side ---------------------------------------------------

    def client_lost(self, reason: Failure) -> None:
        """
        The client connection closed before the response was complete.
        """
        self.client_gone = True
        if self.pending is not None:
            self.pending.cancel()
        elif self.relay is not None and self.relay.transport is not None:
            cast(IPushProducer, self.relay.transport).stopProducing()

    def _respond_error(self, code: int, phrase: bytes, detail: bytes) -> None:
        self.request.exchange = None
        self.request.respond_error(code, phrase, detail)


class _BodyRelay(Protocol):
    """
    Receives a backend response body and writes it to the client request,
    registering the backend connection as the request's producer so that a
    slow client pauses the backend.
    """

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    def connectionMade(self) -> None:
        exchange = self.exchange
        if not exchange.client_gone:
            exchange.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.exchange.body_received(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.exchange.body_finished(reason)
