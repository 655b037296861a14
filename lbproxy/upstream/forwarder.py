"""
Forwarding one client request to a server of a pool and its response back.

The L{Forwarder} walks the pool's candidates.  A failed attempt is made
again on the next server, up to C{retries} times, when that cannot make the
request act twice: always when nothing reached the server, otherwise only for
idempotent methods whose body was not taken.  The response must start within
C{response_timeout} of the request being sent; body bytes may not pause for
longer than the idle limits.  When every server is busy the request waits in
the pool's queue.  The first response is relayed: status, reason and headers
at once, the body as it arrives, with backpressure (a client that reads
slowly pauses the backend connection).  A client that goes away cancels the
backend side.  Outcomes go back to the pool (passive health), and the
in-flight count of the chosen server is released exactly once.
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Set, cast

from OpenSSL.SSL import Error as SSLError
from service_identity.exceptions import VerificationError as CertificateVerificationError
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestGenerationFailed,
    RequestNotSent,
    ResponseDone,
    _WrapperException,
)
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from lbproxy import headers as rules
from lbproxy.front.body import StreamedBody
from lbproxy.routing import Change, Facts, Route, changes
from lbproxy.upstream.backend import BackendAgent, UnsendableRequest
from lbproxy.upstream.pool import Pool, ServerState
from lbproxy.upstream.tunnel import Switched, Tunnel, requested_upgrade, tunnel_timeout

if TYPE_CHECKING:
    from lbproxy.front.site import ProxyRequest

log = Logger()

#: Failures of the TLS handshake with a backend: nothing was sent yet.
_TLS_FAILURES = (SSLError, CertificateVerificationError)


def was_not_sent(failure: Failure) -> bool:
    """
    Whether a failed attempt is known not to have delivered the request to
    the server (it could not connect, or the TLS handshake failed), so that
    trying another server cannot make it act twice.
    """
    if failure.check(error.ConnectError, error.TimeoutError, RequestNotSent):
        return True
    if isinstance(failure.value, _WrapperException):
        return any(reason.check(*_TLS_FAILURES) for reason in failure.value.reasons)
    return False


def is_client_error(failure: Failure) -> bool:
    """
    Whether a failed attempt failed because of the request itself: Twisted's
    client would not send it (L{UnsendableRequest}), or could not generate
    it (C{RequestGenerationFailed}: its headers, or the body that the client
    was sending).  Such a failure is the client's: answered 400, never
    retried, never counted against the server.  An attempt cancelled while
    its body was being sent also ends as C{RequestGenerationFailed}: that
    one is not the request's fault.
    """
    if failure.check(UnsendableRequest):
        return True
    if failure.check(RequestGenerationFailed):
        reasons = cast(RequestGenerationFailed, failure.value).reasons
        return not any(reason.check(CancelledError) for reason in reasons)
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


def change_headers(headers: Headers, to_make: Iterable[Change]) -> None:
    """
    Make header rules' changes (L{lbproxy.routing.changes}) to Twisted's
    C{headers} in place.
    """
    for action, name, value in to_make:
        if action == "remove":
            headers.removeHeader(name)
        elif action == "set":
            headers.setRawHeaders(name, [cast(bytes, value)])
        else:
            headers.addRawHeader(name, cast(bytes, value))


#: Methods whose requests may be sent again after a failure once sent (RFC
#: 9110 section 9.2.2): doing them twice has the effect of doing them once.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

#: Pause before an attempt goes to a server this request already tried:
#: the first such retry waits this long, each next one twice as long.
RETRY_BACKOFF = 0.05


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
        _Exchange(self, request, route, facts).start()


class _Exchange:
    """
    One client request on its way through the proxy.

    Attempts: the first goes to the balancer's pick.  After a failure the
    request goes to the next candidate when it may be sent again (see
    L{_may_retry}), up to C{retries} more times; once every candidate was
    tried, the candidates start over after a short, doubling backoff.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        request: ProxyRequest,
        route: Optional[Route] = None,
        facts: Optional[Facts] = None,
    ) -> None:
        self.forwarder = forwarder
        self.route = route
        self.facts = facts
        self.pool = forwarder.pool
        self.clock = forwarder.clock
        self.request = request
        self.candidates: Iterator[ServerState] = iter(())
        self.tried: Set[int] = set()
        self.attempts = 0
        self.backoff = RETRY_BACKOFF
        self.server: Optional[ServerState] = None
        self.pending: Optional[Deferred[IResponse]] = None
        self.timer: Optional[IDelayedCall] = None
        self.timed_out = False
        self.idle_expired = False
        self.last_byte = 0.0
        self.relay: Optional[_BodyRelay] = None
        self.leave_queue: Optional[Callable[[], None]] = None
        self.client_gone = False
        self.outgoing: Headers = request.requestHeaders
        self.body: Optional[StreamedBody] = None
        # What the balancer is told: the request's key, the server its
        # sticky cookie names, and when the attempt was sent.
        self.key: Optional[bytes] = None
        self.cookie_server: Optional[ServerState] = None
        self.sent_at = 0.0

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
        pool = self.pool
        self.key = pool.request_key(client, outgoing.getRawHeaders, request.uri)
        if pool.sticky is not None:
            self.cookie_server = pool.sticky_server(outgoing.getRawHeaders(b"cookie"))
        upgrade = requested_upgrade(request)
        remove, add = rules.request_changes(
            outgoing.getAllRawHeaders(), client, scheme, version, self.forwarder.via
        )
        for name in remove:
            outgoing.removeHeader(name)
        for name, values in add:
            outgoing.setRawHeaders(name, values)
        if upgrade is not None:
            outgoing.setRawHeaders(b"Connection", [b"Upgrade"])
            outgoing.setRawHeaders(b"Upgrade", [upgrade])
        request_id = rules.kept_request_id(outgoing.getRawHeaders(b"x-request-id"))
        if request_id is None:
            request_id = os.urandom(16).hex().encode("ascii")
            outgoing.setRawHeaders(b"X-Request-ID", [request_id])
        request.request_id = request_id
        route = self.route
        if route is not None:
            facts = self.facts
            if facts is not None:
                facts.client = client
                facts.request_id = request_id
            if route.request_rules:
                change_headers(outgoing, changes(route.request_rules, facts))
            if route.host_rewrite is not None:
                outgoing.setRawHeaders(b"Host", [route.host_rewrite])
        request.pool = self.pool
        self.outgoing = outgoing
        request.exchange = self
        self.candidates = self._candidates()
        self._try_next()

    def _candidates(self) -> Iterator[ServerState]:
        return self.pool.candidates(self.key, self.cookie_server)

    # -- dispatch ----------------------------------------------------------

    def _try_next(self) -> None:
        server = next(self.candidates, None)
        if server is None and self.attempts > 0:
            # Every candidate has had its turn and attempts are left: a
            # second round, after a pause.
            self.candidates = self._candidates()
            server = next(self.candidates, None)
        if server is None:
            if self.attempts == 0:
                self._no_server()
            else:
                self._respond_error(502, b"Bad Gateway", b"no server could take the request")
            return
        if id(server) in self.tried:
            self.timer = self.clock.callLater(self.backoff, self._send, server)
            self.backoff *= 2
            return
        self._send(server)

    def _no_server(self) -> None:
        """
        No server can take the request now: wait in the pool's queue when a
        server is only busy, else answer 503.
        """
        pool = self.pool
        if pool.can_wait():
            self.leave_queue = pool.wait(self._queue_ready)
            self.timer = self.clock.callLater(pool.config.queue_timeout, self._queue_timed_out)
            return
        self._respond_error(
            503,
            b"Service Unavailable",
            b"no server is available",
            retry_after=pool.retry_after(),
        )

    def _queue_ready(self) -> None:
        self.leave_queue = None
        self._stop_timer()
        if self.client_gone:
            return
        self.candidates = self._candidates()
        self._try_next()

    def _queue_timed_out(self) -> None:
        self.timer = None
        if self.leave_queue is not None:
            self.leave_queue()
            self.leave_queue = None
        log.warn(
            "pool {pool}: no server slot within {seconds:g}s",
            pool=self.pool.name,
            seconds=self.pool.config.queue_timeout,
        )
        self._respond_error(
            503,
            b"Service Unavailable",
            b"every server is busy",
            retry_after=self.pool.retry_after(),
        )

    def _send(self, server: ServerState) -> None:
        self.timer = None
        if self.client_gone:
            return
        self.attempts += 1
        self.tried.add(id(server))
        self.server = server
        request = self.request
        request.server = server
        request.attempts = self.attempts
        self.pool.dispatch(server)
        if self.pool.observes_latency:
            self.sent_at = self.clock.seconds()
        self.timed_out = False
        body = self.body
        if body is not None and not body.complete:
            # The body is still arriving: the response clock starts once it
            # has all gone; until then no gap between its bytes may last
            # longer than idle_timeout.
            body.on_sent = self._request_sent
            self._watch_idle()
        else:
            self._request_sent()
        pending = self.forwarder.agent.send(
            server.route, request.method, request.target, self.outgoing, body
        )
        self.pending = pending
        pending.addCallbacks(self._got_response, self._attempt_failed)

    def _request_sent(self) -> None:
        """
        The whole request is on its way to the server: it has
        response_timeout to start answering.
        """
        self._stop_timer()
        self.timer = self.clock.callLater(self.forwarder.response_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.timer = None
        self.timed_out = True
        if self.pending is not None:
            self.pending.cancel()

    def _watch_idle(self) -> None:
        self._stop_timer()
        self.last_byte = self.clock.seconds()
        self.timer = self.clock.callLater(self._idle_limit(), self._check_idle)

    def _idle_limit(self) -> float:
        if self.relay is None:
            return self.forwarder.upload_idle_timeout
        return self.forwarder.idle_timeout

    def touch(self) -> None:
        """
        A body byte moved (either way): the idle clock starts again.
        """
        self.last_byte = self.clock.seconds()

    def _check_idle(self) -> None:
        self.timer = None
        idle = self._idle_limit()
        quiet = self.clock.seconds() - self.last_byte
        if quiet < idle:
            self.timer = self.clock.callLater(idle - quiet, self._check_idle)
            return
        self.idle_expired = True
        relay = self.relay
        if relay is not None:
            if relay.transport is not None:
                cast(IPushProducer, relay.transport).stopProducing()
        elif self.pending is not None:
            self.pending.cancel()

    def _stop_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _release(self) -> None:
        server = self.server
        if server is not None:
            self.server = None
            self.pool.release(server)

    def _may_retry(self, failure: Failure) -> bool:
        """
        Whether a failed attempt may be made again elsewhere: attempts are
        left, a streamed body was not taken by the attempt, and either nothing
        reached the server (whatever the method) or the method is idempotent.
        No response byte has reached the client at this point.
        """
        if self.attempts >= self.forwarder.attempts:
            return False
        if self.body is not None and self.body.started:
            return False
        if not self.timed_out and was_not_sent(failure):
            return True
        return self.request.method in IDEMPOTENT

    def _attempt_failed(self, failure: Failure) -> None:
        self.pending = None
        self._stop_timer()
        server = self.server
        self._release()
        if self.client_gone:
            return
        name = server.name if server is not None else "?"
        if not self.idle_expired and not self.timed_out and is_client_error(failure):
            log.info("request not forwarded: {cause}", cause=describe(failure))
            self.request.server = None
            self._respond_error(400, b"Bad Request", b"the request cannot be forwarded", close=True)
            return
        if server is not None and not self.idle_expired:
            self.pool.record_failure(server)
        if self.idle_expired:
            log.warn(
                "server {server}: the client sent no body byte for {idle:g}s; closing",
                server=name,
                idle=self.forwarder.upload_idle_timeout,
            )
            self._respond_error(408, b"Request Timeout", b"the request body stalled", close=True)
            return
        if self.timed_out:
            cause = f"no response within {self.forwarder.response_timeout:g}s"
        elif failure.check(CancelledError):
            return
        elif was_not_sent(failure):
            cause = f"cannot connect: {describe(failure)}"
            if server is not None:
                server.stats.connect_failures += 1
        else:
            cause = f"request failed: {describe(failure)}"
        if self._may_retry(failure):
            log.warn("server {server}: {cause}; trying again", server=name, cause=cause)
            self.pool.stats.retries += 1
            self._try_next()
        elif self.timed_out:
            log.warn("server {server}: {cause}", server=name, cause=cause)
            self._respond_error(504, b"Gateway Timeout", b"the server did not answer in time")
        else:
            log.warn("server {server}: {cause}", server=name, cause=cause)
            if was_not_sent(failure):
                self._respond_error(502, b"Bad Gateway", b"no server could take the request")
            else:
                self._respond_error(502, b"Bad Gateway", b"the server failed to answer")

    # -- response ----------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self.pending = None
        self._stop_timer()
        server = self.server
        if server is not None:
            if response.code >= 500 and self.pool.config.fail_on_5xx:
                self.pool.record_failure(server)
            else:
                self.pool.record_success(server)
            if self.pool.observes_latency:
                self.pool.record_latency(server, self.clock.seconds() - self.sent_at)
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        # The backend's header object goes to the client as it is, less what
        # must not pass; only the front connection's own Connection header
        # (set when the client asked to close) is carried over.
        relayed = response.headers
        for name in rules.response_removals(relayed.getAllRawHeaders()):
            relayed.removeHeader(name)
        route = self.route
        if route is not None and route.response_rules:
            facts = self.facts
            if facts is not None:
                facts.server = server.name.encode("ascii", "replace") if server else b"-"
            change_headers(relayed, changes(route.response_rules, facts))
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
        sticky = self.pool.sticky
        if sticky is not None and server is not None and server is not self.cookie_server:
            relayed.addRawHeader(b"Set-Cookie", sticky.set_cookie(server))
        if isinstance(response, Switched):
            # The server switched protocols: the connections become a
            # tunnel, which holds the server's in-flight slot until closed.
            self.server = None
            request.exchange = None
            assert server is not None
            release = partial(self.pool.release, server)
            Tunnel(request, response, release, self.clock, tunnel_timeout(request)).start()
            return
        relay = _BodyRelay(self)
        self.relay = relay
        response.deliverBody(relay)
        if self.relay is not None:
            # The body goes on: no gap between its bytes longer than
            # idle_timeout.
            self._watch_idle()

    def body_received(self, data: bytes) -> None:
        self.last_byte = self.clock.seconds()
        if data and not self.client_gone:
            # The first write sends the status line and headers: from then
            # on the response cannot be replaced.
            self.request.write(data)

    def body_finished(self, reason: Failure) -> None:
        """
        The response body ended: completely, or cut short by the server
        (broken framing, a close before the end, a stall past idle_timeout).

        A response cut short is the server's failure (passive health).  What
        the client sees depends on whether a byte of the response has been
        written to its connection yet (the status line and headers go with the
        first body byte, or with the end of an empty body).  If one has, the
        response is truncated visibly (L{ProxyRequest.cut_short}), as nginx
        does.  If none has, the response can still be replaced: the request
        goes to the next server when it may be sent again (L{_may_retry}),
        else the client gets a 502 (504 for a stall).
        """
        self.relay = None
        self._stop_timer()
        server = self.server
        self._release()
        if self.client_gone:
            return
        request = self.request
        if request.producer is not None:
            request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            request.exchange = None
            request.finish()
            return
        if server is not None:
            self.pool.record_failure(server)
        name = server.name if server is not None else "?"
        stalled, self.idle_expired = self.idle_expired, False
        if stalled:
            cause = f"no body byte for {self.forwarder.idle_timeout:g}s"
        else:
            cause = describe(reason)
        if request.startedWriting:
            request.exchange = None
            log.warn(
                "server {server}: response body cut short, closing the client connection: {cause}",
                server=name,
                cause=cause,
            )
            request.cut_short()
            return
        if self._may_retry(reason):
            log.warn(
                "server {server}: response failed before its first byte: {cause}; trying again",
                server=name,
                cause=cause,
            )
            self.pool.stats.retries += 1
            self._try_next()
            return
        log.warn(
            "server {server}: response failed before its first byte: {cause}",
            server=name,
            cause=cause,
        )
        if stalled:
            self._respond_error(504, b"Gateway Timeout", b"the server did not answer in time")
        else:
            self._respond_error(502, b"Bad Gateway", b"the server failed to answer")

    # -- the client side ---------------------------------------------------

    def client_lost(self, reason: Failure) -> None:
        """
        The client connection closed before the response was complete.
        """
        self.client_gone = True
        if self.leave_queue is not None:
            self.leave_queue()
            self.leave_queue = None
        if self.pending is not None:
            self.pending.cancel()
        elif self.relay is not None and self.relay.transport is not None:
            cast(IPushProducer, self.relay.transport).stopProducing()
        self._stop_timer()

    def _respond_error(
        self,
        code: int,
        phrase: bytes,
        detail: bytes,
        close: bool = False,
        retry_after: Optional[int] = None,
    ) -> None:
        self.request.exchange = None
        self.request.respond_error(code, phrase, detail, close=close, retry_after=retry_after)


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
