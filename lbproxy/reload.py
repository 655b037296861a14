"""
The reload plan: a configuration made ready to apply to the running proxy.

A reload first prepares everything that can fail (TLS policies and routes
for every server, OpenSSL contexts, the new listeners, the admin listener,
the access log file) into a L{Plan}; anything that fails there undoes what
the plan opened and refuses the reload whole (L{StartError}).  Applying a
plan cannot fail: pools are reconfigured in place (servers that stay, by
name and address, keep their state), new listeners replace removed ones,
and the front gets its new settings and routes.

The first configuration goes through the same steps: the inside at
construction, the outside (listeners, log file) when the service starts.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from twisted.internet.interfaces import IListeningPort

from lbproxy.config import ProxyConfig, ServerConfig
from lbproxy.config.dns import Found
from lbproxy.config.found import all_servers
from lbproxy.front.h2 import H2_PROTOCOLS, NegotiatingChannel
from lbproxy.front.resource import Routes
from lbproxy.front.site import ProxySite
from lbproxy.front.tls import PROTOCOLS, ServerContexts, SNIConnectionCreator
from lbproxy.listeners import StartError, announce, listen
from lbproxy.ops import accesslog
from lbproxy.upstream.backend import BackendAgent, BackendConnectionPool, make_route, tls_policy
from lbproxy.upstream.forwarder import Forwarder
from lbproxy.upstream.health import http_probe
from lbproxy.upstream.pool import Pool, ServerState


def server_key(config: ServerConfig) -> Tuple[str, str, str, int]:
    """A server stays across a reload when its name and address stay."""
    return (config.name, config.scheme, config.host, config.port)


class Plan:
    """
    A configuration made ready to apply: everything that can fail (TLS
    policies, the access log file, new listeners) has been done; applying it
    cannot fail.

    @ivar servers: Per pool, its servers: the running state of those that
        stay (or L{None}), the new configuration, the route to it.
    @ivar probes: The active health check probe of each pool that has one.
    @ivar policies: The TLS policy of each pool, for servers found later.
    @ivar ports: New proxy listeners, by description, already listening.
    @ivar admin_port: A new admin listener, already listening.
    @ivar access_log: A newly opened access log.
    @ivar tls: The OpenSSL contexts of the C{tls:} listeners.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.servers: Dict[str, List[Tuple[Optional[ServerState], ServerConfig, Any]]] = {}
        self.probes: Dict[str, Any] = {}
        self.policies: Dict[str, Any] = {}
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


class Running(Protocol):
    """The parts of the running proxy a plan is prepared against and applied to."""

    config: ProxyConfig
    ports: Dict[str, IListeningPort]
    admin_port: Optional[IListeningPort]
    access_log: Optional[accesslog.AccessLog]

    @property
    def reactor(self) -> Any: ...

    @property
    def site(self) -> ProxySite: ...

    @property
    def tls(self) -> SNIConnectionCreator: ...

    def admin_site(self) -> Any:
        """The admin listener's site."""

    def listen_proxy(self, description: str, where: str) -> IListeningPort:
        """A proxy listener on C{description} (L{listen}, or a worker's inherited socket)."""


def prepare_pools(
    plan: Plan,
    running: Mapping[str, Pool],
    reactor: Any,
    answers: Callable[[str], Mapping[str, Sequence[Found]]],
) -> None:
    """
    The TLS policy of each pool, and each server's route and running state.

    @param answers: The last DNS answers of a pool's C{dns://} lines.
    """
    for pool_config in plan.config.pools.values():
        try:
            policy = tls_policy(pool_config)
        except Exception as e:
            raise StartError(
                f"{plan.config.path}: [pool:{pool_config.name}] tls_ca_file: cannot load it: {e}"
            ) from None
        pool = running.get(pool_config.name)
        old = {server_key(s.config): s for s in pool.servers} if pool else {}
        plan.policies[pool_config.name] = policy
        plan.servers[pool_config.name] = [
            (
                old.get(server_key(server)),
                server,
                make_route(reactor, server, policy, pool_config.connect_timeout),
            )
            for server in all_servers(pool_config, answers(pool_config.name))
        ]
        if pool_config.health_check is not None:
            plan.probes[pool_config.name] = http_probe(reactor, pool_config, policy)


def prepare_tls(plan: Plan) -> None:
    """OpenSSL contexts for the certificates of the tls: listeners."""
    tls = plan.config.tls
    if tls is None:
        return
    protocols = H2_PROTOCOLS if plan.config.http2 else PROTOCOLS
    try:
        plan.tls = ServerContexts(tls, protocols)
    except ValueError as e:
        raise StartError(f"{plan.config.path}: {e}") from None


