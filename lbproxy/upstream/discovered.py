"""
The pools whose servers come from DNS, wired to the running proxy: one
L{Discovery} service per pool with C{dns://} or C{dns+srv://} lines, a
resolver shared by them, and a change in the records applied to the pool
like a reload of that pool (see L{update_pool}).

twisted.names is imported only when a pool has DNS lines: a proxy without
them does not pay for it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from twisted.application.service import IServiceCollection

from lbproxy.config import PoolConfig, ProxyConfig, ServerConfig
from lbproxy.config.dns import Found
from lbproxy.upstream.backend import make_route
from lbproxy.upstream.pool import Pool

#: The running state of a server that stays across a change, by its key.
ServerKey = Callable[[ServerConfig], Tuple[str, str, str, int]]


class DiscoveredPools:
    """
    The DNS discovery of every pool that has DNS lines.

    @param parent: The service collection the L{Discovery} services run in.
    @param changed: Called with a pool's name after its servers changed (the
        health checks follow).
    """

    def __init__(
        self,
        parent: IServiceCollection,
        reactor: Any,
        server_key: ServerKey,
        changed: Callable[[str], None],
    ) -> None:
        self.parent = parent
        self.reactor = reactor
        self.server_key = server_key
        self.changed = changed
        self.discoveries: Dict[str, Any] = {}
        self.pools: Mapping[str, Pool] = {}
        self.policies: Mapping[str, Any] = {}
        self._resolver: Optional[Tuple[Any, Any]] = None

    def answers(self, pool: str) -> Mapping[str, Tuple[Found, ...]]:
        """The last good answers of a pool's DNS lines (none yet: empty)."""
        discovery = self.discoveries.get(pool)
        return discovery.answers if discovery is not None else {}

    def apply(
        self, config: ProxyConfig, pools: Mapping[str, Pool], policies: Mapping[str, Any]
    ) -> None:
        """Start, reconfigure or stop each pool's DNS discovery."""
        self.pools, self.policies = pools, policies
        wanted = {name: pool for name, pool in config.pools.items() if pool.discovery}
        for name in list(self.discoveries):
            if name not in wanted:
                self.discoveries.pop(name).disownServiceParent()
        if not wanted:
            return
        from lbproxy.upstream.discovery import Discovery
        from lbproxy.upstream.dnslookup import make_resolver

        old = self._resolver
        if old is None or old[0] != config.resolver:
            self._resolver = (config.resolver, make_resolver(config.resolver, self.reactor))
        resolver = self._resolver[1]  # type: ignore[index]
        for name, pool_config in wanted.items():
            running = self.discoveries.get(name)
            if running is not None:
                running.reconfigure(pool_config, resolver)
                continue
            discovery = Discovery(pool_config, resolver, self.reactor, self._callback(name))
            # Known before it starts: an answer during the start is applied.
            self.discoveries[name] = discovery
            discovery.setServiceParent(self.parent)
        if old is not None and old[1] is not resolver:
            old[1].close()

    def _callback(self, name: str) -> Callable[[], None]:
        return lambda: self._rediscovered(name)

    def _rediscovered(self, name: str) -> None:
        """A pool's DNS lines name other servers: apply them like a reload."""
        pool = self.pools.get(name)
        if pool is None or not pool.config.discovery:
            return
        from lbproxy.config.found import all_servers
        from lbproxy.upstream.discovery import update_pool

        config: PoolConfig = pool.config
        policy = self.policies[name]

        def route_for(server: ServerConfig) -> Any:
            return make_route(self.reactor, server, policy, config.connect_timeout)

        update_pool(pool, all_servers(config, self.answers(name)), route_for, self.server_key)
        self.changed(name)

    def stop(self) -> None:
        """Close the resolver's port."""
        if self._resolver is not None:
            self._resolver[1].close()
            self._resolver = None
