"""
Wiring: configuration values to a running service.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.backend import BackendAgent, BackendConnectionPool, make_route, tls_policy
from lbproxy.config import ProxyConfig
from lbproxy.forwarder import Forwarder
from lbproxy.health import HealthChecker, http_probe
from lbproxy.pool import Pool, ServerState
from lbproxy.resource import ProxyResource
from lbproxy.site import ProxySite

log = Logger()


def _describe(address: Any) -> str:
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"
    return str(getattr(address, "name", address))


class ProxyService(service.MultiService):
    """
    The whole proxy: its listeners, pools and backend connection pool.

    @ivar site: The HTTP server every listener serves.
    @ivar pools: The running pools, by name.
    """

    def __init__(self, config: ProxyConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.connections = BackendConnectionPool(reactor, persistent=True)
        self.connections.maxPersistentPerHost = config.backend_keepalive
        self.connections.cachedConnectionTimeout = config.backend_keepalive_timeout  # type: ignore[assignment]
        self.agent = BackendAgent(reactor, pool=self.connections)
        self.pools: Dict[str, Pool] = {}
        for pool_config in config.pools.values():
            policy = tls_policy(pool_config)
            servers = [
                ServerState(
                    server, make_route(reactor, server, policy, pool_config.connect_timeout)
                )
                for server in pool_config.servers
            ]
            pool = Pool(pool_config, servers, reactor)
            self.pools[pool_config.name] = pool
            if pool_config.health_check is not None:
                checker = HealthChecker(pool, http_probe(reactor, pool_config, policy), reactor)
                checker.setServiceParent(self)
        via = config.via.encode("ascii") if config.via is not None else None
        self.forwarder = Forwarder(
            self.pools[config.pool], self.agent, via, reactor, config.limits.client_body_timeout
        )
        self.site = ProxySite(
            ProxyResource(self.forwarder),
            timeout=config.keepalive_timeout,
            reactor=reactor,
            limits=config.limits,
            max_connections=config.max_connections,
        )
        self.ports: List[IListeningPort] = []
        self._reactor = reactor

    def privilegedStartService(self) -> None:
        """
        Listen on every configured endpoint, before twistd drops privileges
        (so that ports below 1024 work).  A listener that cannot listen stops
        the start with its error.
        """
        super().privilegedStartService()
        for description in self.config.listen:
            outcome: List[Any] = []
            endpoint = serverFromString(self._reactor, description)
            endpoint.listen(self.site).addBoth(outcome.append)
            if not outcome or isinstance(outcome[0], Failure):
                reason = outcome[0].getErrorMessage() if outcome else "no answer"
                for port in self.ports:
                    port.stopListening()
                self.ports = []
                # One line and exit status 1 from twistd, not a traceback.
                raise SystemExit(
                    f"{self.config.path}: [proxy] listen: cannot listen on {description}: {reason}"
                )
            port = outcome[0]
            self.ports.append(port)
            log.info("lbproxy listening on {address}", address=_describe(port.getHost()))

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ports, self.ports = self.ports, []
        stopping = [maybeDeferred(port.stopListening) for port in ports]
        stopping.append(self.connections.closeCachedConnections())
        for pool in self.pools.values():
            pool.stop()
        return DeferredList(stopping)
