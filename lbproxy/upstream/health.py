"""
Active health checks: each server of a pool is probed every
C{health_interval} (with jitter, so that the servers are not all probed in the
same instant), and the pool counts the outcomes (L{Pool.record_check}).

A probe of a server starts only when its previous one has finished: checks
never pile up on a slow server.  The probe is a function, so that tests can
script it; the real one sends an HTTP request with treq over its own
connection pool, apart from the proxied traffic.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, Optional, Tuple

import treq
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from lbproxy._twisted import HTTP11ClientFactory
from lbproxy.config import PoolConfig, ServerConfig
from lbproxy.upstream.backend import make_route
from lbproxy.upstream.pool import Pool, ServerState
from lbproxy.upstream.timers import ServerTimers

#: A probe: a server in, a Deferred of (passed?, what was seen) out.
Probe = Callable[[ServerState], "Deferred[Tuple[bool, str]]"]

#: Each interval is stretched or shrunk by up to this fraction at random.
JITTER = 0.1


class HealthChecker(Service):
    """
    Runs the active health checks of one pool.
    """

    def __init__(
        self,
        pool: Pool,
        probe: Probe,
        clock: IReactorTime,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.pool = pool
        self.probe = probe
        self.clock = clock
        self.rng = rng or random.Random()
        self._timers = ServerTimers(clock)
        self._running: Dict[ServerState, Deferred[Any]] = {}

    def startService(self) -> None:
        super().startService()
        interval = self.pool.config.health_interval
        for server in self.pool.servers:
            # The first probes are spread over one interval.
            self._schedule(server, self.rng.uniform(0, interval))

    def stopService(self) -> None:
        super().stopService()
        self._timers.cancel_all()
        for running in list(self._running.values()):
            running.cancel()
        self._running.clear()

    def servers_changed(self) -> None:
        """
        The pool's servers changed (DNS discovery): check the new ones (their
        first probe within one interval), stop checking the removed ones.
        """
        if not self.running:
            return
        current = set(self.pool.servers)
        for server in self._timers.servers():
            if server not in current:
                self._timers.cancel(server)
        for server in [s for s in self._running if s not in current]:
            self._running.pop(server).cancel()
        interval = self.pool.config.health_interval
        for server in self.pool.servers:
            if server not in self._timers and server not in self._running:
                self._schedule(server, self.rng.uniform(0, interval))

    def _schedule(self, server: ServerState, delay: float) -> None:
        self._timers.schedule(server, delay, self._check)

    def _check(self, server: ServerState) -> None:
        if server in self._running or not self.running:
            return
        config = self.pool.config
        if server.maint:
            # In maintenance: no probes until an operator enables it again.
            self._schedule(server, config.health_interval)
            return
        try:
            probing = self.probe(server)
        except Exception:
            probing = _failed()
        probing.addTimeout(config.health_timeout, self.clock)
        self._running[server] = probing
        probing.addCallbacks(
            lambda outcome: outcome,
            lambda failure: (False, describe_failure(failure, config.health_timeout)),
        )
        probing.addCallback(self._done, server)

    def _done(self, outcome: Tuple[bool, str], server: ServerState) -> None:
        self._running.pop(server, None)
        if not self.running or self.pool.by_name.get(server.name) is not server:
            return
        ok, detail = outcome
        self.pool.record_check(server, ok, detail)
        interval = self.pool.config.health_interval
        self._schedule(server, interval * self.rng.uniform(1 - JITTER, 1 + JITTER))


def _failed() -> Deferred[Tuple[bool, str]]:
    d: Deferred[Tuple[bool, str]] = Deferred()
    d.errback(Failure())
    return d


def describe_failure(failure: Failure, timeout: float) -> str:
    from twisted.internet.defer import CancelledError, TimeoutError
    from twisted.web.client import ResponseNeverReceived

    if failure.check(TimeoutError, CancelledError):
        return f"no answer within {timeout:g}s"
    value = failure.value
    if isinstance(value, ResponseNeverReceived) and any(
        reason.check(CancelledError) for reason in value.reasons
    ):
        # Cut off by the timeout while the request was sent or answered.
        return f"no answer within {timeout:g}s"
    text = str(value).strip()
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


class _QuietFactory(HTTP11ClientFactory):
    # Twisted logs "Starting factory" and "Stopping factory" for every
    # connection of a noisy factory: two lines per check.
    noisy = False


class _HealthConnectionPool(HTTPConnectionPool):
    """The health checks' own connection pool, which logs nothing."""

    _factory = _QuietFactory


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    The health checks' endpoints, made as the proxied traffic's are
    (L{make_route}): a server named by an IP address is connected to at
    once, without the name resolution in a thread that Twisted's
    C{HostnameEndpoint} makes for every connection, even to an address.
    """

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, timeout: float) -> None:
        self.reactor = reactor
        self.policy = policy
        self.timeout = timeout
        self._endpoints: Dict[Tuple[bytes, bytes, int], Any] = {}

    def expect(self, server: ServerConfig) -> None:
        """A check of C{server} follows: its endpoint for C{endpointForURI}."""
        route = make_route(self.reactor, server, self.policy, self.timeout)
        self._endpoints[route.key] = route.endpoint

    def endpointForURI(self, uri: URI) -> Any:  # noqa: N802 (Twisted's name)
        # Taken as the check's request is made: the table holds only the
        # checks being made, whatever servers come and go.
        return self._endpoints.pop((uri.scheme, uri.host, uri.port))


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


def http_probe(reactor: Any, config: PoolConfig, policy: IPolicyForHTTPS) -> Probe:
    """
    The probe that sends C{health_check} (e.g. C{GET /healthz}) to a server
    with treq, over a connection pool of its own that keeps no connections
    (each check opens a new one, as a new client would), and passes when the
    status is within C{health_expect}.
    """
    assert config.health_check is not None
    method, path = config.health_check
    low, high = config.health_expect
    endpoints = _Endpoints(reactor, policy, config.health_timeout)
    agent = Agent.usingEndpointFactory(
        reactor, endpoints, pool=_HealthConnectionPool(reactor, persistent=False)
    )
    client = treq.client.HTTPClient(agent)

    def probe(server: ServerState) -> Deferred[Tuple[bool, str]]:
        endpoints.expect(server.config)
        netloc = f"[{server.config.host}]" if ":" in server.config.host else server.config.host
        url = f"{server.config.scheme}://{netloc}:{server.config.port}{path}"
        host = config.health_host or f"{netloc}:{server.config.port}"
        headers = Headers({b"Host": [host.encode()], b"User-Agent": [b"lbproxy-health-check"]})
        sending = client.request(method, url, headers=headers)

        def judge(response: Any) -> Tuple[bool, str]:
            response.deliverBody(_Discard())
            return low <= response.code <= high, f"status {response.code}"

        return sending.addCallback(judge)

    return probe
