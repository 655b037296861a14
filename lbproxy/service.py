"""
Wiring: configuration values to a running service, a reloaded configuration
to the same running service, and a graceful stop.
"""

from __future__ import annotations

import gc
from typing import Any, Dict, Iterable, List, Optional

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from lbproxy import reload as plans
from lbproxy.config import ProxyConfig
from lbproxy.front.resource import ProxyResource
from lbproxy.front.site import ProxySite
from lbproxy.front.tls import SNIConnectionCreator
from lbproxy.listeners import StartError, listen
from lbproxy.ops import accesslog
from lbproxy.ops.accounting import Accounting
from lbproxy.upstream.backend import BackendAgent, BackendConnectionPool
from lbproxy.upstream.discovered import DiscoveredPools
from lbproxy.upstream.health import HealthChecker
from lbproxy.upstream.pool import Pool

log = Logger()

#: CPython's collector thresholds while serving (the default is 700, 10,
#: 10).  A request allocates a few hundred tracked objects that its end frees
#: by reference counting; what a collection of the youngest generation finds
#: alive is the requests in flight, which it promotes to the older ones, and
#: those promotions are what sets off the long full collections.  Collecting
#: the youngest generation every 10,000 allocations instead of 700 makes the
#: promotions (and the older collections) rarer for the same work.
GC_THRESHOLDS = (10000, 10, 10)


def settle_heap(collector: Any = gc, collect: bool = True) -> bool:
    """
    Once start-up is over (called as the reactor starts): collect what it
    left behind, then freeze the rest (modules, classes, the configuration,
    the pools: objects that live as long as the process) out of the cyclic
    collector's sight, and set L{GC_THRESHOLDS}.  A full collection then
    walks only the objects made since, not the whole start-up heap, which
    made each one a pause of tens of milliseconds under load.

    PyPy has no C{gc.freeze}: its collector is generational and incremental,
    and its sizes come from C{PYPY_GC_*} environment variables
    (C{etc/lbproxy.service}).  Then nothing is done.

    @param collect: Whether to collect before freezing.
    @return: Whether the heap was frozen.
    """
    if not hasattr(collector, "freeze"):
        return False
    if collect:
        collector.collect()
    collector.freeze()
    collector.set_threshold(*GC_THRESHOLDS)
    return True


