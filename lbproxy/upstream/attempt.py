"""
One attempt of a request on one server: sending it, awaiting the response
and relaying that response's body, as a state machine of its own inside
the request's L{lbproxy.upstream.lifecycle.Lifecycle}.

States (L{Attempt.state}) and the one timer each has::

    state              timer (one slot)                         leaves on
    -----------------  ---------------------------------------  ----------------------
    SENDING            gap between request body bytes           body all sent, response,
                       (the upload idle limit)                  failure, timer, stop
    AWAITING_RESPONSE  response_timeout                         response, failure,
                                                                timer, stop
    RELAYING           gap between response body bytes          body ends, timer, stop
                       (idle_timeout)
    TUNNELLING         (the tunnel's: tunnel_timeout)           the server's side closed
    ENDED              -                                        (final)

Transitions::

    (start) --the request body still arriving--> SENDING
    (start) --else--> AWAITING_RESPONSE
    SENDING --the body has all gone--> AWAITING_RESPONSE
    SENDING | AWAITING_RESPONSE --timer--> the request is cancelled: a failure follows
    SENDING | AWAITING_RESPONSE --response--> RELAYING
    SENDING | AWAITING_RESPONSE --101 Switching Protocols--> TUNNELLING, the
        lifecycle is told (switched); the connections are a byte tunnel
        (L{lbproxy.upstream.tunnel.Tunnel})
    SENDING | AWAITING_RESPONSE --failure--> ENDED, the lifecycle is told (classified)
    RELAYING --timer (a stall)--> the body is stopped: its end follows
    RELAYING --body ends--> ENDED, the lifecycle is told (complete, or how it failed)
    TUNNELLING --the server's connection closed--> ENDED, the lifecycle is told
        (tunnel closed)
    any --stop (the client went away)--> the request cancelled or the body
        stopped; a tunnel hears of it from the client connection itself and
        closes the server's side once its bytes are written

The server's in-flight count is taken at the start and given back exactly
once, when the attempt ends: a tunnel holds it while it is open.  The
attempt is also the protocol that the response body is delivered to, so
that relaying costs no object more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, cast
from typing import Protocol as Structure

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from lbproxy._twisted import ResponseDone
from lbproxy.upstream.failures import classify, describe
from lbproxy.upstream.pool import ServerState
from lbproxy.upstream.relay import Exchange, relay_head
from lbproxy.upstream.retry import Kind
from lbproxy.upstream.tunnel import Switched, Tunnel, tunnel_timeout

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from lbproxy.record import RequestRecord
    from lbproxy.upstream.backend import BackendAgent


class Settings(Structure):
    """The forwarder's settings an attempt reads."""

    @property
    def agent(self) -> BackendAgent: ...

    @property
    def response_timeout(self) -> float: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def upload_idle_timeout(self) -> float: ...


class Lifecycle(Exchange, Structure):
    """
    What an attempt needs of the request's lifecycle
    (L{lbproxy.upstream.lifecycle.Lifecycle}), which owns it: declared here
    so that the attempt does not import the lifecycle back.
    """

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def forwarder(self) -> Settings: ...

    @property
    def record(self) -> RequestRecord: ...

    def attempt_failed(self, attempt: Attempt, kind: Kind, cause: str) -> None: ...

    def response_complete(self) -> None: ...

    def response_failed(self, attempt: Attempt, kind: Kind, cause: str) -> None: ...

    def switched(self) -> None: ...

    def tunnel_closed(self) -> None: ...


SENDING = "sending"
AWAITING_RESPONSE = "awaiting response"
RELAYING = "relaying"
TUNNELLING = "tunnelling"
ENDED = "ended"