def prepare_outside(plan: Plan, running: Running) -> None:
    """
    Open what the plan adds to the outside world: new listeners, a new
    admin listener, a new access log file.  On failure, what was opened
    is closed again and L{StartError} says why.
    """
    config = plan.config
    where = config.path
    try:
        for description in config.listen:
            if description not in running.ports:
                plan.ports[description] = running.listen_proxy(
                    description, f"{where}: [proxy] listen"
                )
        admin = config.admin
        running_admin = running.config.admin if running.admin_port is not None else None
        if admin is not None and (running_admin is None or running_admin.listen != admin.listen):
            plan.admin_port = listen(
                running.reactor,
                admin.listen,
                running.admin_site(),
                f"{where}: [admin] listen",
                running.tls,
            )
        access_log = running.access_log
        if config.access_log is not None and (
            access_log is None
            or access_log.path != config.access_log
            or access_log.format != config.access_log_format
        ):
            try:
                plan.access_log = accesslog.AccessLog(
                    config.access_log, config.access_log_format, running.reactor
                )
            except OSError as e:
                raise StartError(
                    f"{where}: [proxy] access_log: cannot open {config.access_log}: {e.strerror}"
                ) from None
    except BaseException:
        plan.undo()
        raise


def apply_pools(plan: Plan, pools: Dict[str, Pool], reactor: Any) -> None:
    """
    Make C{pools} the plan's: servers that stay keep their state, new pools
    are made, removed pools stop (their requests in flight finish).
    """
    config = plan.config
    for name, entries in plan.servers.items():
        servers = []
        for state, server_config, route in entries:
            if state is None:
                state = ServerState(server_config, route)
            else:
                state.reconfigure(server_config, route)
            servers.append(state)
        running = pools.get(name)
        if running is None:
            pool = pools[name] = Pool(config.pools[name], servers, reactor)
            pool.on_change = _event_recorder(pool, reactor)
        else:
            running.reconfigure(config.pools[name], servers)
    for name in list(pools):
        if name not in config.pools:
            pools.pop(name).stop()


def apply_front(config: ProxyConfig, site: ProxySite, connections: BackendConnectionPool) -> None:
    """The front's limits and the backend connections' keep-alive, for new connections."""
    site.limits = config.limits
    site.timeOut = config.keepalive_timeout
    site.max_connections = config.max_connections
    site.negotiate = NegotiatingChannel if config.http2 and config.tls is not None else None
    site.http2_max_streams = config.http2_max_streams
    connections.maxPersistentPerHost = config.backend_keepalive
    # Twisted's pool cannot keep zero idle connections: it keeps none at all.
    connections.persistent = config.backend_keepalive > 0
    connections.cachedConnectionTimeout = config.backend_keepalive_timeout  # type: ignore[assignment]


def routes(
    config: ProxyConfig, pools: Mapping[str, Pool], agent: BackendAgent, reactor: Any
) -> Routes:
    """
    The compiled router and one forwarder per pool that takes requests: they
    change as one object, so new requests see either the old routes or the
    new ones.
    """
    via = config.via.encode("ascii") if config.via is not None else None
    forwarders = {
        name: Forwarder(pools[name], agent, via, reactor, config.limits.client_body_timeout)
        for name in sorted(config.used_pools())
    }
    return Routes(config.router(), forwarders)


def apply_outside(plan: Plan, running: Running) -> None:
    """Listeners, the admin listener and the access log."""
    config = plan.config
    # Listeners: new ones are already listening; removed ones stop (their
    # open connections are served to the end).
    for description in list(running.ports):
        if description not in config.listen:
            running.ports.pop(description).stopListening()
    for description, port in plan.ports.items():
        running.ports[description] = port
        announce(port)
    if plan.admin_port is not None or config.admin is None:
        if running.admin_port is not None:
            running.admin_port.stopListening()
        running.admin_port = plan.admin_port
        if plan.admin_port is not None:
            announce(plan.admin_port, "lbproxy admin")
    if plan.access_log is not None or config.access_log is None:
        if running.access_log is not None:
            running.access_log.close()
        running.access_log = plan.access_log


def _event_recorder(pool: Pool, reactor: Any) -> Callable[[ServerState, str, str], None]:
    """Write the state changes of C{pool}'s servers in its event log, with the time."""
    events = pool.stats.events

    def record(server: ServerState, what: str, detail: str) -> None:
        events.add(reactor.seconds(), server.name, what, detail)

    return record


__all__ = [
    "Plan",
    "Running",
    "apply_front",
    "apply_outside",
    "apply_pools",
    "prepare_outside",
    "prepare_pools",
    "prepare_tls",
    "routes",
    "server_key",
]
