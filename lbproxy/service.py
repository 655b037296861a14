"""
Wiring: configuration values to a running service, a reloaded configuration
to the same running service, and a graceful stop.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.config import ProxyConfig, ServerConfig
from lbproxy.config.tls import is_tls_listen
from lbproxy.config.values import describe_address
from lbproxy.front.h2 import H2_PROTOCOLS
from lbproxy.front.resource import ProxyResource, Routes
from lbproxy.front.site import ProxyRequest, ProxySite
from lbproxy.front.tls import PROTOCOLS, ServerContexts, SNIConnectionCreator, server_endpoint
from lbproxy.ops import accesslog
from lbproxy.ops.stats import method_label, status_class
from lbproxy.upstream.backend import BackendAgent, BackendConnectionPool, make_route, tls_policy
from lbproxy.upstream.forwarder import Forwarder
from lbproxy.upstream.health import HealthChecker, http_probe
from lbproxy.upstream.pool import Pool, ServerState

log = Logger()


class StartError(Exception):
    """
    A configuration that parsed but cannot be applied (a port that cannot be
    listened on, a log file that cannot be opened); the text is one line.
    """


def server_key(config: ServerConfig) -> Tuple[str, str, str, int]:
    """A server stays across a reload when its name and address stay."""
    return (config.name, config.scheme, config.host, config.port)


class _Plan:
    """
    A configuration made ready to apply: everything that can fail (TLS
    policies, the access log file, new listeners) has been done; applying it
    cannot fail.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.servers: Dict[str, List[Tuple[Optional[ServerState], ServerConfig, Any]]] = {}
        self.probes: Dict[str, Any] = {}
        self.ports: Dict[str, IListeningPort] = {}
        self.admin_port: Optional[IListeningPort] = None
        self.access_log: Optional[accesslog.AccessLog] = None
        self.tls: Optional[ServerContexts] = None

    def undo(self) -> None:
        """Give back what was opened for a plan that will not be applied."""
        for port in self.ports.values():
            port.stopListening()
        if self.admin_port is not None:
            self.admin_port.stopListening()
        if self.access_log is not None:
            self.access_log.close()


