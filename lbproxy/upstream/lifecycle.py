"""
The lifecycle of one request on its way through a pool, as a state machine.

States (L{Lifecycle.state}), each with at most one timer, whose purpose the
state gives::

    state              timer (one slot)            leaves on
    -----------------  --------------------------  -------------------------------
    NEW                -                           start
    QUEUED             queue_timeout               a slot frees, the timer, client lost
    BACKING_OFF        the retry back-off          the timer, client lost
    SENDING            gap between request body    body all sent, response, failure,
                       bytes (upload idle limit)   the timer, client lost
    AWAITING_RESPONSE  response_timeout            response, failure, the timer,
                                                   client lost
    RELAYING           gap between response body   body done, body failed,
                       bytes (idle_timeout)        the timer, client lost
    DONE               -                           (final)

Transitions::

    NEW --a candidate--> SENDING | AWAITING_RESPONSE     (an attempt)
    NEW --no candidate, a server only busy--> QUEUED
    NEW --no candidate--> DONE (503)
    QUEUED --a slot frees--> (as NEW)
    QUEUED --timer--> DONE (503)
    SENDING --the body has all gone--> AWAITING_RESPONSE
    SENDING | AWAITING_RESPONSE --timer--> (the attempt is cancelled: a failure)
    SENDING | AWAITING_RESPONSE --response--> RELAYING
    SENDING | AWAITING_RESPONSE --failure--> retry | DONE (an error response)
    RELAYING --body complete--> DONE (response finished)
    RELAYING --body failed after a byte reached the client--> DONE (cut short)
    RELAYING --body failed (or timer) before that--> retry | DONE (an error response)
    retry: the next candidate --> SENDING | AWAITING_RESPONSE, or BACKING_OFF
           when every candidate has had its turn; none left --> DONE (502)
    BACKING_OFF --timer--> SENDING | AWAITING_RESPONSE
    any --client lost--> DONE (the attempt cancelled, the queue left)

Whether a failed attempt is retried, whose failure it is and what the
client is answered are pure decisions in L{lbproxy.upstream.retry}; the
failure is classified once (L{lbproxy.upstream.failures.classify}).  The
in-flight count of the server an attempt went to is released exactly once,
when the attempt (or its response body) ends.  The front learns of the
outcome through the request (its response) and the L{RequestRecord}; it
tells the lifecycle of the client's side through L{IExchange}, attached
while the state is not DONE and detached in one place (L{Lifecycle._done}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from lbproxy._twisted import ResponseDone
from lbproxy.record import IExchange, RequestRecord
from lbproxy.upstream.failures import classify, describe
from lbproxy.upstream.pool import ServerState
from lbproxy.upstream.relay import BodyRelay, relay_head
from lbproxy.upstream.retry import ANSWERS, Answer, Kind, backoff, may_retry

if TYPE_CHECKING:
    from lbproxy.front.site import ProxyRequest
    from lbproxy.routing import Facts, Route
    from lbproxy.upstream.forwarder import Forwarder

log = Logger()

NEW = "new"
QUEUED = "queued"
BACKING_OFF = "backing off"
SENDING = "sending"
AWAITING_RESPONSE = "awaiting response"
RELAYING = "relaying"
DONE = "done"


@implementer(IExchange)
class Lifecycle:
    """
    One request on its way through a pool (see the module docstring).

    @ivar state: Where it stands.
    @ivar server: The server of the attempt in flight (its in-flight count
        held), or L{None}.
    """

    def __init__(
        self,
        forwarder: Forwarder,
        request: ProxyRequest,
        record: RequestRecord,
        route: Optional[Route],
        facts: Optional[Facts],
        key: Optional[bytes],
        cookie_server: Optional[ServerState],
    ) -> None:
        self.forwarder = forwarder
        self.pool = forwarder.pool
        self.clock = forwarder.clock
        self.request = request
        self.record = record
        self.route = route
        self.facts = facts
        # What the balancer is told: the request's key and the server its
        # sticky cookie names.
        self.key = key
        self.cookie_server = cookie_server
        self.state = NEW
        self._timer: Optional[IDelayedCall] = None
        self.candidates: Iterator[ServerState] = iter(())
        self.tried: List[ServerState] = []
        self.backoffs = 0
        self.server: Optional[ServerState] = None
        self.pending: Optional[Deferred[IResponse]] = None
        self.relay: Optional[BodyRelay] = None
        self.leave_queue: Optional[Callable[[], None]] = None
        #: Why the proxy cancelled the attempt or body in flight, if it did.
        self.cancelled_for: Optional[Kind] = None
        self.last_byte = 0.0
        self.sent_at = 0.0

    # -- states and the timer ---------------------------------------------

    def _enter(self, state: str, delay: float = 0.0, expired: Any = None, *args: Any) -> None:
        """Go to C{state}; its timer, if any, calls C{expired(*args)} after C{delay}."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()
        self.state = state
        if expired is not None:
            self._timer = self.clock.callLater(delay, expired, *args)

    def _done(self) -> None:
        """The final state: nothing more is sent to the client from here."""
        self._enter(DONE)
        leave, self.leave_queue = self.leave_queue, None
        if leave is not None:
            leave()
        self.request.exchange = None

    def start(self) -> None:
        self.request.exchange = self
        self.candidates = self.pool.candidates(self.key, self.cookie_server)
        self._next_attempt()

    # -- dispatch -----------------------------------------------------------

    def _next_attempt(self) -> None:
        server = next(self.candidates, None)
        if server is None and self.record.attempts > 0:
            # Every candidate has had its turn and attempts are left: a
            # second round, after a pause.
            self.candidates = self.pool.candidates(self.key, self.cookie_server)
            server = next(self.candidates, None)
        if server is None:
            if self.record.attempts == 0:
                self._no_server()
            else:
                self._answer(ANSWERS[Kind.NOT_SENT])
            return
        if server in self.tried:
            self.backoffs += 1
            self._enter(BACKING_OFF, backoff(self.backoffs), self._attempt, server)
            return
        self._attempt(server)

    def _no_server(self) -> None:
        """
        No server can take the request now: wait in the pool's queue when a
        server is only busy, else answer 503.
        """
        pool = self.pool
        if pool.can_wait():
            self._enter(QUEUED, pool.config.queue_timeout, self._queue_timed_out)
            self.leave_queue = pool.wait(self._queue_ready)
            return
        self._answer_unavailable(b"no server is available")

    def _queue_ready(self) -> None:
        self.leave_queue = None
        if self.state is not QUEUED:
            return
        self.candidates = self.pool.candidates(self.key, self.cookie_server)
        self._next_attempt()

    def _queue_timed_out(self) -> None:
        log.warn(
            "pool {pool}: no server slot within {seconds:g}s",
            pool=self.pool.name,
            seconds=self.pool.config.queue_timeout,
        )
        self._answer_unavailable(b"every server is busy")

    def _attempt(self, server: ServerState) -> None:
        if self.state is DONE:
            return
        record = self.record
        record.attempts += 1
        record.server = server
        self.tried.append(server)
        self.server = server
        self.pool.dispatch(server)
        if self.pool.observes_latency:
            self.sent_at = self.clock.seconds()
        self.cancelled_for = None
        body = self.request.body
        if body is not None and not body.complete:
            # The body is still arriving: the response clock starts once it
            # has all gone; until then no gap between its bytes may last
            # longer than the upload idle limit.
            body.on_sent = self._request_sent
            self.last_byte = self.clock.seconds()
            self._enter(SENDING, self.forwarder.upload_idle_timeout, self._check_idle)
        else:
            self._enter(AWAITING_RESPONSE, self.forwarder.response_timeout, self._timed_out)
        request = self.request
        pending = self.forwarder.agent.send(
            server.route, request.method, request.target, request.requestHeaders, body
        )
        self.pending = pending
        pending.addCallbacks(self._got_response, self._attempt_failed)

    def _request_sent(self) -> None:
        """The whole request body is on its way: the response clock starts."""
        if self.state is SENDING:
            self._enter(AWAITING_RESPONSE, self.forwarder.response_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.cancelled_for = Kind.TIMED_OUT
        if self.pending is not None:
            self.pending.cancel()

    def touch(self) -> None:
        """A body byte moved (either way): the idle clock starts again."""
        self.last_byte = self.clock.seconds()

    def _check_idle(self) -> None:
        self._timer = None
        if self.state is SENDING:
            idle = self.forwarder.upload_idle_timeout
        else:
            idle = self.forwarder.idle_timeout
        quiet = self.clock.seconds() - self.last_byte
        if quiet < idle:
            self._timer = self.clock.callLater(idle - quiet, self._check_idle)
            return
        if self.state is SENDING:
            self.cancelled_for = Kind.UPLOAD_STALLED
            if self.pending is not None:
                self.pending.cancel()
        else:
            self.cancelled_for = Kind.STALLED
            body = self.relay
            if body is not None and body.transport is not None:
                cast(IPushProducer, body.transport).stopProducing()

    def _release(self) -> Optional[ServerState]:
        server = self.server
        if server is not None:
            self.server = None
            self.pool.release(server)
        return server

    def _attempt_failed(self, failure: Failure) -> None:
        self.pending = None
        server = self._release()
        if self.state is DONE:
            return
        cancelled_for, self.cancelled_for = self.cancelled_for, None
        kind = classify(
            failure, cancelled_for is Kind.TIMED_OUT, cancelled_for is Kind.UPLOAD_STALLED
        )
        name = server.name if server is not None else "?"
        if kind is Kind.UNSENDABLE:
            log.info("request not forwarded: {cause}", cause=describe(failure))
            self.record.server = None
            self._answer(ANSWERS[kind])
            return
        if kind is Kind.UPLOAD_STALLED:
            log.warn(
                "server {server}: the client sent no body byte for {idle:g}s; closing",
                server=name,
                idle=self.forwarder.upload_idle_timeout,
            )
            self._answer(ANSWERS[kind])
            return
        if kind is Kind.CANCELLED:
            log.warn("server {server}: attempt cancelled", server=name)
            self._answer(ANSWERS[kind])
            return
        if server is not None:
            self.pool.record_failure(server)
        if kind is Kind.TIMED_OUT:
            cause = f"no response within {self.forwarder.response_timeout:g}s"
        elif kind is Kind.NOT_SENT:
            cause = f"cannot connect: {describe(failure)}"
            if server is not None:
                server.stats.connect_failures += 1
        else:
            cause = f"request failed: {describe(failure)}"
        self._retry_or_answer(kind, "server {server}: {cause}", name, cause)

    def _retry_or_answer(self, kind: Kind, what: str, name: str, cause: str) -> None:
        """After a server's failure: the next attempt when allowed, else an answer."""
        body = self.request.body
        taken = body is not None and body.started
        record = self.record
        if may_retry(record.method, taken, kind, record.attempts, self.forwarder.attempts):
            log.warn(what + "; trying again", server=name, cause=cause)
            self.pool.stats.retries += 1
            self._next_attempt()
        else:
            log.warn(what, server=name, cause=cause)
            self._answer(ANSWERS[kind])

    # -- the response ---------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self.pending = None
        server = self.server
        pool = self.pool
        if server is not None:
            if response.code >= 500 and pool.config.fail_on_5xx:
                pool.record_failure(server)
            else:
                pool.record_success(server)
            if pool.observes_latency:
                pool.record_latency(server, self.clock.seconds() - self.sent_at)
        relay_head(self, response)
        self._enter(RELAYING)
        body = BodyRelay(self)
        self.relay = body
        response.deliverBody(body)
        if self.relay is not None and self.state is RELAYING:
            # The body goes on: no gap between its bytes longer than
            # idle_timeout.
            self.last_byte = self.clock.seconds()
            self._timer = self.clock.callLater(self.forwarder.idle_timeout, self._check_idle)

    def body_received(self, data: bytes) -> None:
        self.last_byte = self.clock.seconds()
        if data and self.state is not DONE:
            # The first write sends the status line and headers: from then
            # on the response cannot be replaced.
            self.request.write(data)

    def body_finished(self, reason: Failure) -> None:
        """
        The response body ended: completely, or cut short by the server
        (broken framing, a close before the end, a stall past idle_timeout).

        A response cut short is the server's failure.  If a byte of it has
        been written to the client's connection, it is truncated visibly
        (L{ProxyRequest.cut_short}), as nginx does; if none has, it can
        still be replaced: a retry when allowed, else 502 (504 for a stall).
        """
        self.relay = None
        server = self._release()
        if self.state is DONE:
            return
        request = self.request
        if request.producer is not None:
            request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done()
            request.finish()
            return
        if server is not None:
            self.pool.record_failure(server)
        name = server.name if server is not None else "?"
        stalled, self.cancelled_for = self.cancelled_for is Kind.STALLED, None
        if stalled:
            cause = f"no body byte for {self.forwarder.idle_timeout:g}s"
        else:
            cause = describe(reason)
        if request.startedWriting:
            self._done()
            log.warn(
                "server {server}: response body cut short, closing the client connection: {cause}",
                server=name,
                cause=cause,
            )
            request.cut_short()
            return
        what = "server {server}: response failed before its first byte: {cause}"
        self._retry_or_answer(Kind.STALLED if stalled else Kind.BROKEN, what, name, cause)

    # -- the client side and the end -----------------------------------------

    def client_lost(self, reason: Failure) -> None:
        """The client went away (or its body was refused): stop the server's side."""
        if self.state is DONE:
            return
        self._done()
        if self.pending is not None:
            self.pending.cancel()
        elif self.relay is not None and self.relay.transport is not None:
            cast(IPushProducer, self.relay.transport).stopProducing()

    def _answer(self, answer: Answer, retry_after: Optional[int] = None) -> None:
        self._done()
        self.request.respond_error(
            answer.code, answer.phrase, answer.detail, close=answer.close, retry_after=retry_after
        )

    def _answer_unavailable(self, detail: bytes) -> None:
        self._done()
        self.request.respond_error(
            503, b"Service Unavailable", detail, retry_after=self.pool.retry_after()
        )