class Attempt(Protocol):
    """
    One attempt on C{server} (see the module docstring).

    @ivar state: Where it stands.
    @ivar cancelled_for: Why the proxy cancelled the request or stopped the
        body, if it did: L{Kind.TIMED_OUT}, L{Kind.UPLOAD_STALLED} or
        L{Kind.STALLED}.
    """

    def __init__(self, lifecycle: Lifecycle, server: ServerState) -> None:
        self.lifecycle = lifecycle
        self.server = server
        self.clock = lifecycle.clock
        self.forwarder = lifecycle.forwarder
        self.state = AWAITING_RESPONSE
        self._timer: Optional[IDelayedCall] = None
        self.pending: Optional[Deferred[IResponse]] = None
        self.cancelled_for: Optional[Kind] = None
        self.last_byte = 0.0
        self.sent_at = 0.0

    def _enter(self, state: str, delay: float = 0.0) -> None:
        """Go to C{state}, with its timer when C{delay}."""
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()
        self.state = state
        if delay:
            self._timer = self.clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        """The state's timer ran out: the response timeout, or an idle check."""
        if self.state is AWAITING_RESPONSE:
            self._timed_out()
        else:
            self._check_idle()

    def start(self) -> None:
        lifecycle = self.lifecycle
        server = self.server
        pool = lifecycle.pool
        # Dispatched already: the lifecycle claimed the server's slot.
        if pool.observes_latency:
            self.sent_at = self.clock.seconds()
        request = lifecycle.request
        body = request.body
        if body is not None and not body.complete:
            # The body is still arriving: the response clock starts once it
            # has all gone; until then no gap between its bytes may last
            # longer than the upload idle limit.
            body.on_sent = self._request_sent
            self.last_byte = self.clock.seconds()
            self._enter(SENDING, self.forwarder.upload_idle_timeout)
        else:
            self._enter(AWAITING_RESPONSE, self.forwarder.response_timeout)
        pending = self.forwarder.agent.send(
            server.route, request.method, request.target, request.requestHeaders, body
        )
        self.pending = pending
        pending.addCallbacks(self._got_response, self._failed)

    def _request_sent(self) -> None:
        """The whole request body is on its way: the response clock starts."""
        if self.state is SENDING:
            self._enter(AWAITING_RESPONSE, self.forwarder.response_timeout)

    def _timed_out(self) -> None:
        self._timer = None
        self.cancelled_for = Kind.TIMED_OUT
        if self.pending is not None:
            self.pending.cancel()

    def touch(self) -> None:
        """A body byte moved (either way): the idle clock starts again."""
        self.last_byte = self.clock.seconds()

    def _check_idle(self) -> None:
        self._timer = None
        sending = self.state is SENDING
        forwarder = self.forwarder
        idle = forwarder.upload_idle_timeout if sending else forwarder.idle_timeout
        quiet = self.clock.seconds() - self.last_byte
        if quiet < idle:
            self._timer = self.clock.callLater(idle - quiet, self._check_idle)
        elif sending:
            self.cancelled_for = Kind.UPLOAD_STALLED
            if self.pending is not None:
                self.pending.cancel()
        else:
            self.cancelled_for = Kind.STALLED
            if self.transport is not None:
                cast(IPushProducer, self.transport).stopProducing()

    def stop(self) -> None:
        """The client went away: cancel the request, or stop the body."""
        if self.pending is not None:
            self.pending.cancel()
        elif self.state is RELAYING and self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def _end(self) -> None:
        if self.state is ENDED:
            return
        self._enter(ENDED)
        self.lifecycle.pool.release(self.server)

    def _failed(self, failure: Failure) -> None:
        self.pending = None
        self._end()
        cancelled_for = self.cancelled_for
        kind = classify(
            failure, cancelled_for is Kind.TIMED_OUT, cancelled_for is Kind.UPLOAD_STALLED
        )
        forwarder = self.forwarder
        if kind is Kind.TIMED_OUT:
            cause = f"no response within {forwarder.response_timeout:g}s"
        elif kind is Kind.UPLOAD_STALLED:
            cause = f"the client sent no body byte for {forwarder.upload_idle_timeout:g}s; closing"
        elif kind is Kind.NOT_SENT:
            cause = f"cannot connect: {describe(failure)}"
        elif kind is Kind.FAILED:
            cause = f"request failed: {describe(failure)}"
        elif kind is Kind.CANCELLED:
            cause = "attempt cancelled"
        else:
            cause = describe(failure)
        self.lifecycle.attempt_failed(self, kind, cause)

    # -- the response -------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self.pending = None
        server = self.server
        lifecycle = self.lifecycle
        pool = lifecycle.pool
        if response.code >= 500 and pool.config.fail_on_5xx:
            pool.record_failure(server)
        else:
            pool.record_success(server)
        if pool.observes_latency:
            pool.record_latency(server, self.clock.seconds() - self.sent_at)
        relay_head(lifecycle, server, response)
        if isinstance(response, Switched):
            self._tunnel(response)
            return
        # The response timer becomes the body's idle timer (moved, not
        # cancelled and made again: one timer per attempt).
        timer, self._timer = self._timer, None
        self._enter(RELAYING)
        response.deliverBody(self)
        active = timer is not None and timer.active()
        if self.state is RELAYING:
            # The body goes on: no gap between its bytes longer than
            # idle_timeout.
            self.last_byte = self.clock.seconds()
            idle = self.forwarder.idle_timeout
            if active:
                timer.reset(idle)  # type: ignore[union-attr]
                self._timer = timer
            else:
                self._timer = self.clock.callLater(idle, self._expired)
        elif active:
            timer.cancel()  # type: ignore[union-attr]

    def _tunnel(self, switched: Switched) -> None:
        """
        The server switched protocols: the two connections become a byte
        tunnel, which holds the server's slot until the server's side closes.
        """
        self._enter(TUNNELLING)
        lifecycle = self.lifecycle
        lifecycle.switched()
        request = lifecycle.request
        tunnel = Tunnel(
            request,
            lifecycle.record,
            switched,
            self._tunnel_closed,
            self.clock,
            tunnel_timeout(request),
        )
        tunnel.start()

    def _tunnel_closed(self) -> None:
        """The tunnel's server connection is gone: the slot goes back."""
        self._end()
        self.lifecycle.tunnel_closed()

    def connectionMade(self) -> None:
        # The backend connection is the request's producer: a client that
        # reads slowly pauses it.
        request = self.lifecycle.request
        if request.exchange is self.lifecycle:
            request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.last_byte = self.clock.seconds()
        request = self.lifecycle.request
        if data and request.exchange is self.lifecycle:
            # The first write sends the status line and headers: from then
            # on the response cannot be replaced.
            request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The response body ended: completely, or cut short by the server
        (broken framing, a close before the end, a stall past idle_timeout).
        A response cut short is the server's failure.
        """
        self._end()
        lifecycle = self.lifecycle
        # isinstance, not Failure.check: check names every class of the
        # value's type (reflect.qual), which every response would pay for.
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            lifecycle.response_complete()
            return
        if self.cancelled_for is Kind.STALLED:
            lifecycle.response_failed(
                self, Kind.STALLED, f"no body byte for {self.forwarder.idle_timeout:g}s"
            )
        else:
            lifecycle.response_failed(self, Kind.BROKEN, describe(reason))


__all__ = ["AWAITING_RESPONSE", "ENDED", "RELAYING", "SENDING", "TUNNELLING", "Attempt"]