class ProxyService(service.MultiService):
    """
    The whole proxy: its listeners, pools, health checks, backend connection
    pool, access log and admin listener.

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
        self._reactor = reactor
        self.config = config
        self.started_at = reactor.seconds()
        self.connections = BackendConnectionPool(reactor, persistent=True)
        self.agent = BackendAgent(reactor, pool=self.connections)
        self.pools: Dict[str, Pool] = {}
        self.checkers: Dict[str, HealthChecker] = {}
        self.resource = ProxyResource(None)
        self.site = ProxySite(self.resource, reactor=reactor)
        self.site.request_done = self._request_done
        self.ports: Dict[str, IListeningPort] = {}
        self.admin_port: Optional[IListeningPort] = None
        self.access_log: Optional[accesslog.AccessLog] = None
        self.reloads = {"ok": 0, "refused": 0}
        # The tls: listeners' certificates, swapped whole on reload.
        self.tls = SNIConnectionCreator()
        self._admin_site: Optional[Any] = None
        # The first configuration: pools and wiring now; listeners and the
        # log file in privilegedStartService.
        plan = _Plan(config)
        self._prepare_pools(plan)
        self._prepare_tls(plan)
        self._apply_inside(plan)
        self._planned_first: Optional[_Plan] = plan

    # -- preparing and applying a configuration -----------------------------

    def _prepare_pools(self, plan: _Plan) -> None:
        reactor = self._reactor
        for pool_config in plan.config.pools.values():
            try:
                policy = tls_policy(pool_config)
            except Exception as e:
                raise StartError(
                    f"{plan.config.path}: [pool:{pool_config.name}] tls_ca_file: "
                    f"cannot load it: {e}"
                ) from None
            running = self.pools.get(pool_config.name)
            old = {server_key(s.config): s for s in running.servers} if running else {}
            plan.servers[pool_config.name] = [
                (
                    old.get(server_key(server)),
                    server,
                    make_route(reactor, server, policy, pool_config.connect_timeout),
                )
                for server in pool_config.servers
            ]
            if pool_config.health_check is not None:
                plan.probes[pool_config.name] = http_probe(reactor, pool_config, policy)

    def _prepare_tls(self, plan: _Plan) -> None:
        """OpenSSL contexts for the certificates of the tls: listeners."""
        tls = plan.config.tls
        if tls is None:
            return
        protocols = H2_PROTOCOLS if plan.config.http2 else PROTOCOLS
        try:
            plan.tls = ServerContexts(tls, protocols)
        except ValueError as e:
            raise StartError(f"{plan.config.path}: {e}") from None

    def _listen(self, description: str, factory: Any, what: str) -> IListeningPort:
        outcome: List[Any] = []
        try:
            if is_tls_listen(description):
                endpoint = server_endpoint(self._reactor, description, self.tls)
            else:
                endpoint = serverFromString(self._reactor, description)
            endpoint.listen(factory).addBoth(outcome.append)
        except (KeyError, IndexError) as e:
            # Twisted's systemd endpoint looks the socket up as it parses.
            missing = f"named {e}" if isinstance(e, KeyError) else "at that index"
            outcome.append(Failure(ValueError(f"systemd passed no socket {missing}")))
        if not outcome or isinstance(outcome[0], Failure):
            reason = outcome[0].getErrorMessage() if outcome else "no answer"
            raise StartError(
                f"{self.config.path}: {what}: cannot listen on {description}: {reason}"
            )
        port: IListeningPort = outcome[0]
        return port

    def _prepare_outside(self, plan: _Plan) -> None:
        """
        Open what the plan adds to the outside world: new listeners, a new
        admin listener, a new access log file.  On failure, what was opened
        is closed again and L{StartError} says why.
        """
        config = plan.config
        try:
            for description in config.listen:
                if description not in self.ports:
                    port = self._listen(description, self.site, "[proxy] listen")
                    plan.ports[description] = port
            admin = config.admin
            running_admin = self.config.admin if self.admin_port is not None else None
            if admin is not None and (
                running_admin is None or running_admin.listen != admin.listen
            ):
                plan.admin_port = self._listen(admin.listen, self.admin_site(), "[admin] listen")
            if config.access_log is not None and (
                self.access_log is None
                or self.access_log.path != config.access_log
                or self.access_log.format != config.access_log_format
            ):
                try:
                    plan.access_log = accesslog.AccessLog(
                        config.access_log, config.access_log_format, self._reactor
                    )
                except OSError as e:
                    raise StartError(
                        f"{config.path}: [proxy] access_log: cannot open "
                        f"{config.access_log}: {e.strerror}"
                    ) from None
        except BaseException:
            plan.undo()
            raise

    def _apply(self, plan: _Plan) -> None:
        """Make the plan's configuration the running one.  Cannot fail."""
        self._apply_inside(plan)
        self._apply_outside(plan)
        self.config = plan.config

    def _apply_inside(self, plan: _Plan) -> None:
        """Pools, health checks, the front's settings and the forwarder."""
        config = plan.config
        reactor = self._reactor
        # Pools: servers that stay keep their state; removed pools finish
        # the requests they have in flight.
        for name, entries in plan.servers.items():
            pool_config = config.pools[name]
            servers = []
            for state, server_config, route in entries:
                if state is None:
                    state = ServerState(server_config, route)
                else:
                    state.reconfigure(server_config, route)
                servers.append(state)
            running = self.pools.get(name)
            if running is None:
                pool = self.pools[name] = Pool(pool_config, servers, reactor)
                pool.on_change = _event_recorder(pool, reactor)
            else:
                running.reconfigure(pool_config, servers)
        for name in list(self.pools):
            if name not in config.pools:
                self.pools.pop(name).stop()
        # Health checks start again with the new settings; what they found
        # stays with the servers.
        for checker in self.checkers.values():
            checker.disownServiceParent()
        self.checkers = {}
        for name, probe in plan.probes.items():
            checker = HealthChecker(self.pools[name], probe, reactor)
            checker.setServiceParent(self)
            self.checkers[name] = checker
        # New handshakes get the new certificates; open connections keep theirs.
        self.tls.use(plan.tls)
        for warning in config.tls.warnings if config.tls is not None else ():
            log.warn("{path}: {warning}", path=config.path, warning=warning)
        # The front: new connections get the new limits.
        site = self.site
        site.limits = config.limits
        site.timeOut = config.keepalive_timeout
        site.max_connections = config.max_connections
        site.http2 = config.http2 and config.tls is not None
        site.http2_max_streams = config.http2_max_streams
        self.connections.maxPersistentPerHost = config.backend_keepalive
        # Twisted's pool cannot keep zero idle connections: it keeps none at all.
        self.connections.persistent = config.backend_keepalive > 0
        self.connections.cachedConnectionTimeout = config.backend_keepalive_timeout  # type: ignore[assignment]
        via = config.via.encode("ascii") if config.via is not None else None
        # One forwarder per pool that takes requests; the routes and their
        # forwarders change as one object, so new requests see either the
        # old routes or the new ones.
        forwarders = {
            name: Forwarder(
                self.pools[name], self.agent, via, reactor, config.limits.client_body_timeout
            )
            for name in sorted(config.used_pools())
        }
        self.resource.routes = Routes(config.router(), forwarders)

    def _apply_outside(self, plan: _Plan) -> None:
        """Listeners, the admin listener and the access log."""
        config = plan.config
        # Listeners: new ones are already listening; removed ones stop
        # (their open connections are served to the end).
        for description in list(self.ports):
            if description not in config.listen:
                self.ports.pop(description).stopListening()
        for description, port in plan.ports.items():
            self.ports[description] = port
            log.info("lbproxy listening on {address}", address=describe_address(port.getHost()))
        if plan.admin_port is not None or config.admin is None:
            if self.admin_port is not None:
                self.admin_port.stopListening()
            self.admin_port = plan.admin_port
            if self.admin_port is not None:
                log.info(
                    "lbproxy admin listening on {address}",
                    address=describe_address(self.admin_port.getHost()),
                )
        if plan.access_log is not None or config.access_log is None:
            if self.access_log is not None:
                self.access_log.close()
            self.access_log = plan.access_log

    def admin_site(self) -> Any:
        """The admin listener's site, made (and its module imported) when first needed."""
        if self._admin_site is None:
            from lbproxy.ops.admin import admin_site

            self._admin_site = admin_site(self)
        return self._admin_site

    def reload(self, config: ProxyConfig) -> None:
        """
        Apply a new configuration without dropping a connection or a request
        in flight.

        @raises StartError: When it cannot be applied; then nothing changed.
        """
        plan = _Plan(config)
        self._prepare_pools(plan)
        self._prepare_tls(plan)
        self._prepare_outside(plan)
        self._apply(plan)
        self.reloads["ok"] += 1

    # -- requests -----------------------------------------------------------

    def _request_done(self, request: ProxyRequest, status: int, duration: float) -> None:
        """
        Count a finished request against its server (or its pool when no
        server took it) and write its access log line.
        """
        server = request.server
        method = method_label(request.method)
        klass = status_class(status)
        now = self._reactor.seconds()
        pool = request.pool
        if server is not None:
            server.stats.record(method, klass, duration, now)
        elif pool is not None:
            pool.stats.record_unrouted(method, klass)
        if pool is not None:
            pool.stats.record(klass, duration, now)
        access_log = self.access_log
        if access_log is not None:
            access_log.write(_entry(request, status, duration, now))

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
            self._prepare_outside(plan)
        except StartError as e:
            # One line and exit status 1 from twistd, not a traceback.
            raise SystemExit(str(e)) from None
        self._apply_outside(plan)

    def stopService(self) -> Deferred[Any]:
        """
        Stop accepting connections, let the requests in flight finish within
        C{shutdown_timeout}, then close what is left.
        """
        children = super().stopService()
        ports = list(self.ports.values())
        self.ports = {}
        if self.admin_port is not None:
            ports.append(self.admin_port)
            self.admin_port = None
        stopping: List[Deferred[Any]] = [maybeDeferred(port.stopListening) for port in ports]
        stopping.append(children)
        drained = self.site.drain(self.config.shutdown_timeout, self._reactor)

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


def _event_recorder(pool: Pool, reactor: Any) -> Callable[[ServerState, str, str], None]:
    """Write the state changes of C{pool}'s servers in its event log, with the time."""
    events = pool.stats.events

    def record(server: ServerState, what: str, detail: str) -> None:
        events.add(reactor.seconds(), server.name, what, detail)

    return record


def _entry(request: ProxyRequest, status: int, duration: float, now: float) -> accesslog.Entry:
    address = request.getClientAddress()
    headers = request.requestHeaders
    referer = headers.getRawHeaders(b"referer")
    agent = headers.getRawHeaders(b"user-agent")
    server = request.server
    return accesslog.Entry(
        time=now,
        client=getattr(address, "host", "unix"),
        method=request.method,
        target=request.uri,
        protocol=request.clientproto,
        status=status,
        sent=request.sentLength,
        duration=duration,
        server=server.name if server is not None else None,
        attempts=request.attempts,
        request_id=request.request_id,
        referer=referer[0] if referer else None,
        user_agent=agent[0] if agent else None,
    )


__all__ = ["ProxyService", "StartError"]