class ProxyService(service.MultiService):
    """
    The whole proxy: its listeners, pools, health checks, backend connection
    pool, access log and admin listener.

    @ivar reactor: The reactor it runs on (and the clock it reads).
    @ivar site: The HTTP server every listener serves.
    @ivar pools: The running pools, by name.
    @ivar ports: The proxy's listening ports, by endpoint description.
    @ivar admin_port: The admin listener's port, if any.
    """

    def __init__(self, config: ProxyConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.started_at = reactor.seconds()
        self.connections = BackendConnectionPool(reactor, persistent=True)
        self.agent = BackendAgent(reactor, pool=self.connections)
        self.pools: Dict[str, Pool] = {}
        self.checkers: Dict[str, HealthChecker] = {}
        self.resource = ProxyResource(None)
        self.site = ProxySite(self.resource, reactor=reactor)
        self.accounting = Accounting(reactor)
        self.site.request_done = self.accounting.request_done
        self.ports: Dict[str, IListeningPort] = {}
        self.admin_port: Optional[IListeningPort] = None
        self.reloads = {"ok": 0, "refused": 0}
        # The tls: listeners' certificates, swapped whole on reload.
        self.tls = SNIConnectionCreator()
        # The pools whose servers DNS names.
        self.discovered = self.discovered_pools()
        self._admin_site: Optional[Any] = None
        # The first configuration: pools and wiring now; listeners and the
        # log file in privilegedStartService.
        plan = self._prepare_inside(config)
        self._apply_inside(plan)
        self._planned_first: Optional[plans.Plan] = plan

    def discovered_pools(self) -> DiscoveredPools:
        """Where the pools' DNS answers come from (a worker's come from its supervisor)."""
        return DiscoveredPools(self, self.reactor, plans.server_key, self._servers_changed)

    @property
    def access_log(self) -> Optional[accesslog.AccessLog]:
        """The open access log, if any (the accounting writes to it)."""
        return self.accounting.access_log

    @access_log.setter
    def access_log(self, value: Optional[accesslog.AccessLog]) -> None:
        self.accounting.access_log = value

    # -- preparing and applying a configuration (see lbproxy.reload) --------

    def _prepare_inside(self, config: ProxyConfig) -> plans.Plan:
        plan = plans.Plan(config)
        plans.prepare_pools(plan, self.pools, self.reactor, self.discovered.answers)
        plans.prepare_tls(plan)
        return plan

    def _apply_inside(self, plan: plans.Plan) -> None:
        """Pools, health checks, certificates, the front's settings and routes."""
        config = plan.config
        plans.apply_pools(plan, self.pools, self.reactor)
        # Health checks start again with the new settings; what they found
        # stays with the servers.
        for checker in self.checkers.values():
            checker.disownServiceParent()
        self.checkers = {}
        for name, probe in plan.probes.items():
            checker = HealthChecker(self.pools[name], probe, self.reactor)
            checker.setServiceParent(self)
            self.checkers[name] = checker
        self.discovered.apply(config, self.pools, plan.policies)
        # New handshakes get the new certificates; open connections keep theirs.
        self.tls.use(plan.tls)
        for warning in config.tls.warnings if config.tls is not None else ():
            log.warn("{path}: {warning}", path=config.path, warning=warning)
        plans.apply_front(config, self.site, self.connections)
        self.resource.routes = plans.routes(config, self.pools, self.agent, self.reactor)

    def _servers_changed(self, pool: str) -> None:
        """DNS changed a pool's servers: its health checks follow."""
        checker = self.checkers.get(pool)
        if checker is not None:
            checker.servers_changed()

    def admin_site(self) -> Any:
        """The admin listener's site, made (and its module imported) when first needed."""
        if self._admin_site is None:
            from lbproxy.ops.admin import admin_site

            self._admin_site = admin_site(self)
        return self._admin_site

    def listen_proxy(self, description: str, where: str) -> IListeningPort:
        """A proxy listener (worker processes adopt their supervisor's instead)."""
        return listen(self.reactor, description, self.site, where, self.tls)

    def reload(self, config: ProxyConfig) -> None:
        """
        Apply a new configuration without dropping a connection or a request
        in flight.

        @raises StartError: When it cannot be applied; then nothing changed.
        """
        plan = self._prepare_inside(config)
        plans.prepare_outside(plan, self)
        self._apply_inside(plan)
        plans.apply_outside(plan, self)
        self.config = config
        self.reloads["ok"] += 1

    # -- what the read model reads (lbproxy.ops.snapshot.ProxySource) ------

    @property
    def config_path(self) -> str:
        return self.config.path

    @property
    def used_pools(self) -> Iterable[str]:
        return self.config.used_pools()

    @property
    def client_connections(self) -> int:
        return self.site.open_connections

    def seconds(self) -> float:
        return float(self.reactor.seconds())

    # -- starting and stopping ------------------------------------------------

    def privilegedStartService(self) -> None:
        """
        Listen on every configured endpoint and open the access log, before
        twistd drops privileges (so that ports below 1024 work).  What cannot
        be done stops the start with one line and exit status 1.
        """
        super().privilegedStartService()
        plan, self._planned_first = self._planned_first, None  # type: ignore[assignment]
        if plan is None:
            return
        try:
            plans.prepare_outside(plan, self)
        except StartError as e:
            # One line and exit status 1 from twistd, not a traceback.
            raise SystemExit(str(e)) from None
        plans.apply_outside(plan, self)

    def stopService(self) -> Deferred[Any]:
        """
        Stop accepting connections, let the requests in flight finish within
        C{shutdown_timeout}, then close what is left.
        """
        children = super().stopService()
        self.discovered.stop()
        ports = list(self.ports.values())
        self.ports = {}
        if self.admin_port is not None:
            ports.append(self.admin_port)
            self.admin_port = None
        stopping: List[Deferred[Any]] = [maybeDeferred(port.stopListening) for port in ports]
        stopping.append(children)
        drained = self.site.drain(self.config.shutdown_timeout, self.reactor)

        def finish(_: object) -> Deferred[Any]:
            for pool in self.pools.values():
                pool.stop()
            if self.access_log is not None:
                self.access_log.close()
                self.access_log = None
            return self.connections.closeCachedConnections()

        drained.addCallback(finish)
        stopping.append(drained)
        return DeferredList(stopping)


__all__ = ["GC_THRESHOLDS", "ProxyService", "StartError", "settle_heap"]
