"""
The lifecycle of one request on its way through a pool, as a state machine.

States (L{Lifecycle.state}), each with at most one timer, whose purpose the
state gives::

    state        timer (one slot)    leaves on
    -----------  ------------------  ------------------------------------------
    NEW          -                   start
    QUEUED       queue_timeout       a server slot frees, the timer, client lost
    BACKING_OFF  the retry back-off  the timer, client lost
    ATTEMPTING   (the attempt's)     the attempt's end, a 101, client lost
    TUNNELLING   (the tunnel's)      the tunnel's end, client lost
    DONE         -                   (final)

Transitions::

    NEW --a candidate--> ATTEMPTING
    NEW --no candidate, a server only busy--> QUEUED
    NEW --no candidate--> DONE (503)
    QUEUED --a slot frees--> (as NEW); no slot after all (another worker's
           request took it) --> QUEUED at the head, the same timer
    QUEUED --timer--> DONE (503)
    ATTEMPTING --response complete--> DONE (response finished)
    ATTEMPTING --response failed after a byte reached the client--> DONE (cut short)
    ATTEMPTING --the client's failure--> DONE (400 or 408, connection closed)
    ATTEMPTING --a server's failure--> retry, or DONE (502 or 504)
    ATTEMPTING --101 Switching Protocols--> TUNNELLING: the attempt holds the
           server's slot and the two connections are a byte tunnel
           (L{lbproxy.upstream.tunnel}) until one side closes
    TUNNELLING --the server's side closed--> DONE (the attempt gave the slot back)
    retry: the next candidate --> ATTEMPTING, or BACKING_OFF when every
           candidate has had its turn; no candidate --> DONE (502)
    BACKING_OFF --timer--> ATTEMPTING
    a candidate found at its max_connections as it is claimed (Pool.claim:
           filled meanwhile, or by another worker) --> the next candidate
    any --client lost--> DONE (the attempt stopped, the queue left; a tunnel
           closes its server's side itself, and is reported as a 101)

An attempt (L{lbproxy.upstream.attempt.Attempt}) is a state machine of its
own: sending, awaiting the response, relaying the body, each with its timer.
Whether a failed attempt is retried, whose failure it is and what the client
is answered are pure decisions (L{lbproxy.upstream.retry}); the failure is
classified once, by the attempt.  The front learns of the outcome through
the request's response and the L{RequestRecord}; it tells the lifecycle of
the client's side through L{IExchange}, attached at the start and detached
in one place (L{Lifecycle._done}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, List, Optional
from typing import Protocol as Structure

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.record import IExchange, RequestRecord
from lbproxy.upstream.attempt import Attempt, Settings
from lbproxy.upstream.pool import Pool, ServerState
from lbproxy.upstream.retry import ANSWERS, BLAME, Answer, Blame, Kind, backoff, may_retry

if TYPE_CHECKING:
    from lbproxy.front.site import ProxyRequest
    from lbproxy.routing import Facts, Route

log = Logger()

NEW = "new"
QUEUED = "queued"
BACKING_OFF = "backing off"
ATTEMPTING = "attempting"
TUNNELLING = "tunnelling"
DONE = "done"

NO_SERVER = Answer(503, b"Service Unavailable", b"no server is available")
ALL_BUSY = Answer(503, b"Service Unavailable", b"every server is busy")


class Forwarding(Settings, Structure):
    """
    What a lifecycle reads of its forwarder
    (L{lbproxy.upstream.forwarder.Forwarder}, which starts it): declared
    here so that this module does not import the forwarder back.
    """

    @property
    def pool(self) -> Pool: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def attempts(self) -> int: ...


@implementer(IExchange)
class Lifecycle:
    """
    One request on its way through a pool (see the module docstring).

    @ivar state: Where it stands.
    @ivar attempt: The attempt in flight, or L{None}.
    """

    def __init__(
        self,
        forwarder: Forwarding,
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
        self.attempt: Optional[Attempt] = None
        self.leave_queue: Optional[Callable[[], None]] = None

    def _enter(self, state: str, delay: float = 0.0, server: Optional[ServerState] = None) -> None:
        """Go to C{state}; QUEUED and BACKING_OFF have a timer of C{delay}."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()
        self.state = state
        if state is QUEUED:
            self._timer = self.clock.callLater(delay, self._queue_timed_out)
        elif state is BACKING_OFF:
            self._timer = self.clock.callLater(delay, self._attempt, server)

    def _done(self) -> None:
        """The final state: nothing more is sent to the client from here."""
        self._enter(DONE)
        self.attempt = None
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
        elif server in self.tried:
            self.backoffs += 1
            self._enter(BACKING_OFF, backoff(self.backoffs), server)
        else:
            self._attempt(server)

    def _no_server(self) -> None:
        """
        No server can take the request now: wait in the pool's queue when a
        server is only busy, else answer 503.
        """
        pool = self.pool
        if pool.can_wait():
            if self.state is QUEUED:
                # Woken, but the slot went to another worker's request:
                # back to the head of the queue, the same deadline.
                self.leave_queue = pool.wait(self._queue_ready, first=True)
                return
            self._enter(QUEUED, pool.config.queue_timeout)
            self.leave_queue = pool.wait(self._queue_ready)
            return
        self._answer(NO_SERVER, self.pool.retry_after())

    def _queue_ready(self) -> None:
        self.leave_queue = None
        if self.state is QUEUED:
            self.candidates = self.pool.candidates(self.key, self.cookie_server)
            self._next_attempt()

    def _queue_timed_out(self) -> None:
        log.warn(
            "pool {pool}: no server slot within {seconds:g}s",
            pool=self.pool.name,
            seconds=self.pool.config.queue_timeout,
        )
        self._answer(ALL_BUSY, self.pool.retry_after())

    def _attempt(self, server: ServerState) -> None:
        if self.state is DONE:
            return
        if not self.pool.claim(server):
            # At its max_connections: filled by another worker in the same
            # instant, or while this request backed off.  The next
            # candidate, or the queue.
            self._next_attempt()
            return
        self._enter(ATTEMPTING)
        record = self.record
        record.attempts += 1
        record.server = server
        self.tried.append(server)
        attempt = Attempt(self, server)
        self.attempt = attempt
        attempt.start()

    def touch(self) -> None:
        """A byte of the request body arrived: the upload is not stalled."""
        attempt = self.attempt
        if attempt is not None:
            attempt.touch()

    # -- how an attempt ended -------------------------------------------------

    def attempt_failed(self, attempt: Attempt, kind: Kind, cause: str) -> None:
        """
        An attempt failed before any response, as C{kind}; C{cause} says
        how, for a log line.
        """
        if self.state is DONE:
            return
        self.attempt = None
        server = attempt.server
        if kind is Kind.UNSENDABLE:
            # The client's request: not the server's failure at all.
            log.info("request not forwarded: {cause}", cause=cause)
            self.record.server = None
        elif BLAME[kind] is not Blame.SERVER:
            log.warn("server {server}: {cause}", server=server.name, cause=cause)
        if BLAME[kind] is not Blame.SERVER:
            self._answer(ANSWERS[kind])
            return
        self.pool.record_failure(server)
        if kind is Kind.NOT_SENT:
            server.stats.connect_failures += 1
        self._retry_or_answer(kind, "server {server}: {cause}", server, cause)

    def response_complete(self) -> None:
        """The attempt's response has been relayed whole."""
        if self.state is DONE:
            return
        request = self.request
        if request.producer is not None:
            request.unregisterProducer()
        self._done()
        request.finish()

    def response_failed(self, attempt: Attempt, kind: Kind, cause: str) -> None:
        """
        The attempt's response body failed (L{Kind.BROKEN}) or stalled
        (L{Kind.STALLED}): the server's failure.  If a byte of it has reached
        the client's connection, it is truncated visibly
        (L{ProxyRequest.cut_short}), as nginx does; if none has, it can still
        be replaced: a retry when allowed, else 502 (504 for a stall).
        """
        if self.state is DONE:
            return
        self.attempt = None
        server = attempt.server
        self.pool.record_failure(server)
        request = self.request
        if request.producer is not None:
            request.unregisterProducer()
        if request.startedWriting:
            self._done()
            log.warn(
                "server {server}: response body cut short, closing the client connection: {cause}",
                server=server.name,
                cause=cause,
            )
            request.cut_short()
            return
        what = "server {server}: response failed before its first byte: {cause}"
        self._retry_or_answer(kind, what, server, cause)

    def _retry_or_answer(self, kind: Kind, what: str, server: ServerState, cause: str) -> None:
        """After a server's failure: the next attempt when allowed, else an answer."""
        body = self.request.body
        taken = body is not None and body.started
        record = self.record
        if may_retry(record.method, taken, kind, record.attempts, self.forwarder.attempts):
            log.warn(what + "; trying again", server=server.name, cause=cause)
            self.pool.stats.retries += 1
            self._next_attempt()
        else:
            log.warn(what, server=server.name, cause=cause)
            self._answer(ANSWERS[kind])

    def switched(self) -> None:
        """
        The attempt's server switched protocols (a C{101}): the attempt is a
        tunnel now, holding the server's slot until it closes.
        """
        if self.state is ATTEMPTING:
            self._enter(TUNNELLING)

    def tunnel_closed(self) -> None:
        """The tunnel's server connection is gone (its slot given back)."""
        if self.state is not DONE:
            self._done()

    # -- the client side and the end -----------------------------------------

    def client_lost(self, reason: Failure) -> None:
        """The client went away (or its body was refused): stop the server's side."""
        if self.state is DONE:
            return
        attempt = self.attempt
        self._done()
        if attempt is not None:
            attempt.stop()

    def _answer(self, answer: Answer, retry_after: Optional[int] = None) -> None:
        self._done()
        self.request.respond_error(
            answer.code, answer.phrase, answer.detail, close=answer.close, retry_after=retry_after
        )


__all__ = ["ATTEMPTING", "BACKING_OFF", "DONE", "NEW", "QUEUED", "TUNNELLING", "Lifecycle"]
